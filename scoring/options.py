"""Finite option sets: which experiments have them, and how they are declared.

Some experiments' responses come from a small fixed set (``A``/``B``,
``yes``/``no``, a rating scale).  For those the engine also computes the
model's log-probability of *every* option in the response's context, and
renormalises over the set, so option-restricted accuracy and calibration can
be computed (``option_scores``).

Detection rule (documented in docs/scoring.md): an experiment has an option
set when it has at most ``max_options`` distinct responses and every one of
them occurs at least ``max(min_count, min_share * n_responses)`` times.
Experiments whose keys are re-drawn per trial from the alphabet (26 letters)
are therefore not detected; declare a set if you want one.

Declared sets (``--options EXPERIMENT=A|B`` or ``--options-file``) replace
detected ones and are never overwritten by detection.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import duckdb

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import transaction, where_clause

MAX_OPTIONS = 10
MIN_COUNT = 5
MIN_SHARE = 0.01


def detect(
    con: duckdb.DuckDBPyConnection,
    experiments: Sequence[str] | None = None,
    *,
    max_options: int = MAX_OPTIONS,
    min_count: int = MIN_COUNT,
    min_share: float = MIN_SHARE,
) -> dict[str, list[str]]:
    """Option sets found in the data, by experiment (options sorted)."""
    where, params = where_clause({"experiment": experiments})
    rows = con.execute(
        f"""
        WITH c AS (SELECT experiment, text, count(*) AS n FROM responses {where}
                   GROUP BY experiment, text),
             e AS (SELECT experiment, count(*) AS k, sum(n) AS total, min(n) AS least
                   FROM c GROUP BY experiment)
        SELECT c.experiment, c.text FROM c JOIN e USING (experiment)
        WHERE e.k <= ? AND e.least >= greatest(?, ? * e.total)
        ORDER BY c.experiment, c.text
    """,
        params + [max_options, min_count, min_share],
    ).fetchall()
    out: dict[str, list[str]] = {}
    for exp, text in rows:
        out.setdefault(exp, []).append(text)
    return out


def parse_declarations(values: Sequence[str] = (), path: str | None = None) -> dict[str, list[str]]:
    """Option sets from ``EXPERIMENT=opt1|opt2`` strings and/or a file.

    The file is CSV with columns ``experiment,option`` (one row per option),
    or JSON ``{"experiment": ["opt1", "opt2"]}``.
    """
    out: dict[str, list[str]] = {}
    for v in values:
        exp, sep, opts = v.partition("=")
        options = [o for o in opts.split("|") if o != ""]
        if not sep or not exp or len(options) < 2:
            raise WarehouseError(
                f"--options {v!r}: expected EXPERIMENT=OPTION|OPTION[|...] with at least two options"
            )
        out[exp] = options
    if path:
        p = Path(path)
        if p.suffix.lower() == ".json":
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise WarehouseError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
            if not isinstance(data, dict):
                raise WarehouseError(f"{path}: expected an object {{experiment: [options]}}")
            for exp, opts in data.items():
                if not isinstance(opts, list) or len(opts) < 2:
                    raise WarehouseError(f"{path}: field '{exp}': expected a list of >= 2 options")
                out[exp] = [str(o) for o in opts]
        else:
            with open(p, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"experiment", "option"} <= set(reader.fieldnames):
                    raise WarehouseError(f"{path}:1: expected CSV columns 'experiment,option'")
                file_sets: dict[str, list[str]] = {}
                for line, row in enumerate(reader, start=2):
                    if not row["experiment"] or row["option"] is None or row["option"] == "":
                        raise WarehouseError(f"{path}:{line}: empty 'experiment' or 'option'")
                    file_sets.setdefault(row["experiment"], []).append(row["option"])
                for exp, file_opts in file_sets.items():
                    if len(file_opts) < 2:
                        raise WarehouseError(f"{path}: experiment '{exp}' has only one option")
                    out[exp] = file_opts
    return {e: sorted(set(o)) for e, o in out.items()}


def ensure(
    con: duckdb.DuckDBPyConnection,
    experiments: Sequence[str],
    declared: dict[str, list[str]] | None = None,
    *,
    detect_sets: bool = True,
) -> dict[str, list[str]]:
    """Store declared sets, detect missing ones, and return the sets of ``experiments``.

    One transaction.  Declared sets replace what an experiment had; detection
    only fills experiments with no stored set.
    """
    declared = declared or {}
    unknown = sorted(set(declared) - set(experiments))
    if unknown:
        known = {r[0] for r in con.execute("SELECT experiment FROM experiments").fetchall()}
        missing = [e for e in unknown if e not in known]
        if missing:
            raise WarehouseError(
                f"option set declared for unknown experiment(s): {', '.join(missing)}"
            )
    with transaction(con):
        for exp, opts in declared.items():
            con.execute("DELETE FROM option_sets WHERE experiment = ?", [exp])
            con.executemany(
                "INSERT INTO option_sets VALUES (?, ?, 'declared')", [[exp, o] for o in opts]
            )
        if detect_sets and experiments:
            where, params = where_clause({"experiment": list(experiments)})
            have = {
                r[0]
                for r in con.execute(
                    f"SELECT DISTINCT experiment FROM option_sets {where}", params
                ).fetchall()
            }
            todo = [e for e in experiments if e not in have]
            if todo:
                for exp, opts in detect(con, todo).items():
                    con.executemany(
                        "INSERT INTO option_sets VALUES (?, ?, 'detected')",
                        [[exp, o] for o in opts],
                    )
    return stored(con, experiments)


def stored(
    con: duckdb.DuckDBPyConnection, experiments: Sequence[str] | None = None
) -> dict[str, list[str]]:
    where, params = where_clause({"experiment": experiments})
    out: dict[str, list[str]] = {}
    for exp, opt in con.execute(
        f"SELECT experiment, option FROM option_sets {where} ORDER BY experiment, option", params
    ).fetchall():
        out.setdefault(exp, []).append(opt)
    return out
