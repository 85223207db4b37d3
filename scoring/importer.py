"""Scores from outside psystats: import an external scorer's file, export a run.

An external scorer (a cognitive model, another LM toolkit) delivers one row
per response with its negative log-likelihood.  ``import_scores`` checks every
row against the warehouse and writes a ``score_runs`` row plus the ``scores``
in ONE transaction: a file with any bad row writes nothing.

Columns of an import file (Parquet or CSV; names are case-insensitive)
----------------------------------------------------------------------
* key: ``response_id``, or the natural key ``participant`` + ``response_index``
  + ``study`` and/or ``experiment`` (both kinds given: they must agree);
* ``nll``: negative log-likelihood of the whole response (>= 0), in ``unit``;
  or ``logprob`` (<= 0), its negation;
* optional: ``n_tokens``, ``first_token_nll``, ``first_token_entropy`` (both in
  ``unit``), ``top1_all``, ``top1_first`` (booleans);
* the columns ``scores export`` adds (``run_id``, ``model``, ``condition``,
  ``scorer``, ``text``) and any others are ignored and reported.

Option scores (``--options FILE``, same run): one row per response and
option of a discrete-choice response: the same key columns, ``option`` (the
option's text, compared with the response's text after trimming) and
``logprob`` (<= 0, in ``unit``); stored in ``option_scores`` renormalised
over the response's options, for ``psystats fit accuracy``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from psystats.warehouse import staleness
from psystats.warehouse.brief import local_connection
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.hashing import file_sha256
from psystats.warehouse.outputs import table_suffix, write_batches
from psystats.warehouse.parquet_layout import write_rows
from psystats.warehouse.sql import scalar, transaction

from . import registry
from .shard_keys import COLUMNS

UNITS: dict[str, float] = {"nats": 1.0, "bits": math.log(2.0), "log10": math.log(10.0)}
NATURAL_KEY = ("study", "experiment", "participant", "response_index")
FLOATS = ("nll", "first_token_nll", "first_token_entropy")  # converted to nats
BOOLS = ("top1_all", "top1_first")
KNOWN = {"response_id", *NATURAL_KEY, "nll", "logprob", "n_tokens", *FLOATS, *BOOLS}
EXPORT_EXTRAS = {"run_id", "model", "condition", "scorer", "text"}
# Rounding in an external scorer's log-sum-exp may give -1e-12 for a certain response.
NEGATIVE_TOLERANCE = 1e-9
MAX_LISTED = 5


@dataclass
class ImportResult:
    run_id: int
    n_rows: int
    already_imported: bool = False
    model_registered: bool = False
    ignored_columns: list[str] = field(default_factory=list)
    missing_optional: list[str] = field(default_factory=list)
    n_options: int = 0  # option_scores rows written (``options`` file)
    rows_present: int = 0  # filling a run (``run``): rows it already held, skipped
    still_missing: list[str] | None = None  # filling a run: what it still lacks ([]: complete)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _version() -> str:
    from psystats.warehouse.provenance import __version__

    return __version__


# Rows per record batch while streaming a file into DuckDB: RSS stays flat in the file size.
BATCH_ROWS = 65_536
# CSV column types are inferred from the first block; a large block makes a
# column that is empty for its first rows less likely to be mistyped.
CSV_BLOCK_BYTES = 16 << 20


def _csv_reader(path: Path):
    import pyarrow.csv as pcsv

    suffix = path.suffix.lower()
    # Key and option text columns stay text: participant "007" must not become 7.
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\r\n").split("\t" if suffix == ".tsv" else ",")
    header = [h.strip().strip('"') for h in header]
    text_cols = {
        h: pa.string()
        for h in header
        if h.lower() in ("study", "experiment", "participant", "option")
    }
    return pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","),
        # "nan"/"inf" stay numbers so they are reported as not finite.
        convert_options=pcsv.ConvertOptions(
            column_types=text_cols, null_values=["", "NA", "NULL", "null"]
        ),
    )


def open_batches(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch], str]:
    """The file's schema, its rows as a stream of record batches, and how to name a
    row in messages ('line' for CSV, 'row' for Parquet).  Never the whole file in memory."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
            schema = pf.schema_arrow
        except Exception as e:  # pyarrow says precisely what is wrong with the file
            raise WarehouseError(f"{path}: cannot read Parquet ({e})") from None

        def parquet_batches() -> Iterator[pa.RecordBatch]:
            try:
                yield from pf.iter_batches(batch_size=BATCH_ROWS)
            except Exception as e:
                raise WarehouseError(f"{path}: cannot read Parquet ({e})") from None

        return schema, parquet_batches(), "row"
    if suffix in (".csv", ".tsv"):
        try:
            reader = _csv_reader(path)
        except Exception as e:
            raise WarehouseError(f"{path}: cannot read CSV ({e})") from None

        def csv_batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    # Blocks hold ~16 MB of text; slice them to the batch size.
                    for off in range(0, batch.num_rows, BATCH_ROWS):
                        yield batch.slice(off, BATCH_ROWS)
            except Exception as e:
                raise WarehouseError(f"{path}: cannot read CSV ({e})") from None

        return reader.schema, csv_batches(), "line"
    raise WarehouseError(f"{path}: expected a .parquet, .csv or .tsv file")


