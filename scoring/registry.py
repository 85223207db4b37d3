"""The model registry's storage: the ``models`` table, read and written.

A row in ``models`` says where the weights are (hub id, local safetensors
folder or GGUF file; NULL for external scorers and baselines), the family and
generation, the parameter count (counted from the weights), the
post-training type and the base model it descends from.  Everything that was
guessed is recorded in ``models.inferred`` as ``{field: {"value": ...,
"from": "why"}}`` so a reader can see (and ``psystats models set`` can
correct) each guess.

The jobs around it live in their own modules: what the files hold
(``scoring.model_files``, ``scoring.hub``), what a model is
(``scoring.model_facts``, ``scoring.naming``, ``scoring.release_dates``),
which fields a user may set (``scoring.model_fields``), adapters on a
registered base (``scoring.adapter_models``) and models files
(``scoring.registry_file``).

Sources
-------
* hub id ``owner/name``: ``source`` is the id; config and parameter count come
  from the local Hugging Face cache, else from the hub's safetensors headers
  when the network is reachable, else they stay NULL and ``inferred`` says so.
* local folder: ``source`` is its absolute path; it must hold safetensors
  (psystats never loads pickle checkpoints) or a ``.gguf`` file.
* local ``.gguf`` file: ``source`` is its folder and ``gguf_file`` its file
  name, exactly the two arguments ``transformers`` takes
  (``from_pretrained(source, gguf_file=gguf_file)``).
* ``baseline:uniform``, ``baseline:frequency``: psystats' baseline scorers
  (``scoring.baselines``), no source, type ``baseline``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import duckdb

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.parquet_layout import delete_runs
from psystats.warehouse.schema import MODEL_FACTS
from psystats.warehouse.sql import scalar, transaction
from psystats.warehouse.validators import did_you_mean

from . import naming
from .model_facts import describe
from .model_fields import USER, coerce, field_name
from .model_files import classify_source
from .release_dates import release_date_for

P = ParamSpec("P")
R = TypeVar("R")

COLUMNS = (
    "model_id",
    "name",
    "source",
    "revision",
    "gguf_file",
    "tokenizer_source",
    *MODEL_FACTS,
    "trust_remote_code",
    "inferred",
    "created_at",
    "adapter",
    "adapter_revision",
    "adapter_sha256",
    "quantization",
    "pipeline_check",
    "release_date",
)
_INSERTED = tuple(c for c in COLUMNS if c not in ("model_id", "created_at"))  # set by DuckDB


# --------------------------------------------------------------------------- reading


def row_by_name(con: duckdb.DuckDBPyConnection, name: str) -> dict | None:
    """The ``models`` row called ``name`` (``inferred`` parsed), or None."""
    rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM models WHERE name = ?", [name]).fetchall()
    if not rows:
        return None
    row = dict(zip(COLUMNS, rows[0]))
    row["inferred"] = json.loads(row["inferred"]) if row["inferred"] else {}
    return row


def name_by_source(
    con: duckdb.DuckDBPyConnection,
    source: str,
    gguf_file: str | None,
    revision: str | None = None,
) -> str | None:
    """The first registered model (not an adapter) with these weights; ``revision`` when given."""
    sql = (
        "SELECT name FROM models WHERE source = ? AND coalesce(gguf_file, '') = ? "
        "AND adapter IS NULL"
    )
    params: list[Any] = [source, gguf_file or ""]
    if revision is not None:
        sql += " AND coalesce(revision, '') = ?"
        params.append(revision)
    rows = con.execute(sql + " ORDER BY model_id", params).fetchall()
    return rows[0][0] if rows else None


def list_models(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every registered model as a dict, by family, generation, size and name."""
    names = con.execute(
        "SELECT name FROM models ORDER BY family NULLS LAST, generation_order NULLS LAST, "
        "n_params NULLS LAST, name"
    ).fetchall()
    return [get_model(con, n) for (n,) in names]


