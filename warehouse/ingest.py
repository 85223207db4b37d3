"""Psych-101/201 files -> warehouse rows.

The path of one line: ``sources`` decodes it, ``transcript.parse_record``
validates it and finds its responses, and this module assigns keys, batches
rows into Arrow tables and inserts them.

Guarantees
----------
* **One transaction per source file.**  A file either lands whole (minus the
  lines ``--skip-bad`` rejected) or not at all; files already committed by the
  same command stay.  A rejected line leaves no trace in the warehouse.
* **Idempotent.**  A file whose bytes were already ingested is skipped at once
  (content hash).  Otherwise every participant is compared with what the
  warehouse holds under ``(study, experiment, participant)``: identical
  content adds nothing; changed content is reported in ``ingest_conflicts``
  and kept as it was unless ``replace_changed`` is set.
* **Streaming.**  Lines are read one at a time and flushed in batches, so
  memory is bounded by the batch size and the per-line limit
  (``max_line_bytes``), not the file size.
* **One error path.**  Whatever fails on a line (decoding, the reader,
  validation) arrives as a ``LineError``/``RecordError`` and becomes one
  ``FILE:LINE: field`` message, or under ``skip_bad`` one rejection.  A file
  that cannot be read at all is refused whole (one rejection under skip_bad).
* **Honest scores.**  Replacing a participant marks the runs that scored it
  incomplete and the fits built on them stale (``warehouse.staleness``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from . import domains as domain_map
from . import parquet_layout, staleness
from .db import WarehouseError, next_id, scalar, transaction
from .normalise import as_number
from .sources import DEFAULT_MAX_LINE_BYTES, LineError, SourceFile, discover_all
from .transcript import Participant, RecordError, parse_record

# Flush to DuckDB after this many response rows (bounds memory).
BATCH_RESPONSES = 200_000


def _version() -> str:
    from psystats.warehouse.provenance import __version__

    return __version__


class IngestError(WarehouseError):
    """A bad line, with file, line and field; the file's transaction was rolled back."""

    def __init__(self, label: str, line: int, field: str, message: str):
        super().__init__(f"{label}:{line}: field '{field}': {message}")
        self.label, self.line, self.field, self.message = label, line, field, message


@dataclass
class Rejection:
    file: str
    line: int
    field: str
    message: str


@dataclass
class FileResult:
    source: str
    study: str
    status: str  # complete | skipped-same-content | rejected (the whole file, under skip_bad)
    seconds: float = 0.0
    lines: int = 0
    participants_added: int = 0
    participants_unchanged: int = 0
    participants_changed: int = 0
    responses_added: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    conflicts: list[tuple[str, str, int]] = field(default_factory=list)
    runs_marked_incomplete: int = 0
    fits_marked_stale: int = 0


class _FileRejected(Exception):
    """Unwinds the file's transaction when skip_bad drops a whole unreadable file."""


