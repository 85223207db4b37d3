"""Score-run bookkeeping: start or resume a run, write batches idempotently, finish.

A *run* is one (model, condition, selection, settings) combination; its
``run_id`` keys every score row.  The life of a run:

1. :func:`start_run` finds an unfinished (``running``, ``failed`` or
   ``incomplete``) run with
   the same key and resumes it, or reports that a ``complete`` one exists
   (re-running is then a no-op unless ``force``), or creates a new one.
2. :func:`pending_participants` drops the participants whose responses all
   have a score in the run already.
3. :func:`write_batch` writes one :class:`scoring.engine.ScoreBatch` in ONE
   transaction.  Rows whose ``(run_id, response_id)`` is already stored are
   skipped, so a batch written twice (a retry, a merged shard) adds nothing.
   A process killed mid-run loses at most the batch it was computing.
4. :func:`finish_run` marks the run complete (or failed) and fills the totals.

Counts (``score_runs.counts``)
------------------------------
Counts that belong to scored work (``straddling_tokens``, ``windowed_participants``,
``oom_backoffs``, ...) are *added* by every committed :func:`write_batch`, so a
resumed run keeps those of the batches committed before the interruption.
Skip counts (keys ``skipped:<reason>``) are *set* by :func:`finish_run`:
skipped participants never get scores, so every pass over a run sees all of
them again, and the last pass's numbers are the run's.

Settings under the key ``batching`` (token budget, packing, device) do not
change results beyond floating-point reassociation, so they are recorded but
not part of the run key: a run started with one batch size can be resumed
with another.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar, transaction

from .inputs import ParticipantInput

if TYPE_CHECKING:  # pragma: no cover
    from .engine import ScoreBatch

SKIP_PREFIX = "skipped:"
# "environment" (software versions, git revision: warehouse.manifest) is recorded, not matched.
NOT_IN_KEY = ("batching", "environment")


def _version() -> str:
    from psystats.warehouse.provenance import __version__

    return __version__


def _environment() -> dict:
    from psystats.warehouse.manifest import environment

    return environment()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def canonical(obj: Any) -> str:
    """Key-order independent JSON, so equal settings compare equal as text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_key_settings(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in NOT_IN_KEY}


def start_run(
    con: duckdb.DuckDBPyConnection,
    model: dict,
    condition: str,
    selection: dict,
    settings: dict,
    fingerprints: dict,
    *,
    force: bool = False,
    scorer: str = "psystats",
) -> tuple[int, bool]:
    """``(run_id, already_complete)`` for this model/condition/selection/settings.

    Resumes the newest matching ``running``/``failed`` run; returns the newest
    matching ``complete`` run with ``already_complete=True`` unless ``force``,
    which starts a new run beside it (the old one stays as history).
    """
    name = model["name"] if isinstance(model, dict) else str(model)
    sel = canonical(selection or {})
    key = canonical(run_key_settings(settings))
    rows = con.execute(
        "SELECT run_id, status, selection, settings FROM score_runs "
        "WHERE model = ? AND condition = ? AND scorer = ? ORDER BY run_id DESC",
        [name, condition, scorer],
    ).fetchall()
    matching = [
        (rid, status)
        for rid, status, se, s in rows
        if canonical(json.loads(se) if se else {}) == sel
        and canonical(run_key_settings(json.loads(s) if s else {})) == key
    ]
    if not force:
        for rid, status in matching:
            if status == "complete":
                return int(rid), True
    for rid, status in matching:
        # 'incomplete': ingest --replace-changed deleted some of its scores
        # (warehouse.staleness); resuming scores exactly those participants.
        if status in ("running", "failed", "incomplete"):
            with transaction(con):
                con.execute(
                    "UPDATE score_runs SET status = 'running', error = NULL, "
                    "finished_at = NULL, settings = ? WHERE run_id = ?",
                    [canonical({**settings, "environment": _environment()}), rid],
                )
            return int(rid), False
    batching = settings.get("batching", {})
    with transaction(con):
        rid = scalar(con, "SELECT nextval('run_id_seq')")
        con.execute(
            "INSERT INTO score_runs (run_id, model, condition, scorer, selection, settings, dtype, "
            "device, tokenizer_sha256, weights_sha256, psystats_version, started_at, status, "
            "counts, sample_spec) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', '{}', ?)",
            [
                rid,
                name,
                condition,
                scorer,
                sel,
                canonical({**settings, "environment": _environment()}),
                settings.get("dtype"),
                batching.get("device"),
                (fingerprints or {}).get("tokenizer_sha256"),
                (fingerprints or {}).get("weights_sha256"),
                _version(),
                _now(),
                # A sampled selection (scoring/sample.py) says so; NULL: a full run.
                (selection or {}).get("sample"),
            ],
        )
    return int(rid), False


def scored_response_ids(con: duckdb.DuckDBPyConnection, run_id: int) -> set[int]:
    return {
        r[0]
        for r in con.execute("SELECT response_id FROM scores WHERE run_id = ?", [run_id]).fetchall()
    }


