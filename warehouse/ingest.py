"""Psych-101/201 files -> warehouse rows.

The path of one line: ``sources`` decodes it, ``transcript.parse_record``
validates it and finds its responses, and this module assigns keys, batches
rows into Arrow tables and inserts them.

Guarantees
----------
* **Validated whole, then committed in short batches.**  A file is read,
  validated and staged in temporary tables first; a bad line stops the
  command with its file, line and field before anything of that file is
  written (files already committed by the same command stay).  A rejected
  line leaves no trace in the warehouse.  The staged participants are then
  committed in batches of at most ``COMMIT_RESPONSES`` responses (a replaced
  participant's removal and its new version in the same batch), the file's
  ``ingests`` row (status ``complete``) with the last one; a small file is
  one transaction.  With a
  per-statement connection (``db.open(path, "statement")``, as the CLI
  opens it) the warehouse is held only during those transactions, so a
  reader waits about a second at most.
* **Resumable.**  An ingest interrupted between batches (killed, disk full)
  leaves whole participants and no ``complete`` row: running it again reads
  the file again, finds the committed participants already present and adds
  the rest, never a duplicate.
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
from .brief import local_connection
from .errors import WarehouseError
from .normalise import as_number
from .progress import Reporter
from .sources import DEFAULT_MAX_LINE_BYTES, LineError, SourceFile, discover_all
from .sql import next_id, scalar, transaction
from .transcript import Participant, RecordError, parse_record

# Flush to the staging tables after this many response rows (bounds memory).
BATCH_RESPONSES = 200_000
# Commit after this many responses or transcript characters: each commit holds the
# warehouse file about a second at most (0.5-1 s measured for 50k responses on 2 cores).
COMMIT_RESPONSES = 50_000
COMMIT_CHARS = 32 << 20


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
    participants_added: int = 0  # new participants (replacements are counted apart)
    participants_unchanged: int = 0
    participants_changed: int = 0  # content differs from the warehouse's (kept or replaced)
    participants_replaced: int = 0
    responses_added: int = 0  # responses of the new participants
    responses_replaced: int = 0  # responses of the replacing participants
    rejected: list[Rejection] = field(default_factory=list)
    conflicts: list[tuple[str, str, int]] = field(default_factory=list)
    runs_marked_incomplete: int = 0
    fits_marked_stale: int = 0
    negative_rt_lines: list[int] = field(default_factory=list)  # stored as given, with a warning
    ingested_before: int | None = None  # skipped: the ingest that read these bytes


class _FileRejected(Exception):
    """Unwinds the file's staging when skip_bad drops a whole unreadable file."""


# Temporary tables a file is staged in before its write transaction.
STAGED = ("participants", "participant_metadata", "transcripts", "responses")


def _staged(table: str) -> str:
    return f"_ingest_{table}"