def get_model(con: duckdb.DuckDBPyConnection, name: str) -> dict:
    """The ``models`` row called ``name`` (``inferred`` parsed), or a WarehouseError saying how to add it."""
    row = row_by_name(con, name)
    if row is not None:
        return row
    if name in naming.BASELINES:
        raise WarehouseError(
            f"model {name!r} is not registered: `psystats models add {name}` registers "
            "the baseline scorer"
        )
    known = [n for (n,) in con.execute("SELECT name FROM models").fetchall()]
    hint = did_you_mean(name, known)
    if hint:
        raise WarehouseError(f"model {name!r} is not registered{hint}")
    raise WarehouseError(
        f"model {name!r} is not registered: `psystats models add SOURCE --name {name}` "
        "registers it (SOURCE: a hub id, model folder or .gguf file); "
        "`psystats models list` shows what is"
    )


def find_model(con: duckdb.DuckDBPyConnection, name_or_source: str) -> dict | None:
    """The registered model with this name, else the one with this source; never writes."""
    row = row_by_name(con, name_or_source)
    if row is not None:
        return row
    try:
        _, source, gguf_file = classify_source(name_or_source, None)
    except WarehouseError:
        return None
    name = name_by_source(con, source, gguf_file)
    return get_model(con, name) if name else None


def resolve_model(con: duckdb.DuckDBPyConnection, name_or_source: str, **add_kwargs: Any) -> dict:
    """The registered model with this name or source; registers it first if it is a new path,
    hub id or baseline."""
    row = row_by_name(con, name_or_source)
    if row is not None:
        return row
    is_new_kind = (
        "/" in name_or_source
        or name_or_source in naming.BASELINES
        or Path(name_or_source).expanduser().exists()
    )
    if not is_new_kind:
        get_model(con, name_or_source)  # a bare name is a typo more often than a legacy hub id
    row = find_model(con, name_or_source)
    return row if row is not None else add_model(con, name_or_source, **add_kwargs)


# --------------------------------------------------------------------------- writing rows


def insert_row(con: duckdb.DuckDBPyConnection, row: dict, trust_remote_code: bool) -> None:
    """Insert a new ``models`` row (``row`` as :func:`scoring.model_facts.describe` builds it)."""
    values = {**{c: row.get(c) for c in _INSERTED}, "trust_remote_code": trust_remote_code}
    values["inferred"] = json.dumps(row["inferred"], default=str)
    con.execute(
        f"INSERT INTO models (model_id, {', '.join(_INSERTED)}) VALUES "
        f"(nextval('model_id_seq'), {', '.join('?' for _ in _INSERTED)})",
        [values[c] for c in _INSERTED],
    )


def update_row(con: duckdb.DuckDBPyConnection, name: str, values: dict, inferred: dict) -> None:
    """Set ``values`` (columns) and ``inferred`` of model ``name``."""
    cols = list(values)
    con.execute(
        f"UPDATE models SET {', '.join(f'{c} = ?' for c in cols)}, inferred = ? WHERE name = ?",
        [values[c] for c in cols] + [json.dumps(inferred, default=str), name],
    )


def weights_name(row: dict) -> str:
    """The name the weights came with (GGUF file, hub id or folder), else the model's name."""
    return str(row.get("gguf_file") or row.get("source") or row["name"])


def _table_date(row: dict, values: dict[str, Any]) -> tuple[Any, str] | None:
    """The table's release date after ``values`` change family or generation (a user's date stays)."""
    if (
        ("generation" in values or "family" in values)
        and "release_date" not in values
        and row["inferred"].get("release_date", {}).get("from") != USER
    ):
        return release_date_for(
            weights_name(row),
            values.get("family", row["family"]),
            values.get("generation", row["generation"]),
        )
    return None


