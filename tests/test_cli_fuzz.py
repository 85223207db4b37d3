"""Issue 21 item 1: every option of every command, fed hostile values, as a class.

The command tree is walked as the CLI reference walks it
(``scripts/make_cli_docs.walk``).  For each command, hypothesis picks one of its
parameters (options and arguments; flags take no value) and a hostile value
(negative, zero, beyond int64, NaN, ±inf, empty, huge, unicode, device paths,
folders, missing files, random text) and runs the command in-process against
a copy of a small real warehouse, from an empty working folder.  Whatever
the value, the command either succeeds or exits 1/2 with exactly one
``Error: ...`` line and no traceback; when it fails, the warehouse holds what
it held and the working folder is still empty (no half-written output).

No model loads and no fit samples: the other parameters of each command are
filled with values that make it end quickly whatever the fuzzed value does
(``BASE``: a selection no score matches, the baseline scorer on a study that
does not exist, ids that do not exist), so an accepted value costs a
fraction of a second.  ``demo`` is skipped: any valid value starts the whole
pipeline (its options are the fit registry's, fuzzed through ``fit``).

Fast suite: ``FAST_EXAMPLES`` hypothesis examples per command and per API
method; slow suite: ``SLOW_EXAMPLES`` per command, and every listed value
against every parameter of every command and API method.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import click
import duckdb
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psystats.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from make_cli_docs import walk  # noqa: E402

FAST_EXAMPLES = 5
SLOW_EXAMPLES = 40

SKIP = {"demo": "any valid value runs the whole pipeline (models, fits, report)"}

# Values a hostile user types; {fix} is a folder of small fixture files outside the cwd.
HOSTILE = [
    "-1",
    "0",
    "-0",
    "1",
    "9223372036854775807",
    "9223372036854775808",
    "99999999999999999999",
    "-99999999999999999999",
    "1e400",
    "-1e400",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "0.5",
    "-5GB",
    "0GB",
    "5/2",
    "1/0",
    "",
    " ",
    "x" * 5000,
    "ü名前\u202eé",
    "😀",
    "/dev/full",
    "/dev/null",
    ".",
    "{fix}",
    "{fix}/missing.file",
    "/nonexistent/folder/file",
    "{fix}/empty.txt",
    "{fix}/bad.json",
    "a=b",
    "type=instruct",
    ";",
    "DROP TABLE responses",
]
# Positional paths that would walk the whole file system or read a device forever
# are a request, not a mistake: not fed to ingest/merge.
NOT_FOR_PATH_ARGUMENTS = {"/", "/dev/full"}

# --db is one option (common.db_option) opened in one of a few modes: fuzzed where each
# mode (read, write, statement, create) is used.
DB_FUZZED = {"init", "summary", "ingest", "models add", "sql", "check"}

# Parameters that make each command end quickly whatever the fuzzed value does.
BASE: dict[str, dict[str, list[str]]] = {
    "ingest": {"paths": ["{fix}/empty"]},
    "sql": {"query": ["SELECT 1"]},
    "models add": {"source": ["{fix}/empty"]},
    "models load": {"file": ["{fix}/empty.txt"]},
    "models remove": {"name": ["nosuch"]},
    "models set": {"name": ["nosuch"], "assignments": ["family=x"]},
    "models show": {"name": ["nosuch"]},
    "score": {"model_name": ["--model", "baseline:uniform"], "studies": ["--study", "nosuch"]},
    "scores export": {"out": ["-o", "out.csv"], "run_id": ["--run", "999"]},
    "scores import": {"file": ["{fix}/empty.txt"], "model": ["--model", "nosuch"]},
    "merge": {"directory": ["{fix}/empty"]},
    "fit accuracy": {"condition": ["--condition", "nosuch"]},
    "fit compare": {"fit_ids": ["999"]},
    "fit effects": {"condition": ["--condition", "nosuch"]},
    "fit formula": {"formula": ["nll ~ 1"], "condition": ["--condition", "nosuch"]},
    "fit generations": {"condition": ["--condition", "nosuch"]},
    "fit persona": {"post_condition": ["--persona-condition", "nosuch"]},
    "fit predict": {"fit_id": ["999"], "new_pair": ["--new-pair", "type=instruct"]},
    "export cells": {"out": ["-o", "cells.csv"], "condition": ["--condition", "nosuch"]},
    "report": {"out": ["-o", "report.pdf"], "truth": ["--truth", "{fix}/bad.json"]},
    "plot": {"name": ["effects"], "out": ["-o", "plot.svg"]},
    "card": {"model": ["nosuch"], "out": ["-o", "card.html"]},
    "manifest": {"ref": ["999"]},
    "simulate check": {"truth_file": ["{fix}/bad.json"]},
    "simulate study": {"out": ["-o", "sim"], "seed": ["--seed", "0"]},
}


def _commands() -> list[tuple[str, click.Command]]:
    return [
        (" ".join(path[1:]), cmd)
        for path, cmd, _ in walk(main, ["psystats"])
        if not isinstance(cmd, click.Group)
    ]


COMMANDS = _commands()


def fuzzed(name: str, cmd: click.Command) -> list[click.Parameter]:
    """The parameters that take a value (not flags, not --help; --db where it opens the
    warehouse in a mode of its own)."""
    return [
        p
        for p in cmd.params
        if not (isinstance(p, click.Option) and (p.is_flag or p.count or p.name == "help"))
        and (p.name != "db" or name in DB_FUZZED)
    ]


def _tokens(param: click.Parameter, value: str) -> list[str]:
    return [param.opts[0], value] if isinstance(param, click.Option) else [value]


def argv(name: str, cmd: click.Command, param: click.Parameter, value: str, fix: Path):
    """The command line: the base values of the other parameters, then the fuzzed one
    (positional arguments after ``--`` so a value starting with '-' stays a value)."""
    base = BASE.get(name, {})
    options: list[str] = []
    arguments: list[str] = []
    for p in cmd.params:
        tokens = _tokens(p, value) if p is param else base.get(p.name or "", [])
        (options if isinstance(p, click.Option) else arguments).extend(tokens)
    words = [*name.split(), *options, "--", *arguments]
    return [w.replace("{fix}", str(fix)) for w in words]


def snapshot(db: Path) -> dict[str, int]:
    """Row counts of every table (what a failed command must leave as it was)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'main' AND table_type = 'BASE TABLE'"
            ).fetchall()
        ]
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] for t in tables}
    finally:
        con.close()


