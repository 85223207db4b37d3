"""Word-level scores: word boundaries, token -> word maps, the beginning-of-word correction.

Words
-----
A *word* is a maximal run of non-whitespace characters of the response text
(``re.finditer(r"\\S+", text)``; whitespace as Python's ``str.isspace``), so
punctuation stays with the word it touches (``red,`` is one word).  This is
the definition under which the beginning-of-word correction below is exact:
in tokenizers whose tokens carry their leading whitespace (GPT-2's ``Ġ``,
SentencePiece's ``▁``), a word ends exactly where the next token starts with
whitespace.  Character offsets are 0-based Python string offsets into the
response text (markers excluded), like ``responses.char_start``.

Tokens -> words
---------------
Tokens are mapped by the tokenizer's character offsets (``offset_mapping`` of
a fast tokenizer): a token belongs to the word holding its first
non-whitespace character; a token of whitespace only (``Ġ`` before a double
space, a newline) belongs to the next word (it is that word's separator), or
to the response's last word when no word follows.  A word's token NLL is the
sum of its tokens' NLLs.

The correction (Pimentel & Meister 2024; Oh & Schuler 2024)
----------------------------------------------------------
With leading-whitespace tokens, ``P(tokens of w)`` is not ``P(w)``: it leaves
out that ``w`` *ends* (the next token starts a new word) and it includes that
a new word *starts* (which the previous word's end already accounted for)::

    log P(w_k) = sum(log p(tokens of w_k))
                 + log B(after w_k) - log B(before w_k)
    B(position) = sum of p(v | prefix) over v in BOW, BOW = tokens whose text
                  starts with whitespace, plus the end-of-text token

``B(after w_k)`` and ``B(before w_{k+1})`` are the same number (the mass at
the position that predicts w_{k+1}'s first token), so the terms telescope:
the corrected word log-probabilities of a response sum to its token
log-probabilities plus the two edge terms.  psystats applies the correction
at the word boundaries *inside* a response; at its edges the response
boundary (the ``<<``/``>>`` markers, a chat turn), not whitespace, delimits
the word, and the response-level ``nll`` does not include the probability of
those markers either, so the edge terms are 0.  Hence: corrected word NLLs of
a response sum exactly to its ``scores.nll``, and a one-word response's word
NLL equals its response NLL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ScoringError
from .render import Rendering
from .tokenize import Tokenized

WORD_RE = re.compile(r"\S+")


def split_words(text: str) -> list[tuple[int, int]]:
    """``(char_start, char_end)`` of every word of ``text`` (maximal non-whitespace runs)."""
    return [m.span() for m in WORD_RE.finditer(text)]


def check_offsets(tokenizer: Any, model_name: str) -> None:
    """Refuse tokenizers without character offsets (slow, Python-only tokenizers)."""
    ok = bool(getattr(tokenizer, "is_fast", False))
    if ok:
        try:
            tokenizer("a b", add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, ValueError, TypeError):
            ok = False
    if not ok:
        raise ScoringError(
            f"model {model_name!r}: --word-level maps tokens to words by character offsets, "
            "which only fast (Rust) tokenizers give; this tokenizer is a slow one. Score "
            "without --word-level (--token-level keeps every token's log-probability)"
        )


def bow_vocabulary(tokenizer: Any, vocab_size: int) -> np.ndarray:
    """bool[vocab_size]: tokens whose text starts with whitespace, and the end-of-text token.

    Each id is decoded after an anchor token (``"a"``), because decoding a
    lone SentencePiece piece drops its leading space; ids beyond the
    tokenizer (padded embedding rows) are not beginnings of words.
    """
    cached = getattr(tokenizer, "_psystats_bow", None)
    if cached is not None and len(cached) == vocab_size:
        return cached
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"]
    n = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode(
        [anchor + [i] for i in range(n)],
        skip_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    head = len(tokenizer.decode(anchor, clean_up_tokenization_spaces=False))
    out = np.zeros(vocab_size, bool)
    out[:n] = [t[head : head + 1].isspace() for t in texts]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and 0 <= int(eos) < vocab_size:
        out[int(eos)] = True
    try:  # one decode pass per tokenizer object (several scorers may share one)
        tokenizer._psystats_bow = out
    except AttributeError:
        pass
    return out


def check_bow_tokenizer(tokenizer: Any, bow: np.ndarray, model_name: str) -> None:
    """Refuse the correction for tokenizers that do not put a word's whitespace on its first token."""
    enc = tokenizer("a b c", add_special_tokens=False, return_offsets_mapping=True)
    firsts = []
    for word_start in (2, 4):  # 'b' and 'c'
        for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            if a <= word_start < b:
                firsts.append(int(tid))
                break
    if len(firsts) != 2 or not all(bow[t] for t in firsts if t < len(bow)):
        raise ScoringError(
            f"model {model_name!r}: its tokenizer does not put a word's leading whitespace on "
            "the word's first token, so the beginning-of-word correction does not apply; "
            "use --no-bow-correction"
        )


