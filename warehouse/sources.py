"""Where records come from: jsonl, zipped jsonl, Psych-201 folders, Parquet.

A *source file* yields ``(line_number, record_or_error)`` one at a time, so the
ingest never holds a whole study in memory.  Study names follow Psych-201's
layout: ``<study>/prompts.jsonl[.zip]`` is study ``<study>``; any other file
is named after its stem (``mystudy.jsonl`` -> ``mystudy``).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import WarehouseError
from .hashing import file_sha256

JSONL_SUFFIXES = (".jsonl", ".jsonl.zip", ".zip", ".parquet")

# The longest line (or Parquet transcript) read, in bytes; ``--max-line-mib``
# raises it.  The longest line in Psych-201 is under 100 KB; 64 MiB leaves
# room for any real session while a decompression bomb (1 GB of spaces in a
# 1 MB zip) is refused after reading 64 MiB of it, never held whole.
DEFAULT_MAX_LINE_BYTES = 64 << 20
_CHUNK = 1 << 20
# Rows per Parquet batch: small, because one row can be a long transcript.
_PARQUET_BATCH = 256
# Line number of a problem with the file as a whole (not a readable zip, not
# Parquet): there is no line to blame.
FILE_LINE = 0


class LineError(Exception):
    """A line that could not be decoded; carries the field for the message.

    ``fatal``: the rest of the file cannot be read (a corrupt zip member, a
    broken Parquet file); the file is refused as a whole.
    """

    def __init__(self, field: str, message: str, *, fatal: bool = False):
        super().__init__(message)
        self.field = field
        self.message = message
        self.fatal = fatal


Record = tuple[int, "dict[str, Any] | LineError"]


@dataclass
class SourceFile:
    path: Path
    study: str
    member: str | None = None  # the jsonl inside a zip
    problem: str | None = None  # why the file cannot be read at all (found by discover)

    @property
    def label(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def sha256(self) -> str:
        return file_sha256(self.path)

    def records(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Record]:
        """Yield ``(1-based line, record)``; a bad line yields a LineError instead.

        Every failure of the underlying reader (zip CRC, truncated member,
        not a Parquet file, a column pyarrow cannot convert) becomes a fatal
        LineError at the line where it happened, so the ingest has one error
        path whatever the cause.
        """
        if self.problem is not None:
            yield FILE_LINE, LineError("<file>", self.problem, fatal=True)
            return
        if self.path.suffix == ".parquet":
            yield from _parquet_records(self.path, max_line_bytes)
        elif self.member is not None:
            yield from _zip_records(self.path, self.member, max_line_bytes)
        else:
            try:
                f = open(self.path, "rb")
            except OSError as e:
                yield FILE_LINE, LineError("<file>", f"cannot be read: {e.strerror}", fatal=True)
                return
            with f:
                yield from _guarded(_jsonl_records(f, max_line_bytes), "file")

    def count_records(self) -> int:
        """About how many records :meth:`records` yields, for progress: the lines
        (blank ones included) or a Parquet file's rows; 0 for a file that cannot be read
        (:meth:`records` says why)."""
        try:
            if self.problem is not None:
                return 0
            if self.path.suffix == ".parquet":
                import pyarrow.parquet as pq

                return int(pq.ParquetFile(self.path).metadata.num_rows)
            if self.member is not None:
                with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                    return count_lines(f)
            with open(self.path, "rb") as f:
                return count_lines(f)
        # Only an estimate for a progress display: whatever the reader cannot read,
        # records() reports as the file's error; here it counts nothing.
        except Exception:
            return 0


def count_lines(f: IO[bytes]) -> int:
    """Lines in ``f`` (a last line without a newline counts), read in chunks."""
    n, last = 0, b"\n"
    while chunk := f.read(_CHUNK):
        n += chunk.count(b"\n")
        last = chunk[-1:]
    return n + (last != b"\n")


def _guarded(records: Iterator[Record], what: str) -> Iterator[Record]:
    """Turn a reader's exception into a fatal LineError at the line it reached."""
    last = 0
    try:
        for lineno, rec in records:
            last = lineno
            yield lineno, rec
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        yield last + 1, LineError("<file>", f"corrupt {what}: {e}", fatal=True)


