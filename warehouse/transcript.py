"""From one Psych-101/201 record (a dict) to a validated participant.

This is the one place that knows the ``<<response>>`` convention.  Every
check raises :class:`RecordError` naming the offending field; the caller adds
file and line.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

# Fields with a fixed meaning; every other key is metadata.
CORE_FIELDS = ("text", "experiment", "participant")
RT_FIELD = "RTs"
NORMALISED_FIELDS = ("age", "gender", "nationality", "education", "diagnosis")

_MARKER = re.compile(r"<<|>>")


class RecordError(ValueError):
    """A record that cannot be ingested; ``field`` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field '{field}': {message}")
        self.field = field
        self.message = message


@dataclass
class Participant:
    experiment: str
    participant: str
    text: str
    spans: list[tuple[int, int]]  # (start, end) of each response, markers excluded
    rts: list[float | None] | None
    normalised: dict[str, Any]  # age, gender, nationality, education, diagnosis
    metadata: dict[str, Any] = field(default_factory=dict)  # every other key
    content_sha256: str = ""
    text_sha256: str = ""

    @property
    def responses(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]


def find_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the responses between ``<<`` and ``>>``.

    Markers must alternate ``<<``, ``>>``, ``<<``, ... and end closed; anything
    else (a stray ``>>``, ``<<`` inside a response, an unclosed ``<<``) is an
    error that quotes the position.
    """
    spans: list[tuple[int, int]] = []
    open_at = -1
    for m in _MARKER.finditer(text):
        if m.group() == "<<":
            if open_at >= 0:
                raise RecordError(
                    "text",
                    f"nested '<<' at character {m.start()} "
                    f"(response opened at {open_at - 2} is not closed)",
                )
            open_at = m.end()
        else:
            if open_at < 0:
                raise RecordError("text", f"'>>' at character {m.start()} without an opening '<<'")
            spans.append((open_at, m.start()))
            open_at = -1
    if open_at >= 0:
        raise RecordError("text", f"unbalanced '<<' at character {open_at - 2}: no closing '>>'")
    return spans


def _as_key(value: Any, name: str) -> str:
    if value is None or isinstance(value, (dict, list)):
        raise RecordError(name, f"must be a string or number, got {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = str(value)
    if not s.strip():
        raise RecordError(name, "is empty")
    return s


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _normalise(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key == "age":
        return _as_float(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def canonical_hash(record: dict[str, Any]) -> str:
    """Hash of the record's content, independent of key order and whitespace."""
    blob = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def parse_record(record: Any) -> Participant:
    """Validate one decoded JSON line and locate its responses."""
    if not isinstance(record, dict):
        raise RecordError("<line>", f"expected a JSON object, got {type(record).__name__}")
    for name in CORE_FIELDS:
        if name not in record:
            raise RecordError(name, "is missing")
    text = record["text"]
    if not isinstance(text, str):
        raise RecordError("text", f"must be a string, got {type(text).__name__}")
    if not text.strip():
        raise RecordError("text", "is an empty transcript")
    experiment = _as_key(record["experiment"], "experiment")
    participant = _as_key(record["participant"], "participant")
    spans = find_spans(text)

    rts = record.get(RT_FIELD)
    if rts is not None:
        if not isinstance(rts, list):
            raise RecordError(RT_FIELD, f"must be a list, got {type(rts).__name__}")
        if len(rts) != len(spans):
            raise RecordError(
                RT_FIELD, f"has {len(rts)} values but the text has {len(spans)} responses"
            )
        bad = [
            i
            for i, v in enumerate(rts)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))
        ]
        if bad:
            raise RecordError(RT_FIELD, f"value {bad[0]} is not a number: {rts[bad[0]]!r}")
        rts = [None if v is None or not math.isfinite(v) else float(v) for v in rts]

    normalised = {k: _normalise(k, record.get(k)) for k in NORMALISED_FIELDS}
    metadata = {
        k: v
        for k, v in record.items()
        if k not in CORE_FIELDS and k != RT_FIELD and k not in NORMALISED_FIELDS
    }
    # Keep an unparseable age (e.g. "18-25") as given rather than lose it.
    if record.get("age") is not None and normalised["age"] is None:
        metadata["age"] = record["age"]

    return Participant(
        experiment=experiment,
        participant=participant,
        text=text,
        spans=spans,
        rts=rts,
        normalised=normalised,
        metadata=metadata,
        content_sha256=canonical_hash(record),
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