def read_table(path: Path) -> tuple[pa.Table, str]:
    """The whole file as one table (small files and tests; the import streams instead)."""
    schema, batches, where = open_batches(path)
    return pa.Table.from_batches(list(batches), schema=schema), where


def _stage_raw(con, path: Path, table: str = "_import_raw") -> tuple[list[str], int, str]:
    """Stream the file into the temporary table ``table`` with a ``_row`` column
    (CSV line or Parquet row number as the user sees it) and lower-case column names.

    Returns (column names, row count, 'line'/'row').  DuckDB holds the rows,
    spilling beyond its memory limit, so RSS does not grow with the file.
    """
    schema, batches, where = open_batches(path)
    lower = [c.lower() for c in schema.names]
    # Name columns case-insensitively; a name given twice is ambiguous.
    dupes = sorted({c for c in lower if lower.count(c) > 1})
    if dupes:
        raise WarehouseError(f"{path}: column(s) {', '.join(dupes)} given more than once")
    if "_row" in lower:
        raise WarehouseError(f"{path}: a column may not be named '_row'")
    # DuckDB reads no half-precision floats: widen them (exactly) to float32.
    widen = [pa.types.is_float16(t) for t in schema.types]
    types = [pa.float32() if w else t for t, w in zip(schema.types, widen)]
    out_schema = pa.schema(
        [pa.field(n, t) for n, t in zip(lower, types)] + [pa.field("_row", pa.int64())]
    )
    first = 2 if where == "line" else 1  # CSV: the header is line 1
    failure: list[WarehouseError] = []

    def numbered() -> Iterator[pa.RecordBatch]:
        nonlocal first
        try:
            for b in batches:
                rows = pa.array(range(first, first + b.num_rows), pa.int64())
                first += b.num_rows
                cols = [c.cast(pa.float32()) if w else c for c, w in zip(b.columns, widen)]
                yield pa.RecordBatch.from_arrays([*cols, rows], schema=out_schema)
        except WarehouseError as e:
            failure.append(e)  # DuckDB would wrap it in its own message
            raise

    local = local_connection(con)
    try:
        local.register("_import_stream", pa.RecordBatchReader.from_batches(out_schema, numbered()))
        local.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM _import_stream")
    except duckdb.Error as e:
        if failure:
            raise failure[0] from None
        raise WarehouseError(f"{path}: cannot read the file ({str(e).splitlines()[0]})") from None
    finally:
        local.unregister("_import_stream")
    n = int(scalar(local, f"SELECT count(*) FROM {table}"))
    return lower, n, where


def _fail(path: Path, what: str, where: str, rows: list[tuple], total: int) -> None:
    """Raise naming the file, the first offending rows/lines and the field."""
    listed = "; ".join(f"{where} {r[0]}: {r[1]}" for r in rows[:MAX_LISTED])
    more = f" (and {total - MAX_LISTED} more)" if total > MAX_LISTED else ""
    raise WarehouseError(f"{path}: {what}: {listed}{more}; nothing was imported")


def _check(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    where: str,
    what: str,
    query: str,
    params: list | None = None,
) -> None:
    """Run a query listing bad rows as (row number, message); raise if it returns any."""
    rows = con.execute(f"SELECT * FROM ({query}) ORDER BY 1 LIMIT {MAX_LISTED}", params).fetchall()
    if rows:
        total = int(scalar(con, f"SELECT count(*) FROM ({query})", params))
        _fail(path, what, where, rows, total)


