"""Writing an output file (report, exported table) safely.

``report -o``, ``export cells -o`` and ``scores export -o`` all go through
:func:`atomic_output`:

* the target must be a regular file or not exist yet: a folder, a symbolic
  link, a device (``/dev/full``), a pipe or a socket is refused, so a
  command never writes through a link or replaces a device node;
* the content is written under an unpredictable name inside a private
  temporary folder (``tempfile.mkdtemp``, mode 0700) in the target's folder,
  then renamed over the target in one step: readers see the old file or the
  new one, never half of one, and nobody can plant a file or link under the
  temporary name;
* on any failure (disk full, permission, an error while rendering) the
  temporary folder is removed and the target is left as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import NO_SPACE, WarehouseError


def check_target(path: str | os.PathLike) -> Path:
    """``path`` as a Path if a command may write there; else a WarehouseError saying why."""
    p = Path(path)
    if str(path).endswith(os.sep) or p.is_dir() and not p.is_symlink():
        raise WarehouseError(f"{path} is a folder: give a file name for the output")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise WarehouseError(f"{path}: cannot check the output path ({e.strerror})") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise WarehouseError(
                f"{path} is a symbolic link (to {os.readlink(p)}): psystats does not write "
                "through links; give the real file path"
            )
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a pipe"
                if stat.S_ISFIFO(st.st_mode)
                else "a socket"
                if stat.S_ISSOCK(st.st_mode)
                else "not a regular file"
            )
            raise WarehouseError(f"{path} is {kind}: the output must be a regular file")
    parent = p.parent
    if not parent.is_dir():
        raise WarehouseError(
            f"{path}: folder {parent} does not exist; create it first (mkdir -p {parent})"
        )
    return p


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_output(out) as tmp:`` write ``tmp``; it becomes ``out`` when the block ends.

    ``tmp`` has the same file name as ``out`` (so writers that look at the
    suffix work) inside a fresh private folder beside it.  The final file gets
    the usual permissions (0666 less the umask), not the temporary 0600.
    """
    target = check_target(path)
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as e:
        raise _os_error(e, target) from None
    tmp = tmpdir / target.name
    try:
        yield tmp
        if not tmp.is_file():
            raise WarehouseError(f"{path}: nothing was written")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        # Checked again just before the rename: the target may have changed meanwhile.
        check_target(target)
        os.replace(tmp, target)
    except OSError as e:
        raise _os_error(e, target) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


TABLE_SUFFIXES = (".parquet", ".csv")


def table_suffix(out: Path) -> str:
    """The table format of ``out`` (``.parquet`` or ``.csv``, by its suffix); else a WarehouseError."""
    suffix = out.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise WarehouseError(f"{out}: expected a .parquet or .csv output file")
    return suffix


def write_batches(reader: Any, path: Path, suffix: str) -> int:
    """Write an Arrow record batch reader to ``path`` as ``suffix`` (:func:`table_suffix`)
    batch by batch (memory flat in the row count); returns the row count."""
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        writer: Any = pq.ParquetWriter(path, reader.schema)
    else:
        import pyarrow.csv as pcsv

        writer = pcsv.CSVWriter(path, reader.schema)
    n = 0
    with writer as w:
        for batch in reader:
            w.write_batch(batch)
            n += batch.num_rows
    return n


def _os_error(e: OSError, target: Path) -> WarehouseError:
    if e.errno in NO_SPACE:
        return WarehouseError(
            f"no space left writing {target}: free disk space and run the command again "
            "(nothing was written)"
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WarehouseError(f"{target}: permission denied writing to {target.parent}")
    return WarehouseError(f"{target}: cannot write the output ({e.strerror or e})")


@contextmanager
def output_folder(path: str | os.PathLike) -> Iterator[Path]:
    """``with output_folder(out) as folder:`` write files into ``folder``; if the block
    fails, what it created there is removed (the folder too, when it made it), so a
    failed command leaves no half of its output beside what was there before.

    Refuses a path that exists and is not a folder (a file, a device, a link to one).
    """
    p = Path(path)
    if p.exists() and not p.is_dir() or p.is_symlink() and not p.is_dir():
        raise WarehouseError(f"{path} exists and is not a folder: give a folder for the output")
    top = p  # the highest folder the block may create: removed on failure
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    made = not p.exists()
    before = set() if made else set(p.iterdir())
    try:
        yield p
    except BaseException:
        if made:
            shutil.rmtree(top, ignore_errors=True)
        else:
            for q in set(p.iterdir()) - before:
                if q.is_dir() and not q.is_symlink():
                    shutil.rmtree(q, ignore_errors=True)
                else:
                    q.unlink(missing_ok=True)
        raise
