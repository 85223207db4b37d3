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
   bits); log-softmax, target log-probability, argmax and entropy (and, when
   asked, the rank of the human token and the beginning-of-word mass that
   word scores need: ``scoring.words``) are computed on those rows in float32
   (float64 for float64 models), on the device, with one copy to the host per
   forward; per-response and per-word sums use cumulative sums, no per-token
   Python loops.

Exactness guards: a self-check at start-up compares the engine's path (packing,
masks, branches, hidden-state gather + head) against a plain ``model(ids)``
forward on a probe and refuses architectures where they differ; non-finite
logits fail the batch with the affected response ids; out-of-memory halves
the token budget and retries (counted as ``oom_backoffs``).

Parts: ``Scorer`` (here) composes one object per job, each with explicit
inputs and outputs: ``scoring.config.ScorerConfig`` (every option, its
default and its validation), ``scoring.plan.Planner`` (participants ->
plans: steps 1-2; ``scoring.history`` for ``history:K``),
``scoring.forward.Forward`` (plans -> per-token results: steps 3-4),
``scoring.assemble.Assembler`` (plans + results -> a ``ScoreBatch``),
``scoring.selfcheck`` (the start-up check) and ``scoring.errors``.

Anything that returns a ``ScoreBatch`` for a list of participants can stand
in for a ``Scorer`` in ``scoring.runner`` (see :class:`ModelScorer`):
baselines that are not transformers plug in there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import attention as attn
from . import loader
from .assemble import (
    OPTION_SCHEMA,
    SCORE_SCHEMA,
    TOKEN_SCHEMA,
    WORD_SCHEMA,
    Assembler,
    ScoreBatch,
)
from .config import ScorerConfig
from .devices import device_map_of, input_device
from .errors import NonFiniteLogits, ScoringError
from .forward import Forward
from .inputs import ParticipantInput
from .plan import Planner
from .render import render_settings
from .rows import Prepared
from .selfcheck import check_key, passed_before, remember_pass, self_check
from .tokenize import Tokenized, check_segment_tokenizer, leading_special_ids
from .words import bow_vocabulary, check_bow_tokenizer, check_offsets

__all__ = [
    "OPTION_SCHEMA",
    "SCORE_SCHEMA",
    "TOKEN_SCHEMA",
    "WORD_SCHEMA",
    "ModelScorer",
    "NonFiniteLogits",
    "ScoreBatch",
    "Scorer",
    "ScoringError",
]

ENGINE_VERSION = 1