class _Batch:
    """Column buffers for one flush; Arrow tables are built from them."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Empty every column buffer (after a flush)."""
        self.participants: dict[str, list] = {
            k: []
            for k in (
                "participant_key",
                "study",
                "experiment",
                "participant",
                "age",
                "gender",
                "nationality",
                "education",
                "diagnosis",
                "metadata",
                "n_responses",
                "content_sha256",
                "ingest_id",
                "line",
            )
        }
        self.metadata: dict[str, list] = {
            k: [] for k in ("participant_key", "key", "value_num", "value_text", "value_json")
        }
        self.transcripts: dict[str, list] = {
            k: [] for k in ("participant_key", "text", "sha256", "n_chars")
        }
        self.responses: dict[str, list] = {
            k: []
            for k in (
                "response_id",
                "participant_key",
                "study",
                "experiment",
                "participant",
                "response_index",
                "text",
                "char_start",
                "char_end",
                "rt",
            )
        }

    @property
    def n_responses(self) -> int:
        return len(self.responses["response_id"])

    def add(
        self, p: Participant, study: str, pkey: int, first_rid: int, ingest_id: int, line: int
    ) -> None:
        P = self.participants
        P["participant_key"].append(pkey)
        P["study"].append(study)
        P["experiment"].append(p.experiment)
        P["participant"].append(p.participant)
        for k in ("age", "gender", "nationality", "education", "diagnosis"):
            P[k].append(p.normalised[k])
        P["metadata"].append(json.dumps(p.metadata, ensure_ascii=False) if p.metadata else None)
        P["n_responses"].append(len(p.spans))
        P["content_sha256"].append(p.content_sha256)
        P["ingest_id"].append(ingest_id)
        P["line"].append(line)

        M = self.metadata
        for k, v in p.metadata.items():
            M["participant_key"].append(pkey)
            M["key"].append(k)
            # Numbers, numeric strings ("1159") and booleans (True -> 1.0).
            M["value_num"].append(float(v) if isinstance(v, bool) else as_number(v))
            M["value_text"].append(v if isinstance(v, str) else None)
            M["value_json"].append(json.dumps(v, ensure_ascii=False))

        T = self.transcripts
        T["participant_key"].append(pkey)
        T["text"].append(p.text)
        T["sha256"].append(p.text_sha256)
        T["n_chars"].append(len(p.text))

        R = self.responses
        n = len(p.spans)
        text = p.text
        R["response_id"].extend(range(first_rid, first_rid + n))
        R["participant_key"].extend([pkey] * n)
        R["study"].extend([study] * n)
        R["experiment"].extend([p.experiment] * n)
        R["participant"].extend([p.participant] * n)
        R["response_index"].extend(range(n))
        R["text"].extend([text[a:b] for a, b in p.spans])
        R["char_start"].extend([a for a, _ in p.spans])
        R["char_end"].extend([b for _, b in p.spans])
        R["rt"].extend(p.rts if p.rts is not None else [None] * n)

    def flush(self, con: duckdb.DuckDBPyConnection) -> None:
        schemas = {
            "participants": pa.schema(
                [
                    ("participant_key", pa.int64()),
                    ("study", pa.string()),
                    ("experiment", pa.string()),
                    ("participant", pa.string()),
                    ("age", pa.float64()),
                    ("gender", pa.string()),
                    ("nationality", pa.string()),
                    ("education", pa.string()),
                    ("diagnosis", pa.string()),
                    ("metadata", pa.string()),
                    ("n_responses", pa.int32()),
                    ("content_sha256", pa.string()),
                    ("ingest_id", pa.int32()),
                    ("line", pa.int64()),
                ]
            ),
            "participant_metadata": pa.schema(
                [
                    ("participant_key", pa.int64()),
                    ("key", pa.string()),
                    ("value_num", pa.float64()),
                    ("value_text", pa.string()),
                    ("value_json", pa.string()),
                ]
            ),
            "transcripts": pa.schema(
                [
                    ("participant_key", pa.int64()),
                    ("text", pa.large_string()),
                    ("sha256", pa.string()),
                    ("n_chars", pa.int32()),
                ]
            ),
            "responses": pa.schema(
                [
                    ("response_id", pa.int64()),
                    ("participant_key", pa.int64()),
                    ("study", pa.string()),
                    ("experiment", pa.string()),
                    ("participant", pa.string()),
                    ("response_index", pa.int32()),
                    ("text", pa.large_string()),
                    ("char_start", pa.int32()),
                    ("char_end", pa.int32()),
                    ("rt", pa.float64()),
                ]
            ),
        }
        buffers = {
            "participants": self.participants,
            "participant_metadata": self.metadata,
            "transcripts": self.transcripts,
            "responses": self.responses,
        }
        for table, cols in buffers.items():
            if not next(iter(cols.values())):
                continue
            arrow = pa.table(cols, schema=schemas[table])
            con.register("_ingest_batch", arrow)
            try:
                names = ", ".join(arrow.column_names)
                con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _ingest_batch")
            finally:
                con.unregister("_ingest_batch")
        self.clear()


