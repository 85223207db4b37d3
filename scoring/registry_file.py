"""``psystats models load``: register or update the models a TOML or YAML file lists.

TOML: ``[[models]]`` tables.  YAML: a list, or a mapping with a ``models``
list.  Each entry has ``name`` and/or ``source`` plus any editable field; an
entry whose name is registered updates it, any other is added.  An entry
with ``adapter`` (and ``adapter_revision``) registers that adapter on
``source``, its base.  One transaction: a bad entry changes nothing.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import duckdb
import yaml

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import transaction

from .adapter_models import register_adapter
from .model_fields import USER, coerce
from .model_files import classify_source
from .registry import apply_fields, fill_release_dates, get_model, link_bases, register, row_by_name


def read_entries(path: Path) -> list:
    """The entries of a models file, or a WarehouseError naming the file and what is wrong."""
    if not path.is_file():
        raise WarehouseError(f"{path}: no such file")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    data: Any
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise WarehouseError(f"{path}: invalid TOML ({e})") from None
    elif suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise WarehouseError(f"{path}: invalid YAML ({e})") from None
    else:
        raise WarehouseError(f"{path}: expected a .toml, .yaml or .yml file")
    if isinstance(data, dict):
        data = data.get("models")
    if not isinstance(data, list):
        raise WarehouseError(
            f"{path}: expected a list of models ([[models]] in TOML, "
            f"a list or models: [...] in YAML)"
        )
    return data


def _same_source(
    con: duckdb.DuckDBPyConnection, name: str, source: str, gguf_file: str | None
) -> bool:
    row = get_model(con, name)
    try:
        _, src, gg = classify_source(source, gguf_file or row["gguf_file"])
    except WarehouseError:
        return source == row["source"]
    return src == row["source"] and (gg or None) == row["gguf_file"]


def _load_entry(con: duckdb.DuckDBPyConnection, entry: dict, where: str) -> dict:
    """Register, update or add-an-adapter for one entry (fields already checked)."""
    name, source = entry.pop("name", None), entry.pop("source", None)
    adapter = entry.pop("adapter", None)
    adapter_revision = entry.pop("adapter_revision", None)
    if adapter is not None:
        # An adapter entry's source is its base (a registered name, folder,
        # GGUF or hub id), as for `models add BASE --adapter PATH`.
        return register_adapter(
            con,
            source,
            str(adapter),
            name=name,
            adapter_revision=adapter_revision,
            post_training=None,
            gguf_file=entry.pop("gguf_file", None),
            revision=entry.pop("revision", None),
            trust_remote_code=False,
            overrides=entry,
        )
    if (
        name
        and row_by_name(con, name) is not None
        and (source is None or _same_source(con, name, source, entry.get("gguf_file")))
    ):
        row = apply_fields(con, name, entry, USER, where)
        link_bases(con)
        return row
    if source is None and not name:
        raise WarehouseError("needs a name or a source")
    gguf_file = entry.pop("gguf_file", None)
    revision = entry.pop("revision", None)
    trc = bool(coerce("trust_remote_code", entry.pop("trust_remote_code", False)))
    return register(
        con,
        source,
        name=name,
        gguf_file=gguf_file,
        revision=revision,
        trust_remote_code=trc,
        overrides=entry,
    )


def load_file(con: duckdb.DuckDBPyConnection, path: str | Path) -> list[dict]:
    """Register or update every model listed in a TOML or YAML file, in one transaction."""
    path = Path(path)
    entries = read_entries(path)
    rows = []
    with transaction(con):
        fill_release_dates(con)
        for i, entry in enumerate(entries, 1):
            where = f"{path}: models[{i}]"
            if not isinstance(entry, dict):
                raise WarehouseError(
                    f"{where}: expected a table of fields, got {type(entry).__name__}"
                )
            entry = dict(entry)
            if entry.get("name"):
                where += f" ({entry['name']})"
            for key, value in entry.items():  # report bad fields before any inference
                if key not in ("name", "source", "adapter", "adapter_revision"):
                    coerce(key, value, where)
            try:
                rows.append(_load_entry(con, entry, where))
            except WarehouseError as e:
                msg = str(e)
                raise WarehouseError(
                    msg if msg.startswith(str(path)) else f"{where}: {msg}"
                ) from None
    return rows
