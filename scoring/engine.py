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

Modules: ``Scorer`` (here) is a facade over one module per job:
``scoring.plan`` (steps 1-2), ``scoring.forward`` (steps 3-4),
``scoring.assemble`` (per-response sums, option and token tables),
``scoring.selfcheck`` (the start-up check) and ``scoring.errors``.
"""

from __future__ import annotations

import numpy as np

from . import attention as attn
from . import loader
from .assemble import (
    OPTION_SCHEMA,
    SCORE_SCHEMA,
    TOKEN_SCHEMA,
    WORD_SCHEMA,
    AssembleMixin,
    ScoreBatch,
)
from .devices import device_map_of, input_device
from .errors import NonFiniteLogits, ScoringError
from .forward import ForwardMixin
from .plan import PlanMixin
from .render import CONDITIONS, render_settings
from .selfcheck import SelfCheckMixin
from .tokenize import TOKENIZATIONS, check_segment_tokenizer, leading_special_ids
from .words import bow_vocabulary, check_bow_tokenizer, check_offsets

__all__ = [
    "OPTION_SCHEMA",
    "SCORE_SCHEMA",
    "TOKEN_SCHEMA",
    "WORD_SCHEMA",
    "NonFiniteLogits",
    "ScoreBatch",
    "Scorer",
    "ScoringError",
]

ENGINE_VERSION = 1
CONTEXT_POLICIES = ("skip", "window")
PACKINGS = ("auto", "packed", "none")
ATTENTIONS = ("auto", "flex", "dense")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class Scorer(PlanMixin, ForwardMixin, AssembleMixin, SelfCheckMixin):
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
        entropy: bool = False,
        rank: bool = False,
        word_level: bool = False,
        bow_correction: bool = True,
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
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        offload_folder: str | None = None,
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
        # Per-token entropy and rank are columns of token_scores: asking for them
        # stores the token level too.
        self.entropy = bool(entropy)
        self.rank = bool(rank)
        self.token_level = bool(token_level or entropy or rank)
        self.word_level = bool(word_level)
        self.bow_correction = bool(bow_correction) and self.word_level
        self.system_prompt = system_prompt
        self.max_logit_rows = int(max_logit_rows)
        self.device_map = device_map
        self.max_memory = dict(max_memory) if max_memory else None
        on_cuda = device.startswith("cuda") or (device_map is not None and _cuda_available())
        self.packing = ("packed" if on_cuda else "none") if packing == "auto" else packing
        self.counts: dict[str, int] = {}
        self.compile = bool(compile)
        if self.compile and compile_bucket % attn.BLOCK:
            raise ScoringError(f"--compile-bucket must be a multiple of {attn.BLOCK}")
        if device_map is not None and (self.compile or attention == "flex"):
            # accelerate's per-layer hooks move tensors between devices; a compiled graph
            # and a FlexAttention BlockMask (not a tensor) do not travel with them.
            raise ScoringError(
                "--device-map combines with the dense attention mask only: drop "
                + ("--compile" if self.compile else "--attention flex")
            )
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
        if self.word_level:
            check_offsets(self.tokenizer, str(model.get("name")))
        self.prefix_ids = leading_special_ids(self.tokenizer)
        self.lm = (
            lm
            if lm is not None
            else loader.load_model(
                model,
                device=device,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                device_map=device_map,
                # A copy: transformers rewrites sizes in place ("14MB" -> 14000000).
                max_memory=dict(self.max_memory) if self.max_memory else None,
                offload_folder=offload_folder,
            )
        )
        self.input_device = input_device(self.lm)
        self.placement = device_map_of(self.lm)
        # Vision-language models are scored on text: their decoder, no image.
        self.kind = getattr(self.lm, "psystats_kind", None) or loader.model_kind(self.lm.config)
        self.sliding = attn.sliding_window_of(self.lm.config)

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

        cfg = self.lm.config.get_text_config()
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
        self._bow: np.ndarray | None = None
        self._bow_tensors: dict = {}
        if self.bow_correction:
            head = self.lm.get_output_embeddings()
            vocab = int(getattr(head, "out_features", 0) or head.weight.shape[0])
            self._bow = bow_vocabulary(self.tokenizer, vocab)
            check_bow_tokenizer(self.tokenizer, self._bow, str(model.get("name")))
        self._fingerprints: dict | None = None
        self.head = "hidden-gather"
        if self_check:
            self._self_check()

    def _choose_attention(self, requested: str) -> str:
        """flex where packing meets a model that supports it (auto: on CUDA only), else dense."""
        packs = self.packing == "packed" or self.compile
        # Sliding-window layers need a second (windowed) mask: dense masks carry it.
        ok = attn.supports_flex(self.lm) and self.sliding[0] is None and self.device_map is None
        if requested == "flex":
            if not ok:
                raise ScoringError(
                    f"model {self.model_row.get('name')!r} ({type(self.lm).__name__}) does not "
                    "support FlexAttention in transformers; use --attention dense"
                )
            return "flex" if packs else "dense"
        if requested == "auto" and packs and ok and self.input_device.type == "cuda":
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
                # Only when asked, so runs without them keep the run keys they had.
                **({"token_entropy": True} if self.entropy else {}),
                **({"token_rank": True} if self.rank else {}),
                **(
                    {"word_level": {"words": "\\S+", "bow_correction": self.bow_correction}}
                    if self.word_level
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
                **({"adapter": self._adapter_settings()} if self._adapter_settings() else {}),
                "batching": {
                    "device": self.device if self.device_map is None else "device-map",
                    "packing": self.packing,
                    "token_budget": self.token_budget,
                    "max_logit_rows": self.max_logit_rows,
                    "attention": self.attention,
                    "compile": self.compile,
                    **({"compile_bucket": self.compile_bucket} if self.compile else {}),
                    **(
                        {
                            "device_map": self.device_map,
                            "max_memory": {str(k): v for k, v in self.max_memory.items()}
                            if self.max_memory
                            else None,
                            "placement": self.placement,
                        }
                        if self.device_map is not None
                        else {}
                    ),
                },
            }
        )
        return s

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
