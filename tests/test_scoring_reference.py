"""Per-response scores against an independent reference, on tiny random models.

The reference (``reference_scores``) is written here from scratch: tokenise
the pieces of the transcript, one plain ``model(input_ids)`` forward in
float64 on CPU, log-softmax over the full sequence, and per-response sums over
the response positions with a Python loop.  It shares no code with the engine.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import warehouse
from scoring.inputs import ParticipantInput, load_inputs

FRANKE = "franke2024bayesian/data-raw-human.csv"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two cores shared by several engineers: one torch thread is far faster here.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# --------------------------------------------------------------------------- reference

def reference_pieces(p: ParticipantInput) -> list[tuple[str, int]]:
    """Plain-condition pieces: (text, response index or -1), markers in the context."""
    out, pos = [], 0
    for i, (a, b) in enumerate(p.spans):
        out.append((p.text[pos:a], -1))
        out.append((p.text[a:b], i))
        pos = b
    out.append((p.text[pos:], -1))
    return out


def reference_scores(model64, tokenizer, pieces: list[tuple[str, int]], n_responses: int,
                     bos: list[int] | None = None, options: dict[str, list[int]] | None = None):
    """dict response index -> (nll, n_tokens, first_nll, top1_all, top1_first, first_entropy, token lps)."""
    ids: list[int] = list(bos or [])
    where: dict[int, tuple[int, int]] = {}
    for text, r in pieces:
        t = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        if r >= 0:
            where[r] = (len(ids), len(ids) + len(t))
        ids.extend(t)
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
        out[r] = dict(nll=-sum(lps), n_tokens=e - s, first_nll=-lps[0], top1_all=all(tops),
                      top1_first=tops[0], entropy=ent, lps=lps)
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


def load64(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float64).eval()


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


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def inputs(small_warehouse) -> list[ParticipantInput]:
    con = warehouse.connect(small_warehouse, read_only=True)
    try:
        ps = load_inputs(con)
    finally:
        con.close()
    # A few from each study: franke (4 single-letter answers) and guenther
    # (long free-text association lists).
    franke = [p for p in ps if p.experiment == FRANKE][:3]
    other = [p for p in ps if p.experiment != FRANKE][:2]
    return franke + other


def model_row(path: Path) -> dict:
    return {"name": path.name, "source": str(path)}


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("family", ["qwen3", "llama", "olmo2"])
def test_nll_matches_float64_reference(tiny_models, inputs, family):
    from scoring.engine import Scorer

    path = tiny_models[family]
    ref_model = load64(path)
    sc = Scorer(model_row(path), dtype="float64")
    refs = [reference_scores(ref_model, sc.tokenizer, reference_pieces(p), len(p.spans),
                             sc.prefix_ids) for p in inputs]
    batch = sc.score(inputs)
    assert sorted(batch.participant_keys) == sorted(p.participant_key for p in inputs)
    assert check_batch(batch, inputs, refs, atol=1e-6) < 1e-6
    # float32, the default: within 1e-4 relative of the float64 reference.
    sc32 = Scorer(model_row(path), dtype="float32", tokenizer=sc.tokenizer)
    check_batch(sc32.score(inputs), inputs, refs, atol=1e-4, rtol=1e-4)


def test_batching_order_and_packing_do_not_change_results(tiny_models, inputs):
    from scoring.engine import Scorer

    path = tiny_models["qwen3"]
    base = Scorer(model_row(path), dtype="float64", packing="none")
    want = base.score(inputs).scores
    tok, lm = base.tokenizer, base.lm
    # Same model, other batch shapes: packed with several budgets, reversed order, one by one.
    for packing, budget, order in [("packed", 100_000, inputs), ("packed", 1500, inputs[::-1]),
                                   ("none", 1, inputs[::-1])]:
        sc = Scorer(model_row(path), dtype="float64", packing=packing, token_budget=budget,
                    lm=lm, tokenizer=tok)
        got = sc.score(order).scores
        assert got["response_id"].to_pylist() == want["response_id"].to_pylist()
        np.testing.assert_allclose(got["nll"].to_numpy(), want["nll"].to_numpy(), rtol=0, atol=1e-9)
        assert got["top1_all"].to_pylist() == want["top1_all"].to_pylist()
    # Unpacked float32 is bit-for-bit independent of what else is in the call.
    sc32 = Scorer(model_row(path), dtype="float32", packing="none", tokenizer=tok)
    alone = [sc32.score([p]).scores for p in inputs]
    together = sc32.score(inputs[::-1]).scores
    import pyarrow as pa
    assert pa.concat_tables(alone).sort_by("response_id").equals(together)


def test_windows_score_every_token_once_with_its_window_context(tiny_models, inputs):
    """--context-policy window: each token's log-prob equals a plain forward over its window."""
    from scoring.engine import Scorer

    path = tiny_models["llama"]
    p = inputs[-1]                      # a long free-text participant
    L, S = 256, 96
    sc = Scorer(model_row(path), dtype="float64", max_context=L, context_policy="window",
                stride=S, token_level=True)
    batch = sc.score([p])
    assert batch.counts["windowed_participants"] == 1
    # Reference: tokenise the pieces, then for every target t find the window
    # that scores it (first: t < L; later windows start at k*S and score
    # [k*S + L - S, k*S + L)) and take the log-prob from that window's forward.
    ref_model = load64(path)
    ids, where = [], {}
    for text, r in reference_pieces(p):
        t = sc.tokenizer(text, add_special_tokens=False)["input_ids"]
        if r >= 0:
            where[r] = (len(ids), len(ids) + len(t))
        ids.extend(t)
    cache = {}

    def window_logp(lo):
        if lo not in cache:
            with torch.no_grad():
                cache[lo] = torch.log_softmax(
                    ref_model(torch.tensor([ids[lo:lo + L]])).logits[0].double(), -1)
        return cache[lo]

    tokens = batch.tokens.to_pylist()
    by_resp = {}
    for row in tokens:
        by_resp.setdefault(row["response_id"], []).append(row)
    for i, rid in enumerate(p.response_ids):
        s, e = where[i]
        assert [r["token_index"] for r in by_resp[rid]] == list(range(e - s))
        for j, t in enumerate(range(s, e)):
            lo = 0 if t < L else ((t - L) // S + 1) * S
            want = float(window_logp(lo)[t - 1 - lo, ids[t]])
            assert by_resp[rid][j]["token_id"] == ids[t]
            assert by_resp[rid][j]["logprob"] == pytest.approx(want, abs=1e-9)
    # And the skip policy leaves the participant out, counted.
    skip = Scorer(model_row(path), dtype="float64", max_context=L, lm=sc.lm, tokenizer=sc.tokenizer)
    b = skip.score([p])
    assert b.scores.num_rows == 0 and b.counts["skipped:too-long"] == 1
    assert b.participant_keys == []


def test_option_scores_match_reference(tiny_models, inputs):
    from scoring.engine import Scorer

    path = tiny_models["olmo2"]
    franke = [p for p in inputs if p.experiment == FRANKE][:1]
    # Single-token options and multi-token ones (scored through branches).
    opts = ["A", "B", "C", "D", "F", "I", "X", "green hexagon", "red"]
    sc = Scorer(model_row(path), dtype="float64", packing="packed",
                option_sets={FRANKE: opts})
    batch = sc.score(franke)
    ref_model = load64(path)
    enc = {o: sc.tokenizer(o, add_special_tokens=False)["input_ids"] for o in opts}
    assert any(len(v) > 1 for v in enc.values())
    got = {}
    for r in batch.options.to_pylist():
        got[(r["response_id"], r["option"])] = r["logprob"]
    for p in franke:
        ref = reference_scores(ref_model, sc.tokenizer, reference_pieces(p), len(p.spans),
                               sc.prefix_ids, options=enc)
        for i, rid in enumerate(p.response_ids):
            for o in opts:
                assert got[(rid, o)] == pytest.approx(ref[i]["options"][o], abs=1e-8)
            assert math.isclose(sum(math.exp(got[(rid, o)]) for o in opts), 1.0, abs_tol=1e-9)


def test_whole_text_tokenization_scores_overlapping_tokens(tiny_models, inputs):
    """--tokenization whole: tokens overlapping a response's characters, from one tokenisation."""
    from scoring.engine import Scorer

    path = tiny_models["qwen3"]
    sc = Scorer(model_row(path), dtype="float64", tokenization="whole", token_level=True)
    p = inputs[0]
    batch = sc.score([p])
    enc = sc.tokenizer(p.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    ref_model = load64(path)
    with torch.no_grad():
        logp = torch.log_softmax(ref_model(torch.tensor([ids])).logits[0].double(), -1)
    rows = {r["response_id"]: r for r in batch.scores.to_pylist()}
    for (a, b), rid in zip(p.spans, p.response_ids):
        toks = [t for t, (s, e) in enumerate(offs) if s < b and e > a]
        want = -sum(float(logp[t - 1, ids[t]]) for t in toks)
        assert rows[rid]["n_tokens"] == len(toks)
        assert rows[rid]["nll"] == pytest.approx(want, abs=1e-8)