def import_scores(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    *,
    model: str | None = None,
    condition: str = "imported",
    scorer: str | None = None,
    unit: str = "nats",
    post_training: str | None = None,
    force: bool = False,
    options: str | Path | None = None,
    run: int | None = None,
) -> ImportResult:
    """Import an external scorer's per-response NLLs as one complete score run.

    ``model`` is registered (source NULL, ``post_training`` or inferred from
    the name) if unknown.  The same file imported again for the same model,
    condition, scorer and unit is a no-op returning the earlier run, unless
    ``force``.  Any bad row raises a WarehouseError naming the file, the
    line/row and the field, and nothing is written.

    ``options``: a second file of option scores for the same run (one row
    per response and option: key, ``option``, ``logprob``; see
    :func:`_check_options`), written to ``option_scores`` in the same
    transaction.

    ``run``: fill the incomplete imported run ``run`` in place instead of
    making a new one (after ``ingest --replace-changed`` replaced responses it
    had scored, or ``check --repair`` set rows aside): the file's rows for
    responses the run lacks are added (rows it already holds are skipped),
    and the run is complete again once nothing is missing
    (``warehouse.staleness.close_gaps``).  Model, condition and scorer are
    the run's.
    """
    path = Path(path)
    if unit not in UNITS:
        raise WarehouseError(f"unit {unit!r}: expected one of {', '.join(UNITS)}")
    if not condition:
        raise WarehouseError("condition must not be empty")
    if not path.is_file():
        raise WarehouseError(f"{path}: no such file")
    if run is not None:
        model, condition, scorer = _fillable_run(con, run, model)
    if not model:
        raise WarehouseError("give the model the scores belong to (--model NAME)")
    scorer = scorer or model
    settings = _source_settings(path, unit, Path(options) if options is not None else None)
    if run is not None:
        _refuse_stale_source(con, path, run, settings)
    if not force and run is None:
        earlier = _imported_before(con, model, condition, scorer, settings)
        if earlier is not None:
            return earlier

    local = local_connection(con)
    try:
        cols, natural, where, lower = _read_scores_file(con, path)
        ignored = sorted(cols - KNOWN)
        missing_optional = [c for c in OPTIONAL if c not in cols]
        _validate(con, path, where, cols, natural, UNITS[unit])
        opt_path = Path(options) if options is not None else None
        n_options = _check_options(con, opt_path, unit) if opt_path is not None else 0
        if run is not None:
            added, skipped, still = _fill_run(con, path, run, settings, opt_path is not None)
            return ImportResult(
                run_id=run,
                n_rows=added,
                ignored_columns=ignored,
                missing_optional=missing_optional,
                n_options=n_options,
                rows_present=skipped,
                still_missing=still,
            )
        run_id, n_rows, registered = _write_new_run(
            con,
            path,
            {**settings, "key": "response_id" if "response_id" in cols else "natural"},
            sorted(lower),
            model=model,
            condition=condition,
            scorer=scorer,
            post_training=post_training,
            with_options=opt_path is not None,
        )
        return ImportResult(
            run_id=run_id,
            n_rows=n_rows,
            model_registered=registered,
            ignored_columns=ignored,
            missing_optional=missing_optional,
            n_options=n_options,
        )
    finally:
        for t in ("_import_raw", "_import_rows", *OPTION_TABLES):
            local.execute(f"DROP TABLE IF EXISTS {t}")


OPTIONAL = ("n_tokens", "first_token_nll", "first_token_entropy", "top1_all", "top1_first")


def _source_settings(path: Path, unit: str, options: Path | None) -> dict:
    """What a run records about the files it was imported from (hashes decide re-imports)."""
    settings = {
        "source_file": str(path.resolve()),
        "content_sha256": file_sha256(path),
        "unit": unit,
    }
    if options is not None:
        if not options.is_file():
            raise WarehouseError(f"{options}: no such file")
        settings["options_file"] = str(options.resolve())
        settings["options_sha256"] = file_sha256(options)
    return settings


def _imported_before(
    con: duckdb.DuckDBPyConnection, model: str, condition: str, scorer: str, settings: dict
) -> ImportResult | None:
    """The complete run this very file (and options file, unit) was imported as, if any."""
    for run_id, s in con.execute(
        "SELECT run_id, settings FROM score_runs WHERE model = ? AND condition = ? "
        "AND scorer = ? AND status = 'complete' ORDER BY run_id DESC",
        [model, condition, scorer],
    ).fetchall():
        s = json.loads(s or "{}")
        if (
            s.get("content_sha256") == settings["content_sha256"]
            and s.get("unit") == settings["unit"]
            and s.get("options_sha256") == settings.get("options_sha256")
        ):
            n = int(scalar(con, "SELECT count(*) FROM scores WHERE run_id = ?", [run_id]))
            return ImportResult(run_id=int(run_id), n_rows=n, already_imported=True)
    return None


def _fillable_run(
    con: duckdb.DuckDBPyConnection, run_id: int, model: str | None
) -> tuple[str, str, str]:
    """(model, condition, scorer) of the imported run ``run_id``, which must be incomplete."""
    rows = con.execute(
        "SELECT model, condition, scorer, status FROM score_runs WHERE run_id = ?", [run_id]
    ).fetchall()
    if not rows:
        raise WarehouseError(
            f'no score run {run_id}: see `psystats sql "SELECT * FROM score_runs"`'
        )
    run_model, condition, scorer, status = rows[0]
    if scorer == "psystats":
        raise WarehouseError(
            f"score run {run_id} was scored by psystats, not imported: resume it with "
            f"`psystats score --model {run_model} --condition {condition}`"
        )
    if model and model != run_model:
        raise WarehouseError(
            f"score run {run_id} holds scores of model {run_model!r}, not {model!r}: "
            "leave out --model, or give the run of that model"
        )
    if status != "incomplete":
        raise WarehouseError(
            f"score run {run_id} is {status}: --run fills an incomplete imported run "
            "(see `psystats summary`); import a new file without --run"
        )
    return str(run_model), str(condition), str(scorer)


