"""Messages: "did you mean", no such experiment, hints that are valid commands, and
no model code run on a warehouse's say-so."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from psystats.cli import main
from psystats.scoring import loader
from psystats.warehouse.errors import WarehouseError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "psystats" / "sample" / "psych201"

pytestmark = pytest.mark.usefixtures("offline_hub")


def cli(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def error_line(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, res.output
    return lines[0]


def parse_command(command: str) -> click.Context:
    """Parse a `psystats ...` hint as the CLI would (without running it); fails if invalid."""
    words = shlex.split(command)
    assert words[0] == "psystats", command
    ctx = main.make_context("psystats", words[1:], resilient_parsing=False)
    cmd, args = main, ctx._protected_args + ctx.args
    while isinstance(cmd, click.Group) and args:
        name, args = args[0], args[1:]
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"{command}: no command {name!r}"
        ctx = sub.make_context(name, list(args), parent=ctx)
        cmd, args = sub, ctx._protected_args + ctx.args if isinstance(sub, click.Group) else []
    return ctx


def hints(message: str) -> list[str]:
    return re.findall(r"`(psystats [^`]+)`", message)


def run_hint(command: str, db: Path):
    words = shlex.split(command)[1:]
    return cli("--db", db, *words)


@pytest.fixture(scope="module")
def wh(tmp_path_factory) -> Path:
    """The sample, with two imported 'models' (a base and its post-trained one) scored plain."""
    import duckdb

    root = tmp_path_factory.mktemp("msg")
    db = root / "w.duckdb"
    assert cli("--db", db, "ingest", SAMPLE, "-q").exit_code == 0
    con = duckdb.connect(str(db))
    rows = con.execute("SELECT response_id FROM responses ORDER BY 1").fetchall()
    con.close()
    for name, kind, shift in (("ext-base", "base", 0.0), ("ext-chat", "instruct", 0.3)):
        f = root / f"{name}.csv"
        f.write_text(
            "response_id,nll\n" + "".join(f"{r},{1 + (r % 5) / 4 + shift}\n" for (r,) in rows)
        )
        res = cli(
            "--db",
            db,
            "scores",
            "import",
            f,
            "--model",
            name,
            "--type",
            kind,
            "--condition",
            "plain",
        )
        assert res.exit_code == 0, res.output
    res = cli("--db", db, "models", "set", "ext-chat", "base=ext-base")
    assert res.exit_code == 0, res.output
    return db


# --------------------------------------------------------------------------- did you mean


def test_unknown_model_did_you_mean(wh: Path, tmp_path: Path):
    out = tmp_path / "c.csv"
    msg = error_line(cli("--db", wh, "export", "cells", "-o", out, "--model", "ext-chta"))
    assert "no such model 'ext-chta' (did you mean 'ext-chat'" in msg
    assert not out.exists()
    msg = error_line(cli("--db", wh, "models", "show", "ext-bsae"))
    assert "did you mean 'ext-base'" in msg


def test_unknown_model_without_a_close_name_gives_a_runnable_hint(wh: Path, tmp_path: Path):
    msg = error_line(cli("--db", wh, "models", "show", "zzz"))
    (add,) = [h for h in hints(msg) if h.startswith("psystats models add")]
    parse_command(add.replace("SOURCE", str(SAMPLE)))
    listing = [h for h in hints(msg) if h == "psystats models list"]
    assert listing and run_hint(listing[0], wh).exit_code == 0


@pytest.mark.parametrize(
    "option,value,needle",
    [
        ("--experiment", "franke2024bayesian", "that is a study"),
        ("--experiment", "franke2024bayesain", "did you mean"),
        ("--condition", "plian", "no such condition 'plian' (did you mean 'plain'?)"),
        ("--model", "ext-chta", "did you mean 'ext-chat'"),
    ],
)
def test_fit_effects_names(wh: Path, option: str, value: str, needle: str):
    before = wh.read_bytes()
    msg = error_line(cli("--db", wh, "fit", "effects", option, value, "--draws", "10"))
    assert needle in msg
    assert wh.read_bytes() == before
    for h in hints(msg):
        res = run_hint(h, wh)
        assert res.exit_code == 0, (h, res.output)


def test_study_hint_lists_its_experiments(wh: Path):
    msg = error_line(cli("--db", wh, "fit", "effects", "--experiment", "franke2024bayesian"))
    (h,) = hints(msg)
    res = run_hint(h + " --format csv", wh)
    assert res.exit_code == 0, res.output
    experiments = res.output.splitlines()[1:]
    assert experiments and all(e for e in experiments)
    # ... and each one is accepted by the same command's name check.
    assert (
        "no such experiment"
        not in cli(
            "--db",
            wh,
            "export",
            "cells",
            "-o",
            str(wh.parent / "x.csv"),
            "--experiment",
            experiments[0],
        ).output
    )


def test_fit_persona_hint_is_valid_syntax(wh: Path):
    res = cli("--db", wh, "fit", "persona", "--draws", "10", "--tune", "10", "--chains", "1")
    msg = error_line(res)
    assert hints(msg), msg
    for h in hints(msg):
        parse_command(h.replace("MODEL", "ext-chat"))


def test_fit_generations_hints_parse(wh: Path):
    msg = error_line(cli("--db", wh, "fit", "generations", "--draws", "10"))
    for h in hints(msg):
        if "..." not in h:  # "psystats models add ... --base ..." is a pattern, not a command
            parse_command(h)


# --------------------------------------------------------------------------- hub ids offline


def test_models_add_hub_id_offline_says_it_was_not_checked(tmp_path: Path):
    db = tmp_path / "w.duckdb"
    res = CliRunner().invoke(main, ["--db", str(db), "models", "add", "Qwen/Qwen3-8B-Bsae"])
    assert res.exit_code == 0, res.output
    assert "could not check that Qwen/Qwen3-8B-Bsae exists on the Hugging Face hub" in res.output
    parse_command("psystats score --model Qwen/Qwen3-8B-Bsae")


# --------------------------------------------------------------------------- remote code


def test_stored_trust_flag_alone_is_refused(monkeypatch):
    monkeypatch.delenv(loader.TRUST_ENV, raising=False)
    row = {"name": "m", "trust_remote_code": True}
    with pytest.raises(WarehouseError, match="only when you say so now") as e:
        loader.remote_code_allowed(row, None)
    for h in hints(str(e.value)):
        parse_command(h)
    assert loader.remote_code_allowed(row, True) is True
    assert loader.remote_code_allowed({"name": "m"}, None) is False
    # An explicit "no" from the caller (the importer) is no refusal, and runs no code.
    assert loader.remote_code_allowed(row, False) is False
    monkeypatch.setenv(loader.TRUST_ENV, "1")
    assert loader.remote_code_allowed(row, None) is True


@pytest.mark.slow  # builds the tiny models (the fast test above covers the rule)
def test_score_refuses_a_model_marked_trust_remote_code(
    tmp_path: Path, psych201, tiny_models, monkeypatch
):
    from helpers import cli_base_warehouse

    monkeypatch.delenv(loader.TRUST_ENV, raising=False)
    model = tmp_path / "evil-model"
    shutil.copytree(tiny_models["qwen3"], model)
    marker = tmp_path / "code-ran"
    # Code that would run if transformers were told to trust the repository.
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    db = cli_base_warehouse(tmp_path, psych201, model)
    res = cli("--db", db, "models", "set", "tiny-qwen3", "trust_remote_code=true")
    assert res.exit_code == 0, res.output
    before = db.read_bytes()
    msg = error_line(cli("--db", db, "score", "--model", "tiny-qwen3", "-q"))
    assert "marked trust_remote_code in this warehouse" in msg
    assert "--trust-remote-code" in msg and loader.TRUST_ENV in msg
    for h in hints(msg):
        parse_command(h)
    assert not marker.exists()
    assert db.read_bytes() == before


def test_score_of_an_uncached_hub_id_fails_at_once(wh: Path, tmp_path: Path):
    import shutil as sh

    db = tmp_path / "w.duckdb"
    sh.copy(wh, db)
    assert cli("--db", db, "models", "add", "Qwen/Qwen3-8B-Bsae").exit_code == 0
    msg = error_line(cli("--db", db, "score", "--model", "Qwen/Qwen3-8B-Bsae", "-q"))
    assert "not in the local Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg
    res = cli("--db", db, "sql", "--format", "csv", "SELECT count(*) AS n FROM score_runs")
    assert res.output.splitlines() == ["n", "2"]  # the two imported runs; no new run


def test_unreachable_hub_is_one_line(monkeypatch):
    from psystats.scoring import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)  # as if online
    # Port 9 (discard) on localhost: nothing listens, the connection is refused at once.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(WarehouseError, match="the hub cannot be reached"):
        hub.require_hub_files({"name": "x"}, "nobody/no-such-model")


def test_offline_hub_is_one_line():
    from psystats.scoring import hub

    with pytest.raises(WarehouseError, match=r"switched off \(HF_HUB_OFFLINE\)") as e:
        hub.require_hub_files({"name": "x"}, "nobody/no-such-model")
    assert "`huggingface-cli download nobody/no-such-model`" in str(e.value)


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["score", "--model", "ext-base", "--study", "franke2024bayesain"],
            "no such study 'franke2024bayesain' (did you mean 'franke2024bayesian'?)",
        ),
        (
            ["score", "--model", "ext-base", "--experiment", "franke2024bayesian"],
            "that is a study",
        ),
        (["fit", "generations", "--experiment", "nope-exp"], "no such experiment 'nope-exp'"),
        (
            ["scores", "export", "--model", "ext-base", "--condition", "plian", "-o", "x.csv"],
            "no such condition 'plian' (did you mean 'plain'?)",
        ),
        (["fit", "persona", "--model", "ext-chta"], "did you mean 'ext-chat'"),
        (["fit", "accuracy", "--model", "ext-bsae"], "did you mean 'ext-base'"),
    ],
)
def test_unknown_names_before_any_work(wh: Path, args: list[str], needle: str):
    before = wh.read_bytes()
    msg = error_line(cli("--db", wh, *args))
    assert needle in msg
    assert wh.read_bytes() == before
    for h in hints(msg):
        assert run_hint(h, wh).exit_code == 0, h
