"""Renderings -> token ids with the token range of every response.

Two boundary rules (``tokenization`` setting):

``segments`` (default)
    Every segment is tokenised on its own and the ids are concatenated.  A
    response's tokens are exactly the tokens of its own text, so no response
    character is ever conditioned on as context, and no marker or context
    character is ever scored.  The price: at a boundary the model may see a
    split its tokenizer would not have produced on the whole text (e.g.
    ``<<`` + ``B`` instead of a merged ``<<B``).
``whole``
    The seed study's way: the rendered text is tokenised once and a token is a
    response token when its character range overlaps the response's
    (``start < char_end and end > char_start``).  A token that straddles a
    boundary is scored as part of the response (so it may carry marker
    characters); the number of such tokens is counted as
    ``straddling_tokens``.  Needs a fast tokenizer (offset mapping).

Either way the tokenizer's own leading special tokens (BOS, when it adds one)
go in front when the rendering asks for them (``plain``/``persona``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .render import Rendering

TOKENIZATIONS = ("segments", "whole")


@dataclass
class Tokenized:
    input_ids: np.ndarray  # int64 [T]
    starts: np.ndarray  # int64 [R]: first token index of response i
    ends: np.ndarray  # int64 [R]: one past its last token
    straddling: int = 0  # tokens over a response boundary (whole mode)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts in front of any text (e.g. ``[bos]``), possibly none."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    n = len(with_special) - len(without)
    if n > 0 and with_special[n:] == without:
        return list(with_special[:n])
    return []


def check_segment_tokenizer(tokenizer) -> None:
    """Refuse tokenizers that add a prefix space to every piece (SentencePiece's dummy prefix).

    With those, tokenising segments separately would insert characters that
    are not in the transcript; ``--tokenization whole`` is the way to score
    such models.
    """
    ids = tokenizer("b", add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(tokenizer("a", add_special_tokens=False)["input_ids"] + ids)
    if decoded != "ab":
        raise ValueError(
            "this tokenizer adds characters when a piece is tokenised on its own "
            f"('a' + 'b' decodes to {decoded!r}); use --tokenization whole"
        )


def tokenize(
    tokenizer,
    rendering: Rendering,
    n_responses: int,
    mode: str = "segments",
    prefix_ids: list[int] | None = None,
) -> Tokenized:
    """Token ids of ``rendering`` and the token span of each of its ``n_responses`` responses."""
    prefix = list(prefix_ids or []) if rendering.add_special_tokens else []
    if mode == "segments":
        return _tokenize_segments(tokenizer, rendering, n_responses, prefix)
    if mode == "whole":
        return _tokenize_whole(tokenizer, rendering, n_responses, prefix)
    raise ValueError(f"unknown tokenization {mode!r}; choose from {', '.join(TOKENIZATIONS)}")


def _tokenize_segments(tokenizer, rendering: Rendering, n: int, prefix: list[int]) -> Tokenized:
    texts = [s.text for s in rendering.segments]
    # One call for all segments: the Rust tokenizer encodes the batch in parallel.
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    offsets = len(prefix) + np.concatenate([[0], np.cumsum(lengths)])
    ids = np.fromiter((t for e in encoded for t in e), dtype=np.int64, count=int(lengths.sum()))
    ids = np.concatenate([np.asarray(prefix, dtype=np.int64), ids])
    starts = np.zeros(n, dtype=np.int64)
    ends = np.zeros(n, dtype=np.int64)
    for k, seg in enumerate(rendering.segments):
        if seg.response >= 0:
            starts[seg.response] = offsets[k]
            ends[seg.response] = offsets[k + 1]
    return Tokenized(ids, starts, ends)


def _tokenize_whole(tokenizer, rendering: Rendering, n: int, prefix: list[int]) -> Tokenized:
    text = rendering.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offs = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    tok_start, tok_end = offs[:, 0], offs[:, 1]
    # Character range of every response in the rendered text.
    seg_lengths = np.array([len(s.text) for s in rendering.segments], dtype=np.int64)
    seg_starts = np.concatenate([[0], np.cumsum(seg_lengths)])[:-1]
    char_a = np.zeros(n, dtype=np.int64)
    char_b = np.zeros(n, dtype=np.int64)
    for k, seg in enumerate(rendering.segments):
        if seg.response >= 0:
            char_a[seg.response] = seg_starts[k]
            char_b[seg.response] = seg_starts[k] + seg_lengths[k]
    # Offsets are ordered, so the overlapping tokens form a contiguous run:
    # from the first token ending after a to the last token starting before b.
    # (Running maxima keep the arrays sorted even around zero-width tokens.)
    cum_end = np.maximum.accumulate(tok_end) if len(ids) else tok_end
    cum_start = np.maximum.accumulate(tok_start) if len(ids) else tok_start
    starts = np.searchsorted(cum_end, char_a, side="right")
    ends = np.maximum(np.searchsorted(cum_start, char_b, side="left"), starts)
    empty = char_b <= char_a
    ends[empty] = starts[empty]
    straddle = 0
    if len(ids):
        first_over = (starts < ends) & (tok_start[np.minimum(starts, len(ids) - 1)] < char_a)
        last_over = (starts < ends) & (tok_end[np.maximum(ends - 1, 0)] > char_b)
        straddle = int(first_over.sum() + last_over.sum())
    k = len(prefix)
    return Tokenized(
        np.concatenate([np.asarray(prefix, dtype=np.int64), ids]), starts + k, ends + k, straddle
    )