@runtime_checkable
class ModelScorer(Protocol):
    """What ``scoring.runner`` needs from a scorer (a ``Scorer``, or a baseline).

    ``settings`` and ``fingerprints`` key the run (``score_runs.settings``,
    shard folders); ``count_tokens`` sizes work units and progress (any
    positive measure of work); ``prepare``/``score_prepared`` split
    ``score`` so the runner can plan the next batch while this one is
    scored (a scorer without a separate plan returns its participants from
    ``prepare`` and scores them in ``score_prepared``).  ``describe`` is the
    "loaded ..." line.
    """

    @property
    def settings(self) -> dict: ...

    @property
    def fingerprints(self) -> dict: ...

    def count_tokens(self, p: ParticipantInput) -> int: ...

    def prepare(self, participants: Sequence[ParticipantInput]) -> tuple[list, dict[str, int]]: ...

    def score_prepared(
        self,
        prepared: list,
        counts: dict[str, int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ScoreBatch: ...

    def score(
        self,
        participants: Sequence[ParticipantInput],
        progress: Callable[[int], None] | None = None,
    ) -> ScoreBatch: ...

    def describe(self) -> str: ...


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class Scorer:
    """Scores participants with one model under one configuration.  No database access.

    Build it from a ``models`` row (``scoring.registry.get_model``) and a
    :class:`~psystats.scoring.config.ScorerConfig` (or its fields as
    keywords); ``lm``/``tokenizer`` may be passed when already loaded (tests,
    notebooks).  The configuration is validated before anything loads.
    """

    def __init__(
        self,
        model: dict,
        config: ScorerConfig | None = None,
        *,
        lm: Any = None,
        tokenizer: Any = None,
        **options: Any,
    ) -> None:
        if config is None:
            config = ScorerConfig.from_options(options)
        elif options:
            config = config.replace(**options)
        self.config = c = config
        self.model_row = dict(model)
        name = str(model.get("name"))
        self.tokenizer = (
            tokenizer
            if tokenizer is not None
            else loader.load_tokenizer(model, trust_remote_code=c.trust_remote_code)
        )
        self._check_tokenizer(name)
        self.prefix_ids = leading_special_ids(self.tokenizer)
        self.lm = lm if lm is not None else self._load_model(model)
        self.input_device = input_device(self.lm)
        self.placement = device_map_of(self.lm)
        # Vision-language models are scored on text: their decoder, no image.
        self.kind = getattr(self.lm, "psystats_kind", None) or loader.model_kind(self.lm.config)
        packing = self._choose_packing()
        attention = self._choose_attention(packing)
        if attention == "flex":
            attn.use_packed_attention(self.lm)
        text_cfg = self.lm.config.get_text_config()
        model_max = getattr(text_cfg, "max_position_embeddings", None) or (1 << 30)
        self.max_context = int(min(c.max_context or model_max, model_max))
        stride = int(c.stride or max(1, self.max_context // 2))
        if stride >= self.max_context:
            raise ScoringError(
                f"--stride ({stride}) must be smaller than the context ({self.max_context})"
            )
        self.planner = Planner(c, self.tokenizer, self.prefix_ids, self.max_context)
        self.forwarder = Forward(
            self.lm,
            c,
            packing=packing,
            attention=attention,
            # Packed lengths are padded to a multiple of this (1: no padding).
            pad_multiple=c.compile_bucket
            if c.compile
            else attn.BLOCK
            if attention == "flex"
            else 1,
            sliding=attn.sliding_window_of(self.lm.config),
            pad_id=self._pad_id(),
            input_device=self.input_device,
            bow=self._bow_vocabulary(name),
        )
        self.assembler = Assembler(c, self.tokenizer)
        self._fingerprints: dict | None = None
        self.head = "hidden-gather"
        self.self_checked = "off"
        if c.self_check:
            self._run_self_check(name)

    # -- construction -------------------------------------------------------

    def _check_tokenizer(self, name: str) -> None:
        c = self.config
        if c.condition == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ScoringError(
                f"model {name!r}: its tokenizer has no chat template, so the "
                "'chat' condition is undefined for it; use --condition plain or persona"
            )
        if c.tokenization == "segments":
            try:
                check_segment_tokenizer(self.tokenizer)
            except ValueError as e:
                raise ScoringError(f"model {name!r}: {e}") from None
        if c.word_level:
            check_offsets(self.tokenizer, name)

    def _load_model(self, model: dict) -> Any:
        c = self.config
        return loader.load_model(
            model,
            device=c.device,
            dtype=c.dtype,
            trust_remote_code=c.trust_remote_code,
            device_map=c.device_map,
            # A copy: transformers rewrites sizes in place ("14MB" -> 14000000).
            max_memory=dict(c.max_memory) if c.max_memory else None,
            offload_folder=c.offload_folder,
        )

    def _choose_packing(self) -> str:
        c = self.config
        if c.packing != "auto":
            return c.packing
        on_cuda = c.device.startswith("cuda") or (c.device_map is not None and _cuda_available())
        return "packed" if on_cuda else "none"

    def _choose_attention(self, packing: str) -> str:
        """flex where packing meets a model that supports it (auto: on CUDA only), else dense."""
        c = self.config
        packs = packing == "packed" or c.compile
        # Sliding-window layers need a second (windowed) mask: dense masks carry it.
        sliding = attn.sliding_window_of(self.lm.config)
        ok = attn.supports_flex(self.lm) and sliding[0] is None and c.device_map is None
        if c.attention == "flex":
            if not ok:
                raise ScoringError(
                    f"model {self.model_row.get('name')!r} ({type(self.lm).__name__}) does not "
                    "support FlexAttention in transformers; use --attention dense"
                )
            return "flex" if packs else "dense"
        if c.attention == "auto" and packs and ok and self.input_device.type == "cuda":
            return "flex"
        return "dense"

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))

    def _bow_vocabulary(self, name: str) -> np.ndarray | None:
        if not self.config.corrects_words:
            return None
        head = self.lm.get_output_embeddings()
        vocab = int(getattr(head, "out_features", 0) or head.weight.shape[0])
        bow = bow_vocabulary(self.tokenizer, vocab)
        check_bow_tokenizer(self.tokenizer, bow, name)
        return bow

    def _self_check_facts(self) -> dict:
        return {
            "engine_version": ENGINE_VERSION,
            "model_class": type(self.lm).__name__,
            "dtype": self.config.dtype,
            "device": self.input_device.type,
            "packing": self.packing,
            "attention": self.attention,
            "sliding": list(self.sliding),
            "placement": self.placement,
        }

    def _run_self_check(self, name: str) -> None:
        """The start-up self-check, unless this model and configuration passed it before."""
        facts = self._self_check_facts()
        # A model passed in memory without files to fingerprint (benchmarks,
        # notebooks) is checked every time: nothing identifies it across processes.
        key = check_key(self.fingerprints, facts) if self.model_row.get("source") else None
        if not self.config.recheck and passed_before(key):
            self.self_checked = "cached"
            return
        worst = self_check(self.forwarder, self.tokenizer, self.prefix_ids, name)
        remember_pass(key, facts, worst)
        self.self_checked = "run"

    # -- the forward's runtime choices (tests change some of them) ----------

    @property
    def packing(self) -> str:
        return self.forwarder.packing

    @packing.setter
    def packing(self, value: str) -> None:
        self.forwarder.packing = value

    @property
    def attention(self) -> str:
        return self.forwarder.attention

    @property
    def pad_multiple(self) -> int:
        return self.forwarder.pad_multiple

    @pad_multiple.setter
    def pad_multiple(self, value: int) -> None:
        self.forwarder.pad_multiple = value

    @property
    def sliding(self) -> tuple[int | None, bool]:
        return self.forwarder.sliding

    @sliding.setter
    def sliding(self, value: tuple[int | None, bool]) -> None:
        self.forwarder.sliding = value

    @property
    def compile(self) -> bool:
        return self.config.compile

    @property
    def compile_seconds(self) -> float:
        return self.forwarder.compile_seconds

    @property
    def token_level(self) -> bool:
        return self.config.stores_tokens

    # -- scoring ------------------------------------------------------------

    def count_tokens(self, p: ParticipantInput) -> int:
        """Tokens ``p`` costs to score (0 when it is skipped under this condition)."""
        return self.planner.count_tokens(p)

    def _tokenize(self, p: ParticipantInput) -> Tokenized:
        return self.planner.render_tokenize(p)[1]

    def prepare(
        self, participants: Sequence[ParticipantInput]
    ) -> tuple[list[Prepared], dict[str, int]]:
        """Render, tokenise and plan rows; returns the plans and skip counts."""
        return self.planner.prepare(participants)

    def score_prepared(
        self,
        prepared: list[Prepared],
        counts: dict[str, int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ScoreBatch:
        """Forward and assemble plans from :meth:`prepare`; ``progress(tokens)`` per forward."""
        counts = dict(counts or {})
        results = self.forwarder.run(prepared, counts, progress)
        return self.assembler.assemble(prepared, results, counts)

    def score(
        self,
        participants: Sequence[ParticipantInput],
        progress: Callable[[int], None] | None = None,
    ) -> ScoreBatch:
        """Score ``participants``; raises :class:`NonFiniteLogits` (nothing returned) on NaN/inf."""
        prepared, counts = self.prepare(participants)
        return self.score_prepared(prepared, counts, progress)

    # -- description --------------------------------------------------------

    def describe(self) -> str:
        """Where and how the model runs, for the 'loaded ...' line."""
        c = self.config
        if c.device_map is None:
            where = c.device
        else:
            devices = sorted(set((self.placement or {}).values())) or ["one device"]
            where = f"device map {c.device_map} over {', '.join(devices)}"
        return (
            f"{c.dtype}, {where}, packing {self.packing}, attention {self.attention}"
            f"{', compiled' if c.compile else ''}, self-check {self.self_checked}"
        )

    @property
    def settings(self) -> dict:
        """Everything that decides the numbers, exactly (recorded in ``score_runs.settings``)."""
        c = self.config
        s = render_settings(c.condition, self.tokenizer, c.system_prompt)
        adapter = self._adapter_settings()
        s.update(
            {
                "engine_version": ENGINE_VERSION,
                "tokenization": c.tokenization,
                "leading_special_ids": list(map(int, self.prefix_ids)),
                "dtype": c.dtype,
                "context": {
                    "max_context": self.max_context,
                    "policy": c.context_policy,
                    **({"stride": self.planner.stride} if c.context_policy == "window" else {}),
                },
                "options": {e: list(o) for e, o in c.option_sets.items()},
                "token_level": c.stores_tokens,
                # Only when asked, so runs without them keep the run keys they had.
                **({"token_entropy": True} if c.entropy else {}),
                **({"token_rank": True} if c.rank else {}),
                **(
                    {"word_level": {"words": "\\S+", "bow_correction": c.corrects_words}}
                    if c.word_level
                    else {}
                ),
                "head": self.head,
                # Only where they matter, so causal LMs keep the run keys they had.
                **(
                    {"model_class": type(self.lm).__name__, "input": "text only (no image)"}
                    if self.kind == "vision-language"
                    else {}
                ),
                **({"sliding_window": self.sliding[0]} if self.sliding[0] is not None else {}),
                **({"adapter": adapter} if adapter else {}),
                "batching": self._batching_settings(),
            }
        )
        return s

    def _batching_settings(self) -> dict:
        """How work was batched: recorded, not part of the run key (results do not depend on it)."""
        c = self.config
        out: dict[str, Any] = {
            "device": c.device if c.device_map is None else "device-map",
            "packing": self.packing,
            "token_budget": c.token_budget,
            "max_logit_rows": c.max_logit_rows,
            "attention": self.attention,
            "compile": c.compile,
        }
        if c.compile:
            out["compile_bucket"] = c.compile_bucket
        if c.device_map is not None:
            out["device_map"] = c.device_map
            out["max_memory"] = (
                {str(k): v for k, v in c.max_memory.items()} if c.max_memory else None
            )
            out["placement"] = self.placement
        return out

    def _adapter_settings(self) -> dict | None:
        info = getattr(self.lm, "psystats_adapter", None)
        if not info:
            return None
        return {"source": info["source"], "merged": info["merged"]}

    @property
    def fingerprints(self) -> dict:
        if self._fingerprints is None:
            self._fingerprints = {
                "tokenizer_sha256": loader.tokenizer_fingerprint(self.tokenizer),
                "weights_sha256": loader.weights_fingerprint(self.model_row),
            }
            info = getattr(self.lm, "psystats_adapter", None)
            if info:
                self._fingerprints["adapter_sha256"] = info["sha256"]
        return dict(self._fingerprints)
