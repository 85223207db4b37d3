"""Forward passes: rows grouped by a token budget, packed, through the decoder.

Input: plans (``scoring.plan.Prepared``).  Output: one :class:`Results` per
plan, the per-token log-probabilities (and top-1, entropy, rank,
beginning-of-word mass) of its response tokens and its option queries.

Hidden states are gathered at the positions of the plans' queries *before*
the LM head, so full-vocabulary logits exist only where a score needs them
(see ``scoring.engine`` for the whole path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import attention as attn
from .config import ScorerConfig
from .errors import NonFiniteLogits, ScoringError
from .rows import KIND_OPTION, KIND_RESPONSE, MAIN, Prepared, Row


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


@dataclass(eq=False)
class Results:
    """What the forward passes computed for one plan, indexed like its tokens / option queries."""

    lp: np.ndarray  # log-probability of each token (response tokens filled)
    top1: np.ndarray  # whether it was the model's top token
    ent: np.ndarray  # entropy of the distribution that predicted it
    rank: np.ndarray | None  # rank of the token (with rank only)
    bow: np.ndarray | None  # log beginning-of-word mass (word level with the correction)
    oq_lp: np.ndarray  # log-probability of each option query
    rows_done: int = 0

    @classmethod
    def empty(cls, prep: Prepared, rank: bool, bow: bool) -> Results:
        T = len(prep.tok)
        return cls(
            lp=np.zeros(T, np.float64),
            top1=np.zeros(T, bool),
            ent=np.full(T, np.nan),
            rank=np.zeros(T, np.int64) if rank else None,
            bow=np.full(T, np.nan) if bow else None,
            oq_lp=np.zeros(len(prep.opt_query_group), np.float64),
        )


@dataclass
class Queries:
    """The queries of one forward, flat: packed position, token, kind, row, result index."""

    packed: np.ndarray
    token: np.ndarray
    kind: np.ndarray
    row: np.ndarray
    index: np.ndarray


class Forward:
    """Runs plans through a loaded model (``lm``) under a configuration.

    ``packing``, ``attention``, ``pad_multiple`` and ``sliding`` are decided
    by the scorer (they depend on the model and the device) and may be
    changed afterwards (tests do).
    """

    def __init__(
        self,
        lm: Any,
        config: ScorerConfig,
        *,
        packing: str,
        attention: str,
        pad_multiple: int,
        sliding: tuple[int | None, bool],
        pad_id: int,
        input_device: Any,
        bow: np.ndarray | None = None,
    ) -> None:
        self.lm = lm
        self.config = config
        self.dtype = config.dtype
        self.rank = config.rank
        self.token_budget = config.token_budget
        self.max_logit_rows = config.max_logit_rows
        self.compile = config.compile
        self.compile_bucket = config.compile_bucket
        self.packing = packing
        self.attention = attention
        self.pad_multiple = pad_multiple
        self.sliding = sliding
        self.pad_id = pad_id
        self.input_device = input_device
        self.bow = bow  # beginning-of-word vocabulary (word level with the correction)
        self._bow_tensors: dict = {}
        self._decoder_fn: Callable[..., Any] | None = None  # torch.compile'd, built on first use
        self._compiled_shapes: set[int] = set()
        self.compile_seconds = 0.0  # first-call time of each compiled shape, summed

    def run(
        self,
        prepared: list[Prepared],
        counts: dict[str, int],
        progress: Callable[[int], None] | None = None,
    ) -> list[Results]:
        """Every row of every plan through the model; ``counts`` gains the work done.

        Raises :class:`NonFiniteLogits` (nothing returned) on NaN/inf logits.
        """
        results = [Results.empty(p, self.rank, self.bow is not None) for p in prepared]
        # Longest rows first; ties keep the input order, so plans are deterministic.
        rows = sorted((r for prep in prepared for r in prep.rows), key=lambda r: -r.n_tokens)
        budget = self.token_budget
        tokens = 0
        while rows:
            group = self._take(rows, budget)
            try:
                self.forward(group, prepared, results)
            except Exception as e:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not _is_oom(e):
                    raise
                self._free_memory()
                if len(group) == 1:
                    p = prepared[group[0].part].p
                    assert p is not None  # only the start-up probe has none; it calls forward
                    raise ScoringError(
                        f"out of memory on a single sequence of {group[0].n_tokens} tokens "
                        f"(participant_key {p.participant_key}); lower "
                        "--max-context with --context-policy window, or use a smaller --dtype"
                    ) from None
                budget = max(1, budget // 2)
                counts["oom_backoffs"] = counts.get("oom_backoffs", 0) + 1
                continue  # the group's rows are still in `rows`: re-planned smaller
            taken = {id(r) for r in group}
            rows = [r for r in rows if id(r) not in taken]
            n = sum(r.n_tokens for r in group)
            tokens += n
            if progress is not None:
                progress(n)
        if budget != self.token_budget:
            counts["final_token_budget"] = budget
        counts["tokens_forwarded"] = counts.get("tokens_forwarded", 0) + tokens
        return results

    def _take(self, rows: list[Row], budget: int) -> list[Row]:
        """The next forward's rows: one row, or as many as fit the budget when packing."""
        group = [rows[0]]
        if self.packing == "packed":
            used = rows[0].n_tokens
            for r in rows[1:]:
                if used + r.n_tokens > budget:
                    continue
                group.append(r)
                used += r.n_tokens
        return group

    def _free_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- one forward ----------------------------------------------------------

    def layout(self, group: list[Row], pad_multiple: int = 1):
        """Packed layout of a group of rows: token ids, positions, the per-token
        document/branch structure the mask is built from, and where rows and branches start."""
        ids, pos, doc, branch, bstart = [], [], [], [], []
        main_off, branch_off = [], []
        off = 0
        nb = 0
        for d, row in enumerate(group):
            n = len(row.ids)
            ids.append(row.ids)
            pos.append(np.arange(n))
            doc.append(np.full(n, d))
            branch.append(np.full(n, -1))
            bstart.append(np.full(n, 0))
            main_off.append(off)
            off += n
            offs = []
            for b_start, b_ids in zip(row.branch_start, row.branch_ids):
                m = len(b_ids)
                ids.append(b_ids)
                pos.append(b_start + np.arange(m))
                doc.append(np.full(m, d))
                branch.append(np.full(m, nb))
                bstart.append(np.full(m, b_start))
                offs.append(off)
                off += m
                nb += 1
            branch_off.append(np.asarray(offs, np.int64))
        # Padding up to the bucket: documents of at most one attention tile each,
        # so they cost little attention and nothing real ever attends to them.
        pad = -off % pad_multiple
        d = len(group)
        while pad > 0:
            m = min(pad, attn.BLOCK)
            ids.append(np.full(m, self.pad_id))
            pos.append(np.arange(m))
            doc.append(np.full(m, d))
            branch.append(np.full(m, -1))
            bstart.append(np.full(m, 0))
            d += 1
            pad -= m
        cat = lambda xs: np.concatenate(xs).astype(np.int64)  # noqa: E731
        return (
            cat(ids),
            cat(pos),
            cat(doc),
            cat(branch),
            cat(bstart),
            np.asarray(main_off, np.int64),
            branch_off,
            nb,
        )

    def _mask(self, pos, doc, branch, bstart, device):
        """The packed attention mask: a FlexAttention BlockMask, or dense bool [1, 1, N, N]."""
        if self.attention == "flex":
            return attn.document_block_mask(pos, doc, branch, bstart, device)
        return attn.dense_masks(pos, doc, branch, bstart, device, *self.sliding)

    def _decoder_forward(self, ids, pos, mask):
        out = self.lm.get_decoder()(
            input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False
        )
        return out.last_hidden_state

    def _hidden(self, ids, pos, mask, *, compiled: bool = True):
        """Decoder hidden states [N, H] of one packed sequence."""
        if not (self.compile and compiled):
            return self._decoder_forward(ids[None], pos[None], mask)[0]
        import torch

        if self._decoder_fn is None:
            # Room for one graph per bucket length (and the dynamic-shape one).
            limit = max(8, self.token_budget // self.compile_bucket + 4)
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(
                        torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit)
                    )
            self._decoder_fn = torch.compile(self._decoder_forward)
            self._compiled_shapes = set()
        n = int(ids.shape[0])
        first = n not in self._compiled_shapes
        t = time.perf_counter()
        h = self._decoder_fn(ids[None], pos[None], mask)[0]
        if first:
            # The first call of a shape compiles: its time is reported apart from throughput.
            if h.device.type == "cuda":
                torch.cuda.synchronize(h.device)
            self.compile_seconds += time.perf_counter() - t
            self._compiled_shapes.add(n)
        return h

    def _bow_mask_on(self, device, dtype):
        """The beginning-of-word vocabulary as a 0/1 vector, cached per device and dtype."""
        import torch

        key = (str(device), dtype)
        cached = self._bow_tensors.get(key)
        if cached is None:
            assert self.bow is not None
            cached = torch.as_tensor(self.bow, device=device).to(dtype)
            self._bow_tensors[key] = cached
        return cached

    @staticmethod
    def _ranks(logits, local: np.ndarray, token: np.ndarray, kind: np.ndarray):
        """Rank of each response query's token in its row (1: the model's top token; ties share).

        One threshold per logit row (every row predicts at most one response
        token), so the comparison is a (rows x vocab) bool, not a float copy.
        Option queries (kind 1) get 0: ranks are a response-token score.
        """
        import torch

        dev = logits.device
        main = kind == KIND_RESPONSE
        li = torch.as_tensor(local[main], device=dev)
        thr = torch.full((logits.shape[0],), torch.inf, dtype=logits.dtype, device=dev)
        thr[li] = logits[li, torch.as_tensor(token[main], device=dev)]
        per_row = (logits > thr[:, None]).sum(-1) + 1
        out = torch.zeros(len(local), dtype=torch.int64, device=dev)
        out[torch.as_tensor(np.flatnonzero(main), device=dev)] = per_row[li]
        return out

    def _logits(self, hidden_rows):
        """Full-vocabulary logits of the gathered rows, float32 or better."""
        import torch

        head = self.lm.get_output_embeddings()
        w = getattr(head, "weight", None)
        if (
            hidden_rows.dtype in (torch.bfloat16, torch.float16)
            and isinstance(head, torch.nn.Linear)
            and hidden_rows.device.type == "cuda"
            and w is not None
            and w.device.type == "cuda"  # not offloaded (meta) under a device map
        ):
            # Under a device map the head may sit on another GPU than the last layer.
            hidden_rows = hidden_rows.to(w.device)
            # The matmul in bf16/fp16 on tensor cores, accumulated AND written in float32:
            # rounding logits to bf16 would cost up to ~0.06 nats per token.
            try:
                out = torch.mm(hidden_rows, w.t(), out_dtype=torch.float32)
            except (TypeError, RuntimeError):
                out = None
            if out is not None:
                return out + head.bias.float() if head.bias is not None else out
        out = head(hidden_rows)
        return out if out.dtype in (torch.float32, torch.float64) else out.float()

    @staticmethod
    def _queries(group: list[Row], main_off: np.ndarray, branch_off: list[np.ndarray]) -> Queries:
        """Where every query of the group sits in the packed sequence."""
        packed_l, token_l, kind_l, row_l, index_l = [], [], [], [], []
        for g, row in enumerate(group):
            at = main_off[g] + row.q_pos
            in_branch = row.q_branch != MAIN
            if in_branch.any():
                at = np.where(in_branch, branch_off[g][np.maximum(row.q_branch, 0)] + row.q_pos, at)
            packed_l.append(at)
            token_l.append(row.q_token)
            kind_l.append(row.q_kind)
            row_l.append(np.full(len(at), g))
            index_l.append(row.q_index)
        return Queries(
            packed=np.concatenate(packed_l).astype(np.int64),
            token=np.concatenate(token_l).astype(np.int64),
            kind=np.concatenate(kind_l),
            row=np.concatenate(row_l),
            index=np.concatenate(index_l).astype(np.int64),
        )

    def forward(
        self,
        group: list[Row],
        prepared: list[Prepared],
        results: list[Results],
        *,
        compiled: bool = True,
    ) -> None:
        """One forward pass of ``group``; fills ``results`` (aligned with ``prepared``)."""
        import torch

        dev = self.input_device
        pad_multiple = self.pad_multiple if (self.packing == "packed" or self.compile) else 1
        ids, pos, doc, branch, bstart, main_off, branch_off, nb = self.layout(group, pad_multiple)
        need_mask = len(group) > 1 or nb > 0 or len(ids) > sum(len(r.ids) for r in group)
        q = self._queries(group, main_off, branch_off)
        with torch.inference_mode():
            ids_t = torch.as_tensor(ids, device=dev)
            pos_t = torch.as_tensor(pos, device=dev)
            mask = self._mask(pos, doc, branch, bstart, dev) if need_mask else None
            hidden = self._hidden(ids_t, pos_t, mask, compiled=compiled)
            out = self._evaluate(hidden, q)
        self._check_finite(out["bad_q"], q, group, prepared)
        self._store(out, q, group, results)

    def _evaluate(self, hidden, q: Queries) -> dict[str, Any]:
        """Log-probabilities (and top-1, entropy, rank, bow mass) of every query."""
        import torch

        uniq, inverse = np.unique(q.packed, return_inverse=True)
        work = torch.float64 if self.dtype == "float64" else torch.float32
        order = np.argsort(inverse, kind="stable")
        chunk_starts = list(range(0, len(uniq), self.max_logit_rows)) + [len(uniq)]
        bounds = np.searchsorted(inverse[order], chunk_starts)
        # Results stay on the device until the end: one copy to the host per forward.
        ent_c, arg_c, fin_c, lp_c, rank_c, bow_c = [], [], [], [], [], []
        for c, u0 in enumerate(range(0, len(uniq), self.max_logit_rows)):
            u1 = min(u0 + self.max_logit_rows, len(uniq))
            # Under a device map the last layer and the head may sit on other
            # devices than the embeddings: index each tensor where it lives.
            rows_t = torch.as_tensor(uniq[u0:u1], device=hidden.device)
            logits = self._logits(hidden.index_select(0, rows_t)).to(work)
            fin_c.append(torch.isfinite(logits).all(-1))
            logsm = torch.log_softmax(logits, -1)
            probs = logsm.exp()
            ent_c.append(-(probs * logsm).sum(-1))
            if self.bow is not None:
                bow_c.append(self._log_bow_mass(logits, logsm, probs))
            del probs
            arg_c.append(logits.argmax(-1))
            qs = order[bounds[c] : bounds[c + 1]]
            local = torch.as_tensor(inverse[qs] - u0, device=logits.device)
            tok_t = torch.as_tensor(q.token[qs], device=logits.device)
            lp_c.append(logsm[local, tok_t])
            if self.rank:
                rank_c.append(self._ranks(logits, inverse[qs] - u0, q.token[qs], q.kind[qs]))
            del logits, logsm

        def cat(xs, dt):
            return torch.cat(xs).to(dt).cpu().numpy() if xs else np.zeros(0)

        ent_u = cat(ent_c, torch.float64)
        argmax = cat(arg_c, torch.int64)
        bad_u = ~cat(fin_c, torch.bool).astype(bool)
        lp = np.empty(len(q.packed), np.float64)
        lp[order] = cat(lp_c, torch.float64)
        rank = np.zeros(len(q.packed), np.int64)
        if self.rank:
            rank[order] = cat(rank_c, torch.int64)
        bow_u = cat(bow_c, torch.float64) if self.bow is not None else None
        return {
            "lp": lp,
            "top1": argmax[inverse] == q.token,
            "ent": ent_u[inverse],
            "rank": rank,
            "bow": bow_u[inverse] if bow_u is not None else None,
            "bad_q": bad_u[inverse],
        }

    def _log_bow_mass(self, logits, logsm, probs):
        """Beginning-of-word mass: a matrix-vector product, no further (rows x vocab)
        copy; log of 0 (all of it underflowed) recomputed exactly."""
        import torch

        bow_mask = self._bow_mask_on(logits.device, logits.dtype)
        mass = probs @ bow_mask
        log_mass = mass.log()
        low = mass <= 0
        if bool(low.any()):
            log_mass[low] = torch.logsumexp(logsm[low].masked_fill(bow_mask == 0, -torch.inf), -1)
        return log_mass

    @staticmethod
    def _check_finite(bad_q: np.ndarray, q: Queries, group: list[Row], prepared: list[Prepared]):
        if not bad_q.any():
            return
        rids: list[int] = []
        for g in np.unique(q.row[bad_q]):
            prep = prepared[group[g].part]
            if prep.p is None:  # the start-up probe
                continue
            sel = bad_q & (q.row == g)
            main_t = q.index[sel & (q.kind == KIND_RESPONSE)]
            resp = np.searchsorted(prep.tok.ends, main_t, side="right")
            opt_groups = prep.opt_query_group[q.index[sel & (q.kind == KIND_OPTION)]]
            resp = np.concatenate([resp, prep.opt_resp[opt_groups]])
            rids.extend(prep.p.response_ids[int(i)] for i in np.unique(resp))
        raise NonFiniteLogits(rids)

    @staticmethod
    def _store(out: dict[str, Any], q: Queries, group: list[Row], results: list[Results]) -> None:
        for g, row in enumerate(group):
            res = results[row.part]
            sel = q.row == g
            m = sel & (q.kind == KIND_RESPONSE)
            t = q.index[m]
            res.lp[t] = out["lp"][m]
            res.top1[t] = out["top1"][m]
            res.ent[t] = out["ent"][m]
            if res.rank is not None:
                res.rank[t] = out["rank"][m]
            if res.bow is not None and out["bow"] is not None:
                res.bow[t] = out["bow"][m]
            o = sel & (q.kind == KIND_OPTION)
            res.oq_lp[q.index[o]] = out["lp"][o]
            res.rows_done += 1