def _existing(
    con: duckdb.DuckDBPyConnection, study: str
) -> dict[tuple[str, str], tuple[int, str, int]]:
    rows = con.execute(
        "SELECT experiment, participant, participant_key, content_sha256, line "
        "FROM participants WHERE study = ?",
        [study],
    ).fetchall()
    return {(e, p): (k, h, ln) for e, p, k, h, ln in rows}


def _delete_participant(con: duckdb.DuckDBPyConnection, pkey: int) -> set[int]:
    """Remove a participant and everything derived from it (used by replace).

    Returns the score runs that lost scores, to be marked incomplete.
    """
    runs = staleness.runs_scoring(con, pkey)
    # Both scores layouts: DELETE, or (Parquet files are never rewritten) rows
    # listed in score_rows_deleted, which the views leave out.
    parquet_layout.delete_responses(
        con, "SELECT response_id FROM responses WHERE participant_key = ?", [pkey]
    )
    for table in ("responses", "transcripts", "participant_metadata", "participants"):
        con.execute(f"DELETE FROM {table} WHERE participant_key = ?", [pkey])
    return runs


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    src: SourceFile,
    *,
    skip_bad: bool = False,
    replace_changed: bool = False,
    force: bool = False,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> FileResult:
    """Ingest one source file in one transaction (see the module docstring)."""
    t0 = time.perf_counter()
    try:
        sha = src.sha256()
    except OSError as e:
        return _refuse_file(src, 0, "<file>", f"cannot be read: {e.strerror}", skip_bad, t0)
    started = datetime.now(UTC).replace(tzinfo=None)
    if not force:
        seen = scalar(
            con,
            "SELECT count(*) FROM ingests WHERE content_sha256 = ? AND study = ? "
            "AND coalesce(member, '') = ? AND status = 'complete'",
            [sha, src.study, src.member or ""],
        )
        if seen:
            return FileResult(
                src.label, src.study, "skipped-same-content", seconds=time.perf_counter() - t0
            )

    result = FileResult(src.label, src.study, "complete")
    try:
        _ingest_in_transaction(
            con, src, sha, started, result, skip_bad, replace_changed, max_line_bytes, t0
        )
    except _FileRejected as e:
        line, fld, msg = e.args
        return _refuse_file(src, line, fld, msg, skip_bad, t0, lines=result.lines)
    result.seconds = time.perf_counter() - t0
    return result


def _refuse_file(
    src: SourceFile, line: int, fld: str, msg: str, skip_bad: bool, t0: float, lines: int = 0
) -> FileResult:
    """A file that cannot be read at all: an error, or under skip_bad one rejection."""
    if not skip_bad:
        raise IngestError(src.label, line, fld, msg)
    out = FileResult(src.label, src.study, "rejected", seconds=time.perf_counter() - t0)
    out.lines = lines
    out.rejected.append(Rejection(src.label, line, fld, f"{msg} (whole file not ingested)"))
    return out


