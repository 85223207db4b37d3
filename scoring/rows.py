"""The plan's data: rows with explicit queries, a participant's plan, option groups.

Planners (``scoring.plan`` for the rendered transcript, ``scoring.history``
for history windows) build these; ``scoring.forward`` evaluates the rows'
queries; ``scoring.assemble`` turns a plan and its results into tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .inputs import ParticipantInput
from .tokenize import Tokenized
from .words import WordPlan

MAIN = -1  # a query or token on the row's main sequence, not in a branch
KIND_RESPONSE = 0  # a response token: index into the participant's tokens
KIND_OPTION = 1  # an option query: index into Prepared.opt_query_group


def _empty() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass(eq=False)
class Row:
    """One sequence of a forward pass: main tokens, branches off them, and queries."""

    part: int  # index into the prepared list
    lo: int  # global token index of the row's first main token
    ids: np.ndarray  # main tokens
    branch_start: list[int] = field(default_factory=list)  # main position each branch follows
    branch_ids: list[np.ndarray] = field(default_factory=list)
    # Queries: branch (MAIN or a branch number), position in it, token, kind, result index.
    q_branch: np.ndarray = field(default_factory=_empty)
    q_pos: np.ndarray = field(default_factory=_empty)
    q_token: np.ndarray = field(default_factory=_empty)
    q_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    q_index: np.ndarray = field(default_factory=_empty)

    @property
    def n_tokens(self) -> int:
        return len(self.ids) + sum(len(b) for b in self.branch_ids)

    def add_queries(self, branch, pos, token, kind: int, index) -> None:
        """Append queries (arrays of one length; ``kind`` for all of them)."""
        n = len(pos)
        self.q_branch = np.concatenate([self.q_branch, np.broadcast_to(branch, n)]).astype(np.int64)
        self.q_pos = np.concatenate([self.q_pos, pos]).astype(np.int64)
        self.q_token = np.concatenate([self.q_token, token]).astype(np.int64)
        self.q_kind = np.concatenate([self.q_kind, np.full(n, kind, np.int8)])
        self.q_index = np.concatenate([self.q_index, index]).astype(np.int64)


@dataclass(eq=False)
class Prepared:
    """A participant's plan: its tokens (response ranges) and rows; options and words."""

    p: ParticipantInput | None  # None for the start-up self-check's probe
    tok: Tokenized
    rows: list[Row]
    # option plan: per query-group (response, option) -> either reuse of the
    # observed response or a sum over option queries
    opt_resp: np.ndarray = field(default_factory=_empty)
    opt_name: list[str] = field(default_factory=list)
    opt_reuse: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    opt_query_group: np.ndarray = field(default_factory=_empty)
    # words of the responses (word level only)
    words: WordPlan | None = None

    @property
    def n_tokens(self) -> int:
        """Tokens forwarded for this participant (windows and branches included)."""
        return sum(r.n_tokens for r in self.rows)


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for every pair, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total) - offs)


class OptionGroups:
    """The (response, option) groups of one participant and their option queries."""

    def __init__(self, names: Sequence[str], ids: list[np.ndarray]):
        self.names = list(names)
        self.ids = ids
        self.resp: list[int] = []
        self.name: list[str] = []
        self.reuse: list[bool] = []
        self.query_group: list[int] = []

    def add(self, response: int, observed: np.ndarray):
        """Register every option of ``response``; yields those that need queries."""
        for name, ids in zip(self.names, self.ids):
            g = len(self.resp)
            self.resp.append(response)
            self.name.append(name)
            same = len(ids) == len(observed) and bool(np.all(ids == observed))
            self.reuse.append(same)
            if not same and len(ids):
                yield ids, g

    def query(self, group: int, n: int) -> int:
        """Reserve ``n`` option queries for ``group``; returns the first query's index."""
        first = len(self.query_group)
        self.query_group.extend([group] * n)
        return first

    def store(self, prep: Prepared) -> None:
        prep.opt_resp = np.asarray(self.resp, np.int64)
        prep.opt_name = self.name
        prep.opt_reuse = np.asarray(self.reuse, bool)
        prep.opt_query_group = np.asarray(self.query_group, np.int64)
