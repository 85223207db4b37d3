"""Score shards: Parquet files of finished work units, and merging them into the warehouse.

Distributed scoring (Ray, or SLURM job arrays with ``--shard I/N``) never lets
a worker write the DuckDB file.  Each *work unit* (a group of participants
balanced by token count) is scored by the ordinary single-machine
``scoring.engine.Scorer`` and its result is written as a *shard*::

    DIR/run-<hash>/run.json                       the run key, readable
    DIR/run-<hash>/unit-<id>.scores.parquet       ScoreBatch.scores
    DIR/run-<hash>/unit-<id>.options.parquet      ScoreBatch.options (when non-empty)
    DIR/run-<hash>/unit-<id>.tokens.parquet       ScoreBatch.tokens  (with --token-level)
    DIR/run-<hash>/unit-<id>.manifest.json        what the unit holds, hashes, row counts
    DIR/run-<hash>/shard-<i>-of-<n>.done.json     a --shard job finished all its units

``<hash>`` is a hash of the *run key* (model, condition, selection, settings,
fingerprints): shards of the same run land in the same folder wherever they
were computed, and shards of different runs never mix.

Crash safety
------------
Every file is written to a temporary name and renamed into place, and the
manifest is written last: a unit counts as finished only when its manifest
exists and the hashes it records match the files.  A worker killed half-way
leaves at most stray temporary files, which are ignored and overwritten.

Merging (``merge_dir``, ``psystats merge DIR``) feeds each shard to
``scoring.runs.write_batch``, one transaction per unit, which skips rows the
warehouse already holds.  So a shard written twice is merged once, and a merge
interrupted half-way (killed, or stopped by a corrupt shard) is simply run
again.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from psystats.warehouse.db import WarehouseError, scalar
from psystats.warehouse.hashing import file_sha256

if TYPE_CHECKING:  # heavy imports (torch) stay out of `psystats merge`
    import duckdb

    from psystats.scoring.engine import ScoreBatch, Scorer
    from psystats.scoring.inputs import ParticipantInput

FORMAT_VERSION = 1
TABLES = ("scores", "options", "tokens")
# Columns of each shard table: the warehouse table minus run_id (the run id is
# only known to the warehouse that merges the shard).
COLUMNS = {
    "scores": (
        "response_id",
        "nll",
        "n_tokens",
        "first_token_nll",
        "top1_all",
        "top1_first",
        "first_token_entropy",
    ),
    "options": ("response_id", "option", "logprob"),
    "tokens": ("response_id", "token_index", "token_id", "token", "logprob"),
}
# Default size of a --shard job's work units: the granularity at which an
# interrupted (preempted, timed-out) array task resumes.
DEFAULT_UNIT_TOKENS = 200_000


class ShardError(WarehouseError):
    """A shard that cannot be merged (missing file, wrong hash, wrong columns); names the file."""


# ---------------------------------------------------------------------------
# Run keys
# ---------------------------------------------------------------------------


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_key(
    model: Mapping[str, Any] | str,
    condition: str,
    selection: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
    fingerprints: Mapping[str, Any] | None,
) -> dict:
    """What identifies a scoring run across machines: the same key means the same numbers.

    ``model`` is a ``models`` row (only its ``name`` is used) or a name.  The
    key mirrors what ``scoring.runs.start_run`` matches on, so merging a
    shard finds (or opens) exactly the run a single-machine ``psystats
    score`` would have used.
    """
    from psystats.scoring.runs import run_key_settings

    name = model if isinstance(model, str) else model["name"]
    # Round-trip through JSON so tuples/lists and key order cannot change the hash.
    return json.loads(
        _canonical(
            {
                "model": name,
                "condition": condition,
                "selection": dict(selection or {}),
                # Batching (batch size, device) changes no result, so a job on a
                # smaller GPU still writes into the same run (as start_run matches).
                "settings": run_key_settings(dict(settings)),
                "fingerprints": dict(fingerprints or {}),
            }
        )
    )


def run_hash(key: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the canonical run key (the folder name's suffix)."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]


def run_dir(
    out: str | os.PathLike, key: Mapping[str, Any], settings: Mapping[str, Any] | None = None
) -> Path:
    """``out/run-<hash>``, created, with ``run.json`` holding the key (checked if present).

    ``settings``: the full scorer settings (batching included), recorded in
    ``run.json`` so the merged run shows how the shards were computed.
    """
    d = Path(out) / f"run-{run_hash(key)}"
    d.mkdir(parents=True, exist_ok=True)
    meta = d / "run.json"
    if meta.exists():
        stored = _read_json(meta)
        if stored.get("key") != key:
            raise ShardError(
                f"{meta}: holds a different run key than this run (hash collision or edited file)"
            )
    else:
        _write_json_atomic(
            meta,
            {
                "format": FORMAT_VERSION,
                "hash": run_hash(key),
                "key": key,
                "settings": dict(settings or key["settings"]),
            },
        )
    return d


# ---------------------------------------------------------------------------
# Work units and the --shard I/N partition
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkUnit:
    """Participants scored together and written as one shard."""

    unit_id: str
    participant_keys: tuple[int, ...]
    n_tokens: int


def _keys_digest(keys: Iterable[int]) -> str:
    return hashlib.sha256(",".join(map(str, keys)).encode()).hexdigest()[:8]


def make_units(
    token_counts: Mapping[int, int], target_tokens: int, *, prefix: str = ""
) -> list[WorkUnit]:
    """Cut participants into work units of about ``target_tokens`` tokens each.

    Participants are taken in ``participant_key`` order (neighbours come from
    the same experiment, so a unit's transcripts have similar lengths and
    batch well) and a unit is closed before it would exceed the target; a
    participant longer than the target gets a unit of its own.  The result
    depends only on the counts, so every machine computes the same units.
    Unit ids are ``<prefix><index>-<digest of the keys>``: a unit with other
    participants never reuses another unit's file names.
    """
    if target_tokens < 1:
        raise ValueError("target_tokens must be positive")
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for key in sorted(token_counts):
        n = int(token_counts[key])
        if current and size + n > target_tokens:
            groups.append(current)
            current, size = [], 0
        current.append(key)
        size += n
    if current:
        groups.append(current)
    return [
        WorkUnit(
            unit_id=f"{prefix}{i:05d}-{_keys_digest(g)}",
            participant_keys=tuple(g),
            n_tokens=sum(int(token_counts[k]) for k in g),
        )
        for i, g in enumerate(groups)
    ]


def auto_unit_tokens(
    total_tokens: int,
    n_workers: int,
    *,
    units_per_worker: int = 8,
    minimum: int = 2_000,
    maximum: int = 2_000_000,
) -> int:
    """A unit size giving each worker several units (load balance, small retry cost)."""
    want = -(-max(total_tokens, 1) // max(1, n_workers * units_per_worker))
    return max(minimum, min(maximum, want))


def partition(token_counts: Mapping[int, int], n_shards: int) -> list[list[int]]:
    """Split participants into ``n_shards`` lists with nearly equal token totals.

    Longest-first greedy assignment (each participant, longest first, goes to
    the shard with the fewest tokens so far; ties by participant key and
    shard index), which keeps the largest shard within one participant of
    the mean.  Deterministic: every array task computes the same partition
    from the same counts, so task ``I`` of ``N`` needs no coordination.
    """
    if n_shards < 1:
        raise ValueError("n_shards must be at least 1")
    heap = [(0, i) for i in range(n_shards)]
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    for key in sorted(token_counts, key=lambda k: (-int(token_counts[k]), k)):
        load, i = heapq.heappop(heap)
        shards[i].append(key)
        heapq.heappush(heap, (load + int(token_counts[key]), i))
    return [sorted(s) for s in shards]


def parse_shard_spec(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N`` (I is 0-based, like ``--array=0-(N-1)``)."""
    try:
        i_text, n_text = spec.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise WarehouseError(
            f"--shard {spec!r}: expected I/N, e.g. 0/8 "
            f"(I from 0 to N-1, e.g. $SLURM_ARRAY_TASK_ID/8)"
        ) from None
    if n < 1 or not 0 <= i < n:
        raise WarehouseError(f"--shard {spec!r}: need 0 <= I < N (I is 0-based)")
    return i, n


