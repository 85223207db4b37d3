"""Registering a PEFT adapter (LoRA) on a registered base: ``models add BASE --adapter PATH``.

The row has the base's source, family, generation, size and quantisation,
``base_model`` = the base, ``adapter`` (absolute folder or hub id),
``adapter_revision`` and ``adapter_sha256`` (weights + config).  The type
comes from the adapter's name ("...-Instruct-lora": instruct); a name with
no type marker is "other" (a fine-tune of unknown kind), never "base".
Applying the adapter when scoring is ``scoring.adapters``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from psystats.warehouse.errors import WarehouseError

from . import adapters, naming
from .model_fields import USER, coerce, field_name
from .model_files import looks_like_path
from .registry import (
    apply_fields,
    explicit_fields,
    get_model,
    in_one_transaction,
    insert_row,
    register,
    row_by_name,
    update_row,
)
from .release_dates import known_release_date, variant_release

# What an adapter model takes over from its base's inferred facts.
_FROM_BASE = ("family", "generation", "generation_order", "n_params", "size_label")
_ROW_FROM_BASE = (
    "source",
    "revision",
    "gguf_file",
    "tokenizer_source",
    "family",
    "generation",
    "generation_order",
    "n_params",
    "quantization",
)


def _base_row(
    con: duckdb.DuckDBPyConnection,
    base_source: str | None,
    gguf_file: str | None,
    revision: str | None,
    trust_remote_code: bool,
) -> dict:
    """The registered base (registered now when new); never an adapter model itself."""
    if not base_source:
        raise WarehouseError(
            "--adapter needs the base model: psystats models add BASE --adapter PATH"
        )
    base = row_by_name(con, base_source)
    if base is None:
        base = register(
            con,
            base_source,
            gguf_file=gguf_file,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
    if base.get("adapter"):
        raise WarehouseError(
            f"{base['name']!r} is itself an adapter model; give its base ({base['base_model']!r})"
        )
    return base


def _update_registered(
    con: duckdb.DuckDBPyConnection,
    existing: dict,
    base: dict,
    adapter_loc: str,
    sha256: str,
    explicit: dict[str, Any],
) -> dict:
    """The same adapter on the same base again: a new hash and the fields given change."""
    name = existing["name"]
    if (existing.get("adapter"), existing["source"]) != (adapter_loc, base["source"]):
        raise WarehouseError(
            f"model {name!r} is already registered "
            + (
                f"with adapter {existing['adapter']!r}"
                if existing.get("adapter")
                else f"with source {existing['source']!r}"
            )
            + f"; choose another --name or `psystats models remove {name}` first"
        )
    if existing.get("adapter_sha256") != sha256:
        update_row(con, name, {"adapter_sha256": sha256}, existing["inferred"])
    if explicit:
        apply_fields(con, name, explicit, USER)
    return get_model(con, name)


def _release(base: dict, adapter_name: str) -> tuple[Any, str]:
    """(date, why): an adapter belongs to its base's generation and carries the base's
    date, unless the table has a later release of its own (Centaur, on Llama 3.1)."""
    if variant_release(adapter_name, base["family"]) is None:
        return base.get("release_date"), "the base's"
    known = known_release_date(adapter_name, base["family"], base["generation"])
    assert known is not None  # a variant always has a date
    return known


def _inferred(base: dict, info: dict, by_name: naming.Inference) -> dict[str, Any]:
    """``models.inferred`` of an adapter model: the base's facts, the adapter's type."""
    post = by_name.post_training
    assert post is not None  # infer_from_name always decides one
    if post[0] == "base":
        post = ("other", f"an adapter whose name names no post-training type ({post[1]})")
    inferred = {
        k: dict(v) if isinstance(v, dict) else v
        for k, v in base["inferred"].items()
        if k in _FROM_BASE
    }
    inferred["post_training"] = {"value": post[0], "from": f"adapter name: {post[1]}"}
    inferred["base_model"] = {
        "value": base["name"],
        "candidate": by_name.base_candidate,
        "from": f"the adapter is applied on {base['name']!r}",
    }
    inferred["n_params"] = {
        "value": base["n_params"],
        "from": "the base's: an adapter adds low-rank deltas to the same weights",
    }
    inferred["adapter"] = {k: v for k, v in info.items() if k != "folder"}
    inferred["quantization"] = {"value": base.get("quantization"), "from": "the base's"}
    inferred["source_kind"] = "adapter"
    return inferred


def register_adapter(
    con: duckdb.DuckDBPyConnection,
    base_source: str | None,
    adapter: str,
    *,
    name: str | None = None,
    adapter_revision: str | None = None,
    post_training: str | None = None,
    gguf_file: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    overrides: dict | None = None,
) -> dict:
    """Register ``adapter`` on ``base_source`` (a registered name, folder, GGUF or hub id,
    registered first when new), idempotently, in the caller's transaction (``models load``
    batches several); returns the row.  :func:`add_adapter` is this in a transaction of
    its own."""
    info = adapters.describe(adapter, adapter_revision)
    is_path = looks_like_path(adapter)
    adapter_loc = info["folder"] if is_path else adapter
    base = _base_row(con, base_source, gguf_file, revision, trust_remote_code)
    default_name = Path(adapter_loc).name if is_path else adapter
    name = name or default_name
    explicit = explicit_fields(overrides, None, post_training)
    existing = row_by_name(con, name)
    if existing is not None:
        return _update_registered(con, existing, base, adapter_loc, info["sha256"], explicit)
    by_name = naming.infer_from_name(default_name)
    inferred = _inferred(base, info, by_name)
    released = _release(base, default_name)
    inferred["release_date"] = {"value": released[0], "from": released[1]}
    row: dict[str, Any] = {k: base.get(k) for k in _ROW_FROM_BASE}
    row.update(
        name=name,
        post_training=inferred["post_training"]["value"],
        base_model=base["name"],
        inferred=inferred,
        adapter=adapter_loc,
        adapter_revision=adapter_revision,
        adapter_sha256=info["sha256"],
        release_date=released[0],
    )
    for key, raw in explicit.items():
        field = field_name(key)
        row[field] = coerce(field, raw)
        row["inferred"][field] = {"value": row[field], "from": USER}
    if row["base_model"] == row["name"]:
        raise WarehouseError("a model cannot be its own base")
    insert_row(con, row, bool(base["trust_remote_code"]))
    return get_model(con, name)


add_adapter = in_one_transaction(register_adapter)