def _refuse_stale_source(
    con: duckdb.DuckDBPyConnection, path: Path, run_id: int, settings: dict
) -> None:
    """The file a run was imported from predates the replacement that left it incomplete:
    its rows for the replaced participants score their old responses (a natural key may
    still match a new response), so it cannot fill the run."""
    old = json.loads(
        scalar(con, "SELECT settings FROM score_runs WHERE run_id = ?", [run_id]) or "{}"
    )
    replaced = scalar(
        con,
        "SELECT count(*) FROM score_run_gaps WHERE run_id = ? AND kind = 'replaced'",
        [run_id],
    )
    if replaced and old.get("content_sha256") == settings["content_sha256"]:
        raise WarehouseError(
            f"{path} is the file score run {run_id} was imported from: it scores the "
            "replaced participants' old responses; give a file with the scorer's scores "
            f"of their new responses (`psystats summary` lists them)"
        )


def _read_scores_file(
    con: duckdb.DuckDBPyConnection, path: Path
) -> tuple[set[str], list[str], str, list[str]]:
    """Stage the file as ``_import_raw``; (columns, natural-key columns, 'line'/'row',
    column names as given), after checking it has rows, an nll and a key."""
    lower, n_rows, where = _stage_raw(con, path)
    cols = set(lower)
    if n_rows == 0:
        raise WarehouseError(f"{path}: no rows")
    if "nll" not in cols and "logprob" not in cols:
        raise WarehouseError(
            f"{path}: no 'nll' column (negative log-likelihood of each response; "
            f"or 'logprob'); columns: {', '.join(lower)}"
        )
    if "nll" in cols and "logprob" in cols:
        raise WarehouseError(f"{path}: give 'nll' or 'logprob', not both")
    return cols, _key_columns(path, cols, lower), where, lower


def _key_columns(path: Path, cols: set[str], lower: list[str]) -> list[str]:
    """The natural-key columns given; refuses a file with neither key."""
    natural = [c for c in NATURAL_KEY if c in cols]
    has_natural = {"participant", "response_index"} <= cols and ({"study", "experiment"} & cols)
    if "response_id" not in cols and not has_natural:
        raise WarehouseError(
            f"{path}: no key columns: give 'response_id', or 'participant' + "
            f"'response_index' + 'study' and/or 'experiment'; columns: {', '.join(lower)}"
        )
    return natural


def _check_types(
    con: duckdb.DuckDBPyConnection, path: Path, where: str, raw: str, types: dict[str, str]
) -> None:
    """Every given value of each column converts to its type (``DOUBLE``, ``BIGINT``:
    a whole number, 3.5 is refused rather than rounded, or ``BOOLEAN``)."""
    for c, target in types.items():
        what = {"DOUBLE": "a number", "BIGINT": "a whole number"}.get(
            target, "a boolean (true/false/1/0)"
        )
        bad = f'"{c}" IS NOT NULL AND (TRY_CAST("{c}" AS {target}) IS NULL'
        if target == "BIGINT":  # 3.5 casts to BIGINT by rounding: refuse it
            bad += f' OR TRY_CAST("{c}" AS DOUBLE) <> TRY_CAST("{c}" AS BIGINT)'
        _check(
            con,
            path,
            where,
            f"field {c!r} is not {what}",
            f"SELECT _row, '{c}=' || CAST(\"{c}\" AS VARCHAR) FROM {raw} WHERE {bad})",
        )


def _check_present(
    con: duckdb.DuckDBPyConnection, path: Path, where: str, raw: str, required: list[str]
) -> None:
    """No required field is missing or blank."""
    text_cols = {
        name
        for name, dtype in con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() "
            "WHERE table_name = ? AND database_name = 'temp'",
            [raw],
        ).fetchall()
        if dtype == "VARCHAR"
    }
    for c in required:
        # Only a text value can be blank; casting numbers to text is the slow part at scale.
        blank = f" OR trim(\"{c}\") = ''" if c in text_cols else ""
        _check(
            con,
            path,
            where,
            f"field {c!r} is empty",
            f"SELECT _row, '{c} missing' FROM {raw} WHERE \"{c}\" IS NULL{blank}",
        )


