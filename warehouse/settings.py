"""Process-wide warehouse options, validated in one place.

Three options apply to every connection a process opens, whichever command
or notebook opens it:

* ``memory_limit``: DuckDB's memory limit (``4GB``, ``512MiB``, ``50%``);
  beyond it joins and sorts spill to ``temp_dir``.  Default ``1GB``, which
  keeps a command's peak RSS under about 2 GiB on a shared workstation
  (DuckDB's own default is 80% of RAM).
* ``temp_dir``: where DuckDB spills; default ``<warehouse>.tmp`` next to the
  file (``.tmp`` in the current folder for an in-memory database).
* ``lock_timeout``: seconds to wait for a warehouse file another process
  holds (0: do not wait); default 30.

They come from, in order: the ``psystats`` options ``--memory-limit``,
``--temp-dir``, ``--lock-timeout``; the environment variables
``PSYSTATS_MEMORY_LIMIT``, ``PSYSTATS_TEMP_DIR``, ``PSYSTATS_LOCK_TIMEOUT``;
the defaults.  Every source is checked by the same validators, so a bad
value is refused with one line naming where it came from (``--lock-timeout
nan``, ``PSYSTATS_MEMORY_LIMIT=-5GB``), never silently replaced.

:func:`current` is what :func:`psystats.warehouse.db.open` uses.  The CLI
builds a :class:`Settings` from its options and makes it current for the
command with :func:`activate`, which also exports it to the environment so
that worker processes (Ray actors, subprocesses) start with the same
options; the previous state is restored when the command ends.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .validators import ByteSize, Check, FloatIn, PathOf

T = TypeVar("T")

MEMORY_ENV = "PSYSTATS_MEMORY_LIMIT"
TEMP_DIR_ENV = "PSYSTATS_TEMP_DIR"
LOCK_TIMEOUT_ENV = "PSYSTATS_LOCK_TIMEOUT"
DEFAULT_MEMORY_LIMIT = "1GB"
DEFAULT_LOCK_TIMEOUT = 30.0
# A week: longer than any command; what lies beyond is a typo (or inf).
MAX_LOCK_TIMEOUT = 7 * 24 * 3600.0


class SettingsError(ValueError):
    """A bad option value; the message names the option (or variable) and what is expected."""


def _setting(check: Check, value: object) -> Any:
    try:
        return check(value)
    except ValueError as e:
        raise SettingsError(str(e)) from None


def memory_limit(value: str) -> str:
    """A DuckDB memory limit as given (``4GB``, ``512MiB``, ``50%``) once checked.

    Refuses a negative, zero or unit-less size, ``nan`` and anything DuckDB
    would read as "no limit" (a tiny one is allowed: queries then fail with
    DuckDB's out-of-memory error, one line).  The message says what is expected; the
    caller says where the value came from.
    """
    return _setting(ByteSize(), value)


def lock_timeout(value: object) -> float:
    """Seconds to wait for another process's lock: finite, >= 0 (0: do not wait)."""
    try:
        return FloatIn(0.0, MAX_LOCK_TIMEOUT)(value)
    except ValueError:
        raise SettingsError(
            f"expected a number of seconds from 0 (do not wait) to {MAX_LOCK_TIMEOUT:g}"
        ) from None


def temp_dir(value: str) -> str:
    """A folder DuckDB may spill to: not empty, not an existing file."""
    return _setting(PathOf("folder"), str(value).strip())


def _checked(validate: Callable[[Any], T], value: Any, source: str) -> T:
    try:
        return validate(value)
    except SettingsError as e:
        raise SettingsError(f"{source}{value!r}: {e}") from None


def _command_line() -> str:
    """What the lock note says holds the file: the psystats command line, else the program."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    words = [prog, *sys.argv[1:]] if prog == "psystats" else [prog]
    return shlex.join(words)[:300]


@dataclass(frozen=True)
class Settings:
    """The validated process-wide options (see the module docstring).

    ``command`` is what a lock note names as holding the file (the CLI sets
    the psystats command line; default: this program's name).
    """

    memory_limit: str = DEFAULT_MEMORY_LIMIT
    temp_dir: str | None = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    command: str | None = None

    def __post_init__(self) -> None:
        checked = {
            "memory_limit": _checked(memory_limit, self.memory_limit, "memory_limit "),
            "lock_timeout": _checked(lock_timeout, self.lock_timeout, "lock_timeout "),
        }
        if self.temp_dir is not None:
            checked["temp_dir"] = _checked(temp_dir, self.temp_dir, "temp_dir ")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes``, validated like the original."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def temp_folder(self, path: str | os.PathLike | None) -> str:
        """Where a connection to the warehouse at ``path`` spills."""
        if self.temp_dir:
            return self.temp_dir
        return f"{path}.tmp" if path and str(path) != ":memory:" else ".tmp"

    def holder(self) -> str:
        return self.command or _command_line()

    def to_env(self) -> dict[str, str]:
        """The environment variables that give a worker process these settings."""
        env = {MEMORY_ENV: self.memory_limit, LOCK_TIMEOUT_ENV: f"{self.lock_timeout:g}"}
        if self.temp_dir:
            env[TEMP_DIR_ENV] = self.temp_dir
        return env


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``PSYSTATS_MEMORY_LIMIT``/``_TEMP_DIR``/``_LOCK_TIMEOUT`` (unset or
    empty: the default); a bad value raises :class:`SettingsError` naming the variable."""
    env = os.environ if environ is None else environ
    mem = env.get(MEMORY_ENV, "").strip()
    tmp = env.get(TEMP_DIR_ENV, "").strip()
    wait = env.get(LOCK_TIMEOUT_ENV, "").strip()
    return Settings(
        memory_limit=_checked(memory_limit, mem, f"{MEMORY_ENV}=") if mem else DEFAULT_MEMORY_LIMIT,
        temp_dir=_checked(temp_dir, tmp, f"{TEMP_DIR_ENV}=") if tmp else None,
        lock_timeout=(
            _checked(lock_timeout, wait, f"{LOCK_TIMEOUT_ENV}=") if wait else DEFAULT_LOCK_TIMEOUT
        ),
    )


_active: Settings | None = None


def current() -> Settings:
    """The settings in force: the activated ones, else read from the environment now."""
    return _active if _active is not None else from_env()


def activate(settings: Settings) -> Callable[[], None]:
    """Make ``settings`` current for this process and its future workers; returns the
    function that restores what was before (the CLI calls it when the command ends)."""
    global _active
    before_active = _active
    before_env = {k: os.environ.get(k) for k in (MEMORY_ENV, TEMP_DIR_ENV, LOCK_TIMEOUT_ENV)}
    _active = settings
    for key, value in settings.to_env().items():
        os.environ[key] = value

    def restore() -> None:
        global _active
        _active = before_active
        for key, value in before_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    return restore
