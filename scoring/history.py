"""History windows (``--condition history:K``): each response scored on a reduced transcript.

Definition (docs/scoring.md, "History windows")
-----------------------------------------------
For response ``i`` (0-based, in transcript order) of a participant, the
*reduced transcript* is the ``plain`` transcript with every earlier response
``j < i - K`` removed: the whole ``<<...>>``, markers included, and nothing
else (instructions, trial texts, feedback, the K most recent responses with
their markers and response ``i`` itself all stay).  Response ``i`` is scored
in its reduced transcript exactly as ``plain`` scores a response: segments
tokenised on their own (the text before response ``m = max(0, i - K)`` is one
context segment, which now runs across the removed responses), the
tokenizer's leading special tokens in front, position ids from 0, the sum of
the log-probabilities of the response's own tokens.  What follows response
``i`` never matters (causal model), so the sequence ends with it.  ``K`` at
least the number of earlier responses removes nothing: ``plain``.

How it is computed (exactly that, in fewer tokens)
--------------------------------------------------
Every reduced sequence starts with a prefix of one shared sequence: ``main``,
the tokens of the transcript with *all* responses removed.  For response
``i`` the longest common token prefix ``c_i`` of ``main`` and its reduced
sequence is computed (capped one token before the response, so every scored
token is predicted inside the branch), and the rest of the reduced sequence
is a *branch* starting at position ``c_i``: it attends to ``main[:c_i]`` and
to itself, with position ids ``c_i, c_i + 1, ...``, which is the attention
and the positions of the reduced sequence itself (``scoring.attention``, the
rule that option branches already use).  So each response costs its branch
(about the K most recent trials) instead of a whole transcript; results equal
one forward of each reduced sequence up to floating-point reassociation.
Options other than the observed response: their first token is read where
the response's first token is predicted, their later tokens in a branch of
their own (the window and the option's tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .render import Skip
from .rows import KIND_OPTION, KIND_RESPONSE, OptionGroups, Prepared, Row


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def _reduced_contexts(text: str, spans, keep: int) -> tuple[str, list[str]]:
    """``(text without any response, [context before the first kept response of each i])``.

    The context of target ``i`` is the text before its first kept response
    ``m = max(0, i - keep)`` with every response before ``m`` removed, ending
    with that response's opening ``<<``.
    """
    pieces: list[str] = []  # the text between responses, markers removed
    pos = 0
    for a, b in spans:
        if text[a - 2 : a] != "<<" or text[b : b + 2] != ">>":
            raise Skip("history-unmarked-response")
        pieces.append(text[pos : a - 2])
        pos = b + 2
    stripped = "".join(pieces) + text[pos:]
    # Where response j stood in the stripped text: after pieces[0..j].
    place = np.cumsum([len(x) for x in pieces])
    contexts = [stripped[: place[max(0, i - keep)]] + "<<" for i in range(len(spans))]
    return stripped, contexts


def plan_history(
    prep: Prepared,
    index: int,
    *,
    keep: int,
    tokenizer: Any,
    prefix_ids: Sequence[int],
    option_sets: Mapping[str, Sequence[str]],
    option_ids: Mapping[str, list[np.ndarray]],
    max_context: int,
    token_budget: int,
) -> None:
    """Rows of branches off the shared prefix for every response of ``prep`` (see above).

    ``prep`` holds the participant and its ``plain`` tokenisation (segments);
    its rows (and option groups) are filled here.  Raises :class:`Skip` when
    a reduced sequence does not fit ``max_context``.
    """
    p = prep.p
    assert p is not None
    tok = prep.tok
    prefix = np.asarray(list(prefix_ids), np.int64)
    stripped, contexts = _reduced_contexts(p.text, p.spans, keep)
    main = np.concatenate(
        [prefix, np.asarray(tokenizer(stripped, add_special_tokens=False)["input_ids"], np.int64)]
    )
    targets = [i for i in range(len(p.spans)) if tok.ends[i] > tok.starts[i]]
    enc = tokenizer([contexts[i] for i in targets], add_special_tokens=False)["input_ids"]
    exp_options = option_ids.get(p.experiment)
    groups = (
        OptionGroups(option_sets[p.experiment], exp_options) if exp_options is not None else None
    )
    plans = []
    for i, ctx_ids in zip(targets, enc):
        m = max(0, i - keep)
        head = np.concatenate([prefix, np.asarray(ctx_ids, np.int64)])
        seq = np.concatenate([head, tok.input_ids[tok.starts[m] : tok.ends[i]]])
        s = len(head) + int(tok.starts[i] - tok.starts[m])  # response i in the reduced sequence
        e = s + int(tok.ends[i] - tok.starts[i])
        c = min(_common_prefix(main, head), s - 1)
        if c < 0:
            raise Skip("response-at-start-without-bos")
        plans.append((i, seq, s, e, c))
    longest = max([0] + [len(ids) for ids in (exp_options or [])])
    if any(len(seq) + longest > max_context for _, seq, *_ in plans):
        raise Skip("too-long")
    _rows(prep, index, main, plans, groups, token_budget)
    if groups is not None:
        groups.store(prep)


def _rows(prep: Prepared, index: int, main, plans, groups, budget: int) -> None:
    """Branches grouped into rows of at most ``budget`` tokens (one target at least)."""
    row: Row | None = None
    for i, seq, s, e, c in plans:
        size = e - 1 - c
        if row is not None and max(len(row.ids), c) + row.n_tokens - len(row.ids) + size > budget:
            row = None
        if row is None:
            row = Row(part=index, lo=0, ids=main[:0])
            prep.rows.append(row)
        if c > len(row.ids):
            row.ids = main[:c]
        b = len(row.branch_ids)
        row.branch_start.append(c)
        row.branch_ids.append(seq[c : e - 1])
        local = np.arange(s, e)
        plain = prep.tok.starts[i] + (local - s)
        row.add_queries(b, local - 1 - c, seq[s:e], KIND_RESPONSE, plain)
        if groups is not None:
            _option_queries(row, b, groups, i, seq, s, e, c)
    if not prep.rows:  # every response empty: one token row, nothing to query
        prep.rows.append(Row(part=index, lo=0, ids=main[:1]))


def _option_queries(row: Row, b: int, groups: OptionGroups, i: int, seq, s: int, e: int, c: int):
    for ids, g in groups.add(i, seq[s:e]):
        q = groups.query(g, len(ids))
        # First option token: read where the response's first token is predicted.
        row.add_queries(b, np.asarray([s - 1 - c]), ids[:1], KIND_OPTION, np.asarray([q]))
        if len(ids) > 1:
            ob = len(row.branch_ids)
            row.branch_start.append(c)
            row.branch_ids.append(np.concatenate([seq[c:s], ids[:-1]]))
            pos = (s - c) + np.arange(len(ids) - 1)
            row.add_queries(ob, pos, ids[1:], KIND_OPTION, q + 1 + np.arange(len(ids) - 1))