def _validate(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    where: str,
    cols: set[str],
    natural: list[str],
    factor: float,
) -> None:
    """Check ``_import_raw`` row by row and build ``_import_rows`` (typed, in nats, keyed by
    response_id); the first bad rows raise naming line and field."""
    nll_src = "nll" if "nll" in cols else "logprob"
    types = {
        c: "DOUBLE" if c in FLOATS or c == "logprob" else "BIGINT"
        for c in ("response_id", "response_index", "n_tokens", nll_src, *FLOATS[1:])
        if c in cols
    }
    _check_types(
        con, path, where, "_import_raw", {**types, **{c: "BOOLEAN" for c in BOOLS if c in cols}}
    )
    keys = ["response_id"] if "response_id" in cols else natural
    _check_present(con, path, where, "_import_raw", [nll_src, *keys])
    _typed_rows(con, cols, natural, nll_src, factor)
    _check_values(con, path, where, nll_src)
    _resolve_keys(con, path, where, "_import_rows", cols, natural)
    _check(
        con,
        path,
        where,
        "the same response appears more than once",
        # The repeated ids first: listing rows for every id would cost seconds per million.
        f"SELECT min(_row), 'response_id=' || CAST(response_id AS VARCHAR) || ' at {where}s ' || "
        "string_agg(CAST(_row AS VARCHAR), ', ' ORDER BY _row) FROM _import_rows "
        "WHERE response_id IN (SELECT response_id FROM _import_rows GROUP BY response_id "
        "HAVING count(*) > 1) GROUP BY response_id",
    )


def _typed_rows(
    con: duckdb.DuckDBPyConnection, cols: set[str], natural: list[str], nll_src: str, factor: float
) -> None:
    """``_import_rows``: the raw rows typed, every NLL in nats."""

    def num(c: str, scale: bool) -> str:
        if c not in cols:
            return f"NULL::DOUBLE AS {c}"
        return f'CAST("{c}" AS DOUBLE){" * " + repr(factor) if scale else ""} AS {c}'

    nll_expr = (
        f"CAST(nll AS DOUBLE) * {factor!r}"
        if nll_src == "nll"
        else f"-CAST(logprob AS DOUBLE) * {factor!r}"
    )
    select = [
        "_row",
        *_key_select(cols, natural),
        f"{nll_expr} AS nll",
        f'CAST("{nll_src}" AS DOUBLE) AS nll_given',
        "CAST(n_tokens AS BIGINT) AS n_tokens"
        if "n_tokens" in cols
        else "NULL::BIGINT AS n_tokens",
        num("first_token_nll", True),
        num("first_token_entropy", True),
        *[
            f'CAST("{c}" AS BOOLEAN) AS {c}' if c in cols else f"NULL::BOOLEAN AS {c}"
            for c in BOOLS
        ],
    ]
    local_connection(con).execute(
        f"CREATE OR REPLACE TEMP TABLE _import_rows AS SELECT {', '.join(select)} FROM _import_raw"
    )


def _key_select(cols: set[str], natural: list[str]) -> list[str]:
    """The key columns of a typed staging table (response_id NULL until resolved)."""
    return [
        "CAST(response_id AS BIGINT) AS response_id"
        if "response_id" in cols
        else "NULL::BIGINT AS response_id",
        *[
            "CAST(response_index AS BIGINT) AS response_index"
            if c == "response_index"
            else f'CAST("{c}" AS VARCHAR) AS {c}'
            for c in natural
        ],
    ]


def _check_values(con: duckdb.DuckDBPyConnection, path: Path, where: str, nll_src: str) -> None:
    """Finite values with the right sign; n_tokens fits scores.n_tokens."""
    for c in ("nll", "first_token_nll", "first_token_entropy"):
        given = "nll_given" if c == "nll" else c
        name = nll_src if c == "nll" else c
        _check(
            con,
            path,
            where,
            f"field {name!r} is not finite",
            f"SELECT _row, '{c}=' || CAST({given} AS VARCHAR) FROM _import_rows "
            f"WHERE {c} IS NOT NULL AND NOT isfinite({c})",
        )
        sign = (
            "is positive: a log-probability is <= 0"
            if c == "nll" and nll_src == "logprob"
            else "is negative: give the NEGATIVE log-likelihood (>= 0)"
            if c != "first_token_entropy"
            else "is negative: an entropy is >= 0"
        )
        _check(
            con,
            path,
            where,
            f"field {name!r} {sign}",
            f"SELECT _row, '{name}=' || CAST({given} AS VARCHAR) "
            f"FROM _import_rows WHERE {c} < -{NEGATIVE_TOLERANCE}",
        )
    _check(
        con,
        path,
        where,
        "field 'n_tokens' is negative",
        "SELECT _row, 'n_tokens=' || CAST(n_tokens AS VARCHAR) FROM _import_rows WHERE n_tokens < 0",
    )
    # scores.n_tokens is a 32-bit INTEGER: no response has 2^31 tokens.
    _check(
        con,
        path,
        where,
        "field 'n_tokens' is too large (at most 2147483647)",
        "SELECT _row, 'n_tokens=' || CAST(n_tokens AS VARCHAR) FROM _import_rows "
        "WHERE n_tokens > 2147483647",
    )


