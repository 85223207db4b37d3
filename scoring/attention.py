"""Attention masks for packed forward passes: a dense boolean mask or a FlexAttention BlockMask.

A packed forward concatenates several *documents* (a transcript or a window
of one, plus its option *branches*) into one sequence.  Every token carries
four numbers, computed by ``Scorer._layout``:

* ``pos``    its position id (restarts at 0 for every document; a branch
             continues the positions of the response it replaces),
* ``doc``    its document,
* ``branch`` -1 for a document's main tokens, else the branch's number,
* ``bstart`` for a branch token, the position where its branch starts.

Who may attend to whom (``allowed(q, k)``), the same in both masks:

* only within one document;
* a main token sees the main tokens up to itself (causal);
* a branch token sees the main tokens *before* its branch's start and its own
  branch up to itself — never the observed response it replaces nor other
  branches.

``dense_mask`` materialises that as an N x N boolean tensor (the SDPA
fallback: fine up to ~16k tokens, quadratic memory beyond).
``document_block_mask`` expresses it as a FlexAttention ``BlockMask``: the
same rule as a ``mask_mod`` plus block sparsity computed from the document
layout at 128 x 128 tile granularity without building the N x N mask, so a
64k-token pack costs a few hundred KiB of mask instead of 4 GiB.

``use_packed_attention(model)`` switches a transformers model to the
``"psystats_packed"`` attention function registered here: it runs
FlexAttention when it is handed a ``BlockMask`` and transformers' own SDPA
function otherwise, so the same loaded model serves plain forwards, dense
masks and block masks.  (transformers' own ``"flex_attention"`` wraps every
call in ``torch.compile``, which on CPU costs ~30 s of C++ compilation per
shape; here FlexAttention is compiled on CUDA only and runs eagerly on CPU,
where it is exact but unfused — what the tests use.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

BLOCK = 128  # FlexAttention's default tile; packed lengths are padded to a multiple
ATTN_NAME = "psystats_packed"
_registered = False
_compiled_flex = None


def allowed_pairs(pos, doc, branch, bstart, q, k):
    """The attention rule on index tensors ``q`` (queries) and ``k`` (keys); broadcasts."""
    same_doc = doc[q] == doc[k]
    q_main = branch[q] < 0
    k_main = branch[k] < 0
    main_main = q_main & k_main & (k <= q)
    # A branch token sees the main tokens before its response, and its own branch so far.
    branch_prefix = ~q_main & k_main & (pos[k] < bstart[q])
    own_branch = ~q_main & (branch[q] == branch[k]) & (k <= q)
    return same_doc & (main_main | branch_prefix | own_branch)


def _tensors(pos, doc, branch, bstart, device):
    import torch

    return tuple(
        torch.as_tensor(np.asarray(a), dtype=torch.int64, device=device)
        for a in (pos, doc, branch, bstart)
    )


def dense_mask(pos, doc, branch, bstart, device) -> Any:
    """Bool ``[1, 1, N, N]``: True where query (row) may attend to key (column)."""
    import torch

    pos_t, doc_t, branch_t, bstart_t = _tensors(pos, doc, branch, bstart, device)
    idx = torch.arange(pos_t.shape[0], device=device)
    return allowed_pairs(pos_t, doc_t, branch_t, bstart_t, idx[:, None], idx[None, :])[None, None]


def sliding_window_of(config) -> tuple[int | None, bool]:
    """``(window, per_layer)`` of a config's sliding-window attention, ``(None, False)`` if none.

    ``per_layer`` is True when the text config lists ``layer_types`` with
    sliding layers (Gemma 2/3, Qwen3 hybrids): those models take a mask per
    layer type ``{"full_attention": m, "sliding_attention": m}``.  Without
    ``layer_types`` a set ``sliding_window`` applies to every layer (Mistral).
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if not window:
        return None, False
    if types is not None:
        return (int(window), True) if "sliding_attention" in types else (None, False)
    return int(window), False


def dense_masks(pos, doc, branch, bstart, device, window: int | None, per_layer: bool) -> Any:
    """The dense mask, with the sliding-window rule where the model has one.

    A query at position ``p`` sees keys at positions ``> p - window`` (the
    rule of transformers' ``sliding_window_overlay``, on position ids, so a
    branch is windowed like the response it replaces).
    """
    full = dense_mask(pos, doc, branch, bstart, device)
    if window is None:
        return full
    import torch

    p = torch.as_tensor(np.asarray(pos), dtype=torch.int64, device=device)
    sliding = full & ((p[:, None] - p[None, :]) < window)[None, None]
    return {"full_attention": full, "sliding_attention": sliding} if per_layer else sliding


