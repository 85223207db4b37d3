"""Helpers shared by several test modules (fixtures live in ``conftest.py``).

- the independent float64 scoring reference: written here from scratch
  (tokenise the pieces of a transcript, one plain ``model(input_ids)`` forward
  in float64 on CPU, log-softmax, per-response sums with Python loops); it
  shares no code with ``scoring.engine``, which it checks;
- the single-process reference run and ``snapshot`` that shard and Ray tests
  compare against;
- the CLI steps that build a small scored-ready warehouse from a real study.
"""

from __future__ import annotations

import math
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from psystats.scoring.inputs import ParticipantInput
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.sql import scalar

FRANKE = "franke2024bayesian/data-raw-human.csv"


# --------------------------------------------------------------------------- float64 reference


def reference_pieces(p: ParticipantInput) -> list[tuple[str, int]]:
    """Plain-condition pieces: (text, response index or -1), markers in the context."""
    out, pos = [], 0
    for i, (a, b) in enumerate(p.spans):
        out.append((p.text[pos:a], -1))
        out.append((p.text[a:b], i))
        pos = b
    out.append((p.text[pos:], -1))
    return out


def reference_ids(
    tokenizer, pieces: list[tuple[str, int]], bos: list[int] | None = None
) -> tuple[list[int], dict[int, tuple[int, int]]]:
    """The pieces tokenised one by one: token ids, and response index -> [start, end) in them."""
    ids: list[int] = list(bos or [])
    where: dict[int, tuple[int, int]] = {}
    for text, r in pieces:
        t = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        if r >= 0:
            where[r] = (len(ids), len(ids) + len(t))
        ids.extend(t)
    return ids, where