def _resolve_keys(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    where: str,
    table: str,
    cols: set[str],
    natural: list[str],
) -> None:
    """Every row of the staged ``table`` is exactly one response of the warehouse: by
    ``response_id`` (a natural key also given must describe the same response), or by the
    natural key, which then fills ``response_id``.  For scores and option scores alike."""
    if "response_id" in cols:
        _check(
            con,
            path,
            where,
            "response_id not in the warehouse",
            f"SELECT i._row, 'response_id=' || CAST(i.response_id AS VARCHAR) FROM {table} i "
            "ANTI JOIN responses r ON r.response_id = i.response_id",
        )
        for c in natural:
            _check(
                con,
                path,
                where,
                f"field {c!r} disagrees with the warehouse for that response_id",
                f"SELECT i._row, 'response_id=' || CAST(i.response_id AS VARCHAR) || ' has {c}=' "
                f"|| CAST(r.{c} AS VARCHAR) || ' in the warehouse, file says ' || "
                f"CAST(i.{c} AS VARCHAR) FROM {table} i JOIN responses r "
                f"ON r.response_id = i.response_id WHERE r.{c} IS DISTINCT FROM i.{c}",
            )
        return
    on = " AND ".join(f"r.{c} = i.{c}" for c in natural)
    described = " || ', ' || ".join(f"'{c}=' || CAST(i.{c} AS VARCHAR)" for c in natural)
    _check(
        con,
        path,
        where,
        "no such response in the warehouse",
        f"SELECT i._row, {described} FROM {table} i ANTI JOIN responses r ON {on}",
    )
    _check(
        con,
        path,
        where,
        "key matches several responses (add the 'experiment' column)",
        f"SELECT i._row, {described} || ' matches ' || CAST(count(*) AS VARCHAR) FROM "
        f"{table} i JOIN responses r ON {on} GROUP BY i._row, "
        f"{', '.join(f'i.{c}' for c in natural)} HAVING count(*) > 1",
    )
    con.execute(f"UPDATE {table} i SET response_id = r.response_id FROM responses r WHERE {on}")


def _selection(con: duckdb.DuckDBPyConnection) -> tuple[dict, int]:
    """The studies and experiments ``_import_rows`` covers, and its participant count."""
    selection = {
        key: [
            v
            for (v,) in con.execute(
                f"SELECT DISTINCT r.{c} FROM _import_rows i JOIN responses r USING (response_id) "
                "ORDER BY 1"
            ).fetchall()
        ]
        for key, c in (("studies", "study"), ("experiments", "experiment"))
    }
    n_participants = int(
        scalar(
            con,
            "SELECT count(DISTINCT r.participant_key) FROM _import_rows i "
            "JOIN responses r USING (response_id)",
        )
    )
    return selection, n_participants


