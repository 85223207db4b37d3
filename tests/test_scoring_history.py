"""History windows (``--condition history:K``) against a reference built from the definition.

The reference builds each response's reduced transcript as a string (every
earlier response but the K most recent deleted, ``<<...>>`` included), finds
the remaining responses by their markers, and scores it with one plain
float64 forward of the tiny model (``helpers.reference_scores``), response by
response.  It shares no code with ``scoring.history`` (which scores branches
off a shared prefix).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from helpers import FRANKE, load64, model_row, reference_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reduced_transcript(text: str, spans, i: int, k: int) -> str:
    """The transcript with every response j < i - k deleted, markers included."""
    for j in reversed(range(len(spans))):
        if j < i - k:
            a, b = spans[j]
            assert text[a - 2 : a] == "<<" and text[b : b + 2] == ">>"
            text = text[: a - 2] + text[b + 2 :]
    return text


def marker_pieces(text: str) -> list[tuple[str, int]]:
    """Pieces of a transcript found by its markers: context (markers in it) and responses."""
    out, pos = [], 0
    for n, m in enumerate(re.finditer(r"<<(.*?)>>", text, flags=re.S)):
        out.append((text[pos : m.start(1)], -1))
        out.append((m.group(1), n))
        pos = m.end(1)
    out.append((text[pos:], -1))
    return out


def history_reference(model64, tokenizer, p, k: int, bos, options=None) -> list[dict]:
    refs = []
    for i in range(len(p.spans)):
        pieces = marker_pieces(reduced_transcript(p.text, p.spans, i, k))
        n = sum(1 for _t, r in pieces if r >= 0)
        mine = min(i, k)  # the kept responses before i
        assert pieces[2 * mine + 1][0] == p.text[p.spans[i][0] : p.spans[i][1]]
        if p.spans[i][1] == p.spans[i][0]:
            refs.append({"nll": 0.0, "n_tokens": 0})
            continue
        refs.append(reference_scores(model64, tokenizer, pieces, n, bos, options=options)[mine])
    return refs


# history:1 (40 s on the busy 2-core machine) runs with the slow tests; history:0 always.
@pytest.mark.parametrize("k", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_history_equals_scoring_the_reduced_transcript(tiny_models, inputs, k):
    from psystats.scoring.engine import Scorer

    path = tiny_models["qwen3"]
    model64 = load64(path)
    sc = Scorer(model_row(path), dtype="float64", condition=f"history:{k}")
    batch = sc.score(inputs)
    assert sorted(batch.participant_keys) == sorted(p.participant_key for p in inputs)
    rows = {r["response_id"]: r for r in batch.scores.to_pylist()}
    compared = 0
    for p in inputs:
        refs = history_reference(model64, sc.tokenizer, p, k, sc.prefix_ids)
        for rid, want in zip(p.response_ids, refs):
            got = rows[rid]
            assert got["n_tokens"] == want["n_tokens"]
            assert got["nll"] == pytest.approx(want["nll"], abs=1e-8)
            if want["n_tokens"]:
                assert got["first_token_nll"] == pytest.approx(want["first_nll"], abs=1e-8)
                assert got["first_token_entropy"] == pytest.approx(want["entropy"], abs=1e-8)
                assert got["top1_all"] == want["top1_all"]
            compared += 1
    assert compared >= 20
    # The history changes the numbers (else the test could not tell the conditions apart).
    plain = Scorer(model_row(path), dtype="float64", lm=sc.lm, tokenizer=sc.tokenizer)
    base = {r["response_id"]: r["nll"] for r in plain.score(inputs).scores.to_pylist()}
    late = [rid for p in inputs for rid in p.response_ids[k + 1 :]]
    assert max(abs(rows[r]["nll"] - base[r]) for r in late) > 1e-3
    # Packed forwards (the GPU path) give the same numbers.
    packed = Scorer(
        model_row(path),
        dtype="float64",
        condition=f"history:{k}",
        packing="packed",
        token_budget=3000,
        lm=sc.lm,
        tokenizer=sc.tokenizer,
    )
    got = packed.score(inputs).scores
    np.testing.assert_allclose(
        got["nll"].to_numpy(), batch.scores["nll"].to_numpy(), rtol=0, atol=1e-9
    )


@pytest.mark.slow
def test_history_option_scores_match_the_reference(tiny_models, inputs):
    from psystats.scoring.engine import Scorer

    path = tiny_models["olmo2"]
    model64 = load64(path)
    franke = [p for p in inputs if p.experiment == FRANKE][:1]
    opts = ["A", "B", "F", "X", "green hexagon", "red"]
    sc = Scorer(model_row(path), dtype="float64", condition="history:0", option_sets={FRANKE: opts})
    batch = sc.score(franke)
    enc = {o: sc.tokenizer(o, add_special_tokens=False)["input_ids"] for o in opts}
    assert any(len(v) > 1 for v in enc.values())  # multi-token option branches are exercised
    got = {(r["response_id"], r["option"]): r["logprob"] for r in batch.options.to_pylist()}
    for p in franke:
        refs = history_reference(model64, sc.tokenizer, p, 0, sc.prefix_ids, options=enc)
        for rid, ref in zip(p.response_ids, refs):
            for o in opts:
                assert got[(rid, o)] == pytest.approx(ref["options"][o], abs=1e-8)


def test_history_all_and_long_windows_are_plain_exactly(tiny_models, inputs):
    from psystats.scoring.engine import Scorer

    path = tiny_models["llama"]
    plain = Scorer(model_row(path), dtype="float32")
    want = plain.score(inputs).scores
    longest = max(len(p.spans) for p in inputs)
    for condition in ("history:all", f"history:{longest}"):
        sc = Scorer(model_row(path), condition=condition, lm=plain.lm, tokenizer=plain.tokenizer)
        got = sc.score(inputs).scores
        assert got.equals(want), condition  # bit for bit
        assert sc.settings["condition"] == condition  # a run of its own
        assert sc.settings["history"]["keep"] == ("all" if condition.endswith("all") else longest)


def test_history_tokens_forwarded_stay_near_the_transcript(tiny_models, inputs):
    """Branches off the shared prefix: history:0 forwards far fewer tokens than one sequence
    per response would (the sum of every reduced transcript)."""
    from psystats.scoring.engine import Scorer

    path = tiny_models["qwen3"]
    sc = Scorer(model_row(path), condition="history:0")
    plain = Scorer(model_row(path), lm=sc.lm, tokenizer=sc.tokenizer)
    guenther = [p for p in inputs if p.experiment != FRANKE]
    n_hist = sc.score(guenther).n_tokens
    n_plain = plain.score(guenther).n_tokens
    per_response = sum(
        len(sc.tokenizer(reduced_transcript(p.text, p.spans, i, 0))["input_ids"])
        for p in guenther
        for i in range(len(p.spans))
    )
    assert n_hist < 2 * n_plain < per_response


def test_history_options_are_checked_before_loading():
    from psystats.scoring.config import ScorerConfig, ScorerConfigError

    for bad in (
        "history:",
        "history:-1",
        "history:x",
        "history:1.5",
        "history:07",
        "History:1",
        "hist",
    ):
        with pytest.raises(ScorerConfigError, match="unknown condition"):
            ScorerConfig(condition=bad)
    with pytest.raises(ScorerConfigError, match="tokenization whole"):
        ScorerConfig(condition="history:2", tokenization="whole")
    with pytest.raises(ScorerConfigError, match="context-policy window"):
        ScorerConfig(condition="history:0", context_policy="window")
    ScorerConfig(condition="history:all", tokenization="whole")  # plain: every option applies