def _zip_records(path: Path, member: str, max_line_bytes: int) -> Iterator[Record]:
    try:
        zf = zipfile.ZipFile(path)
        f = zf.open(member)
    # RuntimeError: an encrypted member; NotImplementedError: an unknown compression.
    except (
        zipfile.BadZipFile,
        zlib.error,
        OSError,
        KeyError,
        NotImplementedError,
        RuntimeError,
    ) as e:
        yield FILE_LINE, LineError("<file>", f"not a readable zip file ({e})", fatal=True)
        return
    with zf, f:
        yield from _guarded(_jsonl_records(f, max_line_bytes), "zip member")


def _lines(f: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)``; ``None`` for a line longer than ``max_line_bytes``.

    Reads fixed-size chunks, so an over-long line is dropped as it streams
    past: memory stays near ``max_line_bytes`` however long the line is.
    """
    lineno = 0
    parts: list[bytes] = []
    size = 0
    too_long = False
    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if not too_long:
                size += len(piece)
                if size > max_line_bytes:
                    too_long, parts = True, []
                else:
                    parts.append(piece)
            if nl < 0:
                break
            lineno += 1
            yield lineno, None if too_long else b"".join(parts)
            parts, size, too_long = [], 0, False
            start = nl + 1
    if parts or too_long:
        lineno += 1
        yield lineno, None if too_long else b"".join(parts)


def _jsonl_records(f: IO[bytes], max_line_bytes: int) -> Iterator[Record]:
    for lineno, raw in _lines(f, max_line_bytes):
        if raw is None:
            yield lineno, LineError("<line>", _too_long(max_line_bytes))
            continue
        if not raw.strip():
            continue  # blank lines (a trailing newline) are not records
        yield lineno, decode_line(raw)


def decode_line(raw: bytes) -> dict[str, Any] | LineError:
    """One JSONL line -> its value, or a LineError saying why not."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return LineError("<line>", f"not valid UTF-8 at byte {e.start}")
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return LineError("<line>", f"malformed JSON: {e.msg} at column {e.colno}")
    except RecursionError:
        return LineError("<line>", "JSON nested too deeply to read")
    except ValueError as e:  # e.g. an integer with more than 4300 digits
        return LineError("<line>", f"malformed JSON: {e}")


def _too_long(max_line_bytes: int) -> str:
    return (
        f"longer than the limit of {max_line_bytes >> 20} MiB per line "
        "(raise it with --max-line-mib)"
    )


def _parquet_records(path: Path, max_line_bytes: int) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        yield FILE_LINE, LineError("<file>", f"not a readable Parquet file ({e})", fatal=True)
        return
    row = 0
    batches = pf.iter_batches(batch_size=_PARQUET_BATCH)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except (pa.ArrowException, OSError) as e:
            yield row + 1, LineError("<file>", f"corrupt Parquet data ({e})", fatal=True)
            return
        for rec in _batch_rows(batch):
            row += 1
            if isinstance(rec, LineError):
                yield row, rec
                continue
            text = rec.get("text")
            if isinstance(text, str) and len(text) > max_line_bytes:
                yield row, LineError("text", _too_long(max_line_bytes))
                continue
            # Parquet has one schema for all rows: a metadata column a row
            # lacks comes back as null, which is "not given" in JSONL terms.
            yield row, {k: v for k, v in rec.items() if v is not None or k in _CORE}


_CORE = ("text", "experiment", "participant")


def _batch_rows(batch) -> list[dict[str, Any] | LineError]:
    """The batch's rows as dicts; a value pyarrow cannot convert fails only its row."""
    try:
        return batch.to_pylist()
    except (ValueError, OverflowError, ArithmeticError, TypeError):
        pass  # e.g. a timestamp outside Python's datetime range: find the row and column
    rows: list[dict[str, Any] | LineError] = []
    for i in range(batch.num_rows):
        rec: dict[str, Any] = {}
        bad = None
        for name, col in zip(batch.schema.names, batch.columns):
            try:
                rec[name] = col[i].as_py()
            except (ValueError, OverflowError, ArithmeticError, TypeError) as e:
                bad = LineError(name, f"value cannot be read: {e}")
                break
        rows.append(bad if bad is not None else rec)
    return rows


