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

from .plan import _Prepared, _ranges
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


class AssembleMixin:
    """``Scorer`` methods that turn finished plans into a :class:`ScoreBatch`."""

    # Set by ``Scorer.__init__``.
    tokenizer: Any
    token_level: bool
    entropy: bool
    rank: bool
    word_level: bool
    bow_correction: bool

    def _assemble(self, prepared: list[_Prepared], counts: dict[str, int]) -> ScoreBatch:
        cols: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_SCHEMA.names}
        valid: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_SCHEMA.names}
        opt_rows: dict[str, list] = {"response_id": [], "option": [], "logprob": []}
        tok_rows: dict[str, list] = {k: [] for k in TOKEN_SCHEMA.names}
        word_rows: dict[str, list] = {k: [] for k in WORD_SCHEMA.names}
        keys = []
        n_resp = 0
        for prep in prepared:
            if prep.rows_done != len(prep.rows):
                continue
            # A participant's plan, scored by score_prepared: all of these are set.
            assert (
                prep.p is not None
                and prep.lp is not None
                and prep.top1 is not None
                and prep.ent is not None
            )
            tok = prep.tok
            rid = np.asarray(prep.p.response_ids, np.int64)
            s, e = tok.starts, tok.ends
            n = e - s
            has = n > 0
            c_lp = np.concatenate([[0.0], np.cumsum(prep.lp)])
            c_miss = np.concatenate([[0], np.cumsum(~prep.top1)])
            nll = -(c_lp[e] - c_lp[s])
            first = np.minimum(s, len(tok) - 1)
            cols["response_id"].append(rid)
            cols["nll"].append(nll)
            cols["n_tokens"].append(n.astype(np.int32))
            cols["first_token_nll"].append(-prep.lp[first])
            cols["top1_all"].append((c_miss[e] - c_miss[s]) == 0)
            cols["top1_first"].append(prep.top1[first])
            cols["first_token_entropy"].append(prep.ent[first])
            for k in ("first_token_nll", "top1_all", "top1_first", "first_token_entropy"):
                valid[k].append(has)
            counts["empty_responses"] = counts.get("empty_responses", 0) + int((~has).sum())
            keys.append(prep.p.participant_key)
            n_resp += len(rid)
            if len(prep.opt_resp):
                self._option_rows(prep, nll, opt_rows)
            if self.token_level:
                t = _ranges(s, e)
                which = np.repeat(np.arange(len(rid)), n)
                tok_rows["response_id"].append(rid[which])
                tok_rows["token_index"].append((t - np.repeat(s, n)).astype(np.int32))
                tok_rows["token_id"].append(tok.input_ids[t].astype(np.int32))
                tok_rows["token"].append(
                    np.asarray(
                        self.tokenizer.convert_ids_to_tokens(tok.input_ids[t].tolist()),
                        dtype=object,
                    )
                )
                tok_rows["logprob"].append(prep.lp[t])
                tok_rows["entropy"].append(prep.ent[t] if self.entropy else np.full(len(t), None))
                tok_rows["rank"].append(
                    prep.rank[t] if self.rank and prep.rank is not None else np.full(len(t), None)
                )
            if self.word_level and prep.words is not None:
                self._word_rows(prep, rid, word_rows)
        counts["participants"] = counts.get("participants", 0) + len(keys)
        counts["responses"] = counts.get("responses", 0) + n_resp

        def column(name: str, typ: pa.DataType) -> pa.Array:
            if not cols[name]:
                return pa.array([], typ)
            data = np.concatenate(cols[name])
            mask = (
                None
                if name not in ("first_token_nll", "top1_all", "top1_first", "first_token_entropy")
                else ~np.concatenate(valid[name])
            )
            return pa.array(data, typ, mask=mask)

        scores = pa.table(
            {f.name: column(f.name, f.type) for f in SCORE_SCHEMA}, schema=SCORE_SCHEMA
        )
        scores = scores.sort_by("response_id")
        options = pa.table(
            {
                "response_id": pa.array(
                    np.concatenate(opt_rows["response_id"]) if opt_rows["response_id"] else [],
                    pa.int64(),
                ),
                "option": pa.array([o for chunk in opt_rows["option"] for o in chunk], pa.string()),
                "logprob": pa.array(
                    np.concatenate(opt_rows["logprob"]) if opt_rows["logprob"] else [], pa.float64()
                ),
            },
            schema=OPTION_SCHEMA,
        )
        tokens = None
        if self.token_level:
            tokens = pa.table(
                {
                    f.name: pa.array(
                        np.concatenate(tok_rows[f.name]) if tok_rows[f.name] else [], f.type
                    )
                    for f in TOKEN_SCHEMA
                },
                schema=TOKEN_SCHEMA,
            )
        words = None
        if self.word_level:
            words = pa.table(
                {
                    f.name: pa.array(
                        np.concatenate(word_rows[f.name]) if word_rows[f.name] else [], f.type
                    )
                    for f in WORD_SCHEMA
                },
                schema=WORD_SCHEMA,
            )
        return ScoreBatch(scores, options, tokens, keys, counts, words)

    def _word_rows(self, prep: _Prepared, rid: np.ndarray, out: dict[str, list]) -> None:
        w = prep.words
        assert w is not None and prep.lp is not None
        starts, ends = prep.tok.starts[w.resp], prep.tok.ends[w.resp]
        bow = prep.bow if self.bow_correction else None
        nll, token_nll = word_nlls(prep.lp, bow, w.first, w.end, starts, ends)
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

    def _option_rows(self, prep: _Prepared, nll: np.ndarray, out: dict[str, list]) -> None:
        assert prep.p is not None  # a participant's plan (never the self-check's probe)
        n_groups = len(prep.opt_resp)
        raw = np.bincount(prep.opt_query_group, weights=prep.oq_lp, minlength=n_groups)
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
