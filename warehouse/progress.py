"""One progress reporter for every command: a count, its rate and the time left.

Every long job (scoring tokens, ingesting rows, importing score rows,
merging shards, the demo's steps, sampling chains) reports through
:data:`progress`, so they all look and behave alike:

* on a terminal, a live ``rich`` bar on stderr::

      scoring ━━━━━━━━━━╸━━━━━━━━━━  41%  12,345/30,000 tokens  321 tokens/s  0:38  about 0:55 left

* when stderr is not a terminal (a log file, a CI job, ``2> log``), plain
  lines at most every ``interval`` seconds and one when the job ends, so a
  log stays readable::

      scoring: 12,345/30,000 tokens (41%), 321 tokens/s, 0:38 elapsed, about 0:55 left
      scoring: done, 30,000 tokens in 1:33 (322 tokens/s)

* with ``quiet=True`` (the commands' ``-q/--quiet``), nothing at all.

The rate is the count so far over the time since the reporter started (a
steady figure on a busy machine); the time left is what remains at that
rate.  A total may be unknown (``None``: count and rate only) or grow while
the job runs (:meth:`Reporter.set_total`, e.g. when the size of later work is
only estimated).  :meth:`Reporter.advance` may be called from any thread.
Messages for the user while the bar is live go through :meth:`Reporter.say`,
which prints them above the bar instead of through it.

This module sits in the lowest layer (``warehouse``) so that every command
can use it; it imports nothing from psystats.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

# Plain lines: at most one per this many seconds (the final line always comes).
DEFAULT_INTERVAL = 10.0


def format_duration(seconds: float) -> str:
    """``0:07``, ``4:21``, ``1:02:03``: minutes and seconds, hours when there are some."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_count(n: float) -> str:
    """Whole numbers with thousands separators; fractions with one decimal."""
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"


class Reporter:
    """A progress reporter for one job (use it as a context manager; :data:`progress`).

    ``label`` names the job (``"scoring"``), ``total`` is how many ``unit``
    s it will take (None: unknown), ``quiet`` silences it.  ``stream``
    defaults to stderr; ``terminal`` overrides the check whether it is one;
    ``clock`` is the time source (tests pass a fake one).
    """

    def __init__(
        self,
        label: str,
        total: float | None = None,
        unit: str = "",
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        interval: float = DEFAULT_INTERVAL,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.unit = unit
        self.total = total
        self.done = 0.0
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.interval = float(interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._last_line: float | None = None
        self._closed = False
        self.running = False  # started (and not yet closed)
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty()) if terminal is None else terminal
        self._bar: Any = None
        self._task: Any = None

    # -- numbers --------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return max(0.0, self._clock() - self._started)

    @property
    def rate(self) -> float | None:
        """Units per second so far (None before anything is done)."""
        t = self.elapsed
        return self.done / t if self.done > 0 and t > 0 else None

    @property
    def remaining(self) -> float | None:
        """Seconds left at the current rate (None without a total or a rate)."""
        rate = self.rate
        if self.total is None or rate is None:
            return None
        return max(0.0, self.total - self.done) / rate

    def _units(self) -> str:
        return f" {self.unit}" if self.unit else ""

    def _count_text(self) -> str:
        if self.total is None:
            return f"{format_count(self.done)}{self._units()}"
        return f"{format_count(self.done)}/{format_count(self.total)}{self._units()}"

    def _rate_text(self) -> str:
        rate = self.rate
        unit = self.unit or "items"
        if rate is None:
            return f"- {unit}/s"
        # Slow jobs (demo steps, chains) need a digit after the point; fast ones do not.
        return f"{rate:,.0f} {unit}/s" if rate >= 10 else f"{rate:.2g} {unit}/s"

    def _left_text(self) -> str:
        left = self.remaining
        return f"about {format_duration(left)} left" if left is not None else "time left unknown"

    def line(self) -> str:
        """The status as one plain line (what a log receives)."""
        pct = ""
        if self.total:
            pct = f" ({min(100.0, 100.0 * self.done / self.total):.0f}%)"
        parts = [
            f"{self._count_text()}{pct}",
            self._rate_text(),
            f"{format_duration(self.elapsed)} elapsed",
        ]
        if self.total is not None:
            parts.append(self._left_text())
        return f"{self.label}: " + ", ".join(parts)

    def final_line(self) -> str:
        rate = self.rate
        speed = f" ({self._rate_text()})" if rate is not None else ""
        return (
            f"{self.label}: done, {format_count(self.done)}{self._units()} in "
            f"{format_duration(self.elapsed)}{speed}"
        )

    # -- life -----------------------------------------------------------------

    def __enter__(self) -> Reporter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(success=exc_type is None)

    def start(self, since: float | None = None) -> None:
        """Start the clock (and the bar, on a terminal); ``since``: a start time on its clock."""
        self._started = self._clock() if since is None else since
        self.running = True
        if self.quiet or not self.terminal:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[pct]}"),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[left]}"),
            console=Console(file=self.stream, force_terminal=True),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total, **self._fields())

    def _fields(self) -> dict[str, str]:
        pct = f"{min(100.0, 100.0 * self.done / self.total):3.0f}%" if self.total else ""
        return {
            "pct": pct,
            "count": self._count_text(),
            "rate": self._rate_text(),
            "left": self._left_text() if self.total is not None else "",
        }

    def advance(self, n: float = 1) -> None:
        """Count ``n`` more units done (any thread)."""
        with self._lock:
            self.done += n
            self._show()

    def set_total(self, total: float | None) -> None:
        """A new (better known, or grown) total."""
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.update(self._task, total=total, **self._fields())

    def _show(self) -> None:
        if self.quiet or self._closed:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, **self._fields())
            return
        now = self._clock()
        if self._last_line is None or now - self._last_line >= self.interval:
            self._last_line = now
            self._write(self.line())

    def say(self, message: str) -> None:
        """A message for the user (not shown when quiet), above a live bar."""
        if self.quiet:
            return
        with self._lock:
            if self._bar is not None:
                self._bar.console.print(message, markup=False, highlight=False)
            else:
                self._write(message)

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self, success: bool = True) -> None:
        """Stop the bar; without a terminal, write the final line (only after success)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started, self.running = self.running, False
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, **self._fields())
                self._bar.stop()
                self._bar = None
            elif success and started and not self.quiet:
                self._write(self.final_line())


# The name every job builds its reporter by: ``with progress("scoring", n, "tokens") as bar:``.
progress = Reporter
