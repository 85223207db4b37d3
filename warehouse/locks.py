"""Who holds the warehouse file, and waiting a bounded time for it.

DuckDB lets one process write a file while no other reads it; its lock
error names only a PID and a program (``/usr/bin/python3.11``).  So every
psystats process that takes the file leaves a small lock note,
``<warehouse>.lock-notes/<pid>.json``, saying which command it runs and
since when; a process that finds the file held names that command
(``psystats ingest data/ (PID 4242, started 2026-12-06 20:41:16)``).

Notes are written once per process and file, never block anything (a
folder that cannot be written just has none), and are trusted only while
they describe the live process DuckDB names: same PID and, on Linux, the
same process start time.  Notes of processes that ended are pruned by the
next process that writes one.

Taking turns.  A process that waits for the file says so in the same
folder (``waiting-<pid>``) until it gets it.  A writer that holds the file
in short pieces (mode ``"statement"``: ingest batches, an import's commit)
lets such waiters in after each piece (:func:`yield_to_waiters`), so a
reader is not starved by back-to-back commits; nobody waiting costs one
folder listing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import duckdb

T = TypeVar("T")
NOTES_SUFFIX = ".lock-notes"
_written: set[tuple[str, int]] = set()


def notes_folder(path: str | os.PathLike) -> Path:
    return Path(f"{os.path.abspath(path)}{NOTES_SUFFIX}")


def _process_start(pid: int) -> float | None:
    try:
        return os.stat(f"/proc/{pid}").st_ctime
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def write_note(path: str | os.PathLike, command: str, mode: str) -> None:
    """Record that this process took the file at ``path`` (once per process; best effort)."""
    if str(path) == ":memory:":
        return
    key = (os.path.abspath(path), os.getpid())
    if key in _written:
        return
    _written.add(key)
    folder = notes_folder(path)
    try:
        folder.mkdir(exist_ok=True)
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "mode": mode,
            "started": datetime.now().isoformat(sep=" ", timespec="seconds"),
            "process_start": _process_start(os.getpid()),
        }
        tmp = folder / f".{os.getpid()}.json.tmp"
        tmp.write_text(json.dumps(note))
        os.replace(tmp, folder / f"{os.getpid()}.json")
        _prune(folder)
    except OSError:
        return  # a read-only folder: the lock message then names the PID only


def _prune(folder: Path) -> None:
    host = socket.gethostname()
    for entry in folder.glob("*.json"):
        try:
            pid = int(entry.stem)
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            if json.loads(entry.read_text()).get("host") == host:
                entry.unlink(missing_ok=True)
        except (OSError, ValueError, AttributeError):
            continue


def read_note(path: str | os.PathLike, pid: int) -> dict | None:
    """The note of process ``pid`` on the file at ``path``, if it still describes that process."""
    try:
        note = json.loads((notes_folder(path) / f"{int(pid)}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or note.get("pid") != pid:
        return None
    if note.get("host") == socket.gethostname():
        started = _process_start(pid)
        recorded = note.get("process_start")
        if started is not None and recorded is not None and abs(started - recorded) > 1:
            return None  # the PID was reused by another process
    return note


_LOCK = re.compile(r"held in (.*?) \(PID (\d+)\)")


def holder(path: str, message: str) -> str | None:
    """Who holds the file, from DuckDB's lock error ``message`` and the holder's note;
    None when ``message`` is not a lock error."""
    if "Could not set lock" not in message:
        return None
    m = _LOCK.search(message)
    if not m:
        return "another process"
    program, pid = m.group(1), int(m.group(2))
    note = read_note(path, pid)
    if note is None:
        return f"PID {pid} ({program})"
    where = "" if note.get("host") == socket.gethostname() else f" on {note.get('host')}"
    return f"`{note.get('command')}` (PID {pid}{where}, started {note.get('started')})"


WAITING = "waiting-"
# How long a writer lets waiters in after a write: more than a waiter's longest
# pause between two tries (1 s, below), so it does not miss the gap.
YIELD_SECONDS = 2.0


def _waiting_file(path: str | os.PathLike) -> Path:
    return notes_folder(path) / f"{WAITING}{os.getpid()}"


def _waiters(path: str | os.PathLike) -> list[int]:
    """PIDs of live processes on this host waiting for the file (stale marks removed)."""
    pids = []
    try:
        marks = list(notes_folder(path).glob(f"{WAITING}*"))
    except OSError:
        return []
    for mark in marks:
        try:
            pid = int(mark.name[len(WAITING) :])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        if _alive(pid):
            pids.append(pid)
        else:
            mark.unlink(missing_ok=True)
    return pids


def yield_to_waiters(path: str | os.PathLike, limit: float = YIELD_SECONDS) -> None:
    """After letting the file go: give processes waiting for it up to ``limit`` seconds
    to take it, before this process takes it again."""
    deadline = time.monotonic() + limit
    while _waiters(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_while_locked(
    attempt: Callable[[], T],
    path: str,
    timeout: float,
    on_wait: Callable[[str], None] | None,
) -> T:
    """``attempt()`` until it does not fail with DuckDB's lock error, for up to ``timeout``
    seconds, telling ``on_wait`` once who holds the file.  Any other error, and the lock
    error once the time is up, is raised as DuckDB raised it."""
    deadline = time.monotonic() + timeout
    delay, told = 0.05, False
    mark: Path | None = None
    try:
        while True:
            try:
                return attempt()
            except duckdb.Error as e:
                who = holder(path, str(e))
                left = deadline - time.monotonic()
                if who is None or left <= 0:
                    raise
                if mark is None:
                    mark = _mark_waiting(path)
                if not told and on_wait is not None:
                    on_wait(
                        f"{path} is in use by {who}; waiting up to {timeout:g} s for it "
                        "(--lock-timeout to change)"
                    )
                    told = True
                # Short first tries catch a writer's brief commit; back off to 1 s after.
                time.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)
    finally:
        if mark is not None:
            mark.unlink(missing_ok=True)


def _mark_waiting(path: str) -> Path:
    mark = _waiting_file(path)
    try:
        mark.parent.mkdir(exist_ok=True)
        mark.touch()
    except OSError:
        pass  # a folder this process cannot write: it just gets no turn
    return mark