def apply_fields(
    con: duckdb.DuckDBPyConnection, name: str, fields: dict[str, Any], how: str, where: str = ""
) -> dict:
    """Set user-given fields on a registered model (inside the caller's transaction)."""
    row = get_model(con, name)
    values = {field_name(k): coerce(k, raw, where) for k, raw in fields.items()}
    if values.get("base_model") is not None:
        values["base_model"] = resolve_base(con, values["base_model"])
        if values["base_model"] == name:
            raise WarehouseError(f"{where + ': ' if where else ''}a model cannot be its own base")
    if "generation" in values and "generation_order" not in values:
        values["generation_order"] = naming.generation_order(values["generation"])
    table = _table_date(row, values)
    if table is not None:
        values["release_date"] = table[0]
    inferred = row["inferred"]
    for field, value in values.items():
        inferred[field] = {"value": value, "from": how}
        if field == "base_model":
            inferred[field]["candidate"] = row["inferred"].get("base_model", {}).get("candidate")
    if "generation" in values and "generation_order" not in fields:
        inferred["generation_order"]["from"] = "generation"
    if table is not None:
        inferred["release_date"]["from"] = table[1]
    update_row(con, name, values, inferred)
    return get_model(con, name)


def resolve_base(con: duckdb.DuckDBPyConnection, base: str) -> str:
    """A --base value as a models.name: a registered name, the name of the model with that source, or as given."""
    if scalar(con, "SELECT count(*) FROM models WHERE name = ?", [base]):
        return base
    try:
        _, source, gguf_file = classify_source(base, None)
    except WarehouseError:
        return base
    return name_by_source(con, source, gguf_file) or base


def fill_release_dates(con: duckdb.DuckDBPyConnection) -> int:
    """Fill ``release_date`` from the registry's table where it is NULL; returns how many.

    Models registered before the column existed (or before the table knew
    their generation) get their date on the next registry write.  A date the
    user cleared (``release_date=null``) stays NULL.
    """
    rows = con.execute(
        "SELECT name, source, gguf_file, family, generation, inferred FROM models "
        "WHERE release_date IS NULL AND family IS NOT NULL"
    ).fetchall()
    changed = 0
    for name, source, gguf_file, family, generation, inferred_json in rows:
        inferred = json.loads(inferred_json) if inferred_json else {}
        if inferred.get("release_date", {}).get("from") == USER:
            continue
        day, why = release_date_for(
            weights_name({"name": name, "source": source, "gguf_file": gguf_file}),
            family,
            generation,
        )
        if day is None:
            continue
        inferred["release_date"] = {"value": day, "from": why}
        update_row(con, name, {"release_date": day}, inferred)
        changed += 1
    return changed


def _base_for(
    name: str, family: str, generation: str | None, inferred: dict, bases: list[tuple]
) -> tuple[str | None, str | None]:
    """(base, why) for a post-trained model: the family rule's candidate, else the one
    registered base of the same family, generation and size label."""
    candidate = inferred.get("base_model", {}).get("candidate")
    if candidate in {b[0] for b in bases}:
        return candidate, f"family naming rule -> {candidate}"
    size = inferred.get("size_label")
    same = [
        b
        for b, fam, gen, inf in bases
        if size
        and generation
        and fam == family
        and gen == generation
        and json.loads(inf or "{}").get("size_label") == size
    ]
    if len(same) == 1:
        return same[0], f"the only registered {family} {generation} {size} base model"
    return None, None


def link_bases(con: duckdb.DuckDBPyConnection) -> int:
    """Fill ``base_model`` for post-trained models whose base is now registered.

    The base is the model named by the family rule (``inferred.base_model.candidate``),
    else the one registered base model of the same family, generation and size
    label.  A base set by a user is never changed.  Returns how many rows changed.
    """
    rows = con.execute(
        "SELECT name, family, generation, inferred FROM models "
        "WHERE base_model IS NULL AND post_training NOT IN ('base', ?)",
        [naming.BASELINE_TYPE],
    ).fetchall()
    bases = con.execute(
        "SELECT name, family, generation, inferred FROM models WHERE post_training = 'base'"
    ).fetchall()
    changed = 0
    for name, family, generation, inferred_json in rows:
        inferred = json.loads(inferred_json) if inferred_json else {}
        if inferred.get("base_model", {}).get("from") == USER:
            continue  # the user said "no base"
        base, why = _base_for(name, family, generation, inferred, bases)
        if base and base != name:
            candidate = inferred.get("base_model", {}).get("candidate")
            inferred["base_model"] = {"value": base, "candidate": candidate, "from": why}
            update_row(con, name, {"base_model": base}, inferred)
            changed += 1
    return changed


