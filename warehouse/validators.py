"""The one set of option validators, shared by every command and the notebook API.

Each validator is a small frozen value: called with any value of any type, it
returns the value as stored or raises ``ValueError`` saying what is allowed
(``must be ...``, never an ``OverflowError`` or a bare traceback); its
``describe()`` is what help texts show.  Everything that checks an option
builds on these, wherever it sits:

* ``psystats/commands/option_types.py``: the click parameter types of every
  command (:class:`~psystats.commands.option_types.Checked` runs one of these
  while click parses, so a bad value is a usage error before any work);
* ``psystats/stats/options.py``: the sampling and analysis registry
  (``SamplingOptions``, ``Selection``);
* ``psystats/scoring/config.py`` and ``scoring/runner.py``: ``ScorerConfig``
  and ``RunOptions``;
* ``psystats/warehouse/settings.py``: memory limit, temp folder, lock timeout.

They live in the lowest layer so that all of these can import them.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

INT64_MAX = 2**63 - 1  # what DuckDB, numpy and torch hold in one integer
MAX_TEXT = 10_000  # characters of a name or other short text option


def did_you_mean(name: str, candidates: Sequence[str], n: int = 3) -> str:
    """`` (did you mean 'x' or 'y'?)`` for the candidates close to ``name``, else ``""``."""
    cands = [c for c in candidates if c is not None]
    close = difflib.get_close_matches(name, cands, n=n, cutoff=0.6)
    if not close:
        # A different case or a name's tail (the hub id's model part) also counts.
        low = name.lower()
        close = [c for c in cands if c.lower() == low or c.lower().endswith("/" + low)][:n]
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


class Check(Protocol):
    """A validator: the value as stored, or ValueError saying why not; ``describe`` for help."""

    def __call__(self, value: Any) -> Any: ...

    def describe(self) -> str: ...


def integer(value: Any) -> int | None:
    """``value`` as an int, or None: ints, integral floats (``1e3``) and their text; not bools."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            value = text  # "1e3": an integral number written as a float
    x = number(value)
    return int(x) if x is not None and x.is_integer() else None


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (NaN, infinities, bools and non-numbers)."""
    if isinstance(value, bool):
        return None
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class IntIn:
    """An integer from ``lo`` to ``hi`` (default: any that fits int64)."""

    lo: int
    hi: int = INT64_MAX

    def __call__(self, value: Any) -> int:
        n = integer(value)
        if n is None or not self.lo <= n <= self.hi:
            raise ValueError(f"must be an integer {self._range()}, got {_short(value)}")
        return n

    def _range(self) -> str:
        return f"of at least {self.lo}" if self.hi == INT64_MAX else f"from {self.lo} to {self.hi}"

    def describe(self) -> str:
        return f"x>={self.lo}" if self.hi == INT64_MAX else f"{self.lo}<=x<={self.hi}"


@dataclass(frozen=True)
class FloatIn:
    """A finite number from ``lo`` to ``hi`` (above ``lo`` when ``open_lo``)."""

    lo: float
    hi: float = math.inf
    open_lo: bool = False

    def __call__(self, value: Any) -> float:
        x = number(value)
        low_ok = x is not None and (x > self.lo if self.open_lo else x >= self.lo)
        if x is None or not low_ok or x > self.hi:
            raise ValueError(f"must be a finite number {self._range()}, got {_short(value)}")
        return x

    def _range(self) -> str:
        low = f"above {self.lo:g}" if self.open_lo else f"of at least {self.lo:g}"
        if math.isinf(self.hi):
            return low
        return (
            f"{low} and at most {self.hi:g}" if self.open_lo else f"from {self.lo:g} to {self.hi:g}"
        )

    def describe(self) -> str:
        lo = f"{self.lo:g}<x" if self.open_lo else f"{self.lo:g}<=x"
        return lo if math.isinf(self.hi) else f"{lo}<={self.hi:g}"


@dataclass(frozen=True)
class Maybe:
    """None (the caller chooses), or what ``check`` accepts."""

    check: Check

    def __call__(self, value: Any) -> Any:
        return None if value is None else self.check(value)

    def describe(self) -> str:
        return self.check.describe()


@dataclass(frozen=True)
class OneOf:
    """One of ``choices`` (text)."""

    choices: tuple[str, ...]

    def __call__(self, value: Any) -> str:
        if isinstance(value, str) and value in self.choices:
            return value
        hint = did_you_mean(value, self.choices) if isinstance(value, str) else ""
        raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}{hint}")

    def describe(self) -> str:
        return "|".join(self.choices)


@dataclass(frozen=True)
class Flag:
    """True or False."""

    def __call__(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"must be True or False, got {value!r}")

    def describe(self) -> str:
        return "True|False"


@dataclass(frozen=True)
class Text:
    """A non-empty short text (a name, a condition, a prompt): no NUL, at most ``longest``."""

    longest: int = MAX_TEXT

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"must be a non-empty name, got {value!r}")
        if "\x00" in value or len(value) > self.longest:
            raise ValueError(
                f"must be text of at most {self.longest} characters without NUL, "
                f"got {_short(value)}"
            )
        return value

    def describe(self) -> str:
        return "TEXT"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib|%)\s*$", re.I)
_FACTORS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


@dataclass(frozen=True)
class ByteSize:
    """A size with its unit (``4GB``, ``512MiB``), or a percentage of RAM when ``percent``:
    above zero, as written (DuckDB and accelerate read the text)."""

    percent: bool = True

    def __call__(self, value: Any) -> str:
        text = str(value).strip() if isinstance(value, (str, int, float)) else ""
        m = _SIZE.match(text)
        if not m or (m.group(2) == "%" and not self.percent):
            raise ValueError(f"expected a size such as {self.describe()}, got {_short(value)}")
        amount, unit = float(m.group(1)), m.group(2).lower()
        if unit == "%":
            if not 0 < amount <= 100:
                raise ValueError(f"a percentage of RAM is more than 0 and at most 100, got {text}")
        elif not math.isfinite(amount) or amount * _FACTORS[unit] < 1:
            raise ValueError(f"expected a size above 0, such as 4GB, got {text}")
        return text

    def describe(self) -> str:
        return "4GB, 512MiB or 50% (of RAM)" if self.percent else "4GB or 512MiB"


def _kind(st: os.stat_result) -> str:
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device"
    if stat.S_ISFIFO(st.st_mode):
        return "a pipe"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket"
    return "a folder" if stat.S_ISDIR(st.st_mode) else "a file"


def _path_text(value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"must be a path, got {value!r}")
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise ValueError(f"must be a path, got {_short(value)}")
    if len(text) > 4096:
        raise ValueError(f"is too long for a path ({len(text)} characters)")
    return text


@dataclass(frozen=True)
class PathOf:
    """A path of one kind: ``file`` (an existing regular file to read), ``folder`` (a
    folder to write into: may not exist yet, must not be a file or device), or
    ``existing-folder`` (a folder to read).  Output files are checked by
    ``warehouse.outputs.check_target`` when they are written."""

    kind: str  # file | folder | existing-folder

    def __call__(self, value: Any) -> str:
        text = _path_text(value)
        shown = text if text.isprintable() else repr(text)  # a line break stays in the line
        try:
            st: os.stat_result | None = os.stat(text)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise ValueError(f"{shown}: cannot be read ({e.strerror})") from None
        if self.kind == "folder":
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise ValueError(f"{shown} is {_kind(st)}, not a folder")
            return text
        if st is None:
            raise ValueError(f"{shown} does not exist")
        want_dir = self.kind == "existing-folder"
        if want_dir != stat.S_ISDIR(st.st_mode) or not want_dir and not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{shown} is {_kind(st)}, not {'a folder' if want_dir else 'a file'}")
        return text

    def describe(self) -> str:
        return {"file": "FILE", "folder": "DIR", "existing-folder": "DIR"}[self.kind]


@dataclass(frozen=True)
class Shard:
    """``I/N``: part I (0-based) of N, as ``(I, N)``."""

    def __call__(self, value: Any) -> tuple[int, int]:
        i_text, slash, n_text = (
            str(value).partition("/") if isinstance(value, str) else ("", "", "")
        )
        i, n = integer(i_text), integer(n_text)
        if not slash or i is None or n is None:
            raise ValueError(
                f"{_short(value)}: expected I/N, e.g. 0/8 (I from 0 to N-1, e.g. "
                "$SLURM_ARRAY_TASK_ID/8)"
            )
        if not 0 <= i < n <= INT64_MAX:
            raise ValueError(f"{_short(value)}: need 0 <= I < N (I is 0-based)")
        return i, n

    def describe(self) -> str:
        return "I/N"


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a huge value stays one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
