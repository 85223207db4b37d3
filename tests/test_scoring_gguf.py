"""The real SmolLM2-135M-Instruct GGUF on the two small studies, all three conditions.

The model is loaded once for the module (float32); the reference is a float64
copy of the same weights with a plain forward (see test_scoring_reference).
"""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import FRANKE, check_batch, reference_pieces, reference_scores
from psystats.scoring.inputs import load_inputs
from psystats.warehouse import db as warehouse_db

SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n"
)


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    from psystats.scoring.engine import Scorer

    torch.set_num_threads(1)
    row = {
        "name": "SmolLM2-135M-Instruct",
        "source": str(smollm2_gguf.parent),
        "gguf_file": smollm2_gguf.name,
    }
    sc = Scorer(row, dtype="float32")
    ref = copy.deepcopy(sc.lm).double()
    return sc, ref


@pytest.fixture(scope="module")
def few(small_warehouse):
    con = warehouse_db.open(small_warehouse)
    try:
        ps = load_inputs(con)
    finally:
        con.close()
    return [p for p in ps if p.experiment == FRANKE][:1] + [
        p for p in ps if p.experiment != FRANKE
    ][:1]


def chat_pieces(p):
    """SmolLM2's chat rendering written out by hand: (text, response index or -1)."""
    out = [(SYSTEM, -1)]
    pos = 0
    for i, (a, b) in enumerate(p.spans):
        out.append(
            ("<|im_start|>user\n" + p.text[pos : a - 2] + "<|im_end|>\n<|im_start|>assistant\n", -1)
        )
        out.append((p.text[a:b], i))
        out.append(("<|im_end|>\n", -1))
        pos = b + 2
    if pos < len(p.text):
        out.append(("<|im_start|>user\n" + p.text[pos:] + "<|im_end|>\n", -1))
    return out


def persona_pieces(p):
    age = p.metadata["age"]
    head = (
        "Before the experiment, the participant answered some questions about themselves.\n"
        f"Q: How old are you?\nA: {int(age)}\n\n"
    )
    return [(head, -1)] + reference_pieces(p)


@pytest.mark.parametrize(
    "condition",
    [
        # All three load and score the real 135M model (about a minute on two cores):
        # slow, to keep CI within its budget; the fast suite scores real tokenizers
        # with tiny models against the same float64 reference.
        pytest.param("plain", marks=pytest.mark.slow),
        pytest.param("chat", marks=pytest.mark.slow),
        pytest.param("persona", marks=pytest.mark.slow),
    ],
)
def test_smollm2_matches_reference(smol, few, condition):
    from psystats.scoring.engine import Scorer

    sc, ref = smol
    scorer = Scorer(sc.model_row, condition=condition, lm=sc.lm, tokenizer=sc.tokenizer)
    batch = scorer.score(few)
    if condition == "persona":
        # franke has no metadata: skipped and counted; guenther has ages.
        scored = [p for p in few if p.metadata]
        assert batch.counts["skipped:persona-no-metadata"] == len(few) - len(scored)
    else:
        scored = few
    assert sorted(batch.participant_keys) == sorted(p.participant_key for p in scored)
    pieces = {"plain": reference_pieces, "chat": chat_pieces, "persona": persona_pieces}[condition]
    refs = [reference_scores(ref, sc.tokenizer, pieces(p), len(p.spans)) for p in scored]
    check_batch(batch, scored, refs, atol=1e-9, rtol=1e-4)
