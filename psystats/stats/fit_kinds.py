"""The kinds of fit, each one's entry function and spec, and calling a fit by its name.

Every analysis is ``fit_<kind>(con, selection, spec, sampling, *,
allow_failure, store) -> FitResult`` (:mod:`.pipeline`).  :func:`fit_request`
is the one adapter from option *names* to that call, and both the CLI's fit
commands and the notebook API (``wh.fit``) go through it, so they take the
same words: the names are the CLI options' (``--post-condition`` ->
``post_condition``, ``--draws`` -> ``draws``, ``--no-term`` -> ``no_terms``),
sorted into :class:`~.options.Selection`, :class:`~.options.SamplingOptions`,
:class:`~.options.StoreOptions` and the kind's spec by the fields each
declares.  An unknown name is refused with a "did you mean", and every value
is checked before the warehouse is opened.

Adding a kind: write ``fit_<kind>`` (its body, under ``pipeline.fit_entry``) and a spec
dataclass with ``of`` and ``from_options`` next to it, and add a row to
:data:`KINDS` (DEVELOPERS.md, "How to add a fit kind").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from psystats.warehouse.validators import did_you_mean

from .options import (
    OptionError,
    SamplingOptions,
    Selection,
    StoreOptions,
    build_spec,
    field_names,
    unknown_names,
)
from .pipeline import FitResult

# kind -> (module, fit function, spec class)
KINDS: dict[str, tuple[str, str, str]] = {
    "effects": ("psystats.stats.effects_fit", "fit_effects", "EffectsFitSpec"),
    "formula": ("psystats.stats.formula", "fit_formula", "FormulaSpec"),
    "generations": ("psystats.stats.generations", "fit_generations", "GenerationsSpec"),
    "persona": ("psystats.stats.persona", "fit_persona", "PersonaSpec"),
    "accuracy": ("psystats.stats.accuracy", "fit_accuracy", "AccuracySpec"),
    "participants": ("psystats.stats.participants", "fit_participants", "ParticipantsSpec"),
}
# The persona command names its two conditions after what they are (options.py says how
# they map onto a Selection).
ALIASES: dict[str, dict[str, str]] = {
    "persona": {"persona_condition": "post_condition", "plain_condition": "base_condition"},
}


def fit_function(kind: str) -> Callable[..., FitResult]:
    """``fit_<kind>`` (imported on first use: the analyses load their own libraries)."""
    module, fn, _ = _row(kind)
    return getattr(importlib.import_module(module), fn)


def spec_class(kind: str) -> Any:
    """The spec dataclass of ``kind`` (``EffectsFitSpec``, ``FormulaSpec``, ...)."""
    module, _, cls = _row(kind)
    return getattr(importlib.import_module(module), cls)


def spec_option_names(kind: str) -> list[str]:
    """The option names ``kind``'s spec takes (its ``OPTIONS``, else its fields)."""
    cls = spec_class(kind)
    return list(getattr(cls, "OPTIONS", None) or field_names(cls))


def _row(kind: str) -> tuple[str, str, str]:
    if kind not in KINDS:
        raise OptionError(
            f"unknown fit kind {kind!r}{did_you_mean(str(kind), list(KINDS))}: "
            f"use one of {', '.join(KINDS)}"
        )
    return KINDS[kind]


@dataclass(frozen=True)
class FitRequest:
    """One validated fit: ``run(con)`` calls ``fit_<kind>`` with it."""

    kind: str
    selection: Selection
    spec: Any
    sampling: SamplingOptions
    allow_failure: bool
    store: StoreOptions

    def run(self, con) -> FitResult:
        return fit_function(self.kind)(
            con,
            self.selection,
            self.spec,
            self.sampling,
            allow_failure=self.allow_failure,
            store=self.store,
        )


def fit_request(
    kind: str,
    selection: Selection | Mapping[str, Any] | None = None,
    spec: Any = None,
    sampling: SamplingOptions | Mapping[str, Any] | None = None,
    *,
    allow_failure: bool = False,
    store: StoreOptions | Mapping[str, Any] | None = None,
    **options: Any,
) -> FitRequest:
    """A :class:`FitRequest` from the option objects and/or option names (which override).

    Raises :class:`~.options.OptionError` (a usage error) for an unknown
    name, with a "did you mean", or a bad value; nothing is read yet.
    """
    aliases = ALIASES.get(kind, {})
    options = {aliases.get(k, k): v for k, v in options.items()}
    groups = {
        "selection": field_names(Selection),
        "sampling": field_names(SamplingOptions),
        "store": field_names(StoreOptions),
        "spec": spec_option_names(kind),
    }
    known = [n for names in groups.values() for n in names] + list(aliases) + ["allow_failure"]
    if set(options) - set(known):
        raise unknown_names(f"fit {kind}", options, known)
    picked = {g: {k: v for k, v in options.items() if k in names} for g, names in groups.items()}
    if not isinstance(allow_failure, bool):
        raise OptionError(f"allow_failure must be True or False, got {allow_failure!r}")
    return FitRequest(
        kind=kind,
        selection=build_spec(Selection, selection, picked["selection"], "selection"),
        spec=spec_class(kind).from_options(spec, **picked["spec"]),
        sampling=build_spec(SamplingOptions, sampling, picked["sampling"], "sampling"),
        allow_failure=allow_failure,
        store=build_spec(StoreOptions, store, picked["store"], "store"),
    )
