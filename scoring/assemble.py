"""Per-token results -> per-response score tables (and option / token tables).

Per-response sums use cumulative sums over the token log-probabilities, no
per-token Python loops; option log-probabilities are renormalised over their
set per response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .config import ScorerConfig
from .forward import Results
from .rows import Prepared, ranges
from .words import word_nlls

SCORE_SCHEMA = pa.schema(
    [
        ("response_id", pa.int64()),
        ("nll", pa.float64()),
        ("n_tokens", pa.int32()),
        ("first_token_nll", pa.float64()),
        ("top1_all", pa.bool_()),
        ("top1_first", pa.bool_()),
        ("first_token_entropy", pa.float64()),
    ]
)
OPTION_SCHEMA = pa.schema(
    [("response_id", pa.int64()), ("option", pa.string()), ("logprob", pa.float64())]
)
TOKEN_SCHEMA = pa.schema(
    [
        ("response_id", pa.int64()),
        ("token_index", pa.int32()),
        ("token_id", pa.int32()),
        ("token", pa.string()),
        ("logprob", pa.float64()),
        ("entropy", pa.float64()),  # --entropy, else NULL
        ("rank", pa.int32()),  # --rank, else NULL
    ]
)
WORD_SCHEMA = pa.schema(
    [
        ("response_id", pa.int64()),
        ("word_index", pa.int32()),
        ("word", pa.string()),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("token_start", pa.int32()),
        ("n_tokens", pa.int32()),
        ("nll", pa.float64()),  # bow-corrected when the run's settings say so; NULL: no token
        ("token_nll", pa.float64()),  # plain sum of the word's token NLLs
    ]
)


@dataclass
class ScoreBatch:
    scores: pa.Table  # SCORE_SCHEMA
    options: pa.Table  # OPTION_SCHEMA
    tokens: pa.Table | None  # TOKEN_SCHEMA when token_level
    participant_keys: list[int]  # participants completely covered
    counts: dict[str, int] = field(default_factory=dict)
    words: pa.Table | None = None  # WORD_SCHEMA when word_level

    @property
    def n_tokens(self) -> int:
        return int(self.counts.get("tokens_forwarded", 0))


class Assembler:
    """Turns finished plans and their forward results into a :class:`ScoreBatch`."""

    def __init__(self, config: ScorerConfig, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.token_level = config.stores_tokens
        self.entropy = config.entropy
        self.rank = config.rank
        self.word_level = config.word_level
        self.bow_correction = config.corrects_words

    def assemble(
        self, prepared: list[Prepared], results: list[Results], counts: dict[str, int]
    ) -> ScoreBatch:
        """The score (option, token, word) tables of every completely scored plan."""
        cols: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_SCHEMA.names}
        valid: list[np.ndarray] = []
        opt_rows: dict[str, list] = {"response_id": [], "option": [], "logprob": []}
        tok_rows: dict[str, list] = {k: [] for k in TOKEN_SCHEMA.names}
        word_rows: dict[str, list] = {k: [] for k in WORD_SCHEMA.names}
        keys = []
        n_resp = 0
        for prep, res in zip(prepared, results):
            if res.rows_done != len(prep.rows):
                continue
            assert prep.p is not None  # a participant's plan (never the self-check's probe)
            rid = np.asarray(prep.p.response_ids, np.int64)
            nll, has = self._score_columns(prep, res, rid, cols)
            valid.append(has)
            counts["empty_responses"] = counts.get("empty_responses", 0) + int((~has).sum())
            keys.append(prep.p.participant_key)
            n_resp += len(rid)
            if len(prep.opt_resp):
                self._option_rows(prep, res, nll, opt_rows)
            if self.token_level:
                self._token_rows(prep, res, rid, tok_rows)
            if self.word_level and prep.words is not None:
                self._word_rows(prep, res, rid, word_rows)
        counts["participants"] = counts.get("participants", 0) + len(keys)
        counts["responses"] = counts.get("responses", 0) + n_resp
        return ScoreBatch(
            _score_table(cols, valid),
            _table(OPTION_SCHEMA, opt_rows, flat_strings=("option",)),
            _table(TOKEN_SCHEMA, tok_rows) if self.token_level else None,
            keys,
            counts,
            _table(WORD_SCHEMA, word_rows) if self.word_level else None,
        )

    @staticmethod
    def _score_columns(
        prep: Prepared, res: Results, rid: np.ndarray, cols: dict[str, list[np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-response sums by cumulative sums; returns the NLLs and which have tokens."""
        tok = prep.tok
        s, e = tok.starts, tok.ends
        n = e - s
        has = n > 0
        c_lp = np.concatenate([[0.0], np.cumsum(res.lp)])
        c_miss = np.concatenate([[0], np.cumsum(~res.top1)])
        nll = -(c_lp[e] - c_lp[s])
        first = np.minimum(s, len(tok) - 1)
        cols["response_id"].append(rid)
        cols["nll"].append(nll)
        cols["n_tokens"].append(n.astype(np.int32))
        cols["first_token_nll"].append(-res.lp[first])
        cols["top1_all"].append((c_miss[e] - c_miss[s]) == 0)
        cols["top1_first"].append(res.top1[first])
        cols["first_token_entropy"].append(res.ent[first])
        return nll, has

    def _token_rows(self, prep: Prepared, res: Results, rid: np.ndarray, out: dict[str, list]):
        tok = prep.tok
        s, e = tok.starts, tok.ends
        n = e - s
        t = ranges(s, e)
        which = np.repeat(np.arange(len(rid)), n)
        out["response_id"].append(rid[which])
        out["token_index"].append((t - np.repeat(s, n)).astype(np.int32))
        out["token_id"].append(tok.input_ids[t].astype(np.int32))
        out["token"].append(
            np.asarray(
                self.tokenizer.convert_ids_to_tokens(tok.input_ids[t].tolist()), dtype=object
            )
        )
        out["logprob"].append(res.lp[t])
        out["entropy"].append(res.ent[t] if self.entropy else np.full(len(t), None))
        out["rank"].append(
            res.rank[t] if self.rank and res.rank is not None else np.full(len(t), None)
        )

    def _word_rows(self, prep: Prepared, res: Results, rid: np.ndarray, out: dict[str, list]):
        w = prep.words
        assert w is not None
        starts, ends = prep.tok.starts[w.resp], prep.tok.ends[w.resp]
        bow = res.bow if self.bow_correction else None
        nll, token_nll = word_nlls(res.lp, bow, w.first, w.end, starts, ends)
        n = (w.end - w.first).astype(np.int32)
        # A word none of whose characters starts a token (a tokenizer merging
        # across a space) has no score of its own: NULL, its characters counted
        # with the word holding that token.
        none = np.where(n == 0, np.asarray(None, dtype=object), 0.0)
        out["response_id"].append(rid[w.resp])
        out["word_index"].append(w.index)
        out["word"].append(np.asarray(w.text, dtype=object))
        out["char_start"].append(w.char_start)
        out["char_end"].append(w.char_end)
        out["token_start"].append((w.first - starts).astype(np.int32))
        out["n_tokens"].append(n)
        out["nll"].append(np.where(n == 0, none, nll))
        out["token_nll"].append(np.where(n == 0, none, token_nll))

    @staticmethod
    def _option_rows(prep: Prepared, res: Results, nll: np.ndarray, out: dict[str, list]):
        assert prep.p is not None  # a participant's plan (never the self-check's probe)
        n_groups = len(prep.opt_resp)
        raw = np.bincount(prep.opt_query_group, weights=res.oq_lp, minlength=n_groups)
        raw = np.where(prep.opt_reuse, -nll[prep.opt_resp], raw)
        # Renormalise over the set, per response: logprob - logsumexp(set).
        resp = prep.opt_resp
        uniq, inv = np.unique(resp, return_inverse=True)
        mx = np.full(len(uniq), -np.inf)
        np.maximum.at(mx, inv, raw)
        lse = mx + np.log(np.bincount(inv, weights=np.exp(raw - mx[inv]), minlength=len(uniq)))
        out["response_id"].append(np.asarray(prep.p.response_ids, np.int64)[resp])
        out["option"].append(prep.opt_name)
        out["logprob"].append(raw - lse[inv])