def pending_participants(
    con: duckdb.DuckDBPyConnection, run_id: int, inputs: Sequence[ParticipantInput]
) -> list[ParticipantInput]:
    """The participants of ``inputs`` with at least one response not yet scored in the run."""
    done = scored_response_ids(con, run_id)
    if not done:
        return list(inputs)
    return [p for p in inputs if not all(r in done for r in p.response_ids)]


def _insert_new(
    con: duckdb.DuckDBPyConnection, table: str, run_id: int, rows: pa.Table, new_ids: pa.Array
) -> int:
    """Insert the rows of ``rows`` whose response_id is in ``new_ids``, with run_id in front."""
    import pyarrow.compute as pc

    if rows is None or rows.num_rows == 0:
        return 0
    rows = rows.filter(pc.is_in(rows["response_id"], value_set=new_ids))
    if rows.num_rows == 0:
        return 0
    # One writer for both layouts: an INSERT, or a new Parquet file of the run's
    # partition (warehouse/parquet_layout.py) visible when the batch commits.
    from psystats.warehouse.parquet_layout import write_rows

    con.register("_score_rows", rows)
    try:
        write_rows(con, table, run_id, "_score_rows", rows.column_names)
    finally:
        con.unregister("_score_rows")
    return rows.num_rows


def write_batch(con: duckdb.DuckDBPyConnection, run_id: int, batch: ScoreBatch) -> int:
    """Write a batch in one transaction; returns the number of new ``scores`` rows.

    Idempotent: responses already scored in the run are skipped in every
    table (scores, option_scores, token_scores, word_scores), never duplicated.  Adds the
    batch's non-skip counts to the run's counts.
    """
    scores = batch.scores
    with transaction(con):
        status = scalar(con, "SELECT status FROM score_runs WHERE run_id = ?", [run_id])
        if status is None:
            raise WarehouseError(f"score run {run_id} does not exist")
        ids = scores["response_id"]
        con.register("_batch_ids", pa.table({"response_id": ids}))
        try:
            new = con.execute(
                "SELECT b.response_id FROM _batch_ids b "
                "WHERE NOT EXISTS (SELECT 1 FROM scores s "
                "                  WHERE s.run_id = ? AND s.response_id = b.response_id)",
                [run_id],
            ).fetchall()
        finally:
            con.unregister("_batch_ids")
        new_ids = pa.array([r[0] for r in new], pa.int64())
        n = _insert_new(con, "scores", run_id, scores, new_ids)
        _insert_new(con, "option_scores", run_id, batch.options, new_ids)
        if batch.tokens is not None:
            _insert_new(con, "token_scores", run_id, batch.tokens, new_ids)
        if getattr(batch, "words", None) is not None:
            _insert_new(con, "word_scores", run_id, batch.words, new_ids)
        if n:
            add = {k: v for k, v in batch.counts.items() if not k.startswith(SKIP_PREFIX)}
            _merge_counts(con, run_id, add, replace_skips=False)
    return n


def _merge_counts(
    con: duckdb.DuckDBPyConnection, run_id: int, counts: dict[str, int], *, replace_skips: bool
) -> dict[str, int]:
    old = json.loads(
        scalar(con, "SELECT counts FROM score_runs WHERE run_id = ?", [run_id]) or "{}"
    )
    if replace_skips:
        old = {k: v for k, v in old.items() if not k.startswith(SKIP_PREFIX)}
    for k, v in counts.items():
        if k.startswith(SKIP_PREFIX) and not replace_skips:
            continue
        if k.startswith(SKIP_PREFIX) or k not in old:
            old[k] = v
        else:
            old[k] = old[k] + v
    con.execute("UPDATE score_runs SET counts = ? WHERE run_id = ?", [canonical(old), run_id])
    return old


def finish_run(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    counts: dict | None = None,
    status: str = "complete",
    error: str | None = None,
) -> None:
    """Mark the run ``complete`` or ``failed`` and fill its totals.

    ``counts``: only the ``skipped:<reason>`` entries are used (they replace
    the stored ones); other counts were added batch by batch by
    :func:`write_batch`.  ``n_skipped`` counts skipped participants.
    """
    skips = {k: int(v) for k, v in (counts or {}).items() if k.startswith(SKIP_PREFIX)}
    with transaction(con):
        merged = _merge_counts(con, run_id, skips, replace_skips=True)
        n_resp = scalar(con, "SELECT count(*) FROM scores WHERE run_id = ?", [run_id])
        n_part = scalar(
            con,
            "SELECT count(DISTINCT r.participant_key) FROM scores s "
            "JOIN responses r USING (response_id) WHERE s.run_id = ?",
            [run_id],
        )
        n_skipped = sum(v for k, v in merged.items() if k.startswith(SKIP_PREFIX))
        con.execute(
            "UPDATE score_runs SET status = ?, finished_at = ?, n_participants = ?, "
            "n_responses = ?, n_skipped = ?, error = ? WHERE run_id = ?",
            [status, _now(), n_part, n_resp, n_skipped, error, run_id],
        )
