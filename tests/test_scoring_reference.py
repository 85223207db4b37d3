"""Per-response scores against an independent reference, on tiny random models.

The reference (``helpers.reference_scores``) is written from scratch in the
tests: tokenise the pieces of the transcript, one plain ``model(input_ids)``
forward in float64 on CPU, log-softmax over the full sequence, and
per-response sums over the response positions with a Python loop.  It shares
no code with the engine.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import (
    FRANKE,
    check_batch,
    check_options,
    load64,
    model_row,
    reference_ids,
    reference_pieces,
    reference_scores,
    window_reference,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("family", ["qwen3", "llama", "olmo2"])
def test_nll_matches_float64_reference(tiny_models, inputs, family):
    from psystats.scoring.engine import Scorer

    path = tiny_models[family]
    ref_model = load64(path)
    sc = Scorer(model_row(path), dtype="float64")
    refs = [
        reference_scores(ref_model, sc.tokenizer, reference_pieces(p), len(p.spans), sc.prefix_ids)
        for p in inputs
    ]
    batch = sc.score(inputs)
    assert sorted(batch.participant_keys) == sorted(p.participant_key for p in inputs)
    assert check_batch(batch, inputs, refs, atol=1e-6) < 1e-6
    # float32, the default: within 1e-4 relative of the float64 reference.
    sc32 = Scorer(model_row(path), dtype="float32", tokenizer=sc.tokenizer)
    check_batch(sc32.score(inputs), inputs, refs, atol=1e-4, rtol=1e-4)


def test_batching_order_and_packing_do_not_change_results(tiny_models, inputs):
    from psystats.scoring.engine import Scorer

    path = tiny_models["qwen3"]
    base = Scorer(model_row(path), dtype="float64", packing="none")
    want = base.score(inputs).scores
    tok, lm = base.tokenizer, base.lm
    # Same model, other batch shapes: packed with several budgets, reversed order, one by one.
    for packing, budget, order in [
        ("packed", 100_000, inputs),
        ("packed", 1500, inputs[::-1]),
        ("none", 1, inputs[::-1]),
    ]:
        sc = Scorer(
            model_row(path),
            dtype="float64",
            packing=packing,
            token_budget=budget,
            lm=lm,
            tokenizer=tok,
        )
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
    from psystats.scoring.engine import Scorer

    path = tiny_models["llama"]
    p = inputs[-1]  # a long free-text participant
    L, S = 256, 96
    sc = Scorer(
        model_row(path),
        dtype="float64",
        max_context=L,
        context_policy="window",
        stride=S,
        token_level=True,
    )
    batch = sc.score([p])
    assert batch.counts["windowed_participants"] == 1
    # Reference: tokenise the pieces, then for every target t find the window
    # that scores it (first: t < L; later windows start at k*S and score
    # [k*S + L - S, k*S + L)) and take the log-prob from that window's forward.
    ids, where = reference_ids(sc.tokenizer, reference_pieces(p))
    window_logprob = window_reference(load64(path), ids, L, S)
    tokens = batch.tokens.to_pylist()
    by_resp = {}
    for row in tokens:
        by_resp.setdefault(row["response_id"], []).append(row)
    for i, rid in enumerate(p.response_ids):
        s, e = where[i]
        assert [r["token_index"] for r in by_resp[rid]] == list(range(e - s))
        for j, t in enumerate(range(s, e)):
            assert by_resp[rid][j]["token_id"] == ids[t]
            assert by_resp[rid][j]["logprob"] == pytest.approx(window_logprob(t), abs=1e-9)
    # And the skip policy leaves the participant out, counted.
    skip = Scorer(model_row(path), dtype="float64", max_context=L, lm=sc.lm, tokenizer=sc.tokenizer)
    b = skip.score([p])
    assert b.scores.num_rows == 0 and b.counts["skipped:too-long"] == 1
    assert b.participant_keys == []


def test_option_scores_match_reference(tiny_models, inputs):
    from psystats.scoring.engine import Scorer

    path = tiny_models["olmo2"]
    franke = [p for p in inputs if p.experiment == FRANKE][:1]
    # Single-token options and multi-token ones (scored through branches).
    opts = ["A", "B", "C", "D", "F", "I", "X", "green hexagon", "red"]
    sc = Scorer(model_row(path), dtype="float64", packing="packed", option_sets={FRANKE: opts})
    batch = sc.score(franke)
    got = check_options(batch, franke, sc, load64(path), opts, atol=1e-8)
    for p in franke:
        for rid in p.response_ids:
            assert math.isclose(sum(math.exp(got[(rid, o)]) for o in opts), 1.0, abs_tol=1e-9)


def test_whole_text_tokenization_scores_overlapping_tokens(tiny_models, inputs):
    """--tokenization whole: tokens overlapping a response's characters, from one tokenisation."""
    from psystats.scoring.engine import Scorer

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
