"""The fields of a ``models`` row a user may set, and the one validation of their values.

``psystats models set``, ``models add --set``, ``models load`` and the
importer's model rows all pass user-given values through :func:`coerce`,
which returns the column's type or raises a WarehouseError naming the field
and the value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Any

from psystats.warehouse.errors import WarehouseError

from .naming import POST_TRAINING_TYPES
from .release_dates import parse_date

# Fields a user may set (``psystats models set`` / ``models load``) and their types.
EDITABLE: dict[str, type] = {
    "source": str,
    "revision": str,
    "gguf_file": str,
    "tokenizer_source": str,
    "family": str,
    "generation": str,
    "generation_order": float,
    "n_params": int,
    "post_training": str,
    "base_model": str,
    "trust_remote_code": bool,
    "quantization": str,
    "release_date": date,  # YYYY-MM-DD, or YYYY-MM (month precision)
    "pipeline_check": str,  # why the model only checks the pipeline (NULL: a real model)
}
# Friendlier names accepted in files and on the command line.
ALIASES = {"type": "post_training", "base": "base_model", "params": "n_params"}
# ``models.inferred[field]["from"]`` of a value a user gave.
USER = "user"


def field_name(key: str) -> str:
    """The column a user's key names (aliases resolved)."""
    return ALIASES.get(key, key)


def _is_null(value: Any) -> bool:
    return value is None or (
        isinstance(value, str) and value.strip().lower() in {"", "null", "none"}
    )


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in {"true", "false", "1", "0", "yes", "no"}:
        raise ValueError
    return text in {"true", "1", "yes"}


def _as_count(value: Any) -> int:
    if isinstance(value, str):  # "134515008", "1.5e9", "7_615_616_512"
        text = value.strip().replace("_", "")
        value = float(text) if re.search(r"[.eE]", text) else int(text)
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    n = int(value)
    if n < 0:
        raise ValueError
    return n


_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    bool: _as_bool,
    int: _as_count,
    float: float,
    date: parse_date,
}


def coerce(field: str, value: Any, where: str = "") -> Any:
    """A user-given field value in the column's type, or a WarehouseError naming field and value."""
    field = field_name(field)
    prefix = f"{where}: " if where else ""
    if field not in EDITABLE:
        raise WarehouseError(
            f"{prefix}unknown field {field!r}; editable fields: "
            f"{', '.join(EDITABLE)} (aliases: {', '.join(ALIASES)})"
        )
    kind = EDITABLE[field]
    if _is_null(value):
        if field in ("post_training", "trust_remote_code"):
            raise WarehouseError(f"{prefix}{field} cannot be empty")
        return None
    if kind in _CONVERTERS:
        try:
            return _CONVERTERS[kind](value)
        except (TypeError, ValueError):
            if kind is date:
                raise WarehouseError(
                    f"{prefix}{field}: {str(value)!r} is not a date (YYYY-MM-DD, or YYYY-MM)"
                ) from None
            raise WarehouseError(
                f"{prefix}{field}: {value!r} is not a valid {kind.__name__}"
            ) from None
    text = str(value).strip()
    if field == "post_training" and text not in POST_TRAINING_TYPES:
        raise WarehouseError(
            f"{prefix}post_training: {text!r} is not one of {', '.join(POST_TRAINING_TYPES)}"
        )
    return text