@pytest.fixture(scope="module")
def world(small_warehouse: Path, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    db = root / "fuzz.duckdb"
    shutil.copy(small_warehouse, db)
    fix = root / "fix"
    (fix / "empty").mkdir(parents=True)
    (fix / "empty.txt").write_text("")
    (fix / "bad.json").write_text("{not json")
    return db, fix


@contextlib.contextmanager
def _chdir(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def check(name: str, cmd: click.Command, world, param: click.Parameter, value: str) -> None:
    db, fix = world
    words = argv(name, cmd, param, value, fix)
    before = snapshot(db)
    runner = CliRunner()
    env = {"HF_HUB_OFFLINE": "1", "PSYSTATS_LOCK_TIMEOUT": "0"}
    with tempfile.TemporaryDirectory(dir=fix.parent) as cwd, _chdir(cwd):
        res = runner.invoke(main, ["--db", str(db), *words], env=env)
        shown = f"psystats {' '.join(w[:60] for w in words)}\n{res.output[-1500:]}"
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            tb = "".join(traceback.format_exception(*res.exc_info)[-3:])  # type: ignore[misc]
            pytest.fail(f"{shown}\ntraceback:\n{tb[-1500:]}")
        assert "Traceback" not in res.output, shown
        if res.exit_code == 0:
            return
        assert res.exit_code in (1, 2), shown
        lines = res.output.rstrip("\n").splitlines()
        errors = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
        # One error line, and it is the last thing said.
        assert len(errors) == 1 and errors[0] == len(lines) - 1, shown
        left = sorted(os.listdir(cwd))
        assert left == [], f"{shown}\nleft behind: {left}"
    assert snapshot(db) == before, shown


def _values(param: click.Parameter) -> st.SearchStrategy[str]:
    hostile = HOSTILE
    if isinstance(param, click.Argument):
        hostile = [v for v in HOSTILE if v not in NOT_FOR_PATH_ARGUMENTS]
    return st.one_of(
        st.sampled_from(hostile),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(
            alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
            max_size=30,
        ),
    )


def budget(examples: int):
    """A fixed, reproducible example budget (no example database, no deadline)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )


def _case(name: str, cmd: click.Command):
    params = fuzzed(name, cmd)
    return st.sampled_from(params).flatmap(lambda p: st.tuples(st.just(p), _values(p)))


def _run(name: str, cmd: click.Command, world, examples: int) -> None:
    if name in SKIP:
        pytest.skip(SKIP[name])
    if not fuzzed(name, cmd):
        pytest.skip("no parameter takes a value")

    @budget(examples)
    @given(case=_case(name, cmd))
    def inner(case):
        param, value = case
        check(name, cmd, world, param, value)

    inner()


IDS = [n for n, _ in COMMANDS]


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=IDS)
def test_hostile_values_fail_in_one_line_or_succeed(name, cmd, world):
    _run(name, cmd, world, FAST_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=IDS)
def test_hostile_values_fail_in_one_line_or_succeed_longer(name, cmd, world):
    _run(name, cmd, world, SLOW_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=IDS)
def test_every_listed_value_of_every_parameter(name, cmd, world):
    """The listed hostile values, each against every parameter (no sampling)."""
    if name in SKIP:
        pytest.skip(SKIP[name])
    for param in fuzzed(name, cmd):
        for value in HOSTILE:
            if isinstance(param, click.Argument) and value in NOT_FOR_PATH_ARGUMENTS:
                continue
            check(name, cmd, world, param, value)


# --------------------------------------------------------------------------- notebook API

API_HOSTILE = [
    -1,
    0,
    2**70,
    -(2**70),
    float("nan"),
    float("inf"),
    -float("inf"),
    1.5,
    True,
    None,
    "",
    "x" * 5000,
    "ü名前\u202e",
    "/dev/full",
    "-1",
    [],
    ["nosuch"],
    {},
    b"bytes",
]
# Positional parameters each method needs, filled so that it ends quickly.
API_BASE: dict[str, dict] = {
    "sql": {"query": "SELECT 1"},
    "token_scores": {"run_id": 999},
    "word_scores": {"run_id": 999},
    "params": {"fit_id": 999},
    "fit_info": {"fit_id": 999},
    "posterior": {"fit_id": 999},
    "formula_model": {"fit_id": 999},
    "predict": {"fit_id": 999, "new_pair": "type=instruct"},
    "compare": {"fit_ids": [999]},
    "plot": {"name": "forest", "output": "plot.svg"},
    "manifest": {"ref": 999},
    "fit": {"condition": "nosuch"},
    "fit_formula": {"formula": "nll ~ 1", "condition": "nosuch"},
}
API_SKIP = {"connection"}  # a DuckDB connection: the user's own SQL from there on


def _api_methods():
    import inspect

    from psystats.api import Warehouse

    out = []
    for name, method in vars(Warehouse).items():
        if name.startswith("_") or name in API_SKIP or not callable(method):
            continue
        sig = inspect.signature(inspect.unwrap(method))
        params = [
            p
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        if name in ("fit", "fit_formula"):  # options by name: a few of the registry's
            params = [
                *params,
                *(
                    inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY)
                    for n in ("draws", "chains", "target_accept", "models")
                ),
            ]
        out.append((name, [p.name for p in params]))
    return out


API_METHODS = _api_methods()


def api_check(wh, name: str, param: str, value, cwd: Path) -> None:
    from psystats.warehouse.errors import WarehouseError

    kw = {**API_BASE.get(name, {}), param: value}
    before = sorted(os.listdir(cwd))
    try:
        getattr(wh, name)(**kw)
    except WarehouseError as e:
        assert "\n" not in str(e).strip(), f"wh.{name}({param}={value!r:.60}): {e}"
        assert sorted(os.listdir(cwd)) == before, f"wh.{name}({param}={value!r:.60}) left files"
    except Exception as e:  # noqa: BLE001 - the point: nothing but WarehouseError
        tb = "".join(traceback.format_exception(e)[-3:])
        pytest.fail(f"wh.{name}({param}={value!r:.60}) raised {type(e).__name__}:\n{tb}")


def _api_world(world, name: str):
    import psystats as ps

    db, fix = world
    cwd = fix.parent / f"api-{name}"
    cwd.mkdir(exist_ok=True)
    return ps.open(db), db, cwd


@pytest.mark.parametrize(("name", "params"), API_METHODS, ids=[n for n, _ in API_METHODS])
def test_notebook_api_hostile_values_raise_warehouse_error(name, params, world, monkeypatch):
    wh, db, cwd = _api_world(world, name)
    before = snapshot(db)
    monkeypatch.chdir(cwd)
    if not params:
        pytest.skip("takes no value")

    @budget(FAST_EXAMPLES)
    @given(param=st.sampled_from(params), value=st.sampled_from(API_HOSTILE))
    def inner(param, value):
        api_check(wh, name, param, value, cwd)

    inner()
    assert snapshot(db) == before


@pytest.mark.slow
@pytest.mark.parametrize(("name", "params"), API_METHODS, ids=[n for n, _ in API_METHODS])
def test_notebook_api_every_hostile_value_of_every_parameter(name, params, world, monkeypatch):
    wh, db, cwd = _api_world(world, name)
    before = snapshot(db)
    monkeypatch.chdir(cwd)
    for param in params:
        for value in API_HOSTILE:
            api_check(wh, name, param, value, cwd)
    assert snapshot(db) == before


def test_notebook_api_unknown_keywords_say_did_you_mean(world):
    import psystats as ps
    from psystats.warehouse.errors import WarehouseError

    wh = ps.open(world[0])
    with pytest.raises(WarehouseError, match=r"unknown responses\(\) option 'limt'.*'limit'"):
        wh.responses(limt=3)
    with pytest.raises(WarehouseError, match=r"did you mean 'run_id'"):
        wh.scores(run_idd=1)
    with pytest.raises(WarehouseError, match=r"did you mean 'draws'"):
        wh.fit("effects", drawz=10)