_SCHEMAS = {
    "participants": pa.schema(
        [
            ("local_key", pa.int64()),
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
            ("legacy_sha256", pa.string()),
            ("line", pa.int64()),
        ]
    ),
    "participant_metadata": pa.schema(
        [
            ("local_key", pa.int64()),
            ("key", pa.string()),
            ("value_num", pa.float64()),
            ("value_text", pa.string()),
            ("value_json", pa.string()),
        ]
    ),
    "transcripts": pa.schema(
        [
            ("local_key", pa.int64()),
            ("text", pa.large_string()),
            ("sha256", pa.string()),
            ("n_chars", pa.int32()),
        ]
    ),
    "responses": pa.schema(
        [
            ("local_key", pa.int64()),
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


class _Batch:
    """Column buffers for one flush to the staging tables (keys are file-local)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Empty every column buffer (after a flush)."""
        self.cols: dict[str, dict[str, list]] = {
            t: {name: [] for name in schema.names} for t, schema in _SCHEMAS.items()
        }

    @property
    def n_responses(self) -> int:
        return len(self.cols["responses"]["local_key"])

    def add(self, p: Participant, study: str, key: int, line: int, legacy: str | None) -> None:
        P = self.cols["participants"]
        P["local_key"].append(key)
        P["study"].append(study)
        P["experiment"].append(p.experiment)
        P["participant"].append(p.participant)
        for k in ("age", "gender", "nationality", "education", "diagnosis"):
            P[k].append(p.normalised[k])
        P["metadata"].append(json.dumps(p.metadata, ensure_ascii=False) if p.metadata else None)
        P["n_responses"].append(len(p.spans))
        P["content_sha256"].append(p.content_sha256)
        P["legacy_sha256"].append(legacy)
        P["line"].append(line)

        M = self.cols["participant_metadata"]
        for k, v in p.metadata.items():
            M["local_key"].append(key)
            M["key"].append(k)
            # Numbers, numeric strings ("1159") and booleans (True -> 1.0).
            M["value_num"].append(float(v) if isinstance(v, bool) else as_number(v))
            M["value_text"].append(v if isinstance(v, str) else None)
            M["value_json"].append(json.dumps(v, ensure_ascii=False))

        T = self.cols["transcripts"]
        T["local_key"].append(key)
        T["text"].append(p.text)
        T["sha256"].append(p.text_sha256)
        T["n_chars"].append(len(p.text))

        R = self.cols["responses"]
        n = len(p.spans)
        text = p.text
        R["local_key"].extend([key] * n)
        R["study"].extend([study] * n)
        R["experiment"].extend([p.experiment] * n)
        R["participant"].extend([p.participant] * n)
        R["response_index"].extend(range(n))
        R["text"].extend([text[a:b] for a, b in p.spans])
        R["char_start"].extend([a for a, _ in p.spans])
        R["char_end"].extend([b for _, b in p.spans])
        R["rt"].extend(p.rts if p.rts is not None else [None] * n)

    def flush(self, local: duckdb.DuckDBPyConnection) -> None:
        """Append the buffers to the staging tables (no warehouse file involved)."""
        for table, cols in self.cols.items():
            if not next(iter(cols.values())):
                continue
            arrow = pa.table(cols, schema=_SCHEMAS[table])
            local.register("_ingest_batch", arrow)
            try:
                local.execute(f"INSERT INTO {_staged(table)} SELECT * FROM _ingest_batch")
            finally:
                local.unregister("_ingest_batch")
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


def _delete_participant(con: duckdb.DuckDBPyConnection, pkey: int) -> dict[int, int]:
    """Remove a participant and everything derived from it (used by replace).

    Returns the score runs that lost scores -> their ``scores`` rows deleted.
    """
    runs = staleness.rows_scoring(con, pkey)
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
    on_record: Callable[[int], Any] | None = None,
) -> FileResult:
    """Ingest one source file in one transaction (see the module docstring).

    ``on_record(n_responses)`` is called for every record read (0 for a
    rejected one), as it is read: progress within the file.
    """
    t0 = time.perf_counter()
    try:
        sha = src.sha256()
    except OSError as e:
        return _refuse_file(src, 0, "<file>", f"cannot be read: {e.strerror}", skip_bad, t0)
    started = datetime.now(UTC).replace(tzinfo=None)
    if not force:
        seen = _ingested_before(con, src, sha)
        if seen is not None:
            return FileResult(
                src.label,
                src.study,
                "skipped-same-content",
                seconds=time.perf_counter() - t0,
                ingested_before=int(seen),
            )

    result = FileResult(src.label, src.study, "complete")
    local = local_connection(con)
    try:
        snapshot = _existing(con, src.study)
        _stage_file(local, src, result, skip_bad, max_line_bytes, snapshot, on_record)
        batches: list[tuple[int, int] | None] = [*_commit_ranges(local)] or [None]
        ingest_id = 0
        for i, keys in enumerate(batches):
            with transaction(con):
                if i == 0:  # a sequence moves only on a writable connection
                    ingest_id = int(scalar(con, "SELECT nextval('ingest_id_seq')"))
                if keys is not None:
                    _commit_batch(con, src, ingest_id, keys, result, replace_changed, started)
                if i == len(batches) - 1:  # complete: with the last batch, not before
                    _record_ingest(con, src, sha, started, ingest_id, result, t0)
    except _FileRejected as e:
        line, fld, msg = e.args
        return _refuse_file(src, line, fld, msg, skip_bad, t0, lines=result.lines)
    finally:
        for table in STAGED:
            local.execute(f"DROP TABLE IF EXISTS {_staged(table)}")
    result.seconds = time.perf_counter() - t0
    return result


def _ingested_before(con: duckdb.DuckDBPyConnection, src: SourceFile, sha: str) -> int | None:
    """The complete ingest that read these bytes of ``src`` already (None: none)."""
    seen = scalar(
        con,
        "SELECT max(ingest_id) FROM ingests WHERE content_sha256 = ? AND study = ? "
        "AND coalesce(member, '') = ? AND status = 'complete'",
        [sha, src.study, src.member or ""],
    )
    return None if seen is None else int(seen)


def _commit_ranges(local: duckdb.DuckDBPyConnection) -> list[tuple[int, int]]:
    """File-local key ranges [lo, hi) of at most COMMIT_RESPONSES responses or
    COMMIT_CHARS transcript characters each (a bigger participant is a batch alone)."""
    ranges: list[tuple[int, int]] = []
    lo, n_resp, n_chars = None, 0, 0
    for key, responses, chars in local.execute(
        f"SELECT p.local_key, p.n_responses, t.n_chars FROM {_staged('participants')} p "
        f"JOIN {_staged('transcripts')} t USING (local_key) ORDER BY p.local_key"
    ).fetchall():
        if lo is not None and (
            n_resp + responses > COMMIT_RESPONSES or n_chars + chars > COMMIT_CHARS
        ):
            ranges.append((lo, key))
            lo, n_resp, n_chars = None, 0, 0
        if lo is None:
            lo = key
        n_resp, n_chars = n_resp + responses, n_chars + chars
    if lo is not None:
        ranges.append((lo, key + 1))
    return ranges


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


def _stage_file(
    local: duckdb.DuckDBPyConnection,
    src: SourceFile,
    result: FileResult,
    skip_bad: bool,
    max_line_bytes: int,
    snapshot: dict[tuple[str, str], tuple[int, str, int]],
    on_record: Callable[[int], Any] | None = None,
) -> None:
    """Read, validate and stage every participant of ``src`` (file-local keys).

    Runs without the warehouse: ``snapshot`` (what it held for the study a
    moment ago) only saves work, by computing the old-style hash of a record
    where it can matter; the decisions are taken in the write transaction.
    """
    for table in STAGED:
        cols = ", ".join(f"{f.name} {_DUCK_TYPES[str(f.type)]}" for f in _SCHEMAS[table])
        local.execute(f"CREATE OR REPLACE TEMP TABLE {_staged(table)} ({cols})")
    seen_here: dict[tuple[str, str], tuple[str, int]] = {}
    batch = _Batch()
    key = 0
    # Every line-level failure, whatever its cause (decoding, a reader error,
    # validation), arrives here as a LineError or RecordError: one error path,
    # one --skip-bad rule.
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
            if on_record is not None:
                on_record(0)
            continue
        if on_record is not None:
            on_record(len(p.spans))
        pair = (p.experiment, p.participant)
        if pair in seen_here:
            first_hash, first_line = seen_here[pair]
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
        seen_here[pair] = (p.content_sha256, line)
        if p.rts is not None and any(rt is not None and rt < 0 for rt in p.rts):
            result.negative_rt_lines.append(line)
        old = snapshot.get(pair)
        legacy = p.legacy_sha256() if old is not None and old[1] != p.content_sha256 else None
        batch.add(p, src.study, key, line, legacy)
        key += 1
        if batch.n_responses >= BATCH_RESPONSES:
            batch.flush(local)
    batch.flush(local)


_DUCK_TYPES = {
    "int64": "BIGINT",
    "int32": "INTEGER",
    "double": "DOUBLE",
    "string": "VARCHAR",
    "large_string": "VARCHAR",
}


def _decide(
    con: duckdb.DuckDBPyConnection,
    src: SourceFile,
    keys: tuple[int, int],
    result: FileResult,
    replace_changed: bool,
) -> tuple[list[int], list[int], list[tuple]]:
    """Compare the staged participants with file-local keys in [lo, hi) with what the
    warehouse holds now: (file-local keys to insert, warehouse keys they replace,
    ingest_conflicts rows without the ingest id)."""
    existing = _existing(con, src.study)
    keep: list[int] = []
    replaced: list[int] = []
    conflicts: list[tuple] = []
    for key, experiment, participant, sha, legacy, line, n in con.execute(
        f"SELECT local_key, experiment, participant, content_sha256, legacy_sha256, line, "
        f"n_responses FROM {_staged('participants')} WHERE local_key >= ? AND local_key < ? "
        "ORDER BY local_key",
        list(keys),
    ).fetchall():
        old = existing.get((experiment, participant))
        if old is None:
            keep.append(key)
            result.participants_added += 1
            result.responses_added += n
            continue
        old_key, old_hash, _ = old
        # A warehouse written before normalisation holds the hash of the record as
        # given; that counts as the same content too.
        if old_hash == sha or old_hash == legacy:
            result.participants_unchanged += 1
            continue
        result.participants_changed += 1
        action = "replaced" if replace_changed else "kept-old"
        conflicts.append((src.study, experiment, participant, line, old_hash, sha, action))
        result.conflicts.append((experiment, participant, line))
        if replace_changed:
            keep.append(key)
            replaced.append(old_key)
            result.participants_replaced += 1
            result.responses_replaced += n
    return keep, replaced, conflicts


def _commit_batch(
    con: duckdb.DuckDBPyConnection,
    src: SourceFile,
    ingest_id: int,
    keys: tuple[int, int],
    result: FileResult,
    replace_changed: bool,
    started: datetime,
) -> None:
    """One batch's write transaction: decide, replace, insert the staged rows."""
    keep, replaced, conflicts = _decide(con, src, keys, result, replace_changed)
    lost: dict[int, int] = {}
    gaps: list[tuple[int, str, str, str]] = []
    for old_key in replaced:
        who = con.execute(
            "SELECT study, experiment, participant FROM participants WHERE participant_key = ?",
            [old_key],
        ).fetchall()[0]
        for run_id, n in _delete_participant(con, old_key).items():
            lost[run_id] = lost.get(run_id, 0) + n
            gaps.append((run_id, *who))
    if lost:
        why = (
            f"ingest {ingest_id} of {src.label} replaced changed participants it had "
            "scored (see ingest_conflicts)"
        )
        runs, fits = staleness.mark_stale(con, lost, why, gaps)
        result.runs_marked_incomplete += runs
        result.fits_marked_stale += fits
    _insert_staged(con, keep, ingest_id)
    if conflicts:
        con.executemany(
            "INSERT INTO ingest_conflicts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(ingest_id, *c) for c in conflicts],
        )
    _record_study(con, src, started, keys)


def _record_ingest(
    con: duckdb.DuckDBPyConnection,
    src: SourceFile,
    sha: str,
    started: datetime,
    ingest_id: int,
    result: FileResult,
    t0: float,
) -> None:
    """The file's ``ingests`` row: it is complete (its bytes need not be read again)."""
    con.execute(
        "INSERT INTO studies (study, source_path, first_ingested_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        [src.study, str(src.path), started],
    )
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
            result.participants_added + result.participants_replaced,
            result.participants_unchanged,
            result.participants_changed,
            result.responses_added + result.responses_replaced,
            len(result.rejected),
            "complete",
            _version(),
        ],
    )


