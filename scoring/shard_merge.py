"""Merging shards into the warehouse: one transaction per unit, idempotent and restartable."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psystats.warehouse import parquet_layout
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.progress import Reporter
from psystats.warehouse.sql import scalar, transaction

from .shard_files import finished_units, read_shard
from .shard_keys import ShardError, _read_json

if TYPE_CHECKING:  # heavy imports (torch) stay out of `psystats merge`
    import duckdb

    from psystats.scoring.engine import ScoreBatch


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
    """Merge one verified shard into run ``run_id``: (manifest, rows added, rows already present).

    Under the Parquet scores layout a shard none of whose rows the run holds
    yet is *registered*: its files are hard-linked (copied across
    filesystems) into the run's partitions, never rewritten row by row.
    """
    from psystats.scoring.runs import write_batch

    m, batch = read_shard(mpath)
    _check_against_warehouse(con, mpath, m, batch)
    added = None
    if parquet_layout.is_parquet(con):
        added = register_unit(con, run_id, mpath, m, batch)
    if added is None:  # the DuckDB layout, or a shard that overlaps rows already stored
        added = int(write_batch(con, run_id, batch))
    return m, added, batch.scores.num_rows - added


# Shard table name -> warehouse table.
SHARD_TABLES = {"scores": "scores", "options": "option_scores", "tokens": "token_scores"}


def register_unit(
    con: duckdb.DuckDBPyConnection, run_id: int, mpath: Path, m: dict, batch: ScoreBatch
) -> int | None:
    """Add a shard's files to run ``run_id``'s Parquet partitions in one transaction.

    Returns the rows added (0 when the run holds all of them already), or
    None when the files cannot be used as they are (the run holds some of
    the rows, or a file's columns are not the table's): the caller then
    writes the new rows through ``write_batch``.
    """
    from psystats.scoring.runs import SKIP_PREFIX, _merge_counts

    ids = batch.scores.select(["response_id"])
    with transaction(con):
        if scalar(con, "SELECT status FROM score_runs WHERE run_id = ?", [run_id]) is None:
            raise WarehouseError(f"score run {run_id} does not exist")
        con.register("_shard_ids", ids)
        try:
            present = int(
                scalar(
                    con,
                    "SELECT count(*) FROM _shard_ids b WHERE EXISTS (SELECT 1 FROM scores s "
                    "WHERE s.run_id = ? AND s.response_id = b.response_id)",
                    [run_id],
                )
            )
        finally:
            con.unregister("_shard_ids")
        if present == ids.num_rows:
            return 0
        files = []
        if any(name not in SHARD_TABLES for name in m["files"]):
            return None  # e.g. word scores, kept in the DuckDB file: write_batch does all
        for name, info in m["files"].items():
            table = SHARD_TABLES[name]
            part = getattr(batch, name)
            if part is None or part.column_names != parquet_layout.table_columns(con, table):
                return None
            files.append((table, mpath.parent / info["file"], int(info["rows"])))
        if present:
            return None
        for table, path, rows in files:
            if rows:
                parquet_layout.register_file(con, table, run_id, path, rows)
        add = {k: v for k, v in batch.counts.items() if not k.startswith(SKIP_PREFIX)}
        if ids.num_rows:
            _merge_counts(con, run_id, add, replace_skips=False)
    return ids.num_rows


def _start_run_for_key(
    con: duckdb.DuckDBPyConnection, key: Mapping[str, Any], settings: Mapping[str, Any]
) -> tuple[int, bool]:
    from psystats.scoring.registry import get_model
    from psystats.scoring.runs import start_run

    model = get_model(con, key["model"])
    return start_run(
        con, model, key["condition"], key["selection"], dict(settings), key["fingerprints"]
    )


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
    con: duckdb.DuckDBPyConnection,
    rdir: Path,
    *,
    on_unit: Callable[[str, int], None] | None = None,
    progress: Reporter | None = None,
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
            if progress is not None and progress.total is not None:
                progress.set_total(progress.total - unit_rows(mpath))  # never merged
            continue
        if progress is not None:
            progress.advance(added + skipped)
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


def unit_rows(mpath: Path) -> int:
    """The score rows a unit's manifest lists (0 if it cannot be read): a progress total."""
    try:
        return int(_read_json(mpath)["rows"]["scores"])
    except (ShardError, KeyError, TypeError, ValueError):
        return 0


def merge_dir(
    con: duckdb.DuckDBPyConnection,
    out: str | os.PathLike,
    *,
    on_unit: Callable[[str, int], None] | None = None,
    progress: Reporter | None = None,
) -> list[RunMerge]:
    """Merge every ``run-*`` folder under ``out`` (or ``out`` itself if it is one).

    Idempotent and restartable: rows the warehouse already holds are skipped.
    Raises ``ShardError`` listing the bad shards after merging all good ones.
    ``progress`` (``warehouse.progress``; started and closed here) counts the
    score rows of the merged shards (added or already present) out of the
    rows their manifests list.
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
    if progress is None:
        results = [merge_run_dir(con, d, on_unit=on_unit) for d in dirs]
    else:
        if not progress.quiet:
            progress.set_total(sum(unit_rows(m) for d in dirs for m in finished_units(d).values()))
        with progress:
            results = [merge_run_dir(con, d, on_unit=on_unit, progress=progress) for d in dirs]
    errors = [e for r in results for e in r.errors]
    if errors:
        err = ShardError(
            f"{len(errors)} shard(s) not merged (the others were; fix these and "
            f"run the merge again):\n  " + "\n  ".join(errors)
        )
        err.results = results  # type: ignore[attr-defined]
        raise err
    return results


def resolve_model_read_only(con: duckdb.DuckDBPyConnection, name_or_source: str) -> dict:
    """The registered model with this name or source, without writing (for ``--shard`` tasks).

    A task of a job array must not register models: N tasks would race to
    write the warehouse.  Register it once before submitting the array.
    """
    from psystats.scoring.model_files import classify_source
    from psystats.scoring.registry import get_model

    rows = con.execute(
        "SELECT name FROM models WHERE name = ? ORDER BY model_id", [name_or_source]
    ).fetchall()
    if not rows:
        # A path or hub id: look it up the way `resolve_model` does, by source.
        try:
            _, source, gguf_file = classify_source(name_or_source, None)
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