# --------------------------------------------------------------------------- registering


def explicit_fields(overrides: dict | None, base: str | None, post_training: str | None) -> dict:
    """The fields a user gave (overrides, --base, --type), unvalidated."""
    explicit: dict[str, Any] = dict(overrides or {})
    if base is not None:
        explicit["base_model"] = base
    if post_training is not None:
        explicit["post_training"] = post_training
    return explicit


def _update_registered(
    con: duckdb.DuckDBPyConnection,
    existing: dict,
    source: str | None,
    gguf_file: str | None,
    revision: str | None,
    explicit: dict[str, Any],
    how: str,
) -> dict:
    """Registering a registered name again: the same weights, only the fields given change."""
    name = existing["name"]
    if source is not None:
        _, src, gg = classify_source(source, gguf_file)
        if (src, gg or None) != (existing["source"], existing["gguf_file"]) or (
            revision is not None and revision != existing["revision"]
        ):
            raise WarehouseError(
                f"model {name!r} is already registered with source {existing['source']!r}"
                f"{' (' + existing['gguf_file'] + ')' if existing['gguf_file'] else ''}"
                f"{' at revision ' + existing['revision'] if existing['revision'] else ''}; "
                f"choose another --name or `psystats models remove {name}` first"
            )
    changed = {k: v for k, v in explicit.items() if existing.get(field_name(k)) != coerce(k, v)}
    if changed:
        apply_fields(con, name, changed, how)
    link_bases(con)
    return get_model(con, name)


def _apply_explicit(con: duckdb.DuckDBPyConnection, row: dict, explicit: dict, how: str) -> None:
    """Put the user's fields into a new row (and the table's date for the user's generation)."""
    for key, raw in explicit.items():
        field = field_name(key)
        value = coerce(field, raw)
        if field == "base_model" and value is not None:
            value = resolve_base(con, value)
        row[field] = value
        row["inferred"][field] = {"value": value, "from": how}
        if field == "generation" and "generation_order" not in explicit:
            row["generation_order"] = naming.generation_order(value)
            row["inferred"]["generation_order"] = {
                "value": row["generation_order"],
                "from": "generation",
            }
    given = {field_name(k) for k in explicit}
    if given & {"family", "generation"} and "release_date" not in given:
        # The user's family/generation, not the name's, decides the table's date.
        day, why = release_date_for(weights_name(row), row["family"], row["generation"])
        row["release_date"] = day
        row["inferred"]["release_date"] = {"value": day, "from": why}