def assign_tokens(text: str, words: list[tuple[int, int]], offsets: np.ndarray) -> np.ndarray:
    """Word index of every token (``offsets``: int[n, 2] character spans in ``text``)."""
    n_tok = len(offsets)
    if not words:
        return np.full(n_tok, -1, np.int64)
    L = len(text)
    word_of = np.full(L + 1, -1, np.int64)
    for k, (a, b) in enumerate(words):
        word_of[a:b] = k
    # next_nonspace[c]: the first non-whitespace character at or after c (L: none).
    idx = np.where(word_of >= 0, np.arange(L + 1), L)
    next_nonspace = np.minimum.accumulate(idx[::-1])[::-1]
    a = np.clip(offsets[:, 0], 0, L)
    b = np.clip(offsets[:, 1], 0, L)
    pos = next_nonspace[a]
    # A whitespace-only token belongs to the next word.
    pos = np.where(pos < b, pos, next_nonspace[b])
    out = np.where(pos < L, word_of[np.minimum(pos, L)], len(words) - 1)
    # Offsets are ordered; keep the map monotone even around zero-width tokens.
    return np.maximum.accumulate(out) if n_tok else out


def word_ranges(assigned: np.ndarray, n_words: int) -> tuple[np.ndarray, np.ndarray]:
    """Token range ``[first, end)`` of every word, relative to the response (empty: first == end)."""
    first = np.searchsorted(assigned, np.arange(n_words), side="left")
    end = np.searchsorted(assigned, np.arange(n_words), side="right")
    return first.astype(np.int64), end.astype(np.int64)


def word_nlls(
    lp: np.ndarray,
    bow_lp: np.ndarray | None,
    first: np.ndarray,
    end: np.ndarray,
    resp_start: np.ndarray,
    resp_end: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(nll, token_nll)`` of words with global token ranges ``[first, end)``.

    ``lp[t]``: log-probability of token t; ``bow_lp[t]``: log of the
    beginning-of-word mass at the position that predicts token t (``None``:
    no correction).  ``resp_start``/``resp_end``: the token range of each
    word's response (the edges, where the correction terms are 0).
    """
    c = np.concatenate([[0.0], np.cumsum(lp)])
    token_nll = -(c[end] - c[first])
    if bow_lp is None:
        return token_nll.copy(), token_nll
    n = len(bow_lp)
    # log B(after w): the mass predicting the token after the word, inside the response.
    after = np.where(end < resp_end, bow_lp[np.minimum(end, n - 1)], 0.0)
    before = np.where(first > resp_start, bow_lp[np.minimum(first, n - 1)], 0.0)
    return token_nll - after + before, token_nll


@dataclass
class WordPlan:
    """The words of one participant's responses, flat, in response order."""

    resp: np.ndarray  # int64: response index of each word
    index: np.ndarray  # int32: word index within its response
    text: list[str]
    char_start: np.ndarray  # int32, in the response text
    char_end: np.ndarray
    first: np.ndarray  # int64: global token index of the word's first token
    end: np.ndarray  # one past its last token (== first: no token)


def response_offsets(
    tokenizer: Any, rendering: Rendering, tok: Tokenized, mode: str
) -> list[np.ndarray]:
    """Character spans (int[n, 2], in the response text) of each response's tokens."""
    n = len(tok.starts)
    out = [np.zeros((0, 2), np.int64) for _ in range(n)]
    if mode == "segments":
        segs = [s for s in rendering.segments if s.response >= 0 and s.text]
        if not segs:
            return out
        enc = tokenizer(
            [s.text for s in segs], add_special_tokens=False, return_offsets_mapping=True
        )
        for seg, ids, offs in zip(segs, enc["input_ids"], enc["offset_mapping"]):
            r = seg.response
            # The same call as the scoring tokenisation, so the same tokens.
            assert len(ids) == tok.ends[r] - tok.starts[r]
            out[r] = np.asarray(offs, np.int64).reshape(-1, 2)
        return out
    enc = tokenizer(rendering.text, add_special_tokens=False, return_offsets_mapping=True)
    offs = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    k = len(tok) - len(offs)  # leading special tokens
    pos = 0
    for seg in rendering.segments:
        if seg.response >= 0:
            r = seg.response
            # Straddling tokens are clipped to the response by assign_tokens.
            out[r] = offs[tok.starts[r] - k : tok.ends[r] - k] - pos
        pos += len(seg.text)
    return out


def plan_words(tokenizer: Any, rendering: Rendering, tok: Tokenized, mode: str) -> WordPlan:
    """Words of every response (its text as rendered) and the global token range of each."""
    offsets = response_offsets(tokenizer, rendering, tok, mode)
    texts = {s.response: s.text for s in rendering.segments if s.response >= 0}
    resp: list[np.ndarray] = []
    index: list[np.ndarray] = []
    text: list[str] = []
    ca: list[np.ndarray] = []
    cb: list[np.ndarray] = []
    first: list[np.ndarray] = []
    end: list[np.ndarray] = []
    for r in range(len(tok.starts)):
        resp_text = texts.get(r, "")
        words = split_words(resp_text)
        if not words:
            continue
        assigned = assign_tokens(resp_text, words, offsets[r])
        f, e = word_ranges(assigned, len(words))
        resp.append(np.full(len(words), r, np.int64))
        index.append(np.arange(len(words), dtype=np.int32))
        text.extend(resp_text[a:b] for a, b in words)
        w = np.asarray(words, np.int32).reshape(-1, 2)
        ca.append(w[:, 0])
        cb.append(w[:, 1])
        first.append(f + tok.starts[r])
        end.append(e + tok.starts[r])

    def cat(xs: list[np.ndarray], dt: type) -> np.ndarray:
        return np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)

    return WordPlan(
        cat(resp, np.int64),
        cat(index, np.int32),
        text,
        cat(ca, np.int32),
        cat(cb, np.int32),
        cat(first, np.int64),
        cat(end, np.int64),
    )