# ---------------------------------------------------------------------------
# Writing and reading one shard
# ---------------------------------------------------------------------------


def _fsync_replace(tmp: Path, dest: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    _fsync_replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable JSON ({e})") from None


def manifest_path(rdir: Path, unit_id: str) -> Path:
    return rdir / f"unit-{unit_id}.manifest.json"


def text_sha256(text: str) -> str:
    """SHA-256 of a transcript's UTF-8 bytes, as ``transcripts.sha256`` stores it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_shard(
    rdir: str | os.PathLike,
    key: Mapping[str, Any],
    unit: WorkUnit,
    batch: ScoreBatch,
    participants: Sequence[ParticipantInput],
    *,
    shard: tuple[int, int] | None = None,
    seconds: float | None = None,
) -> dict:
    """Write ``batch`` (the scores of ``unit``) as Parquet files plus a manifest; returns the manifest.

    The manifest records each participant's transcript hash, so merging into
    a different warehouse (whose surrogate keys mean other people) is refused
    rather than silently mislabelled.
    """
    rdir = Path(rdir)
    files: dict[str, dict] = {}
    for name in TABLES:
        table = getattr(batch, name)
        if table is None or (name != "scores" and table.num_rows == 0):
            continue
        dest = rdir / f"unit-{unit.unit_id}.{name}.parquet"
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        _fsync_replace(tmp, dest)
        files[name] = {"file": dest.name, "rows": table.num_rows, "sha256": file_sha256(dest)}
    transcripts = {str(p.participant_key): text_sha256(p.text) for p in participants}
    manifest = {
        "format": FORMAT_VERSION,
        "run_hash": run_hash(key),
        "run_key": dict(key),
        "unit_id": unit.unit_id,
        "shard": list(shard) if shard else None,
        "participant_keys": list(unit.participant_keys),
        "covered_keys": sorted(int(k) for k in batch.participant_keys),
        "transcript_sha256": transcripts,
        "n_tokens": unit.n_tokens,
        "counts": {k: int(v) for k, v in (batch.counts or {}).items()},
        "files": files,
        "rows": {name: info["rows"] for name, info in files.items()},
        "content_sha256": hashlib.sha256(
            _canonical({n: files[n]["sha256"] for n in sorted(files)}).encode()
        ).hexdigest(),
        "seconds": seconds,
        "host": socket.gethostname(),
        "written_at": datetime.now(UTC).isoformat(),
    }
    _write_json_atomic(manifest_path(rdir, unit.unit_id), manifest)
    return manifest


def verify_manifest(mpath: Path) -> dict:
    """The manifest at ``mpath`` after checking that its files exist and match their hashes."""
    m = _read_json(mpath)
    if m.get("format") != FORMAT_VERSION:
        raise ShardError(
            f"{mpath}: shard format {m.get('format')!r}, this psystats reads {FORMAT_VERSION}"
        )
    for field_name in ("run_key", "unit_id", "participant_keys", "files", "content_sha256"):
        if field_name not in m:
            raise ShardError(f"{mpath}: field '{field_name}' missing")
    if run_hash(m["run_key"]) != m.get("run_hash") or mpath.parent.name != f"run-{m['run_hash']}":
        raise ShardError(f"{mpath}: run key does not match its folder {mpath.parent.name}")
    if "scores" not in m["files"]:
        raise ShardError(f"{mpath}: field 'files': no scores file listed")
    for name, info in m["files"].items():
        if name not in TABLES or Path(info["file"]).name != info["file"]:
            raise ShardError(f"{mpath}: field 'files': bad entry {name!r}: {info.get('file')!r}")
        path = mpath.parent / info["file"]
        if not path.exists():
            raise ShardError(f"{path}: missing (listed in {mpath.name})")
        if file_sha256(path) != info["sha256"]:
            raise ShardError(
                f"{path}: content hash differs from {mpath.name} "
                f"(corrupt or partly written: rerun the job that wrote it)"
            )
    return m


def read_shard(mpath: Path) -> tuple[dict, ScoreBatch]:
    """A verified manifest and its tables as a ``ScoreBatch`` ready for ``write_batch``."""
    from psystats.scoring.engine import OPTION_SCHEMA, ScoreBatch

    m = verify_manifest(mpath)
    tables: dict[str, pa.Table | None] = {}
    for name in TABLES:
        info = m["files"].get(name)
        if info is None:
            tables[name] = None
            continue
        path = mpath.parent / info["file"]
        try:
            t = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise ShardError(f"{path}: unreadable Parquet ({e})") from None
        if tuple(t.column_names) != COLUMNS[name]:
            raise ShardError(f"{path}: columns {t.column_names}, expected {list(COLUMNS[name])}")
        if t.num_rows != info["rows"]:
            raise ShardError(f"{path}: {t.num_rows} rows, manifest says {info['rows']}")
        tables[name] = t
    if tables["options"] is None:  # not written when empty
        tables["options"] = OPTION_SCHEMA.empty_table()
    batch = ScoreBatch(
        scores=tables["scores"],
        options=tables["options"],
        tokens=tables["tokens"],
        participant_keys=[int(k) for k in m.get("covered_keys", [])],
        counts=dict(m.get("counts") or {}),
    )
    return m, batch


def finished_units(rdir: Path) -> dict[str, Path]:
    """unit id -> manifest path for every unit whose manifest is present (not yet verified)."""
    out = {}
    for mpath in sorted(rdir.glob("unit-*.manifest.json")):
        out[mpath.name[len("unit-") : -len(".manifest.json")]] = mpath
    return out


def unit_is_done(rdir: Path, unit_id: str) -> bool:
    """True when the unit's manifest exists and its files match their hashes."""
    mpath = manifest_path(rdir, unit_id)
    if not mpath.exists():
        return False
    try:
        verify_manifest(mpath)
    except ShardError:
        return False
    return True


def done_marker_path(rdir: Path, i: int, n: int) -> Path:
    return rdir / f"shard-{i:04d}-of-{n:04d}.done.json"


# ---------------------------------------------------------------------------
# Merging shards into the warehouse
# ---------------------------------------------------------------------------


@dataclass
class RunMerge:
    """What merging one run folder did."""

    run_dir: str
    run_id: int | None = None
    units: int = 0
    rows_added: int = 0
    rows_skipped: int = 0
    complete: bool = False
    shards_done: str = ""  # e.g. "3/3", for --shard runs
    errors: list[str] = field(default_factory=list)


def _check_against_warehouse(
    con: duckdb.DuckDBPyConnection, mpath: Path, m: dict, batch: ScoreBatch
) -> None:
    """Refuse a shard computed on a warehouse whose participants differ from this one,
    or whose rows are not responses of the unit's participants."""
    expected = m.get("transcript_sha256") or {}
    keys = [int(k) for k in m["participant_keys"]]
    if sorted(int(k) for k in expected) != sorted(keys):
        raise ShardError(
            f"{mpath}: field 'transcript_sha256' does not list the unit's participants"
        )
    rows = con.execute(
        "SELECT participant_key, sha256 FROM transcripts WHERE participant_key IN "
        "(SELECT unnest(?::BIGINT[]))",
        [keys],
    ).fetchall()
    have = {int(k): s for k, s in rows}
    for k in keys:
        if have.get(k) != expected[str(k)]:
            what = "is not in this warehouse" if k not in have else "has a different transcript"
            raise ShardError(
                f"{mpath}: participant_key {k} {what}: the shard was scored from "
                f"another warehouse file; merge it into that one"
            )
    con.register("_shard_ids", batch.scores.select(["response_id"]))
    try:
        outside = scalar(
            con,
            "SELECT count(*) FROM _shard_ids s WHERE NOT EXISTS (SELECT 1 "
            "FROM responses r WHERE r.response_id = s.response_id AND "
            "r.participant_key IN (SELECT unnest(?::BIGINT[])))",
            [keys],
        )
    finally:
        con.unregister("_shard_ids")
    if outside:
        raise ShardError(
            f"{mpath}: {outside} score rows are not responses of the unit's participants"
        )


def merge_unit(con: duckdb.DuckDBPyConnection, run_id: int, mpath: Path) -> tuple[dict, int, int]:
    """Merge one verified shard into run ``run_id``: (manifest, rows added, rows already present)."""
    from psystats.scoring.runs import write_batch

    m, batch = read_shard(mpath)
    _check_against_warehouse(con, mpath, m, batch)
    added = int(write_batch(con, run_id, batch))
    return m, added, batch.scores.num_rows - added


def _start_run_for_key(
    con: duckdb.DuckDBPyConnection, key: Mapping[str, Any], settings: Mapping[str, Any]
) -> tuple[int, bool]:
    from psystats.scoring.registry import get_model
    from psystats.scoring.runs import start_run

    model = get_model(con, key["model"])
    return start_run(con, model, key["condition"], key["selection"], settings, key["fingerprints"])


def complete_shard_set(rdir: Path) -> tuple[list[dict] | None, str]:
    """The done markers of a complete ``--shard`` set (all I of some N), and e.g. ``"2/3"``.

    When several N were used for the same run, the largest complete set wins.
    """
    by_n: dict[int, dict[int, dict]] = {}
    for p in sorted(rdir.glob("shard-*-of-*.done.json")):
        d = _read_json(p)
        by_n.setdefault(int(d["n"]), {})[int(d["i"])] = d
    if not by_n:
        return None, ""
    complete = [n for n, got in by_n.items() if len(got) == n]
    if complete:
        n = max(complete)
        return [by_n[n][i] for i in range(n)], f"{n}/{n}"
    n = max(by_n, key=lambda k: len(by_n[k]) / k)
    return None, f"{len(by_n[n])}/{n}"


def merge_run_dir(
    con: duckdb.DuckDBPyConnection, rdir: Path, *, on_unit: Callable[[str, int], None] | None = None
) -> RunMerge:
    """Merge every finished unit in one ``run-<hash>`` folder; finish the run when all shards are in.

    A bad shard is reported in ``errors`` and the others are still merged
    (each unit in its own transaction); the run stays open until a rerun
    merges the repaired shard.
    """
    meta = _read_json(rdir / "run.json")
    key = meta["key"]
    result = RunMerge(run_dir=str(rdir))
    run_id, _already = _start_run_for_key(con, key, meta.get("settings") or key["settings"])
    result.run_id = run_id
    merged_counts: dict[str, dict] = {}
    for unit_id, mpath in finished_units(rdir).items():
        try:
            m, added, skipped = merge_unit(con, run_id, mpath)
        except ShardError as e:
            result.errors.append(str(e))
            continue
        merged_counts[unit_id] = m.get("counts") or {}
        result.units += 1
        result.rows_added += added
        result.rows_skipped += skipped
        if on_unit:
            on_unit(unit_id, added)
    markers, result.shards_done = complete_shard_set(rdir)
    if markers is not None and len({d.get("partition_sha256") for d in markers}) > 1:
        result.errors.append(
            f"{rdir}: the {result.shards_done} shard jobs saw different "
            f"participants (warehouse changed between jobs?); rerun them all"
        )
    elif markers is not None and not result.errors:
        wanted = [u for d in markers for u in d["units"]]
        missing = [u for u in wanted if u not in merged_counts]
        if missing:
            result.errors.append(
                f"{rdir}: shard jobs report units {missing[:5]} done but their "
                f"shards are missing; rerun those jobs"
            )
        else:
            from psystats.scoring.runs import finish_run

            finish_run(con, run_id, sum_counts(merged_counts[u] for u in wanted), status="complete")
            result.complete = True
    return result


def sum_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def merge_dir(
    con: duckdb.DuckDBPyConnection,
    out: str | os.PathLike,
    *,
    on_unit: Callable[[str, int], None] | None = None,
) -> list[RunMerge]:
    """Merge every ``run-*`` folder under ``out`` (or ``out`` itself if it is one).

    Idempotent and restartable: rows the warehouse already holds are skipped.
    Raises ``ShardError`` listing the bad shards after merging all good ones.
    """
    out = Path(out)
    if not out.is_dir():
        raise ShardError(f"{out}: no such folder")
    dirs = (
        [out]
        if (out / "run.json").exists()
        else sorted(d for d in out.glob("run-*") if (d / "run.json").exists())
    )
    if not dirs:
        raise ShardError(f"{out}: no shards found (expected run-*/run.json)")
    results = [merge_run_dir(con, d, on_unit=on_unit) for d in dirs]
    errors = [e for r in results for e in r.errors]
    if errors:
        err = ShardError(
            f"{len(errors)} shard(s) not merged (the others were; fix these and "
            f"run the merge again):\n  " + "\n  ".join(errors)
        )
        err.results = results  # type: ignore[attr-defined]
        raise err
    return results


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


def partition_digest(token_counts: Mapping[int, int]) -> str:
    """Hash of the (participant, tokens) list a partition was computed from.

    Every task of an array records it, and ``merge`` refuses a set of tasks
    that saw different participants (e.g. the warehouse was re-ingested
    between tasks), because their partitions would overlap and leave gaps.
    """
    items = sorted((int(k), int(v)) for k, v in token_counts.items())
    return hashlib.sha256(_canonical(items).encode()).hexdigest()[:16]


def _token_counts(rdir: Path, scorer: Scorer, inputs: Sequence[ParticipantInput]) -> dict[int, int]:
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
    scorer: Scorer,
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


def resolve_model_read_only(con: duckdb.DuckDBPyConnection, name_or_source: str) -> dict:
    """The registered model with this name or source, without writing (for ``--shard`` tasks).

    A task of a job array must not register models: N tasks would race to
    write the warehouse.  Register it once before submitting the array.
    """
    from psystats.scoring.registry import _classify, get_model

    rows = con.execute(
        "SELECT name FROM models WHERE name = ? ORDER BY model_id", [name_or_source]
    ).fetchall()
    if not rows:
        # A path or hub id: look it up the way `resolve_model` does, by source.
        try:
            _, source, gguf_file = _classify(name_or_source, None)
        except WarehouseError:
            source, gguf_file = name_or_source, None
        rows = con.execute(
            "SELECT name FROM models WHERE source = ? AND "
            "coalesce(gguf_file, '') = ? ORDER BY model_id",
            [source, gguf_file or ""],
        ).fetchall()
    if not rows:
        raise WarehouseError(
            f"model {name_or_source!r} is not registered; --shard tasks read the warehouse "
            f"read-only, so register it once before submitting the array: "
            f"psystats models add {name_or_source}"
        )
    return get_model(con, rows[0][0])
