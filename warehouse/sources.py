"""Where records come from: jsonl, zipped jsonl, Psych-201 folders, Parquet.

A *source file* yields ``(line_number, record_or_error)`` one at a time, so the
ingest never holds a whole study in memory.  Study names follow Psych-201's
layout: ``<study>/prompts.jsonl[.zip]`` is study ``<study>``; any other file
is named after its stem (``mystudy.jsonl`` -> ``mystudy``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .db import WarehouseError
from .hashing import file_sha256

JSONL_SUFFIXES = (".jsonl", ".jsonl.zip", ".zip", ".parquet")


class LineError(Exception):
    """A line that could not be decoded; carries the field for the message."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class SourceFile:
    path: Path
    study: str
    member: str | None = None  # the jsonl inside a zip

    @property
    def label(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def sha256(self) -> str:
        return file_sha256(self.path)

    def records(self) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
        """Yield ``(1-based line, record)``; a bad line yields a LineError instead."""
        if self.path.suffix == ".parquet":
            yield from _parquet_records(self.path)
        elif self.member is not None:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                yield from _jsonl_records(f)
        else:
            with open(self.path, "rb") as f:
                yield from _jsonl_records(f)


def _jsonl_records(f) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
    for lineno, raw in enumerate(f, start=1):
        if not raw.strip():
            continue  # blank lines (a trailing newline) are not records
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield lineno, LineError("<line>", f"not valid UTF-8 at byte {e.start}")
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, LineError("<line>", f"malformed JSON: {e.msg} at column {e.colno}")


def _parquet_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    row = 0
    for batch in pf.iter_batches(batch_size=2048):
        for rec in batch.to_pylist():
            row += 1
            # Parquet has one schema for all rows: a metadata column a row
            # lacks comes back as null, which is "not given" in JSONL terms.
            yield (
                row,
                {
                    k: v
                    for k, v in rec.items()
                    if v is not None or k in ("text", "experiment", "participant")
                },
            )


def _study_name(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.zip", ".zip", ".jsonl", ".parquet"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name == "prompts":
        return path.parent.resolve().name
    return name


def _zip_member(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [
                n
                for n in zf.namelist()
                if n.endswith(".jsonl")
                and not n.startswith("__MACOSX/")
                and not Path(n).name.startswith("._")
            ]
    except zipfile.BadZipFile as e:
        raise WarehouseError(f"{path}: not a readable zip file ({e})") from None
    if len(members) != 1:
        raise WarehouseError(
            f"{path}: expected exactly one .jsonl inside the zip, found "
            f"{len(members)}: {members[:5]}"
        )
    return members[0]


def _is_data_file(p: Path) -> bool:
    return p.is_file() and p.name.endswith(JSONL_SUFFIXES)


def discover(path: str | Path, study: str | None = None) -> list[SourceFile]:
    """Expand one PATH argument of ``psystats ingest`` into source files."""
    p = Path(path)
    if not p.exists():
        raise WarehouseError(f"{p}: no such file or folder")
    if p.is_file():
        if not p.name.endswith(JSONL_SUFFIXES):
            raise WarehouseError(f"{p}: not a .jsonl, .zip or .parquet file")
        member = _zip_member(p) if p.suffix == ".zip" else None
        return [SourceFile(p, study or _study_name(p), member)]
    # A folder is either one study (data files directly inside) or a
    # collection of study folders, as Psych-201 is laid out.
    direct = sorted(q for q in p.iterdir() if _is_data_file(q))
    if direct:
        return [s for q in direct for s in discover(q, study or p.resolve().name)]
    out: list[SourceFile] = []
    for sub in sorted(q for q in p.iterdir() if q.is_dir() and not q.name.startswith((".", "__"))):
        files = sorted(q for q in sub.iterdir() if _is_data_file(q))
        for q in files:
            out.extend(discover(q, sub.name))
    if not out:
        raise WarehouseError(f"{p}: no .jsonl, .zip or .parquet study files found")
    return out
