"""``ScorerConfig``: every option of a scorer, with its only default and its only validation.

One frozen value (gpt-fast's ``ModelArgs`` in spirit) describes how a model
scores: the condition, precision, batching, context handling, what is stored
(token, word, option scores) and where the model runs.  The CLI builds it once
from its options, the notebook API and the tests build it from keywords, and
``scoring.engine.Scorer`` reads it; it is checked when it is built, before any
model loads, so a bad value costs a second, not a model load.  What can only
be known from the model (its context length, whether it supports
FlexAttention, whether its tokenizer has a chat template) is checked by the
scorer once the model or tokenizer is there.

The run-level options (what to score, the engine, shards, batches committed)
live in ``scoring.runner.RunOptions``; the seeded sample in
``scoring.sample.SampleSpec``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from psystats.warehouse.validators import Check, IntIn, Maybe, OneOf

from .attention import BLOCK
from .errors import ScoringError
from .loader import DTYPES
from .render import check_condition, history_window
from .tokenize import TOKENIZATIONS

CONTEXT_POLICIES = ("skip", "window")
PACKINGS = ("auto", "packed", "none")
ATTENTIONS = ("auto", "flex", "dense")


class ScorerConfigError(ScoringError):
    """An option value no scorer accepts (the CLI shows it as a usage error)."""


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads not counted).

    Linux: distinct (physical id, core id) pairs of /proc/cpuinfo, capped by
    the CPUs the process is allowed to run on; elsewhere ``os.cpu_count()``.
    """
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
                cores.add((phys, core))
    except OSError:
        pass
    n = len(cores) or os.cpu_count() or 1
    return max(1, min(n, allowed) if allowed else n)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    try:
        OneOf(choices)(value)
    except ValueError:
        label = name.replace("-", " ")
        raise ScorerConfigError(
            f"unknown {label} {value!r} (--{name}); choose from {', '.join(choices)}"
        ) from None


def _at_least(name: str, value: int | None, low: int) -> None:
    _check(name, Maybe(IntIn(low)), value)


def _check(name: str, check: Check, value: Any) -> None:
    """``check(value)``, or :class:`ScorerConfigError` naming the option ``--name``."""
    try:
        check(value)
    except ValueError as e:
        raise ScorerConfigError(f"--{name} {e}") from None


@dataclass(frozen=True)
class ScorerConfig:
    """How a model scores.  Every field's default is its only default."""

    # What the model reads
    condition: str = "plain"  # plain | chat | persona | history:K | history:all
    system_prompt: str | None = None  # chat: the template's own when None
    tokenization: str = "segments"  # segments | whole (scoring.tokenize)
    option_sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Precision and placement
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | dict | None = None  # accelerate: spread over GPUs (then CPU, disk)
    max_memory: Mapping[Any, str] | None = None  # per device, with device_map
    offload_folder: str | None = None
    cpu_threads: int | None = None  # None: the physical cores (physical_cores())
    trust_remote_code: bool | None = None
    # Context
    max_context: int | None = None  # None: the model's maximum positions
    context_policy: str = "skip"  # skip | window
    stride: int | None = None  # window step; None: half the context
    # Batching (does not change results beyond floating-point reassociation)
    token_budget: int = 16384
    packing: str = "auto"  # auto: packed on CUDA, none elsewhere
    attention: str = "auto"  # auto: flex on CUDA where supported
    max_logit_rows: int = 2048
    compile: bool = False
    compile_bucket: int = 4096
    # What is stored beside the per-response scores
    token_level: bool = False
    entropy: bool = False  # implies token_level
    rank: bool = False  # implies token_level
    word_level: bool = False
    bow_correction: bool = True  # with word_level only
    # The start-up self-check (scoring.selfcheck)
    self_check: bool = True
    recheck: bool = False  # run it even when a cached pass exists

    def __post_init__(self) -> None:
        try:
            check_condition(self.condition)
        except ValueError as e:
            raise ScorerConfigError(f"--condition {self.condition!r}: {e}") from None
        _choice("tokenization", self.tokenization, TOKENIZATIONS)
        _choice("dtype", self.dtype, DTYPES)
        _choice("context-policy", self.context_policy, CONTEXT_POLICIES)
        _choice("packing", self.packing, PACKINGS)
        _choice("attention", self.attention, ATTENTIONS)
        _at_least("token-budget", self.token_budget, 1)
        _at_least("max-logit-rows", self.max_logit_rows, 1)
        _at_least("compile-bucket", self.compile_bucket, 1)
        _at_least("max-context", self.max_context, 2)
        _at_least("stride", self.stride, 1)
        _at_least("cpu-threads", self.cpu_threads, 1)
        if self.compile and self.compile_bucket % BLOCK:
            raise ScorerConfigError(f"--compile-bucket must be a multiple of {BLOCK}")
        if self.stride is not None and self.max_context is not None:
            if self.stride >= self.max_context:
                raise ScorerConfigError(
                    f"--stride ({self.stride}) must be smaller than the context "
                    f"({self.max_context})"
                )
        if self.device_map is not None and (self.compile or self.attention == "flex"):
            # accelerate's per-layer hooks move tensors between devices; a compiled graph
            # and a FlexAttention BlockMask (not a tensor) do not travel with them.
            raise ScorerConfigError(
                "--device-map combines with the dense attention mask only: drop "
                + ("--compile" if self.compile else "--attention flex")
            )
        if history_window(self.condition) is not None:
            self._check_history()
        # Normalised copies: option sets as sorted tuples (the run key's order).
        sets = {e: tuple(o) for e, o in sorted(dict(self.option_sets or {}).items())}
        object.__setattr__(self, "option_sets", sets)
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", dict(self.max_memory))

    def _check_history(self) -> None:
        if self.tokenization != "segments":
            raise ScorerConfigError(
                f"--condition {self.condition}: history windows are defined on segments "
                "(each response tokenised on its own); drop --tokenization whole"
            )
        if self.context_policy != "skip":
            raise ScorerConfigError(
                f"--condition {self.condition}: every response is scored in one sequence, so "
                "transcripts longer than the context are skipped; drop --context-policy window"
            )

    # -- derived ----------------------------------------------------------------

    @property
    def stores_tokens(self) -> bool:
        """Per-token entropy and rank are columns of token_scores: asking for them stores it."""
        return bool(self.token_level or self.entropy or self.rank)

    @property
    def corrects_words(self) -> bool:
        return bool(self.bow_correction and self.word_level)

    @property
    def threads(self) -> int:
        """The CPU threads torch gets: the option, else the physical cores."""
        return int(self.cpu_threads or physical_cores())

    def replace(self, **changes: Any) -> ScorerConfig:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ScorerConfig:
        """From keywords, refusing names that are not options (a typo is an error)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ScorerConfigError(f"unknown scorer option(s): {', '.join(unknown)}")
        return cls(**dict(options))
