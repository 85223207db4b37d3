"""One ``--shard I/N`` job (a SLURM array task): score my part of the selection into shards."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from psystats.warehouse.errors import WarehouseError

from .shard_files import done_marker_path, manifest_path, unit_is_done, write_shard
from .shard_keys import _fsync_replace, _read_json, _write_json_atomic, run_dir, run_key
from .shard_merge import sum_counts
from .shard_units import DEFAULT_UNIT_TOKENS, make_units, partition, partition_digest

if TYPE_CHECKING:  # heavy imports (torch) stay out of `psystats merge`
    from psystats.scoring.engine import ModelScorer
    from psystats.scoring.inputs import ParticipantInput


# ---------------------------------------------------------------------------
# One --shard I/N job (SLURM array task): score my part, write shards
# ---------------------------------------------------------------------------


@dataclass
class ShardJobResult:
    run_dir: str
    shard: tuple[int, int]
    units: int = 0
    units_skipped: int = 0  # already written by an earlier attempt of this task
    participants: int = 0
    tokens: int = 0
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0


def _token_counts(
    rdir: Path, scorer: ModelScorer, inputs: Sequence[ParticipantInput]
) -> dict[int, int]:
    """Token counts of every input, cached in ``rdir/token_counts.parquet`` for sibling tasks."""
    cache = rdir / "token_counts.parquet"
    keys = sorted(p.participant_key for p in inputs)
    if cache.exists():
        try:
            t = pq.read_table(cache).to_pydict()
            cached = dict(zip(t["participant_key"], t["n_tokens"]))
            if sorted(cached) == keys:
                return {int(k): int(v) for k, v in cached.items()}
        except Exception:  # damaged or half-written by a sibling: recount
            pass
    counts = {p.participant_key: int(scorer.count_tokens(p)) for p in inputs}
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    pq.write_table(
        pa.table(
            {
                "participant_key": pa.array(list(counts), pa.int64()),
                "n_tokens": pa.array(list(counts.values()), pa.int64()),
            }
        ),
        tmp,
    )
    _fsync_replace(tmp, cache)
    return counts


def run_shard(
    scorer: ModelScorer,
    model: Mapping[str, Any] | str,
    *,
    condition: str,
    selection: Mapping[str, Any] | None,
    inputs: Sequence[ParticipantInput],
    shard: tuple[int, int],
    out_dir: str | os.PathLike,
    unit_tokens: int = DEFAULT_UNIT_TOKENS,
    progress: Callable[[int, int, int], None] | None = None,
) -> ShardJobResult:
    """Score part ``I`` of ``N`` of ``inputs`` with ``scorer`` and write its shards under ``out_dir``.

    For SLURM job arrays (or any scheduler): needs no Ray and no write access
    to the warehouse (the caller loads ``inputs`` from a read-only
    connection).  ``inputs`` must be the whole selection, not what is still
    unscored, so that every task computes the same partition.  Units already
    written by an earlier attempt of this task (verified by hash) are
    skipped, so a preempted or timed-out task just runs again.  When all its
    units are written the task leaves ``shard-I-of-N.done.json``; ``merge``
    closes the run once all N are there.  ``progress(units_done, units, tokens_done)``
    is called after each unit.
    """
    i, n = shard
    if not 0 <= i < n:
        raise WarehouseError(f"shard {i}/{n}: need 0 <= I < N")
    t0 = time.monotonic()
    key = run_key(model, condition, selection, scorer.settings, scorer.fingerprints)
    rdir = run_dir(out_dir, key, scorer.settings)
    by_key = {p.participant_key: p for p in inputs}
    counts = _token_counts(rdir, scorer, inputs)
    mine = partition(counts, n)[i]
    units = make_units({k: counts[k] for k in mine}, unit_tokens, prefix=f"s{i:04d}of{n:04d}-")
    result = ShardJobResult(
        run_dir=str(rdir), shard=(i, n), participants=len(mine), tokens=sum(counts[k] for k in mine)
    )
    unit_counts = []
    tokens_done = 0
    for j, unit in enumerate(units):
        if unit_is_done(rdir, unit.unit_id):
            result.units_skipped += 1
            unit_counts.append(_read_json(manifest_path(rdir, unit.unit_id)).get("counts") or {})
        else:
            participants = [by_key[k] for k in unit.participant_keys]
            t_unit = time.perf_counter()
            batch = scorer.score(participants)
            m = write_shard(
                rdir,
                key,
                unit,
                batch,
                participants,
                shard=(i, n),
                seconds=time.perf_counter() - t_unit,
            )
            unit_counts.append(m["counts"])
            result.units += 1
        tokens_done += unit.n_tokens
        if progress:
            progress(j + 1, len(units), tokens_done)
    result.counts = sum_counts(unit_counts)
    result.seconds = time.monotonic() - t0
    _write_json_atomic(
        done_marker_path(rdir, i, n),
        {
            "i": i,
            "n": n,
            "units": [u.unit_id for u in units],
            "partition_sha256": partition_digest(counts),
            "counts": result.counts,
            "participants": len(mine),
            "tokens": result.tokens,
            "host": socket.gethostname(),
            "finished_at": datetime.now(UTC).isoformat(),
        },
    )
    return result