def in_one_transaction(
    register_fn: Callable[Concatenate[duckdb.DuckDBPyConnection, P], R],
) -> Callable[Concatenate[duckdb.DuckDBPyConnection, P], R]:
    """``register_fn`` (:func:`register`, ``register_adapter``) as a unit of work of its own:
    one transaction, release dates filled first (rows registered before the table knew
    their date)."""

    @functools.wraps(register_fn)
    def unit(con: duckdb.DuckDBPyConnection, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with transaction(con):
            fill_release_dates(con)
            return register_fn(con, *args, **kwargs)

    return unit


def register(
    con: duckdb.DuckDBPyConnection,
    source: str | None,
    *,
    name: str | None = None,
    base: str | None = None,
    post_training: str | None = None,
    gguf_file: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    overrides: dict | None = None,
    how: str = USER,
) -> dict:
    """Register a model (idempotently) and return its row, in the caller's transaction
    (``models load`` and the importer batch several); :func:`add_model` is this in a
    transaction of its own.

    ``source`` is a hub id, a local safetensors folder, a local ``.gguf`` file
    (stored as ``source`` = folder, ``gguf_file`` = file name), a baseline
    (``baseline:uniform``, ``baseline:frequency``) or None for an external
    scorer (then ``name`` is required).  Family, generation, post-training
    type and parameter count are inferred; ``base``, ``post_training`` and
    ``overrides`` (any editable field) win over inference.  Registering the
    same name and source again changes only the fields given explicitly; the
    same name with another source is an error.  Adapters on a base:
    :func:`scoring.adapter_models.add_adapter`.
    """
    if source is not None and source.startswith("baseline:") and source not in naming.BASELINES:
        raise WarehouseError(f"no baseline {source!r}; psystats has {', '.join(naming.BASELINES)}")
    if source in naming.BASELINES:
        if name not in (None, source):
            raise WarehouseError(f"{source}: a baseline is registered under its own name only")
        source, name = None, source
    explicit = explicit_fields(overrides, base, post_training)
    if name is None and source is not None:
        # Registered before under its default name: don't read the weights again.
        _, src, gg = classify_source(source, gguf_file)
        name = name_by_source(con, src, gg, revision or "")
    existing = row_by_name(con, name) if name is not None else None
    if existing is not None:
        if trust_remote_code and not existing["trust_remote_code"]:
            explicit["trust_remote_code"] = True
        return _update_registered(con, existing, source, gguf_file, revision, explicit, how)
    row = describe(source, name=name, gguf_file=gguf_file, revision=revision)
    if row_by_name(con, row["name"]) is not None:
        # Same default name (e.g. the hub id) registered before: idempotent.
        return register(
            con,
            source,
            name=row["name"],
            base=base,
            post_training=post_training,
            gguf_file=gguf_file,
            revision=revision,
            trust_remote_code=trust_remote_code,
            overrides=overrides,
            how=how,
        )
    _apply_explicit(con, row, explicit, how)
    if row["base_model"] is not None and row["base_model"] == row["name"]:
        raise WarehouseError("a model cannot be its own base")
    insert_row(con, row, bool(row.get("trust_remote_code") or trust_remote_code))
    link_bases(con)
    return get_model(con, row["name"])


add_model = in_one_transaction(register)


def set_fields(con: duckdb.DuckDBPyConnection, name: str, fields: dict[str, Any]) -> dict:
    """Override fields of a registered model (``psystats models set``); returns the new row."""
    if not fields:
        raise WarehouseError("nothing to set: give field=value pairs")
    with transaction(con):
        fill_release_dates(con)
        row = apply_fields(con, name, fields, USER)
        link_bases(con)
    return get_model(con, row["name"])


def _unlink_from(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Undo inferred links to the removed base ``name`` (re-adding it relinks); a user's stays."""
    for other, inferred_json in con.execute(
        "SELECT name, inferred FROM models WHERE base_model = ?", [name]
    ).fetchall():
        inferred = json.loads(inferred_json or "{}")
        info = inferred.get("base_model", {})
        if info.get("from") != USER:
            inferred["base_model"] = {
                "value": None,
                "candidate": info.get("candidate"),
                "from": f"unlinked: base {name!r} removed",
            }
            update_row(con, other, {"base_model": None}, inferred)


def remove_model(
    con: duckdb.DuckDBPyConnection, name: str, *, force: bool = False
) -> dict[str, int]:
    """Delete a model; with ``force`` also its score runs and scores.  Returns what was deleted."""
    get_model(con, name)
    runs = [
        r
        for (r,) in con.execute("SELECT run_id FROM score_runs WHERE model = ?", [name]).fetchall()
    ]
    n_scores = int(
        scalar(
            con,
            "SELECT count(*) FROM scores WHERE run_id IN "
            "(SELECT run_id FROM score_runs WHERE model = ?)",
            [name],
        )
        or 0
    )
    if runs and not force:
        raise WarehouseError(
            f"model {name!r} has {len(runs)} score run(s) with {n_scores} scores; "
            f"`psystats models remove {name} --force` deletes them too"
        )
    with transaction(con):
        delete_runs(con, runs)  # both scores layouts (Parquet partitions go at commit)
        con.execute("DELETE FROM score_runs WHERE model = ?", [name])
        con.execute("DELETE FROM models WHERE name = ?", [name])
        _unlink_from(con, name)
    return {"runs": len(runs), "scores": n_scores}