def _study_name(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.zip", ".zip", ".jsonl", ".parquet"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name == "prompts":
        return path.parent.resolve().name
    return name


def _zip_member(path: Path) -> tuple[str | None, str | None]:
    """``(member, problem)``: the one .jsonl inside the zip, or why there is none."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [
                n
                for n in zf.namelist()
                if n.endswith(".jsonl")
                and not n.startswith("__MACOSX/")
                and not Path(n).name.startswith("._")
            ]
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return None, f"not a readable zip file ({e})"
    if len(members) != 1:
        return None, (
            f"expected exactly one .jsonl inside the zip, found {len(members)}: {members[:5]}"
        )
    return members[0], None


def _is_data_file(p: Path) -> bool:
    return p.is_file() and p.name.endswith(JSONL_SUFFIXES)


# Files that sit beside study folders by convention and are not studies.
_COMPANIONS = ("license", "readme", "notice", "citation", "changelog")


def _is_companion(p: Path) -> bool:
    return p.name.startswith((".", "__")) or p.stem.lower().startswith(_COMPANIONS)


@dataclass
class Discovery:
    """The source files under the PATH arguments, and what was left out and why."""

    sources: list[SourceFile]
    warnings: list[str] = field(default_factory=list)


def discover(path: str | Path, study: str | None = None) -> list[SourceFile]:
    """Expand one PATH argument of ``psystats ingest`` into source files."""
    return discover_all([path], study).sources


def discover_all(paths: list[str | Path], study: str | None = None) -> Discovery:
    """Expand the PATH arguments of ``psystats ingest``; never skip a study silently.

    A folder is either one study (data files directly inside) or a folder of
    study folders (Psych-201's layout).  A folder holding both is ambiguous
    and refused, naming the stray files.  Beside study folders, a subfolder
    with no data file and any other file (LICENSE/README aside) is reported
    in ``warnings``.
    """
    out = Discovery([])
    for p in paths:
        out.sources.extend(_discover_one(Path(p), study, out.warnings))
    return out


def _discover_one(p: Path, study: str | None, warnings: list[str]) -> list[SourceFile]:
    if not p.exists():
        raise WarehouseError(f"{p}: no such file or folder")
    if p.is_file():
        if not p.name.endswith(JSONL_SUFFIXES):
            raise WarehouseError(f"{p}: not a .jsonl, .zip or .parquet file")
        member, problem = _zip_member(p) if p.suffix == ".zip" else (None, None)
        return [SourceFile(p, study or _study_name(p), member, problem)]
    try:
        entries = sorted(p.iterdir())
    except OSError as e:
        raise WarehouseError(f"{p}: cannot list the folder ({e.strerror})") from None
    direct = [q for q in entries if _is_data_file(q)]
    subdirs = [q for q in entries if q.is_dir() and not q.name.startswith((".", "__"))]
    study_dirs = [d for d in subdirs if any(_is_data_file(q) for q in _safe_iterdir(d, warnings))]
    if direct and study_dirs:
        raise WarehouseError(
            f"{p}: holds both data files ({', '.join(q.name for q in direct[:5])}) and "
            f"study folders ({', '.join(d.name for d in study_dirs[:5])}"
            f"{', ...' if len(study_dirs) > 5 else ''}); a folder is one study or a folder "
            "of studies, not both: move the stray files, or ingest them by name"
        )
    if direct:
        # One study: data files directly inside.
        return [s for q in direct for s in _discover_one(q, study or p.resolve().name, warnings)]
    out: list[SourceFile] = []
    for d in subdirs:
        if d not in study_dirs:
            if any(w.startswith(f"{d}: cannot list") for w in warnings):
                continue
            warnings.append(f"{d}: no .jsonl, .zip or .parquet file inside; not ingested")
            continue
        for q in sorted(q for q in _safe_iterdir(d, []) if _is_data_file(q)):
            out.extend(_discover_one(q, d.name, warnings))
    for q in entries:
        if q.is_file() and not _is_companion(q):
            hint = " (a domain mapping? load it with --domains)" if q.suffix == ".csv" else ""
            warnings.append(f"{q}: not a study file beside study folders; not ingested{hint}")
    if not out:
        raise WarehouseError(f"{p}: no .jsonl, .zip or .parquet study files found")
    return out


def _safe_iterdir(d: Path, warnings: list[str]) -> list[Path]:
    try:
        return list(d.iterdir())
    except OSError as e:
        warnings.append(f"{d}: cannot list the folder ({e.strerror}); not ingested")
        return []
