"""The packed GPU path on CPU: FlexAttention block masks, padding buckets, torch.compile.

FlexAttention runs eagerly on CPU in torch 2.13 (unfused, exact), so the same
``Scorer`` code path that runs on CUDA is checked here against the
independent float64 reference of ``helpers`` — only the
fused kernel, bf16 and speed are left for a GPU (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import warnings

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
from psystats.scoring import attention as attn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- masks


def random_layout(rng, n_docs: int, multiple: int = attn.BLOCK):
    """pos/doc/branch/bstart of random documents with option branches, padded like the engine."""
    pos, doc, branch, bstart = [], [], [], []
    nb = 0
    for d in range(n_docs):
        n = int(rng.integers(1, 400))
        pos += list(range(n))
        doc += [d] * n
        branch += [-1] * n
        bstart += [0] * n
        for _ in range(int(rng.integers(0, 4))):
            s, m = int(rng.integers(1, n + 1)), int(rng.integers(1, 5))
            pos += list(range(s, s + m))
            doc += [d] * m
            branch += [nb] * m
            bstart += [s] * m
            nb += 1
    d = n_docs
    while len(pos) % multiple:
        m = min(-len(pos) % multiple, attn.BLOCK)
        pos += list(range(m))
        doc += [d] * m
        branch += [-1] * m
        bstart += [0] * m
        d += 1
    return [np.asarray(a) for a in (pos, doc, branch, bstart)]


def dense_from_rule(pos, doc, branch, bstart):
    """The attention rule written out with Python loops: the spec, independent of both masks."""
    n = len(pos)
    m = np.zeros((n, n), bool)
    for q in range(n):
        for k in range(q + 1 if branch[q] < 0 else n):
            if doc[q] != doc[k]:
                continue
            if branch[q] < 0:
                m[q, k] = branch[k] < 0
            else:
                m[q, k] = (branch[k] < 0 and pos[k] < bstart[q]) or (
                    branch[k] == branch[q] and k <= q
                )
    return m


def test_dense_mask_follows_the_rule():
    rng = np.random.default_rng(1)
    layout = random_layout(rng, 3, multiple=1)
    got = attn.dense_mask(*layout, "cpu")[0, 0].numpy()
    np.testing.assert_array_equal(got, dense_from_rule(*layout))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_mask_equals_dense_mask(seed):
    from torch.nn.attention.flex_attention import create_mask

    rng = np.random.default_rng(seed)
    layout = random_layout(rng, int(rng.integers(1, 7)))
    dense = attn.dense_mask(*layout, "cpu")[0, 0]
    bm = attn.document_block_mask(*layout, "cpu")
    n = dense.shape[0]
    assert bm.shape == (1, 1, n, n)
    # The mask_mod, evaluated on every pair, is the dense mask.
    assert torch.equal(create_mask(bm.mask_mod, 1, 1, n, n, "cpu")[0, 0], dense)
    # Block sparsity: omitted tiles are empty, "full" tiles are entirely allowed.
    nb = n // attn.BLOCK
    tiles = dense.view(nb, attn.BLOCK, nb, attn.BLOCK).permute(0, 2, 1, 3)
    partial = np.zeros((nb, nb), bool)
    full = np.zeros((nb, nb), bool)
    for i in range(nb):
        partial[i, bm.kv_indices[0, 0, i, : int(bm.kv_num_blocks[0, 0, i])].numpy()] = True
        full[i, bm.full_kv_indices[0, 0, i, : int(bm.full_kv_num_blocks[0, 0, i])].numpy()] = True
    assert not (partial & full).any()
    assert not tiles.any(-1).any(-1).numpy()[~(partial | full)].any()
    assert tiles.all(-1).all(-1).numpy()[full].all()
    # And FlexAttention under it equals SDPA under the dense mask (float64, GQA).
    from torch.nn.attention.flex_attention import flex_attention

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, n, 8, dtype=torch.float64, generator=g)
    k, v = (torch.randn(1, 2, n, 8, dtype=torch.float64, generator=g) for _ in range(2))
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=dense
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without torch.compile")  # eager on CPU: known
        got = flex_attention(q, k, v, block_mask=bm, enable_gqa=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_block_mask_needs_a_block_multiple():
    layout = random_layout(np.random.default_rng(0), 2, multiple=1)
    if len(layout[0]) % attn.BLOCK == 0:
        layout = [np.concatenate([a, a[:1]]) for a in layout]
    with pytest.raises(ValueError, match="multiple of the block size"):
        attn.document_block_mask(*layout, "cpu")


# --------------------------------------------------------------------------- the engine, flex path


@pytest.mark.parametrize("family", ["qwen3", "llama", "olmo2"])
def test_flex_packed_matches_float64_reference(tiny_models, inputs, family):
    from psystats.scoring.engine import Scorer

    path = tiny_models[family]
    inputs = inputs[:2] + inputs[3:]  # franke (short) and guenther (long) participants
    ref_model = load64(path)
    sc = Scorer(
        model_row(path), dtype="float32", packing="packed", attention="flex", token_budget=1500
    )
    assert sc.attention == "flex" and sc.settings["batching"]["attention"] == "flex"
    assert sc.lm.config._attn_implementation == attn.ATTN_NAME
    refs = [
        reference_scores(ref_model, sc.tokenizer, reference_pieces(p), len(p.spans), sc.prefix_ids)
        for p in inputs
    ]
    batch = sc.score(inputs)
    assert sorted(batch.participant_keys) == sorted(p.participant_key for p in inputs)
    check_batch(batch, inputs, refs, atol=1e-5, rtol=1e-5)
    # Several participants shared forwards (budget 1500 < total), padded to the tile.
    assert batch.n_tokens > 1500
    # float64 through the same flex path: exact.
    sc64 = Scorer(
        model_row(path),
        dtype="float64",
        packing="packed",
        attention="flex",
        token_budget=1500,
        tokenizer=sc.tokenizer,
    )
    assert check_batch(sc64.score(inputs[::-1]), inputs, refs, atol=1e-8) < 1e-8


def test_flex_option_branches_match_reference(tiny_models, inputs):
    from psystats.scoring.engine import Scorer

    path = tiny_models["olmo2"]
    franke = [p for p in inputs if p.experiment == FRANKE][:1]
    opts = ["A", "B", "C", "green hexagon"]
    sc = Scorer(
        model_row(path),
        dtype="float64",
        packing="packed",
        attention="flex",
        option_sets={FRANKE: opts},
    )
    batch = sc.score(franke)
    ref_model = load64(path)
    check_options(batch, franke, sc, ref_model, opts, atol=1e-8)
    check_batch(
        batch,
        franke,
        [
            reference_scores(
                ref_model, sc.tokenizer, reference_pieces(p), len(p.spans), sc.prefix_ids
            )
            for p in franke
        ],
        atol=1e-8,
    )


def test_flex_windows_match_window_reference(tiny_models, inputs):
    from psystats.scoring.engine import Scorer

    path = tiny_models["llama"]
    p = inputs[-1]  # a long free-text participant
    L, S = 256, 96
    sc = Scorer(
        model_row(path),
        dtype="float32",
        packing="packed",
        attention="flex",
        max_context=L,
        context_policy="window",
        stride=S,
        token_level=True,
    )
    batch = sc.score([p])
    assert batch.counts["windowed_participants"] == 1
    ids, where = reference_ids(sc.tokenizer, reference_pieces(p))
    window_logprob = window_reference(load64(path), ids, L, S)

    got = {}
    for row in batch.tokens.to_pylist():
        got.setdefault(row["response_id"], []).append(row["logprob"])
    for i, rid in enumerate(p.response_ids):
        s, e = where[i]
        want = [window_logprob(t) for t in range(s, e)]
        np.testing.assert_allclose(got[rid], want, rtol=1e-5, atol=1e-5)


def test_attention_choice(tiny_models, inputs):
    from psystats.scoring.engine import Scorer

    path = tiny_models["qwen3"]
    auto = Scorer(model_row(path), packing="packed")
    assert auto.attention == "dense"  # auto: flex on CUDA only (eager flex on CPU is slow)
    none = Scorer(
        model_row(path), packing="none", attention="flex", lm=auto.lm, tokenizer=auto.tokenizer
    )
    assert none.attention == "dense"  # one row per forward needs no mask at all
    with pytest.raises(Exception, match="unknown attention"):
        Scorer(model_row(path), attention="paged", lm=auto.lm, tokenizer=auto.tokenizer)


def test_padding_documents_do_not_change_results(tiny_models, inputs):
    """Dense attention with a padding bucket (as under --compile) equals the unpadded numbers."""
    from psystats.scoring.engine import Scorer

    path = tiny_models["qwen3"]
    inputs = inputs[:2] + inputs[3:]
    plain = Scorer(model_row(path), dtype="float64", packing="packed", token_budget=4000)
    want_batch = plain.score(inputs)
    want = want_batch.scores
    padded = Scorer(
        model_row(path),
        dtype="float64",
        packing="packed",
        token_budget=4000,
        lm=plain.lm,
        tokenizer=plain.tokenizer,
    )
    padded.pad_multiple = 1024  # what --compile does, without compiling
    batch = padded.score(inputs)
    got = batch.scores
    assert got["response_id"].to_pylist() == want["response_id"].to_pylist()
    np.testing.assert_allclose(got["nll"].to_numpy(), want["nll"].to_numpy(), rtol=0, atol=1e-9)
    assert batch.n_tokens == want_batch.n_tokens  # padding is not counted as work


@pytest.mark.slow
def test_compiled_flex_matches_eager(tiny_models, inputs):
    """torch.compile of the decoder (CPU inductor; ~1 min of C++ compilation) changes nothing."""
    from psystats.scoring.engine import Scorer

    path = tiny_models["qwen3"]
    eager = Scorer(
        model_row(path), dtype="float32", packing="packed", attention="flex", token_budget=2048
    )
    want = eager.score(inputs).scores
    comp = Scorer(
        model_row(path),
        dtype="float32",
        packing="packed",
        attention="flex",
        token_budget=2048,
        compile=True,
        compile_bucket=2048,
        lm=eager.lm,
        tokenizer=eager.tokenizer,
    )
    got = comp.score(inputs).scores
    assert comp.compile_seconds > 0 and comp.settings["batching"]["compile"] is True
    np.testing.assert_allclose(got["nll"].to_numpy(), want["nll"].to_numpy(), rtol=1e-5, atol=1e-5)