def _recheck_keys(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Inside the writing transaction: the checks ran without holding the file (a
    per-statement connection), so a concurrent ingest may have replaced responses since."""
    gone = int(
        scalar(con, "SELECT count(*) FROM _import_rows i ANTI JOIN responses r USING (response_id)")
    )
    if gone:
        raise WarehouseError(
            f"{path}: {gone} of its responses left the warehouse while it was being "
            "checked (a concurrent ingest?); nothing was imported: run the import again"
        )


def _write_new_run(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    settings: dict,
    columns: list[str],
    *,
    model: str,
    condition: str,
    scorer: str,
    post_training: str | None,
    with_options: bool,
) -> tuple[int, int, bool]:
    """Model (if new), run and its rows in one transaction: (run id, rows, model registered)."""
    n_rows = int(scalar(con, "SELECT count(*) FROM _import_rows"))
    selection, n_participants = _selection(con)
    registered = False
    with transaction(con):
        _recheck_keys(con, path)
        if not scalar(con, "SELECT count(*) FROM models WHERE name = ?", [model]):
            registry.register(
                con,
                None,
                name=model,
                base=None,
                post_training=post_training,
                gguf_file=None,
                revision=None,
                trust_remote_code=False,
                overrides=None,
            )
            registered = True
        run_id = int(scalar(con, "SELECT nextval('run_id_seq')"))
        now = _now()
        con.execute(
            "INSERT INTO score_runs (run_id, model, condition, scorer, selection, settings, "
            "psystats_version, started_at, finished_at, status, n_participants, n_responses, "
            "n_skipped, counts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'complete', ?, ?, 0, ?)",
            [
                run_id,
                model,
                condition,
                scorer,
                json.dumps(selection, sort_keys=True),
                json.dumps({**settings, "columns": columns}, sort_keys=True),
                _version(),
                now,
                now,
                n_participants,
                n_rows,
                json.dumps({"imported_rows": n_rows}),
            ],
        )
        _write_rows(con, run_id, "_import_rows", "_import_opts" if with_options else None)
    return run_id, n_rows, registered


def _write_rows(
    con: duckdb.DuckDBPyConnection, run_id: int, rows: str, options: str | None
) -> None:
    # The one writer of score rows (an INSERT, or a Parquet file of the run's partition).
    # Columns as a shard holds them: the table's, minus run_id.
    write_rows(con, "scores", run_id, rows, list(COLUMNS["scores"]), order_by="response_id")
    if options is not None:
        write_rows(
            con,
            "option_scores",
            run_id,
            options,
            list(COLUMNS["options"]),
            order_by="response_id, option",
        )


def _fill_run(
    con: duckdb.DuckDBPyConnection, path: Path, run_id: int, settings: dict, with_options: bool
) -> tuple[int, int, list[str]]:
    """Add the rows of ``_import_rows`` the run lacks, in one transaction; (rows added,
    rows it already held, what it still lacks)."""
    local = local_connection(con)
    with transaction(con):
        _recheck_keys(con, path)
        local.execute(
            "CREATE OR REPLACE TEMP TABLE _import_fill AS SELECT * FROM _import_rows "
            "WHERE response_id NOT IN (SELECT response_id FROM scores WHERE run_id = ?)",
            [run_id],
        )
        added = int(scalar(con, "SELECT count(*) FROM _import_fill"))
        present = int(scalar(con, "SELECT count(*) FROM _import_rows")) - added
        if with_options:
            local.execute(
                "CREATE OR REPLACE TEMP TABLE _import_fill_opts AS SELECT * FROM _import_opts "
                "WHERE response_id IN (SELECT response_id FROM _import_fill)"
            )
        if added:
            _write_rows(con, run_id, "_import_fill", "_import_fill_opts" if with_options else None)
        old = json.loads(
            scalar(con, "SELECT settings FROM score_runs WHERE run_id = ?", [run_id]) or "{}"
        )
        filled = [*old.get("filled_from", []), {**settings, "rows_added": added}]
        con.execute(
            "UPDATE score_runs SET settings = ? WHERE run_id = ?",
            [json.dumps({**old, "filled_from": filled}, sort_keys=True), run_id],
        )
    # After the commit: new Parquet files are visible only then.  Should this step be
    # interrupted, the rows are in and the next `--run` import completes the run.
    with transaction(con):
        still = staleness.close_gaps(con, run_id)
    for t in ("_import_fill", "_import_fill_opts"):
        local.execute(f"DROP TABLE IF EXISTS {t}")
    return added, present, still


# --------------------------------------------------------------------------- option scores

OPTION_TABLES = ("_import_opt_raw", "_import_opts_typed", "_import_opts")
# exp(sum) of a response's option probabilities may exceed 1 by rounding only.
OPTION_SUM_TOLERANCE = 1e-6


def _check_options(con, path: Path, unit: str) -> int:
    """Stream, check and normalise an option-scores file into the temp table ``_import_opts``
    (``response_id, option, logprob``); returns its row count.

    One row per (response, option): a key (``response_id``, or the natural
    key, as in the scores file), ``option`` (the option's text) and
    ``logprob`` (its log-probability, <= 0, in ``unit``).  Every response
    must also be in the scores file, each option at most once per response,
    and a response's option probabilities may not sum to more than 1.  They
    are stored renormalised over the response's options (as ``psystats
    score`` stores them).  Any bad row raises naming the file, line and
    field.  Called after the scores file is in ``_import_rows``.
    """
    factor = UNITS[unit]
    lower, n, where = _stage_raw(con, path, "_import_opt_raw")
    cols = set(lower)
    if n == 0:
        raise WarehouseError(f"{path}: no rows")
    if not {"option", "logprob"} <= cols:
        raise WarehouseError(
            f"{path}: an option-scores file needs the columns 'option' (the option's text) and "
            f"'logprob' (its log-probability, <= 0) and a key; columns: {', '.join(lower)}"
        )
    natural = _key_columns(path, cols, lower)
    raw = "_import_opt_raw"
    types: dict[str, str] = {
        c: "DOUBLE" if c == "logprob" else "BIGINT"
        for c in ("response_id", "response_index", "logprob")
        if c in cols
    }
    _check_types(con, path, where, raw, types)
    keys = ["response_id"] if "response_id" in cols else natural
    _check_present(con, path, where, raw, ["option", "logprob", *keys])
    select = [
        "_row",
        *_key_select(cols, natural),
        "CAST(option AS VARCHAR) AS option",
        f"CAST(logprob AS DOUBLE) * {factor!r} AS logprob",
        "CAST(logprob AS DOUBLE) AS logprob_given",
    ]
    local = local_connection(con)
    local.execute(
        f"CREATE OR REPLACE TEMP TABLE _import_opts_typed AS SELECT {', '.join(select)} FROM {raw}"
    )
    typed = "_import_opts_typed"
    _check(
        con,
        path,
        where,
        "field 'logprob' is not finite",
        f"SELECT _row, 'logprob=' || CAST(logprob_given AS VARCHAR) FROM {typed} "
        "WHERE NOT isfinite(logprob)",
    )
    _check(
        con,
        path,
        where,
        "field 'logprob' is positive: a log-probability is <= 0",
        f"SELECT _row, 'logprob=' || CAST(logprob_given AS VARCHAR) FROM {typed} "
        f"WHERE logprob > {NEGATIVE_TOLERANCE}",
    )
    _resolve_keys(con, path, where, typed, cols, natural)
    _check_option_sets(con, path, where, typed)
    return int(scalar(con, "SELECT count(*) FROM _import_opts"))


def _check_option_sets(con, path: Path, where: str, typed: str) -> None:
    """Each response's options: in the scores file, each once, renormalised into
    ``_import_opts`` when their probabilities do not sum to more than 1."""
    _check(
        con,
        path,
        where,
        "response not in the scores file (option scores belong to its responses)",
        f"SELECT i._row, 'response_id=' || CAST(i.response_id AS VARCHAR) FROM {typed} i "
        "ANTI JOIN _import_rows s USING (response_id)",
    )
    _check(
        con,
        path,
        where,
        "the same option of a response appears more than once",
        f"SELECT min(_row), 'response_id=' || CAST(response_id AS VARCHAR) || ', option=' || "
        f"option || ' at {where}s ' || string_agg(CAST(_row AS VARCHAR), ', ' ORDER BY _row) "
        f"FROM {typed} GROUP BY response_id, option HAVING count(*) > 1",
    )
    # log-sum-exp per response, stable: max + log(sum(exp(lp - max))).
    local_connection(con).execute(
        f"""CREATE OR REPLACE TEMP TABLE _import_opts AS
        WITH m AS (SELECT response_id, max(logprob) AS mx FROM {typed} GROUP BY response_id),
        z AS (
            SELECT t.response_id, m.mx + ln(sum(exp(t.logprob - m.mx))) AS lse, min(t._row) AS _row
            FROM {typed} t JOIN m USING (response_id) GROUP BY t.response_id, m.mx
        )
        SELECT t._row, t.response_id, t.option, t.logprob - z.lse AS logprob, z.lse
        FROM {typed} t JOIN z USING (response_id)"""
    )
    _check(
        con,
        path,
        where,
        "field 'logprob': a response's option probabilities sum to more than 1",
        "SELECT min(_row), 'response_id=' || CAST(response_id AS VARCHAR) || ' sums to ' || "
        "CAST(round(exp(any_value(lse)), 6) AS VARCHAR) FROM _import_opts "
        f"GROUP BY response_id HAVING any_value(lse) > {OPTION_SUM_TOLERANCE}",
    )


# --------------------------------------------------------------------------- export

EXPORT_QUERY = """
SELECT s.run_id, sr.model, sr.condition, sr.scorer, s.response_id, r.study, r.experiment,
       r.participant, r.response_index, s.nll, s.n_tokens, s.first_token_nll, s.top1_all,
       s.top1_first, s.first_token_entropy
FROM scores s
JOIN score_runs sr USING (run_id)
JOIN responses r USING (response_id)
WHERE s.run_id IN ({runs})
ORDER BY s.run_id, s.response_id
"""


def export_runs(
    con: duckdb.DuckDBPyConnection,
    *,
    run_id: int | None = None,
    model: str | None = None,
    condition: str | None = None,
) -> list[int]:
    """The runs ``scores export`` writes: the given run, or the newest complete run of
    the model per condition (one condition with ``condition``)."""
    if (run_id is None) == (model is None):
        raise WarehouseError("give exactly one of --run or --model")
    if run_id is not None:
        if not scalar(con, "SELECT count(*) FROM score_runs WHERE run_id = ?", [run_id]):
            raise WarehouseError(
                f'no score run {run_id}: see `psystats sql "SELECT * FROM score_runs"`'
            )
        return [run_id]
    assert model is not None  # exactly one of run_id and model was given
    registry.get_model(con, model)
    params: list = [model]
    extra = ""
    if condition:
        extra, params = " AND condition = ?", [model, condition]
    runs = [
        r
        for (r,) in con.execute(
            f"SELECT max(run_id) FROM score_runs WHERE model = ? AND status = 'complete'{extra} "
            f"GROUP BY condition ORDER BY 1",
            params,
        ).fetchall()
    ]
    if not runs:
        raise WarehouseError(
            f"model {model!r} has no complete score run"
            + (f" under condition {condition!r}" if condition else "")
        )
    return runs


def export_scores(
    con: duckdb.DuckDBPyConnection,
    out: str | Path,
    *,
    run_id: int | None = None,
    model: str | None = None,
    condition: str | None = None,
) -> tuple[list[int], int]:
    """Write scores joined with their natural keys to ``out`` (.parquet or .csv).

    Returns (run ids written, row count).  The file imports back unchanged
    with ``import_scores`` (its run/model columns are ignored there).
    """
    out = Path(out)
    suffix = table_suffix(out)
    runs = export_runs(con, run_id=run_id, model=model, condition=condition)
    # Record batches straight from DuckDB to the writer: RSS does not grow with the run.
    reader = con.sql(
        EXPORT_QUERY.format(runs=", ".join("?" * len(runs))), params=runs
    ).to_arrow_reader(BATCH_ROWS)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        n = write_batches(reader, tmp, suffix)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)  # never leave a half-written file under the final name
    return runs, n
