"""From one Psych-101/201 record (a dict) to a validated participant.

This is the one place that knows the ``<<response>>`` convention.  Every
check raises :class:`RecordError` naming the offending field; the caller adds
file and line.  Values are normalised by :mod:`warehouse.normalise`, and the
content hash is taken over the normalised record, so the same participant
gives the same hash from JSONL, zip or Parquet.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import normalise as norm
from .normalise import RecordError  # noqa: F401  (part of this module's interface)

# Fields with a fixed meaning; every other key is metadata.
CORE_FIELDS = ("text", "experiment", "participant")
RT_FIELD = "RTs"
NORMALISED_FIELDS = ("age", "gender", "nationality", "education", "diagnosis")

_MARKER = re.compile(r"<<|>>")
_OPEN = re.compile(r"<<")
_CLOSE = re.compile(r">>")


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
    raw: dict[str, Any] | None = None  # the record as decoded, for legacy_sha256()

    def legacy_sha256(self) -> str | None:
        """The hash psystats < 0.2 stored (over the record as given), or None if unhashable.

        Lets a warehouse ingested before normalisation recognise unchanged
        participants instead of reporting every one as changed.
        """
        try:
            return canonical_hash(self.raw) if self.raw is not None else None
        except (TypeError, ValueError, RecursionError):
            return None

    @property
    def responses(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]


def find_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the responses between ``<<`` and ``>>``.

    Markers must alternate ``<<``, ``>>``, ``<<``, ... and end closed; anything
    else (a stray ``>>``, ``<<`` inside a response, an unclosed ``<<``) is an
    error that quotes the position.
    """
    # Fast path (most transcripts are well-formed): the markers alternate iff
    # the i-th '<<' ends before the i-th '>>' starts, which starts before the
    # (i+1)-th '<<'.  '<<' and '>>' cannot overlap, so this equals the scan below.
    opens = [m.end() for m in _OPEN.finditer(text)]
    closes = [m.start() for m in _CLOSE.finditer(text)]
    if (
        len(opens) == len(closes)
        and all(o <= c for o, c in zip(opens, closes))
        and all(c < o for c, o in zip(closes, opens[1:]))
    ):
        return list(zip(opens, closes))
    # Slow path: find the first offending marker for the message.
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


def _normalise(name: str, v: Any) -> Any:
    if name == "age":
        return None if norm.is_missing(v) else norm.as_number(v)
    if norm.is_null(v):
        return None
    v = norm.value(v, name)
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def canonical_hash(record: dict[str, Any]) -> str:
    """Hash of the record's content, independent of key order and whitespace."""
    blob = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def parse_record(record: Any) -> Participant:
    """Validate and normalise one decoded record and locate its responses."""
    if not isinstance(record, dict):
        raise RecordError("<line>", f"expected a JSON object, got {norm.type_name(record)}")
    for name in CORE_FIELDS:
        if name not in record:
            raise RecordError(name, "is missing")
    text = record["text"]
    if not isinstance(text, str):
        raise RecordError("text", f"must be a string, got {norm.type_name(text)}")
    text_bytes = norm.utf8(text, "text")
    if not text.strip():
        raise RecordError("text", "is an empty transcript")
    experiment = norm.key(record["experiment"], "experiment")
    participant = norm.key(record["participant"], "participant")
    spans = find_spans(text)
    rts = norm.rts(record.get(RT_FIELD), len(spans))

    normalised = {k: _normalise(k, record.get(k)) for k in NORMALISED_FIELDS}
    # Every other key, normalised; a missing value is "not given", so a key
    # that is null in one file and absent in another (Parquet) is the same.
    metadata: dict[str, Any] = {}
    for k, v in record.items():
        if k in CORE_FIELDS or k == RT_FIELD or k in NORMALISED_FIELDS:
            continue
        if not isinstance(k, str):
            raise RecordError("<line>", f"has a non-text key of type {norm.type_name(k)}")
        norm.check_text(k, k)
        if norm.is_null(v):
            continue
        metadata[k] = norm.value(v, k)
    # Keep an unparseable age (e.g. "18-25") as given rather than lose it.
    raw_age = record.get("age")
    if not norm.is_missing(raw_age) and normalised["age"] is None:
        metadata["age"] = norm.value(raw_age, "age")

    # The hash covers the normalised record: what the warehouse stores.
    canonical: dict[str, Any] = {"text": text, "experiment": experiment, "participant": participant}
    if rts is not None:
        canonical[RT_FIELD] = rts
    canonical.update({k: v for k, v in normalised.items() if v is not None})
    canonical.update(metadata)
    return Participant(
        experiment=experiment,
        participant=participant,
        text=text,
        spans=spans,
        rts=rts,
        normalised=normalised,
        metadata=metadata,
        content_sha256=canonical_hash(canonical),
        text_sha256=hashlib.sha256(text_bytes).hexdigest(),
        raw=record,
    )
