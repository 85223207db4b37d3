"""One normalisation of the values a Psych-101/201 record may carry.

Psych-201 studies disagree on encodings: ``RTs`` and numeric metadata come as
JSON numbers in some studies and as strings (``"1159"``) in others; missing
values as ``null``, ``""``, ``"NA"``, ``"nan"`` or ``"None"``; participant
keys as ``1`` in JSONL and ``1.0`` in a Parquet copy whose int column had a
null.  Every source (JSONL, zip, Parquet) goes through the functions below,
and the content hash is taken over their output, so one study gives the same
rows and the same hashes whatever file it came in.  The rules are listed in
docs/warehouse.md ("Normalisation"); every refusal is a :class:`RecordError`
naming the field.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from decimal import Decimal
from typing import Any

# Compared after strip() and lower().
MISSING_SPELLINGS = frozenset({"", "na", "n/a", "nan", "none", "null"})
# Metadata nested deeper than this is refused: no real study comes close, and
# it keeps every recursive step (normalising, hashing, json.dumps) far from
# Python's recursion limit.
MAX_DEPTH = 32
# Integral floats up to 2**53 are exact integers; beyond that they stay floats.
_EXACT_INT = 2**53

_INTEGRAL_STRING = re.compile(r"-?\d+\.0*")


class RecordError(ValueError):
    """A record that cannot be ingested; ``field`` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field '{field}': {message}")
        self.field = field
        self.message = message


def is_missing(value: Any) -> bool:
    """``None``, NaN, or a string spelling of "missing" (see MISSING_SPELLINGS)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return len(value) <= 16 and value.strip().lower() in MISSING_SPELLINGS
    return False


def is_null(value: Any) -> bool:
    """``None``, NaN or a blank string: "not given" for text fields and metadata.

    Narrower than :func:`is_missing` on purpose: in a text field "none" or
    "NA" can be an answer (no diagnosis; North America), so only numeric
    fields (RTs, age, numeric metadata's ``value_num``) read them as missing.
    """
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def check_text(value: str, field: str) -> str:
    """Refuse strings that cannot be stored as UTF-8 (lone surrogates from ``\\ud800``)."""
    utf8(value, field)
    return value


def utf8(value: str, field: str) -> bytes:
    """``value`` as UTF-8; a lone surrogate is a RecordError quoting its position.

    Encoding is the check: it runs in C, far faster than searching for
    surrogates, and the transcript's bytes are needed for its hash anyway.
    """
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(
            field,
            f"contains a lone surrogate (\\u{ord(value[e.start]):04x}) at character {e.start}, "
            "which is not valid Unicode text",
        ) from None


def as_number(value: Any) -> float | None:
    """A finite float from a number or numeric string; ``None`` when it is not one.

    Booleans are not numbers here (``True`` is not a reaction time).
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, Decimal)):
        try:
            f = float(value)
        except OverflowError:
            return None
        return f if math.isfinite(f) else None
    if isinstance(value, str):
        if len(value) > 64:  # no number is this long; keeps float() cheap
            return None
        try:
            f = float(value.strip())
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def key(value: Any, field: str) -> str:
    """A participant or experiment key: ``1``, ``"1"``, ``1.0`` and ``" 1 "`` are all ``"1"``."""
    if isinstance(value, (dict, list, tuple, bool)):
        raise RecordError(field, f"must be a string or number, got {type_name(value)}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RecordError(field, "is null")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError(field, f"is not a finite number: {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return str(int(value)) if value == value.to_integral_value() else str(value)
    if not isinstance(value, str):
        raise RecordError(field, f"must be a string or number, got {type_name(value)}")
    s = check_text(value, field).strip()
    if len(s) <= 16 and s.lower() in MISSING_SPELLINGS:
        raise RecordError(field, "is empty" if not s else f"is a missing value ({value!r})")
    if _INTEGRAL_STRING.fullmatch(s):
        s = s.split(".")[0]
        if s == "-0":
            s = "0"
    return s


def value(v: Any, field: str, depth: int = 0) -> Any:
    """A JSON-ready copy of a metadata value, with one spelling per content.

    Integral floats become ints (a Parquet int column with a null is float),
    non-finite floats become null, Parquet's dates and times become ISO text,
    decimals become numbers, bytes must be UTF-8 text.
    """
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return int(v) if v.is_integer() and abs(v) <= _EXACT_INT else v
    if isinstance(v, str):
        return check_text(v, field)
    if depth >= MAX_DEPTH:
        raise RecordError(field, f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise RecordError(field, f"has a non-text key of type {type_name(k)}")
            out[check_text(k, field)] = value(x, field, depth + 1)
        return out
    if isinstance(v, (list, tuple)):
        return [value(x, field, depth + 1) for x in v]
    if isinstance(v, Decimal):
        if not v.is_finite():
            return None
        return int(v) if v == v.to_integral_value() else value(float(v), field)
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, _dt.timedelta):
        return v.total_seconds()
    if isinstance(v, (bytes, bytearray, memoryview)):
        try:
            return check_text(bytes(v).decode("utf-8"), field)
        except UnicodeDecodeError:
            raise RecordError(field, "is binary data, not UTF-8 text") from None
    raise RecordError(field, f"has an unsupported value of type {type_name(v)}")


def rts(v: Any, n_responses: int) -> list[float | None] | None:
    """``RTs`` as floats: numbers and numeric strings accepted, missing spellings -> None."""
    field = "RTs"
    if is_missing(v):
        return None
    if not isinstance(v, (list, tuple)):
        raise RecordError(field, f"must be a list, got {type_name(v)}")
    if len(v) != n_responses:
        raise RecordError(field, f"has {len(v)} values but the text has {n_responses} responses")
    out: list[float | None] = []
    for i, x in enumerate(v):
        if is_missing(x):
            out.append(None)
            continue
        f = None
        if isinstance(x, (int, float, Decimal)) and not isinstance(x, bool):
            try:
                f = float(x)
            except OverflowError:
                f = math.inf  # an integer too large for a float: no usable time
        elif isinstance(x, str) and len(x) <= 64:
            try:
                f = float(x.strip())
            except ValueError:
                f = None
        if f is None:
            raise RecordError(field, f"value {i} is not a number: {_shown(x)}")
        # inf has no meaning as a reaction time; stored as missing, as NaN is.
        out.append(f if math.isfinite(f) else None)
    return out


def type_name(v: Any) -> str:
    """JSON's name for a value's type (``object``, ``list``, ``boolean``, ...)."""
    return {dict: "object", list: "list", tuple: "list", bool: "boolean", type(None): "null"}.get(
        type(v), type(v).__name__
    )


def _shown(v: Any) -> str:
    """A short quotation of a bad value (never the whole of a huge or deep one)."""
    if isinstance(v, (dict, list, tuple)):
        return f"a JSON {type_name(v)}"
    r = repr(v[:41] if isinstance(v, str) else v)
    return r if len(r) <= 43 else r[:40] + "..."