def _insert_staged(con: duckdb.DuckDBPyConnection, keep: list[int], ingest_id: int) -> None:
    """Insert the kept staged participants under warehouse keys (in file order)."""
    if not keep:
        return
    next_pkey = next_id(con, "participants", "participant_key")
    next_rid = next_id(con, "responses", "response_id")
    ids = pa.table(
        {
            "local_key": pa.array(keep, pa.int64()),
            "participant_key": pa.array(range(next_pkey, next_pkey + len(keep)), pa.int64()),
        }
    )
    con.register("_ingest_keep", ids)
    try:
        P, K = _staged("participants"), "_ingest_keep"
        con.execute(
            f"INSERT INTO participants (participant_key, study, experiment, participant, age, "
            f"gender, nationality, education, diagnosis, metadata, n_responses, content_sha256, "
            f"ingest_id, line) SELECT k.participant_key, p.study, p.experiment, p.participant, "
            f"p.age, p.gender, p.nationality, p.education, p.diagnosis, p.metadata, "
            f"p.n_responses, p.content_sha256, ?, p.line FROM {P} p JOIN {K} k USING (local_key) "
            f"ORDER BY k.participant_key",
            [ingest_id],
        )
        con.execute(
            f"INSERT INTO participant_metadata SELECT k.participant_key, m.key, m.value_num, "
            f"m.value_text, m.value_json FROM {_staged('participant_metadata')} m "
            f"JOIN {K} k USING (local_key)"
        )
        con.execute(
            f"INSERT INTO transcripts SELECT k.participant_key, t.text, t.sha256, t.n_chars "
            f"FROM {_staged('transcripts')} t JOIN {K} k USING (local_key) "
            f"ORDER BY k.participant_key"
        )
        con.execute(
            f"INSERT INTO responses (response_id, participant_key, study, experiment, "
            f"participant, response_index, text, char_start, char_end, rt) "
            f"SELECT ? - 1 + row_number() OVER (ORDER BY k.participant_key, r.response_index), "
            f"k.participant_key, r.study, r.experiment, r.participant, r.response_index, r.text, "
            f"r.char_start, r.char_end, r.rt FROM {_staged('responses')} r "
            f"JOIN {K} k USING (local_key) ORDER BY k.participant_key, r.response_index",
            [next_rid],
        )
    finally:
        con.unregister("_ingest_keep")


