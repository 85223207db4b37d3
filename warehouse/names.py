"""Names users type (studies, experiments, conditions, models): checked, with "did you mean".

A name that is not in the warehouse is an error naming the close matches
(or, when none is close, the names there are, if few) and the command
that lists them all; the CLI and the notebook API check alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from .errors import WarehouseError
from .validators import did_you_mean

# Fewer known names than this are listed in full when none is close to the one given.
LIST_ALL_BELOW = 8


# What a user may name on the command line, and where the names live.
NAMED: dict[str, tuple[str, str]] = {
    "experiment": (
        "SELECT DISTINCT experiment FROM participants",
        'psystats sql "SELECT DISTINCT study, experiment FROM participants ORDER BY 1, 2"',
    ),
    "study": (
        "SELECT DISTINCT study FROM participants",
        "psystats summary",
    ),
    "condition": (
        "SELECT DISTINCT condition FROM score_runs",
        'psystats sql "SELECT model, condition, status FROM score_runs"',
    ),
    "model": ("SELECT name FROM models", "psystats models list"),
}


def check_names(con: duckdb.DuckDBPyConnection, kind: str, names: Sequence[str] | None) -> None:
    """A WarehouseError for the first of ``names`` that is not a known ``kind``.

    The message has a "did you mean" from the known names and a command that
    lists them; an experiment that is really a study says so.
    """
    if not names:
        return
    query, listing = NAMED[kind]
    known = [r[0] for r in con.execute(query).fetchall()]
    have = set(known)
    for name in names:
        if name in have:
            continue
        if kind == "experiment":
            studies = {r[0] for r in con.execute(NAMED["study"][0]).fetchall()}
            if name in studies:
                raise WarehouseError(
                    f"no such experiment {name!r}: that is a study; list its experiments "
                    f'with `psystats sql "SELECT DISTINCT experiment FROM participants '
                    f'WHERE study = ?" -p {name}`'
                )
        if not known:
            where = "scored" if kind == "condition" else "in this warehouse"
            raise WarehouseError(f"no such {kind} {name!r}: no {kind} is {where} yet")
        hint = did_you_mean(name, known)
        if not hint and len(known) < LIST_ALL_BELOW:
            # Nothing close, but few names: say them (imported scores have only 'imported').
            hint = " (did you mean " + " or ".join(repr(k) for k in sorted(known)) + "?)"
        raise WarehouseError(f"no such {kind} {name!r}{hint}; list them with `{listing}`")
