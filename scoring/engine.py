"""The scoring engine: participants in, per-response log-probabilities out.

The path of one participant
---------------------------
1. ``render`` turns the transcript into segments (context / response) for the
   condition; ``tokenize`` turns segments into ids and the token range of every
   response (``scoring.render``, ``scoring.tokenize``).
2. The ids become one or more *rows*: the whole transcript when it fits the
   context, or overlapping windows under ``context_policy="window"``.  Option
   sets add short *branches*: the tokens of an option other than the one the
   participant gave, attending to the transcript up to the response.
3. Rows are grouped into forward passes by a token budget.  With
   ``packing="packed"`` several rows share one forward: their tokens are
   concatenated, position ids restart per row and an attention mask keeps
   every row (and every branch) to itself: a FlexAttention ``BlockMask``
   (``attention="flex"``, the default on CUDA for models that support it:
   no padding, no N x N mask) or a dense boolean mask with SDPA
   (``attention="dense"``, the fallback); see ``scoring.attention``.  With
   ``packing="none"`` every row is its own forward with the model's ordinary
   causal attention, which makes a participant's numbers bit-for-bit
   independent of what else is scored.  ``compile=True`` runs the decoder
   through ``torch.compile``; packed lengths are then padded up to a multiple
   of ``compile_bucket`` tokens (with short padding documents nobody attends
   to) so a handful of shapes are compiled once and reused.
4. The decoder's hidden states are gathered at the positions that predict a
   response token (or an option token) *before* the LM head, so full-vocabulary
   logits exist only where a score needs them, in chunks of
   ``max_logit_rows``.  In bfloat16/float16 the head's matmul runs in that
   dtype but writes float32 logits (no rounding of logits to 8 mantissa
   bits); log-softmax, target log-probability, argmax and first-token entropy
   are computed on those rows in float32 (float64 for float64 models), on the
   device, with one copy to the host per forward; per-response sums use
   cumulative sums, no per-token Python loops.

Exactness guards: a self-check at start-up compares the engine's path (packing,
masks, branches, hidden-state gather + head) against a plain ``model(ids)``
forward on a probe and refuses architectures where they differ; non-finite
logits fail the batch with the affected response ids; out-of-memory halves
the token budget and retries (counted as ``oom_backoffs``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from psystats.warehouse.db import WarehouseError

from . import attention as attn
from . import loader
from .inputs import ParticipantInput
from .render import CONDITIONS, Skip, render, render_settings
from .tokenize import (
    TOKENIZATIONS,
    Tokenized,
    check_segment_tokenizer,
    leading_special_ids,
    tokenize,
)

ENGINE_VERSION = 1
CONTEXT_POLICIES = ("skip", "window")
PACKINGS = ("auto", "packed", "none")
ATTENTIONS = ("auto", "flex", "dense")

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
    ]
)


class ScoringError(WarehouseError):
    """Scoring cannot go on; the message says why and what to do."""


class NonFiniteLogits(ScoringError):
    def __init__(self, response_ids: Sequence[int]):
        ids = sorted(set(int(r) for r in response_ids))
        shown = ", ".join(str(r) for r in ids[:20]) + (" ..." if len(ids) > 20 else "")
        super().__init__(
            f"the model produced NaN/inf logits for {len(ids)} response(s) "
            f"(response_id {shown}); nothing from this batch was written. Try --dtype float32."
        )
        self.response_ids = ids


@dataclass
class ScoreBatch:
    scores: pa.Table  # SCORE_SCHEMA
    options: pa.Table  # OPTION_SCHEMA
    tokens: pa.Table | None  # TOKEN_SCHEMA when token_level
    participant_keys: list[int]  # participants completely covered
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.counts.get("tokens_forwarded", 0))


# ---------------------------------------------------------------------------
# Plans: what one participant needs computed


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
    p: ParticipantInput
    tok: Tokenized
    rows: list[_Row]
    # option plan: per query-group (response, option) -> either reuse of the
    # observed response or a sum over option queries
    opt_resp: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    opt_name: list[str] = field(default_factory=list)
    opt_reuse: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    opt_query_group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # filled while scoring
    lp: np.ndarray | None = None
    top1: np.ndarray | None = None
    ent: np.ndarray | None = None
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


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


class Scorer:
    """Scores participants with one model under one condition.  No database access.

    Build it from a ``models`` row (``scoring.registry.get_model``) and settings;
    ``lm``/``tokenizer`` may be passed when already loaded (tests, notebooks).
    """

    def __init__(
        self,
        model: dict,
        *,
        condition: str = "plain",
        device: str = "cpu",
        dtype: str = "float32",
        token_budget: int = 16384,
        max_context: int | None = None,
        context_policy: str = "skip",
        stride: int | None = None,
        tokenization: str = "segments",
        token_level: bool = False,
        option_sets: dict[str, list[str]] | None = None,
        packing: str = "auto",
        system_prompt: str | None = None,
        max_logit_rows: int = 2048,
        trust_remote_code: bool | None = None,
        self_check: bool = True,
        lm=None,
        tokenizer=None,
        attention: str = "auto",
        compile: bool = False,
        compile_bucket: int = 4096,
    ) -> None:
        if condition not in CONDITIONS:
            raise ScoringError(
                f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}"
            )
        if tokenization not in TOKENIZATIONS:
            raise ScoringError(f"unknown tokenization {tokenization!r}")
        if context_policy not in CONTEXT_POLICIES:
            raise ScoringError(f"unknown context policy {context_policy!r}")
        if packing not in PACKINGS:
            raise ScoringError(f"unknown packing {packing!r}; choose from {', '.join(PACKINGS)}")
        if attention not in ATTENTIONS:
            raise ScoringError(
                f"unknown attention {attention!r}; choose from {', '.join(ATTENTIONS)}"
            )
        if dtype not in loader.DTYPES:
            raise ScoringError(f"unknown dtype {dtype!r}; choose from {', '.join(loader.DTYPES)}")
        self.model_row = dict(model)
        self.condition = condition
        self.device = device
        self.dtype = dtype
        self.token_budget = int(token_budget)
        self.tokenization = tokenization
        self.token_level = token_level
        self.system_prompt = system_prompt
        self.max_logit_rows = int(max_logit_rows)
        self.packing = (
            ("packed" if device.startswith("cuda") else "none") if packing == "auto" else packing
        )
        self.counts: dict[str, int] = {}
        self.compile = bool(compile)
        if self.compile and compile_bucket % attn.BLOCK:
            raise ScoringError(f"--compile-bucket must be a multiple of {attn.BLOCK}")
        self.compile_bucket = int(compile_bucket)

        self.tokenizer = (
            tokenizer
            if tokenizer is not None
            else loader.load_tokenizer(model, trust_remote_code=trust_remote_code)
        )
        if condition == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ScoringError(
                f"model {model.get('name')!r}: its tokenizer has no chat template, so the "
                "'chat' condition is undefined for it; use --condition plain or persona"
            )
        if tokenization == "segments":
            try:
                check_segment_tokenizer(self.tokenizer)
            except ValueError as e:
                raise ScoringError(f"model {model.get('name')!r}: {e}") from None
        self.prefix_ids = leading_special_ids(self.tokenizer)
        self.lm = (
            lm
            if lm is not None
            else loader.load_model(
                model, device=device, dtype=dtype, trust_remote_code=trust_remote_code
            )
        )

        self.attention = self._choose_attention(attention)
        if self.attention == "flex":
            attn.use_packed_attention(self.lm)
        # Packed lengths are padded to a multiple of this (1: no padding).
        self.pad_multiple = (
            self.compile_bucket if self.compile else attn.BLOCK if self.attention == "flex" else 1
        )
        self._pad_id = int(
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else (self.tokenizer.eos_token_id or 0)
        )
        self._decoder_fn = None  # torch.compile'd decoder, built on first use
        self.compile_seconds = 0.0  # first-call time of each compiled shape, summed

        cfg = self.lm.config
        model_max = getattr(cfg, "max_position_embeddings", None) or (1 << 30)
        self.max_context = int(min(max_context or model_max, model_max))
        self.context_policy = context_policy
        self.stride = int(stride or max(1, self.max_context // 2))
        if self.stride >= self.max_context:
            raise ScoringError(
                f"--stride ({self.stride}) must be smaller than the context ({self.max_context})"
            )
        self.option_sets = {e: list(o) for e, o in sorted((option_sets or {}).items())}
        self._option_ids: dict[str, list[np.ndarray]] = {}
        self._longest_option = 0
        for exp, opts in self.option_sets.items():
            enc = self.tokenizer(list(opts), add_special_tokens=False)["input_ids"]
            self._option_ids[exp] = [np.asarray(e, np.int64) for e in enc]
            self._longest_option = max([self._longest_option] + [len(e) for e in enc])
        self._token_cache: dict[int, int] = {}
        self._fingerprints: dict | None = None
        self.head = "hidden-gather"
        if self_check:
            self._self_check()

    def _choose_attention(self, requested: str) -> str:
        """flex where packing meets a model that supports it (auto: on CUDA only), else dense."""
        packs = self.packing == "packed" or self.compile
        ok = attn.supports_flex(self.lm)
        if requested == "flex":
            if not ok:
                raise ScoringError(
                    f"model {self.model_row.get('name')!r} ({type(self.lm).__name__}) does not "
                    "support FlexAttention in transformers; use --attention dense"
                )
            return "flex" if packs else "dense"
        if requested == "auto" and packs and ok and self.device.startswith("cuda"):
            return "flex"
        return "dense"

    # -- description --------------------------------------------------------

    @property
    def settings(self) -> dict:
        """Everything that decides the numbers, exactly (recorded in ``score_runs.settings``)."""
        s = render_settings(self.condition, self.tokenizer, self.system_prompt)
        s.update(
            {
                "engine_version": ENGINE_VERSION,
                "tokenization": self.tokenization,
                "leading_special_ids": list(map(int, self.prefix_ids)),
                "dtype": self.dtype,
                "context": {
                    "max_context": self.max_context,
                    "policy": self.context_policy,
                    **({"stride": self.stride} if self.context_policy == "window" else {}),
                },
                "options": self.option_sets,
                "token_level": self.token_level,
                "head": self.head,
                "batching": {
                    "device": self.device,
                    "packing": self.packing,
                    "token_budget": self.token_budget,
                    "max_logit_rows": self.max_logit_rows,
                    "attention": self.attention,
                    "compile": self.compile,
                    **({"compile_bucket": self.compile_bucket} if self.compile else {}),
                },
            }
        )
        return s

    @property
    def fingerprints(self) -> dict:
        if self._fingerprints is None:
            self._fingerprints = {
                "tokenizer_sha256": loader.tokenizer_fingerprint(self.tokenizer),
                "weights_sha256": loader.weights_fingerprint(self.model_row),
            }
        return dict(self._fingerprints)

    # -- preparation (CPU; can run in a thread while the model works) ---------

    def _tokenize(self, p: ParticipantInput) -> Tokenized:
        rendering = render(p, self.condition, self.tokenizer, system_prompt=self.system_prompt)
        return tokenize(
            self.tokenizer, rendering, len(p.response_ids), self.tokenization, self.prefix_ids
        )

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
                tok = self._tokenize(p)
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
            if len(prep.rows) > 1:
                counts["windowed_participants"] = counts.get("windowed_participants", 0) + 1
            out.append(prep)
        return out, counts

    def _plan(self, prep: _Prepared, index: int) -> None:
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
        exp = prep.p.experiment
        if exp not in self.option_sets:
            return
        tok = prep.tok
        names = self.option_sets[exp]
        opt_ids = self._option_ids[exp]
        g_resp, g_name, g_reuse = [], [], []
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

    # -- scoring ------------------------------------------------------------

    def score(
        self,
        participants: Sequence[ParticipantInput],
        progress: Callable[[int], None] | None = None,
    ) -> ScoreBatch:
        """Score ``participants``; raises :class:`NonFiniteLogits` (nothing returned) on NaN/inf."""
        prepared, counts = self.prepare(participants)
        return self.score_prepared(prepared, counts, progress)

    def score_prepared(
        self,
        prepared: list[_Prepared],
        counts: dict[str, int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ScoreBatch:
        counts = dict(counts or {})
        for prep in prepared:
            T = len(prep.tok)
            prep.lp = np.zeros(T, np.float64)
            prep.top1 = np.zeros(T, bool)
            prep.ent = np.full(T, np.nan)
            prep.oq_lp = np.zeros(len(prep.opt_query_group), np.float64)
            prep.rows_done = 0
        # Longest rows first; ties keep the input order, so plans are deterministic.
        rows = sorted((r for prep in prepared for r in prep.rows), key=lambda r: -r.n_tokens)
        budget = self.token_budget
        tokens = 0
        while rows:
            group = self._take(rows, budget)
            try:
                self._forward(group, prepared)
            except Exception as e:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not _is_oom(e):
                    raise
                self._free_memory()
                if len(group) == 1:
                    raise ScoringError(
                        f"out of memory on a single sequence of {group[0].n_tokens} tokens "
                        f"(participant_key {prepared[group[0].part].p.participant_key}); lower "
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
        return self._assemble(prepared, counts)

    def _take(self, rows: list[_Row], budget: int) -> list[_Row]:
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

    # Packed layout of a group of rows: token ids, positions, the per-token
    # document/branch structure the mask is built from, and where every query sits.
    def _layout(self, group: list[_Row], pad_multiple: int = 1):
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
            ids.append(np.full(m, self._pad_id))
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
        return attn.dense_mask(pos, doc, branch, bstart, device)

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
            self._compiled_shapes: set[int] = set()
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

    def _logits(self, hidden_rows):
        """Full-vocabulary logits of the gathered rows, float32 or better."""
        import torch

        head = self.lm.get_output_embeddings()
        w = getattr(head, "weight", None)
        if (
            hidden_rows.dtype in (torch.bfloat16, torch.float16)
            and isinstance(head, torch.nn.Linear)
            and hidden_rows.device.type == "cuda"
        ):
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

    def _forward(
        self, group: list[_Row], prepared: list[_Prepared], *, compiled: bool = True
    ) -> None:
        import torch

        dev = torch.device(self.device)
        pad_multiple = self.pad_multiple if (self.packing == "packed" or self.compile) else 1
        ids, pos, doc, branch, bstart, main_off, branch_off, nb = self._layout(group, pad_multiple)
        need_mask = len(group) > 1 or nb > 0 or len(ids) > sum(len(r.ids) for r in group)
        # Where every query sits in the packed sequence.
        q_packed, q_token, q_kind, q_row, q_index = [], [], [], [], []
        for g, row in enumerate(group):
            t = row.targets
            q_packed.append(main_off[g] + (t - 1 - row.lo))
            q_token.append(row.ids[t - row.lo])
            q_kind.append(np.zeros(len(t), np.int8))
            q_row.append(np.full(len(t), g))
            q_index.append(t)
            if len(row.oq_pos):
                at = main_off[g] + row.oq_pos
                if len(branch_off[g]):
                    at = np.where(
                        row.oq_branch < 0,
                        at,
                        branch_off[g][np.maximum(row.oq_branch, 0)] + row.oq_pos,
                    )
                q_packed.append(at)
                q_token.append(row.oq_token)
                q_kind.append(np.ones(len(at), np.int8))
                q_row.append(np.full(len(at), g))
                q_index.append(row.oq_ref)
        q_packed = np.concatenate(q_packed).astype(np.int64)
        q_token = np.concatenate(q_token).astype(np.int64)
        q_kind = np.concatenate(q_kind)
        q_row = np.concatenate(q_row)
        q_index = np.concatenate(q_index).astype(np.int64)

        with torch.inference_mode():
            ids_t = torch.as_tensor(ids, device=dev)
            pos_t = torch.as_tensor(pos, device=dev)
            mask = self._mask(pos, doc, branch, bstart, dev) if need_mask else None
            hidden = self._hidden(ids_t, pos_t, mask, compiled=compiled)
            uniq, inverse = np.unique(q_packed, return_inverse=True)
            work = torch.float64 if self.dtype == "float64" else torch.float32
            order = np.argsort(inverse, kind="stable")
            chunk_starts = list(range(0, len(uniq), self.max_logit_rows)) + [len(uniq)]
            bounds = np.searchsorted(inverse[order], chunk_starts)
            # Results stay on the device until the end: one copy to the host per forward.
            ent_c, arg_c, fin_c, lp_c = [], [], [], []
            for c, u0 in enumerate(range(0, len(uniq), self.max_logit_rows)):
                u1 = min(u0 + self.max_logit_rows, len(uniq))
                rows_t = torch.as_tensor(uniq[u0:u1], device=dev)
                logits = self._logits(hidden.index_select(0, rows_t)).to(work)
                fin_c.append(torch.isfinite(logits).all(-1))
                logsm = torch.log_softmax(logits, -1)
                ent_c.append(-(logsm.exp() * logsm).sum(-1))
                arg_c.append(logits.argmax(-1))
                qs = order[bounds[c] : bounds[c + 1]]
                local = torch.as_tensor(inverse[qs] - u0, device=dev)
                tok_t = torch.as_tensor(q_token[qs], device=dev)
                lp_c.append(logsm[local, tok_t])
                del logits, logsm
            cat = lambda xs, dt: (
                torch.cat(xs).to(dt).cpu().numpy()
                if xs  # noqa: E731
                else np.zeros(0)
            )
            ent_u = cat(ent_c, torch.float64)
            argmax = cat(arg_c, torch.int64)
            bad_u = ~cat(fin_c, torch.bool).astype(bool)
            lp = np.empty(len(q_packed), np.float64)
            lp[order] = cat(lp_c, torch.float64)
            top1 = argmax[inverse] == q_token
        bad_q = bad_u[inverse]
        if bad_q.any():
            rids = []
            for g in np.unique(q_row[bad_q]):
                prep = prepared[group[g].part]
                if prep.p is None:  # the start-up probe
                    continue
                sel = bad_q & (q_row == g)
                main_t = q_index[sel & (q_kind == 0)]
                resp = np.searchsorted(prep.tok.ends, main_t, side="right")
                opt_groups = prep.opt_query_group[q_index[sel & (q_kind == 1)]]
                resp = np.concatenate([resp, prep.opt_resp[opt_groups]])
                rids.extend(prep.p.response_ids[int(i)] for i in np.unique(resp))
            raise NonFiniteLogits(rids)
        ent_q = ent_u[inverse]
        for g, row in enumerate(group):
            prep = prepared[row.part]
            sel = q_row == g
            m = sel & (q_kind == 0)
            t = q_index[m]
            prep.lp[t] = lp[m]
            prep.top1[t] = top1[m]
            prep.ent[t] = ent_q[m]
            o = sel & (q_kind == 1)
            prep.oq_lp[q_index[o]] = lp[o]
            prep.rows_done += 1

    # -- results ------------------------------------------------------------

    def _assemble(self, prepared: list[_Prepared], counts: dict[str, int]) -> ScoreBatch:
        cols: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_SCHEMA.names}
        valid: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_SCHEMA.names}
        opt_rows: dict[str, list] = {"response_id": [], "option": [], "logprob": []}
        tok_rows: dict[str, list] = {k: [] for k in TOKEN_SCHEMA.names}
        keys = []
        n_resp = 0
        for prep in prepared:
            if prep.rows_done != len(prep.rows):
                continue
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
        return ScoreBatch(scores, options, tokens, keys, counts)

    def _option_rows(self, prep: _Prepared, nll: np.ndarray, out: dict[str, list]) -> None:
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

    # -- start-up self-check ------------------------------------------------

    def _self_check(self) -> None:
        """Compare the engine's path with a plain forward on a probe; refuse if they differ.

        Two short documents are scored packed together (when packing), one
        with an option branch, and their log-probabilities compared with
        ``log_softmax(model(ids).logits)``.  This catches architectures whose
        attention ignores custom masks/position ids or whose LM head does more
        than the output embedding (logit soft-capping, scaling).
        """
        import torch

        text_a = "In each trial you choose a box. You press <<J>>. You win 3 points."
        text_b = "Rate the pair. You answer <<7>>."
        ids_a = np.asarray(
            self.prefix_ids + self.tokenizer(text_a, add_special_tokens=False)["input_ids"],
            np.int64,
        )
        ids_b = np.asarray(
            self.prefix_ids + self.tokenizer(text_b, add_special_tokens=False)["input_ids"],
            np.int64,
        )
        rows = [
            _Row(part=0, lo=0, ids=ids_a, targets=np.arange(1, len(ids_a))),
            _Row(part=1, lo=0, ids=ids_b, targets=np.arange(1, len(ids_b))),
        ]
        # A two-token branch from the middle of document a.
        mid = len(ids_a) // 2
        rows[0].branch_start = [mid]
        rows[0].branch_ids = [ids_a[mid : mid + 2]]
        rows[0].oq_branch = np.asarray([0], np.int64)
        rows[0].oq_pos = np.asarray([1], np.int64)
        rows[0].oq_token = np.asarray([int(ids_a[mid + 2])], np.int64)
        rows[0].oq_ref = np.asarray([0], np.int64)
        dummy = []
        for r, ids in zip(rows, (ids_a, ids_b)):
            tk = Tokenized(ids, np.asarray([1]), np.asarray([len(ids)]))
            dummy.append(_Prepared(p=None, tok=tk, rows=[r], opt_query_group=np.zeros(1, np.int64)))
            dummy[-1].lp = np.zeros(len(ids))
            dummy[-1].top1 = np.zeros(len(ids), bool)
            dummy[-1].ent = np.zeros(len(ids))
            dummy[-1].oq_lp = np.zeros(1)
        groups = [rows] if self.packing == "packed" else [[rows[0]], [rows[1]]]
        for g in groups:
            # Eager: the check is about masks, positions and the head; a compiled
            # decoder is the same computation and is tested against the eager one.
            self._forward(g, dummy, compiled=False)
        dev = torch.device(self.device)
        worst = 0.0
        with torch.inference_mode():
            for prep, ids in zip(dummy, (ids_a, ids_b)):
                ref = torch.log_softmax(
                    self.lm(torch.as_tensor(ids, device=dev)[None]).logits[0].double(), -1
                )
                want = (
                    ref[torch.arange(len(ids) - 1), torch.as_tensor(ids[1:], device=dev)]
                    .cpu()
                    .numpy()
                )
                worst = max(worst, float(np.max(np.abs(prep.lp[1:] - want))))
            ref_b = torch.log_softmax(
                self.lm(torch.as_tensor(ids_a[: mid + 2], device=dev)[None]).logits[0, -1].double(),
                -1,
            )
            worst = max(worst, abs(float(ref_b[int(ids_a[mid + 2])]) - float(dummy[0].oq_lp[0])))
        tol = {"float64": 1e-8, "float32": 1e-3}.get(self.dtype, 0.1)
        if not np.isfinite(worst) or worst > tol:
            raise ScoringError(
                f"model {self.model_row.get('name')!r}: the engine's log-probabilities differ from a "
                f"plain forward pass by {worst:.3g} on a probe (tolerance {tol:g}); this architecture "
                "needs support in psystats (custom attention masks / LM head). "
                + ("Try --packing none." if self.packing == "packed" else "")
            )