def _record_study(
    con: duckdb.DuckDBPyConnection, src: SourceFile, started: datetime, keys: tuple[int, int]
) -> None:
    """The study row, and the batch's new experiments with their domains."""
    con.execute(
        "INSERT INTO studies (study, source_path, first_ingested_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        [src.study, str(src.path), started],
    )
    new_experiments = [
        e
        for (e,) in con.execute(
            f"SELECT DISTINCT experiment FROM {_staged('participants')} "
            "WHERE local_key >= ? AND local_key < ? "
            "AND experiment NOT IN (SELECT experiment FROM experiments) ORDER BY 1",
            list(keys),
        ).fetchall()
    ]
    if new_experiments:
        con.executemany(
            "INSERT INTO experiments (experiment, study) VALUES (?, ?)",
            [(e, src.study) for e in new_experiments],
        )
        domain_map.ensure_builtin(con)
        domain_map.resolve(con)


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
    progress: Reporter | None = None,
) -> list[FileResult]:
    """Ingest every source under ``paths``; each file is its own transaction.

    Discovery warnings (stray files beside study folders, folders without a
    data file) go to ``on_warning`` before anything is read.  ``progress``
    (``warehouse.progress``; started and closed here) counts participants
    (records) as they are read, across files, out of the lines the files hold,
    with the responses read so far.
    """
    found = discover_all(list(paths), study)
    for w in found.warnings:
        if on_warning:
            on_warning(w)
    counter = _RecordCounter(progress, found.sources, None if force else con)
    results = []
    with counter:
        for i, src in enumerate(found.sources):
            r = ingest_file(
                con,
                src,
                skip_bad=skip_bad,
                replace_changed=replace_changed,
                force=force,
                max_line_bytes=max_line_bytes,
                on_record=counter.record if progress is not None else None,
            )
            counter.file_done(i, r)
            results.append(r)
            if on_file:
                on_file(r)
    return results