def document_block_mask(pos, doc, branch, bstart, device, block: int = BLOCK) -> Any:
    """The same rule as a FlexAttention ``BlockMask`` (length must be a multiple of ``block``).

    Block sparsity from the layout: documents are contiguous and a token
    only sees keys of its own document at or before it, so query tile ``i``
    needs key tiles from the tile holding its first token's document start up
    to ``i``.  Key tile ``j < i`` is *full* (no ``mask_mod`` needed) when
    tiles ``i`` and ``j`` hold only main tokens of one same document; the
    other needed tiles are *partial* and get the ``mask_mod``.  Conservative
    is enough for correctness: a partial tile is evaluated exactly.
    """
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    pos_t, doc_t, br_t, bs_t = _tensors(pos, doc, branch, bstart, device)
    n = int(pos_t.shape[0])
    if n % block:
        raise ValueError(f"packed length {n} is not a multiple of the block size {block}")
    nb = n // block
    # First packed index of every token's document (documents are contiguous).
    idx = torch.arange(n, device=device)
    is_start = torch.ones(n, dtype=torch.bool, device=device)
    is_start[1:] = doc_t[1:] != doc_t[:-1]
    doc_start = torch.cummax(torch.where(is_start, idx, torch.zeros_like(idx)), 0).values
    lo = doc_start[::block] // block  # [nb] first key tile needed
    tiles_doc = doc_t.view(nb, block)
    tiles_main = (br_t.view(nb, block) < 0).all(1)
    uniform = tiles_main & (tiles_doc == tiles_doc[:, :1]).all(1)
    tile_doc = torch.where(uniform, tiles_doc[:, 0], torch.full_like(tiles_doc[:, 0], -1))
    i = torch.arange(nb, device=device)[:, None]
    j = torch.arange(nb, device=device)[None, :]
    needed = (j >= lo[:, None]) & (j <= i)
    full = needed & (j < i) & (tile_doc[:, None] == tile_doc[None, :]) & (tile_doc[:, None] >= 0)
    partial = needed & ~full

    def as_indices(m):
        # Column indices of the True entries first, in increasing order (stable sort of ~m).
        order = torch.sort((~m).to(torch.int8), dim=1, stable=True).indices.to(torch.int32)
        return m.sum(1).to(torch.int32)[None, None], order[None, None].contiguous()

    kv_num, kv_idx = as_indices(partial)
    full_num, full_idx = as_indices(full)

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed_pairs(pos_t, doc_t, br_t, bs_t, q_idx, kv_idx)

    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(n, n)
    )


def supports_flex(model) -> bool:
    """Whether ``model`` follows transformers' attention interface with FlexAttention support."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return bool(getattr(model, "_supports_flex_attn", False))


def _flex():
    """FlexAttention: compiled (fused kernel) on CUDA, eager elsewhere and inside a compiled graph."""
    global _compiled_flex
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=None)
    return _compiled_flex


def packed_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    """transformers attention function: FlexAttention for a BlockMask, SDPA for anything else."""
    import warnings

    from torch.nn.attention.flex_attention import BlockMask, flex_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if kwargs.get("softcap") or kwargs.get("s_aux") is not None:
        raise NotImplementedError("packed FlexAttention does not support soft-capping or sinks")
    fn = _flex() if query.device.type == "cuda" else flex_attention
    with warnings.catch_warnings():
        # Eager FlexAttention on CPU warns that it is unfused: known, exact, and only for tests.
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        out = fn(
            query,
            key,
            value,
            block_mask=attention_mask,
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``packed_attention`` with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, packed_attention)
    # Plain forwards (no mask given) build the same masks as under SDPA.
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)
    _registered = True


def use_packed_attention(model) -> None:
    """Switch ``model`` to ``packed_attention`` (SDPA unless handed a BlockMask)."""
    register()
    if getattr(model.config, "_attn_implementation", None) != ATTN_NAME:
        model.set_attn_implementation(ATTN_NAME)
