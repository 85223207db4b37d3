"""The click parameter types of every command: each runs one validator of the one set.

A value is checked while click parses the command line, so it is refused as a
usage error (exit 2, one line naming the option and what it allows) before
any model loads, any file is read or any sampling starts.  The validators are
``psystats.warehouse.validators`` (the same ones the notebook API, the
option dataclasses and the process-wide settings use); this module only
adapts them to click.  Use the ready types below, or ``Checked(validator,
metavar)`` for a range of one option's own.
"""

from __future__ import annotations

from typing import Any

import click

from psystats.warehouse.validators import (
    ByteSize,
    Check,
    FloatIn,
    IntIn,
    PathOf,
    Shard,
    Text,
)


class Checked(click.ParamType):
    """A click type that checks (and converts) a value with a validator."""

    def __init__(self, check: Check, metavar: str, label: str = "") -> None:
        # label: a name the message starts with ("draws must be ..."), as the API says it
        self.check, self._metavar, self.label = check, metavar, label
        self.name = label or metavar.lower()

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self._metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.check(value)
        except ValueError as e:
            self.fail(f"{self.label} {e}" if self.label else str(e), param, ctx)


# Counts and sizes: whole numbers that fit int64 (DuckDB, numpy, torch).
COUNT = Checked(IntIn(0), "N")  # 0 or more
POSITIVE = Checked(IntIn(1), "N")  # 1 or more
SEED = Checked(IntIn(0, 2**32 - 1), "INTEGER")  # what every seeded generator accepts
ID = Checked(IntIn(1), "ID")  # a row id (fit, run)
FRACTION = Checked(FloatIn(0.0, 1.0, open_lo=True), "FRACTION")  # 0 < x <= 1
NON_NEGATIVE = Checked(FloatIn(0.0), "NUMBER")  # a finite number >= 0
BYTES = Checked(ByteSize(percent=False), "SIZE")
TEXT = Checked(Text(), "TEXT")
SHARD = Checked(Shard(), "I/N")
# Paths by kind (an output file is checked by warehouse.outputs.check_target when written).
FILE = Checked(PathOf("file"), "FILE")
FOLDER = Checked(PathOf("folder"), "DIR")
EXISTING_FOLDER = Checked(PathOf("existing-folder"), "DIR")


def at_least(lo: int, metavar: str = "N") -> Checked:
    """A whole number of at least ``lo`` (fits int64)."""
    return Checked(IntIn(lo), metavar)