class _RecordCounter:
    """Participants read (and their responses) on a progress reporter, across files.

    The total is the lines of the files that will be read, counted before
    reading (not when quiet: nothing shows); a file whose bytes were ingested
    before (``con`` given: not ``force``) is skipped unread and counts
    nothing.  A file refused whole counts its lines as done; a file with
    blank lines lowers the total to what was read.
    """

    def __init__(
        self,
        reporter: Reporter | None,
        sources: list[SourceFile],
        con: duckdb.DuckDBPyConnection | None,
    ) -> None:
        self.reporter = reporter
        self.responses = 0
        self.counts: list[int] = []
        self._file_start = 0.0
        if reporter is not None and not reporter.quiet:
            self.counts = [0 if _skipped(con, src) else src.count_records() for src in sources]
            reporter.set_total(sum(self.counts))

    def __enter__(self) -> _RecordCounter:
        if self.reporter is not None:
            self.reporter.start()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.reporter is not None:
            self.reporter.close(success=exc_type is None)

    def record(self, n_responses: int) -> None:
        assert self.reporter is not None
        self.responses += n_responses
        self.reporter.set_detail(f"{self.responses:,} responses")
        self.reporter.advance(1)

    def file_done(self, i: int, r: FileResult) -> None:
        bar = self.reporter
        if bar is None or not self.counts:
            return
        read = bar.done - self._file_start
        if r.status == "complete" and bar.total is not None:
            bar.set_total(bar.total - (self.counts[i] - read))
        elif read < self.counts[i]:
            bar.advance(self.counts[i] - read)
        self._file_start = bar.done


def _skipped(con: duckdb.DuckDBPyConnection | None, src: SourceFile) -> bool:
    """Whether ``ingest_file`` will skip ``src`` unread (its bytes were ingested before)."""
    if con is None:
        return False
    try:
        return _ingested_before(con, src, src.sha256()) is not None
    except OSError:
        return False  # unreadable: ingest_file says so
