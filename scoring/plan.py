"""Plans: what one participant needs computed.

Input: participants and the scorer's configuration (and tokenizer).  Output:
one :class:`Prepared` per participant that can be scored, and skip counts.

A participant's tokens become one or more *rows* (the whole transcript, or
overlapping windows under ``context_policy="window"``); option sets add short
*branches* to a row: the tokens of an option other than the one the
participant gave, attending to the transcript up to the response.  Every row
lists its *queries* explicitly: where in the row (main sequence or a branch,
and the position) a next-token distribution is read, which token's
log-probability is wanted, and where the result goes (a response token of the
participant's tokenisation, kind 0, or an option query, kind 1).  The forward
pass (``scoring.forward``) evaluates queries and nothing else, so other plans
(``scoring.history``: one reduced transcript per response, as branches off a
shared prefix) use the same forward and assembly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import ScorerConfig
from .history import plan_history
from .inputs import ParticipantInput
from .render import Rendering, Skip, history_window, render
from .rows import KIND_OPTION, KIND_RESPONSE, MAIN, OptionGroups, Prepared, Row, ranges
from .tokenize import Tokenized, tokenize
from .words import plan_words


class Planner:
    """Renders, tokenises and plans participants (CPU only, no model)."""

    def __init__(
        self, config: ScorerConfig, tokenizer: Any, prefix_ids: list[int], max_context: int
    ):
        self.config = config
        self.tokenizer = tokenizer
        self.prefix_ids = list(prefix_ids)
        self.max_context = int(max_context)
        self.stride = int(config.stride or max(1, self.max_context // 2))
        self.history = history_window(config.condition)
        self.option_ids: dict[str, list[np.ndarray]] = {}
        self.longest_option = 0
        for exp, opts in config.option_sets.items():
            enc = tokenizer(list(opts), add_special_tokens=False)["input_ids"]
            self.option_ids[exp] = [np.asarray(e, np.int64) for e in enc]
            self.longest_option = max([self.longest_option] + [len(e) for e in enc])
        self._token_cache: dict[int, int] = {}

    def render_tokenize(self, p: ParticipantInput) -> tuple[Rendering, Tokenized]:
        c = self.config
        rendering = render(p, c.condition, self.tokenizer, system_prompt=c.system_prompt)
        return rendering, tokenize(
            self.tokenizer, rendering, len(p.response_ids), c.tokenization, self.prefix_ids
        )

    def count_tokens(self, p: ParticipantInput) -> int:
        """Tokens ``p`` costs to score (0 when it is skipped under this condition)."""
        n = self._token_cache.get(p.participant_key)
        if n is None:
            try:
                if self.history is None:
                    n = len(self.render_tokenize(p)[1])
                else:
                    prepared, _ = self.prepare([p])
                    n = sum(prep.n_tokens for prep in prepared)
            except Skip:
                n = 0
            if len(self._token_cache) > 100_000:
                self._token_cache.clear()
            self._token_cache[p.participant_key] = n
        return n

    def prepare(
        self, participants: Sequence[ParticipantInput]
    ) -> tuple[list[Prepared], dict[str, int]]:
        """Render, tokenise and plan rows; returns the plans and skip counts."""
        out: list[Prepared] = []
        counts: dict[str, int] = {}

        def add(key: str, n: int = 1) -> None:
            counts[key] = counts.get(key, 0) + n

        for p in participants:
            try:
                prep, rendering = self._prepare_one(p, len(out), add)
            except Skip as s:
                add(f"skipped:{s.reason}")
                continue
            if self.config.word_level:
                prep.words = plan_words(
                    self.tokenizer, rendering, prep.tok, self.config.tokenization
                )
            if self.history is None and len(prep.rows) > 1:
                add("windowed_participants")
            out.append(prep)
        return out, counts

    def _prepare_one(self, p: ParticipantInput, index: int, add) -> tuple[Prepared, Rendering]:
        rendering, tok = self.render_tokenize(p)
        if self.config.tokenization == "whole":
            add("straddling_tokens", tok.straddling)
        has_tokens = tok.ends > tok.starts
        if np.any(has_tokens & (tok.starts == 0)):
            # Nothing precedes the first token: no BOS and a response at the very start.
            raise Skip("response-at-start-without-bos")
        prep = Prepared(p=p, tok=tok, rows=[])
        if self.history is not None and self.history < len(p.response_ids) - 1:
            plan_history(
                prep,
                index,
                keep=self.history,
                tokenizer=self.tokenizer,
                prefix_ids=self.prefix_ids,
                option_sets=self.config.option_sets,
                option_ids=self.option_ids,
                max_context=self.max_context,
                token_budget=self.config.token_budget,
            )
        else:
            # history:K keeping every earlier response is the plain transcript.
            self._plan_windows(prep, index)
            self._plan_options(prep)
        return prep, rendering

    def _plan_windows(self, prep: Prepared, index: int) -> None:
        assert prep.p is not None  # planned participants always have one
        tok = prep.tok
        T = len(tok)
        targets = ranges(tok.starts, tok.ends)
        # Room for option branches inside the model's positions.
        L = self.max_context - (self.longest_option if prep.p.experiment in self.option_ids else 0)
        if T <= L:
            windows = [(0, T, 1, T)]  # (lo, hi, first scored target, end of scored targets)
        elif self.config.context_policy == "skip":
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
            row = Row(part=index, lo=lo, ids=tok.input_ids[lo:hi])
            # Token t is predicted where token t - 1 sits.
            row.add_queries(MAIN, sel - 1 - lo, tok.input_ids[sel], KIND_RESPONSE, sel)
            prep.rows.append(row)
        prep.rows = [r for r in prep.rows if len(r.q_pos)] or prep.rows[:1]

    def _plan_options(self, prep: Prepared) -> None:
        """Option branches: each option other than the observed one, off the row scoring it."""
        assert prep.p is not None  # planned participants always have one
        exp = prep.p.experiment
        if exp not in self.option_ids:
            return
        tok = prep.tok
        # Which row scores target t: rows' target ranges are disjoint and sorted.
        bounds = [
            (int(r.q_index[0]), int(r.q_index[-1]) + 1) if len(r.q_index) else (0, 0)
            for r in prep.rows
        ]
        groups = OptionGroups(self.config.option_sets[exp], self.option_ids[exp])
        per_row: dict[int, OptionQueries] = {}
        for i in range(len(prep.p.response_ids)):
            s, e = int(tok.starts[i]), int(tok.ends[i])
            if e <= s:
                continue
            r_i = next(k for k, (a, b) in enumerate(bounds) if a <= s < b)
            row = prep.rows[r_i]
            acc = per_row.setdefault(r_i, OptionQueries(len(row.branch_ids)))
            for ids, g in groups.add(i, tok.input_ids[s:e]):
                q = groups.query(g, len(ids))
                # First option token: predicted where the response's first token is.
                acc.add(MAIN, s - 1 - row.lo, int(ids[0]), q)
                if len(ids) > 1:
                    b = acc.branch(s - row.lo, ids[:-1])
                    acc.add_many(b, np.arange(len(ids) - 1), ids[1:], q + 1)
        for r_i, acc in per_row.items():
            acc.attach(prep.rows[r_i])
        groups.store(prep)


class OptionQueries:
    """Branches and option queries collected for one row, attached in one go."""

    def __init__(self, first_branch: int):
        self.first_branch = first_branch
        self.bstart: list[int] = []
        self.bids: list[np.ndarray] = []
        self.cols: tuple[list, list, list, list] = ([], [], [], [])

    def branch(self, start: int, ids: np.ndarray) -> int:
        self.bstart.append(start)
        self.bids.append(ids)
        return self.first_branch + len(self.bids) - 1

    def add(self, branch: int, pos: int, token: int, ref: int) -> None:
        for col, v in zip(self.cols, (branch, pos, token, ref)):
            col.append(v)

    def add_many(self, branch: int, pos: np.ndarray, tokens: np.ndarray, first_ref: int) -> None:
        for j in range(len(pos)):
            self.add(branch, int(pos[j]), int(tokens[j]), first_ref + j)

    def attach(self, row: Row) -> None:
        row.branch_start.extend(self.bstart)
        row.branch_ids.extend(self.bids)
        b, pos, tok, ref = (np.asarray(c, np.int64) for c in self.cols)
        row.add_queries(b, pos, tok, KIND_OPTION, ref)
