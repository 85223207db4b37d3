"""Plans: what one participant needs computed.

A participant's tokens become one or more *rows* (the whole transcript, or
overlapping windows under ``context_policy="window"``); option sets add short
*branches* to a row: the tokens of an option other than the one the
participant gave, attending to the transcript up to the response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .inputs import ParticipantInput
from .render import Rendering, Skip, render
from .tokenize import Tokenized, tokenize
from .words import WordPlan, plan_words


@dataclass(eq=False)
class _Row:
    """One sequence of a forward pass: a window of a participant plus option branches."""

    part: int  # index into the prepared list
    lo: int  # global token index of the row's first token
    ids: np.ndarray  # main tokens
    targets: np.ndarray  # global indices of scored target tokens
    branch_start: list[int] = field(
        default_factory=list
    )  # local position of each branch's first token
    branch_ids: list[np.ndarray] = field(default_factory=list)
    # option queries: branch (-1: the main sequence), local position in it, token, query index
    oq_branch: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    oq_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    oq_token: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    oq_ref: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n_tokens(self) -> int:
        return len(self.ids) + sum(len(b) for b in self.branch_ids)


@dataclass(eq=False)
class _Prepared:
    p: ParticipantInput | None  # None for the start-up self-check's probe
    tok: Tokenized
    rows: list[_Row]
    # option plan: per query-group (response, option) -> either reuse of the
    # observed response or a sum over option queries
    opt_resp: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    opt_name: list[str] = field(default_factory=list)
    opt_reuse: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    opt_query_group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # words of the responses (word level only)
    words: WordPlan | None = None
    # filled while scoring
    lp: np.ndarray | None = None
    top1: np.ndarray | None = None
    ent: np.ndarray | None = None
    rank: np.ndarray | None = None  # with rank only
    bow: np.ndarray | None = None  # log beginning-of-word mass (word level with the correction)
    oq_lp: np.ndarray | None = None
    rows_done: int = 0


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for every pair, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total) - offs)


class PlanMixin:
    """``Scorer`` methods that render, tokenise and plan participants (CPU only)."""

    # Set by ``Scorer.__init__``.
    condition: str
    tokenizer: Any
    system_prompt: str | None
    tokenization: str
    prefix_ids: list[int]
    max_context: int
    context_policy: str
    stride: int
    option_sets: dict[str, list[str]]
    _option_ids: dict[str, list[np.ndarray]]
    _longest_option: int
    _token_cache: dict[int, int]
    word_level: bool

    def _render_tokenize(self, p: ParticipantInput) -> tuple[Rendering, Tokenized]:
        rendering = render(p, self.condition, self.tokenizer, system_prompt=self.system_prompt)
        return rendering, tokenize(
            self.tokenizer, rendering, len(p.response_ids), self.tokenization, self.prefix_ids
        )

    def _tokenize(self, p: ParticipantInput) -> Tokenized:
        return self._render_tokenize(p)[1]

    def count_tokens(self, p: ParticipantInput) -> int:
        """Tokens of ``p``'s rendering (0 when it is skipped under this condition)."""
        n = self._token_cache.get(p.participant_key)
        if n is None:
            try:
                n = len(self._tokenize(p))
            except Skip:
                n = 0
            if len(self._token_cache) > 100_000:
                self._token_cache.clear()
            self._token_cache[p.participant_key] = n
        return n

    def prepare(
        self, participants: Sequence[ParticipantInput]
    ) -> tuple[list[_Prepared], dict[str, int]]:
        """Render, tokenise and plan rows; returns the plans and skip counts."""
        out: list[_Prepared] = []
        counts: dict[str, int] = {}

        def skip(reason: str) -> None:
            counts[f"skipped:{reason}"] = counts.get(f"skipped:{reason}", 0) + 1

        for p in participants:
            try:
                rendering, tok = self._render_tokenize(p)
            except Skip as s:
                skip(s.reason)
                continue
            if self.tokenization == "whole":
                counts["straddling_tokens"] = counts.get("straddling_tokens", 0) + tok.straddling
            has_tokens = tok.ends > tok.starts
            if np.any(has_tokens & (tok.starts == 0)):
                # Nothing precedes the first token: no BOS and a response at the very start.
                skip("response-at-start-without-bos")
                continue
            prep = _Prepared(p=p, tok=tok, rows=[])
            try:
                self._plan(prep, len(out))
            except Skip as s:
                skip(s.reason)
                continue
            if self.word_level:
                prep.words = plan_words(self.tokenizer, rendering, tok, self.tokenization)
            if len(prep.rows) > 1:
                counts["windowed_participants"] = counts.get("windowed_participants", 0) + 1
            out.append(prep)
        return out, counts

    def _plan(self, prep: _Prepared, index: int) -> None:
        assert prep.p is not None  # planned participants always have one
        tok = prep.tok
        T = len(tok)
        targets = _ranges(tok.starts, tok.ends)
        # Room for option branches inside the model's positions.
        L = self.max_context - (
            self._longest_option if prep.p.experiment in self.option_sets else 0
        )
        if T <= L:
            windows = [(0, T, 1, T)]  # (lo, hi, first scored target, end of scored targets)
        elif self.context_policy == "skip":
            raise Skip("too-long")
        else:
            S = min(self.stride, L - 1)
            windows = []
            lo = 0
            while True:
                hi = min(lo + L, T)
                first = 1 if lo == 0 else lo + L - S
                windows.append((lo, hi, first, hi))
                if hi >= T:
                    break
                lo += S
        for lo, hi, a, b in windows:
            sel = targets[(targets >= a) & (targets < b)]
            prep.rows.append(_Row(part=index, lo=lo, ids=tok.input_ids[lo:hi], targets=sel))
        prep.rows = [r for r in prep.rows if len(r.targets)] or prep.rows[:1]
        self._plan_options(prep)

    def _plan_options(self, prep: _Prepared) -> None:
        assert prep.p is not None  # planned participants always have one
        exp = prep.p.experiment
        if exp not in self.option_sets:
            return
        tok = prep.tok
        names = self.option_sets[exp]
        opt_ids = self._option_ids[exp]
        g_resp: list[int] = []
        g_name: list[str] = []
        g_reuse: list[bool] = []
        q_group: list[int] = []
        # Which row scores target t: rows' target ranges are disjoint and sorted.
        bounds = [
            (int(r.targets[0]), int(r.targets[-1]) + 1) if len(r.targets) else (0, 0)
            for r in prep.rows
        ]
        per_row: dict[int, dict[str, list]] = {}
        for i in range(len(prep.p.response_ids)):
            s, e = int(tok.starts[i]), int(tok.ends[i])
            if e <= s:
                continue
            observed = tok.input_ids[s:e]
            r_i = next(k for k, (a, b) in enumerate(bounds) if a <= s < b)
            row = prep.rows[r_i]
            acc = per_row.setdefault(
                r_i, {"branch": [], "pos": [], "token": [], "ref": [], "bstart": [], "bids": []}
            )
            for name, ids in zip(names, opt_ids):
                g = len(g_resp)
                g_resp.append(i)
                g_name.append(name)
                same = len(ids) == len(observed) and bool(np.all(ids == observed))
                g_reuse.append(same)
                if same or len(ids) == 0:
                    continue
                # First option token: predicted where the response's first token is.
                acc["branch"].append(-1)
                acc["pos"].append(s - 1 - row.lo)
                acc["token"].append(int(ids[0]))
                acc["ref"].append(len(q_group))
                q_group.append(g)
                if len(ids) > 1:
                    b = len(row.branch_ids) + len(acc["bids"])
                    acc["bstart"].append(s - row.lo)
                    acc["bids"].append(ids[:-1])
                    for j in range(len(ids) - 1):
                        acc["branch"].append(b)
                        acc["pos"].append(j)
                        acc["token"].append(int(ids[j + 1]))
                        acc["ref"].append(len(q_group))
                        q_group.append(g)
        for r_i, acc in per_row.items():
            row = prep.rows[r_i]
            row.branch_start.extend(acc["bstart"])
            row.branch_ids.extend(acc["bids"])
            row.oq_branch = np.asarray(acc["branch"], np.int64)
            row.oq_pos = np.asarray(acc["pos"], np.int64)
            row.oq_token = np.asarray(acc["token"], np.int64)
            row.oq_ref = np.asarray(acc["ref"], np.int64)
        prep.opt_resp = np.asarray(g_resp, np.int64)
        prep.opt_name = g_name
        prep.opt_reuse = np.asarray(g_reuse, bool)
        prep.opt_query_group = np.asarray(q_group, np.int64)