def _ingest_in_transaction(
    con: duckdb.DuckDBPyConnection,
    src: SourceFile,
    sha: str,
    started: datetime,
    result: FileResult,
    skip_bad: bool,
    replace_changed: bool,
    max_line_bytes: int,
    t0: float,
) -> None:
    with transaction(con):
        ingest_id = scalar(con, "SELECT nextval('ingest_id_seq')")
        existing = _existing(con, src.study)
        next_pkey = next_id(con, "participants", "participant_key")
        next_rid = next_id(con, "responses", "response_id")
        seen_here: dict[tuple[str, str], tuple[str, int]] = {}
        experiments: set[str] = set()
        conflict_rows: list[tuple] = []
        lost_scores: set[int] = set()
        batch = _Batch()

        # Every line-level failure, whatever its cause (decoding, a reader
        # error, validation), arrives here as a LineError or RecordError: one
        # error path, one --skip-bad rule.
        for line, rec in src.records(max_line_bytes):
            if isinstance(rec, LineError) and rec.fatal:
                raise _FileRejected(line, rec.field, rec.message)
            result.lines += 1
            try:
                if isinstance(rec, LineError):
                    raise RecordError(rec.field, rec.message)
                p = parse_record(rec)
            except RecordError as e:
                if not skip_bad:
                    raise IngestError(src.label, line, e.field, e.message) from None
                result.rejected.append(Rejection(src.label, line, e.field, e.message))
                continue

            key = (p.experiment, p.participant)
            if key in seen_here:
                first_hash, first_line = seen_here[key]
                if first_hash == p.content_sha256:
                    result.participants_unchanged += 1
                    continue
                msg = (
                    f"participant {p.participant!r} of experiment {p.experiment!r} appears "
                    f"again with different content (first at line {first_line})"
                )
                if not skip_bad:
                    raise IngestError(src.label, line, "participant", msg)
                result.rejected.append(Rejection(src.label, line, "participant", msg))
                continue
            seen_here[key] = (p.content_sha256, line)

            if key in existing:
                old_key, old_hash, _ = existing[key]
                # A warehouse written before normalisation holds the hash of
                # the record as given; that counts as the same content too.
                if old_hash == p.content_sha256 or old_hash == p.legacy_sha256():
                    result.participants_unchanged += 1
                    continue
                result.participants_changed += 1
                action = "replaced" if replace_changed else "kept-old"
                conflict_rows.append(
                    (
                        ingest_id,
                        src.study,
                        p.experiment,
                        p.participant,
                        line,
                        old_hash,
                        p.content_sha256,
                        action,
                    )
                )
                result.conflicts.append((p.experiment, p.participant, line))
                if not replace_changed:
                    continue
                lost_scores |= _delete_participant(con, old_key)

            batch.add(p, src.study, next_pkey, next_rid, ingest_id, line)
            experiments.add(p.experiment)
            next_pkey += 1
            next_rid += len(p.spans)
            result.participants_added += 1
            result.responses_added += len(p.spans)
            if batch.n_responses >= BATCH_RESPONSES:
                batch.flush(con)
        batch.flush(con)

        if lost_scores:
            why = (
                f"ingest {ingest_id} of {src.label} replaced changed participants it had "
                "scored (see ingest_conflicts)"
            )
            result.runs_marked_incomplete, result.fits_marked_stale = staleness.mark_stale(
                con, lost_scores, why
            )
        if conflict_rows:
            con.executemany(
                "INSERT INTO ingest_conflicts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", conflict_rows
            )
        con.execute(
            "INSERT INTO studies (study, source_path, first_ingested_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [src.study, str(src.path), started],
        )
        known = {e for (e,) in con.execute("SELECT experiment FROM experiments").fetchall()}
        new_experiments = sorted(experiments - known)
        if new_experiments:
            con.executemany(
                "INSERT INTO experiments (experiment, study) VALUES (?, ?)",
                [(e, src.study) for e in new_experiments],
            )
            domain_map.ensure_builtin(con)
            domain_map.resolve(con)
        result.seconds = time.perf_counter() - t0
        con.execute(
            "INSERT INTO ingests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ingest_id,
                str(src.path),
                src.member,
                src.study,
                sha,
                started,
                datetime.now(UTC).replace(tzinfo=None),
                result.lines,
                result.participants_added,
                result.participants_unchanged,
                result.participants_changed,
                result.responses_added,
                len(result.rejected),
                "complete",
                _version(),
            ],
        )


def ingest_paths(
    con: duckdb.DuckDBPyConnection,
    paths: Iterable[str | Path],
    *,
    study: str | None = None,
    skip_bad: bool = False,
    replace_changed: bool = False,
    force: bool = False,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    on_file: Callable[[FileResult], Any] | None = None,
    on_warning: Callable[[str], Any] | None = None,
) -> list[FileResult]:
    """Ingest every source under ``paths``; each file is its own transaction.

    Discovery warnings (stray files beside study folders, folders without a
    data file) go to ``on_warning`` before anything is read.
    """
    found = discover_all(list(paths), study)
    for w in found.warnings:
        if on_warning:
            on_warning(w)
    results = []
    for src in found.sources:
        r = ingest_file(
            con,
            src,
            skip_bad=skip_bad,
            replace_changed=replace_changed,
            force=force,
            max_line_bytes=max_line_bytes,
        )
        results.append(r)
        if on_file:
            on_file(r)
    return results