def reference_scores(
    model64,
    tokenizer,
    pieces: list[tuple[str, int]],
    n_responses: int,
    bos: list[int] | None = None,
    options: dict[str, list[int]] | None = None,
):
    """dict response index -> (nll, n_tokens, first_nll, top1_all, top1_first, first_entropy, token lps)."""
    ids, where = reference_ids(tokenizer, pieces, bos)
    with torch.no_grad():
        logits = model64(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    out = {}
    for r in range(n_responses):
        s, e = where[r]
        lps = [float(logp[t - 1, ids[t]]) for t in range(s, e)]
        tops = [int(torch.argmax(logits[t - 1])) == ids[t] for t in range(s, e)]
        p = torch.exp(logp[s - 1])
        ent = float(-(p * logp[s - 1]).sum())
        out[r] = dict(
            nll=-sum(lps),
            n_tokens=e - s,
            first_nll=-lps[0],
            top1_all=all(tops),
            top1_first=tops[0],
            entropy=ent,
            lps=lps,
        )
        if options:
            raw = {}
            for name, o in options.items():
                with torch.no_grad():
                    lg = model64(torch.tensor([ids[:s] + o[:-1]])).logits[0].double()
                lpo = torch.log_softmax(lg, -1)
                raw[name] = sum(float(lpo[s - 1 + j, o[j]]) for j in range(len(o)))
            z = math.log(sum(math.exp(v) for v in raw.values()))
            out[r]["options"] = {k: v - z for k, v in raw.items()}
    return out


def window_reference(model64, ids: list[int], L: int, S: int) -> Callable[[int], float]:
    """Log-prob of ``ids[t]`` from a plain forward over the window that scores it.

    Windows of ``L`` tokens step by ``S``: the first scores t < L; the window
    starting at k*S scores [k*S + L - S, k*S + L).  Forwards are cached per window.
    """
    cache = {}

    def window_logp(lo):
        if lo not in cache:
            with torch.no_grad():
                cache[lo] = torch.log_softmax(
                    model64(torch.tensor([ids[lo : lo + L]])).logits[0].double(), -1
                )
        return cache[lo]

    def logprob(t: int) -> float:
        lo = 0 if t < L else ((t - L) // S + 1) * S
        return float(window_logp(lo)[t - 1 - lo, ids[t]])

    return logprob


def load64(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float64).eval()


def model_row(path: Path) -> dict:
    return {"name": path.name, "source": str(path)}


def check_batch(batch, participants, refs, *, atol: float, rtol: float = 0.0) -> float:
    """Assert every score of ``batch`` matches the reference; returns the largest NLL difference."""
    rows = {r["response_id"]: r for r in batch.scores.to_pylist()}
    worst = 0.0
    for p, ref in zip(participants, refs):
        for i, rid in enumerate(p.response_ids):
            got, want = rows[rid], ref[i]
            assert got["n_tokens"] == want["n_tokens"]
            assert got["nll"] == pytest.approx(want["nll"], abs=atol, rel=rtol)
            assert got["first_token_nll"] == pytest.approx(want["first_nll"], abs=atol, rel=rtol)
            assert got["first_token_entropy"] == pytest.approx(want["entropy"], abs=atol, rel=rtol)
            assert got["top1_all"] == want["top1_all"]
            assert got["top1_first"] == want["top1_first"]
            worst = max(worst, abs(got["nll"] - want["nll"]))
    return worst


# --------------------------------------------------------------------------- reference runs

STUDY = "franke2024bayesian"
N_PARTICIPANTS = 12  # a small real slice keeps CPU scoring to seconds
SCORE_COLS = (
    "response_id, nll, n_tokens, first_token_nll, top1_all, top1_first, first_token_entropy"
)


def check_options(
    batch, participants, scorer, model64, options: list[str], *, atol: float
) -> dict[tuple[int, str], float]:
    """Each stored option log-probability equals the float64 reference's.

    Returns the stored values keyed by (response_id, option) for further checks.
    """
    enc = {o: scorer.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options}
    assert any(len(v) > 1 for v in enc.values())  # multi-token branches are exercised
    got = {(r["response_id"], r["option"]): r["logprob"] for r in batch.options.to_pylist()}
    for p in participants:
        ref = reference_scores(
            model64,
            scorer.tokenizer,
            reference_pieces(p),
            len(p.spans),
            scorer.prefix_ids,
            options=enc,
        )
        for i, rid in enumerate(p.response_ids):
            for o in options:
                assert got[(rid, o)] == pytest.approx(ref[i]["options"][o], abs=atol)
    return got


def snapshot(db: Path, run_id: int | None = None) -> dict:
    """Everything a run put in the warehouse, without run ids (to compare two warehouses)."""
    con = warehouse_db.open(db)
    try:
        if run_id is None:
            run_id = scalar(con, "SELECT max(run_id) FROM score_runs")
        return {
            "scores": con.execute(
                f"SELECT {SCORE_COLS} FROM scores WHERE run_id = ? ORDER BY response_id", [run_id]
            ).fetchall(),
            "options": con.execute(
                "SELECT response_id, option, logprob FROM option_scores "
                "WHERE run_id = ? ORDER BY response_id, option",
                [run_id],
            ).fetchall(),
            "run": con.execute(
                "SELECT model, condition, status, n_participants, n_responses, "
                "n_skipped FROM score_runs WHERE run_id = ?",
                [run_id],
            ).fetchall(),
        }
    finally:
        con.close()


def reference_run(tmp_root: Path, small_warehouse: Path, model_dir: Path) -> dict:
    """A warehouse with a registered tiny model, a Scorer, a small selection and the
    single-process reference: what one ``psystats score`` process stores for it."""
    from psystats.scoring.engine import Scorer
    from psystats.scoring.inputs import load_inputs
    from psystats.scoring.registry import add_model
    from psystats.scoring.runs import finish_run, start_run, write_batch

    base = tmp_root / "base.duckdb"
    shutil.copy(small_warehouse, base)
    con = warehouse_db.open(base, "write", create=True)
    model = add_model(con, str(model_dir), name="tiny-qwen3")
    keys = [
        k
        for (k,) in con.execute(
            "SELECT participant_key FROM participants WHERE study = ? ORDER BY participant_key "
            "LIMIT ?",
            [STUDY, N_PARTICIPANTS],
        ).fetchall()
    ]
    inputs = load_inputs(con, participant_keys=keys)
    # The study's answers are letters: declare them as an option set so the
    # option_scores path travels through the shards too.
    letters = sorted(
        t
        for (t,) in con.execute(
            "SELECT DISTINCT text FROM responses WHERE study = ?", [STUDY]
        ).fetchall()
    )
    con.close()
    selection = {"participant_keys": keys}
    scorer_kwargs = {"condition": "plain", "option_sets": {p.experiment: letters for p in inputs}}
    scorer = Scorer(model, **scorer_kwargs)

    ref = tmp_root / "reference.duckdb"
    shutil.copy(base, ref)
    con = warehouse_db.open(ref, "write", create=True)
    run_id, _ = start_run(con, model, "plain", selection, scorer.settings, scorer.fingerprints)
    batch = scorer.score(inputs)
    write_batch(con, run_id, batch)
    finish_run(con, run_id, batch.counts)
    con.close()
    return {
        "base": base,
        "model": model,
        "scorer": scorer,
        "scorer_kwargs": scorer_kwargs,
        "inputs": inputs,
        "selection": selection,
        "reference": snapshot(ref),
    }


# --------------------------------------------------------------------------- CLI


def cli_ok(*args) -> Result:
    """``psystats ARGS`` in this process; asserts it succeeded (the output says why not)."""
    from psystats.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def cli_base_warehouse(tmp_path: Path, psych201: Path, model_dir: Path) -> Path:
    """``psystats ingest`` of a six-participant slice of a real study (keeps several model
    loads cheap) and ``psystats models add`` of a tiny model as ``tiny-qwen3``."""
    src = tmp_path / STUDY
    src.mkdir()
    with zipfile.ZipFile(psych201 / STUDY / "prompts.jsonl.zip") as z, z.open("prompts.jsonl") as f:
        (src / "prompts.jsonl").write_bytes(b"".join(next(f) for _ in range(6)))
    base = tmp_path / "base.duckdb"
    cli_ok("--db", base, "ingest", src)
    cli_ok("--db", base, "models", "add", model_dir, "--name", "tiny-qwen3")
    return base


def cli(*args, env: dict | None = None, input: str | None = None) -> Result:
    """``psystats ARGS`` in this process, whatever its outcome."""
    from psystats.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env=env, input=input)


def one_line(res, code: int, *needles: str) -> str:
    """Exit ``code`` with one 'Error: ...' line and no traceback; returns that line."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    errors = [x for x in res.output.splitlines() if x.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]
