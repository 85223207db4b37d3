"""Shard files: one work unit's scores as Parquet files plus a manifest, written crash-safely.

Distributed scoring (Ray, or SLURM job arrays with ``--shard I/N``) never lets
a worker write the DuckDB file.  Each *work unit* (``scoring.shard_units``)
is scored by the ordinary ``scoring.engine.Scorer`` and written as a shard::

    DIR/run-<hash>/run.json                       the run key, readable
    DIR/run-<hash>/unit-<id>.scores.parquet       ScoreBatch.scores
    DIR/run-<hash>/unit-<id>.options.parquet      ScoreBatch.options (when non-empty)
    DIR/run-<hash>/unit-<id>.tokens.parquet       ScoreBatch.tokens  (with --token-level)
    DIR/run-<hash>/unit-<id>.manifest.json        what the unit holds, hashes, row counts
    DIR/run-<hash>/shard-<i>-of-<n>.done.json     a --shard job finished all its units

``<hash>`` hashes the run key (``scoring.shard_keys``), so shards of the same
run land in one folder wherever they were computed.  Merging
(``scoring.shard_merge``) is idempotent.

Every file is written to a temporary name and renamed into place, and the
manifest is written last: a unit counts as finished only when its manifest
exists and the hashes it records match the files.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from psystats.warehouse.hashing import file_sha256

from .shard_keys import (
    COLUMNS,
    FORMAT_VERSION,
    TABLES,
    ShardError,
    _canonical,
    _fsync_replace,
    _read_json,
    _write_json_atomic,
    run_hash,
)
from .shard_units import WorkUnit

if TYPE_CHECKING:  # heavy imports (torch) stay out of `psystats merge`
    from psystats.scoring.engine import ScoreBatch
    from psystats.scoring.inputs import ParticipantInput


# ---------------------------------------------------------------------------
# Writing and reading one shard
# ---------------------------------------------------------------------------


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
        words=tables["words"],
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
