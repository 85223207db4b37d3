"""The unit of every reported parameter (``fit_params.unit``, ``fits.summary["units"]``).

Each analysis' summary carries ``units``, a mapping from parameter name to
its unit; :func:`.store.save_fit` writes it into ``fit_params.unit`` and the
CLI and the report print it next to each number.  The strings are built here
so that every analysis names the same unit the same way:

* an outcome: ``nats`` (nats per response: a difference of mean NLL per
  response), ``SD`` (standardised by the pooled participant SD), ``logit``;
* a slope: ``<outcome> per <step>``, e.g. ``nats per generation step``,
  ``nats per version unit``, ``nats per year`` (:mod:`.generation_scale`) or
  ``nats per unit log(parameters)`` (a size slope on the natural log of the
  parameter count).
"""

from __future__ import annotations

from collections.abc import Iterable

from .generation_scale import GENERATION_STEP, check_generation_scale

NATS = "nats"
SD = "SD"
LOGIT = "logit"
# The unit of a cell value on each outcome scale of the NLL analyses.
SCALE_UNITS = {"nats": NATS, "standardised": SD}
LOG_PARAMETERS = "unit log(parameters)"


def outcome_unit(scale: str) -> str:
    """``nats`` or ``SD`` for the ``nats``/``standardised`` scale."""
    return SCALE_UNITS[scale]


def per(unit: str, step: str) -> str:
    """A slope's unit: ``unit`` per ``step``."""
    return f"{unit} per {step}"


def generation_slope_unit(unit: str, generation_scale: str) -> str:
    """E.g. ``nats per generation step`` (rank), ``nats per year`` (date)."""
    return per(unit, GENERATION_STEP[check_generation_scale(generation_scale)])


def size_slope_unit(unit: str) -> str:
    """``nats per unit log(parameters)``: a slope on the natural log of the parameter count."""
    return per(unit, LOG_PARAMETERS)


def same_unit(names: Iterable[str], unit: str) -> dict[str, str]:
    """``{name: unit}`` for parameters that share an outcome's unit (effects, levels, SDs)."""
    return {n: unit for n in names}