# Score columns that are NULL for a response without tokens.
_NULL_WHEN_EMPTY = ("first_token_nll", "top1_all", "top1_first", "first_token_entropy")


def _score_table(cols: dict[str, list[np.ndarray]], valid: list[np.ndarray]) -> pa.Table:
    def column(name: str, typ: pa.DataType) -> pa.Array:
        if not cols[name]:
            return pa.array([], typ)
        data = np.concatenate(cols[name])
        mask = ~np.concatenate(valid) if name in _NULL_WHEN_EMPTY else None
        return pa.array(data, typ, mask=mask)

    scores = pa.table({f.name: column(f.name, f.type) for f in SCORE_SCHEMA}, schema=SCORE_SCHEMA)
    return scores.sort_by("response_id")


def _table(
    schema: pa.Schema, rows: dict[str, list], flat_strings: tuple[str, ...] = ()
) -> pa.Table:
    """A table of ``schema`` from per-participant column chunks."""

    def column(f: pa.Field) -> pa.Array:
        chunks = rows[f.name]
        if f.name in flat_strings:
            return pa.array([v for chunk in chunks for v in chunk], f.type)
        return pa.array(np.concatenate(chunks) if chunks else [], f.type)

    return pa.table({f.name: column(f) for f in schema}, schema=schema)
