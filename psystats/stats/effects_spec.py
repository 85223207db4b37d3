"""The effects model's specification: which terms, which priors, how parameterised.

:class:`EffectsSpec` and :class:`Prior` (read from TOML/YAML/JSON or built in
Python), the default priors and their autoscaling to the data's scale
(:func:`resolve_priors`).  ``docs/model.md`` justifies every default.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.validators import PathOf

from .generation_scale import DEFAULT_GENERATION_SCALE, check_generation_scale
from .units import generation_slope_unit, outcome_unit, same_unit, size_slope_unit

log = logging.getLogger(__name__)

TERMS = (
    "type",
    "family",
    "size",
    "generation",
    "generation_family",
    "domain",
    "type_domain",
    "experiment",
    "pair",
)
NO_DOMAIN = "(no domain)"
# Reported parameters in the outcome's unit (the slopes have their own: EffectsSpec.units).
OUTCOME_PARAMETERS = (
    "intercept",
    "type",
    "type_mean",
    "family",
    "sigma_family",
    "domain",
    "sigma_domain",
    "type_domain",
    "sigma_type_domain",
    "experiment",
    "sigma_experiment",
    "pair",
    "sigma_pair",
    "pair_mean",
    "pair_domain_effect",
    "sigma_cell",
)
MAX_SPEC_BYTES = 1_000_000  # a spec is a few lines; a larger file is something else
MIN_POOLED_LEVELS = 5  # fewer levels than this: a fixed-scale prior instead of a pooled scale
MIN_RESIDUAL_DF = 2  # fewer cells beyond the location parameters: sigma_cell fixed at 0
# The data scale (nats per response, or SDs) the default priors are written for:
# cells whose root mean square exceeds it get default priors widened in proportion.
PRIOR_REFERENCE_SCALE = 1.0

# Where a Prior's distribution comes from (PyMC names); scale priors must be positive.
_DISTS = (
    "Normal",
    "StudentT",
    "Cauchy",
    "HalfNormal",
    "HalfStudentT",
    "HalfCauchy",
    "Exponential",
    "Gamma",
    "LogNormal",
)


@dataclass(frozen=True)
class Prior:
    """A prior as a PyMC distribution name and its parameters, e.g. ``Prior("HalfNormal", sigma=0.5)``."""

    dist: str
    params: Mapping[str, float] = field(default_factory=dict)

    def __init__(self, dist: str, params: Mapping[str, float] | None = None, **kw: float):
        if dist not in _DISTS:
            raise WarehouseError(
                f"unknown prior distribution {dist!r}: use one of {', '.join(_DISTS)}"
            )
        object.__setattr__(self, "dist", dist)
        object.__setattr__(self, "params", dict(params or {}, **kw))

    def rv(self, name: str, **kw):
        import pymc as pm

        return getattr(pm, self.dist)(name, **self.params, **kw)

    def to_dict(self) -> dict:
        return {"dist": self.dist, **self.params}

    @classmethod
    def from_value(cls, v: Any) -> Prior:
        if isinstance(v, Prior):
            return v
        if isinstance(v, Mapping):
            v = dict(v)
            return cls(v.pop("dist"), v)
        raise WarehouseError(
            f"a prior is a table like {{dist = 'HalfNormal', sigma = 0.5}}, got {v!r}"
        )


# On the nats-per-response scale: post-minus-base differences of a few tenths
# of a nat are large, so unit-scale priors are weakly informative.
DEFAULT_PRIORS: dict[str, Prior] = {
    "intercept": Prior("Normal", mu=0.0, sigma=1.0),
    "type": Prior("Normal", mu=0.0, sigma=0.5),  # fixed scale: not pooled
    "size_slope": Prior("Normal", mu=0.0, sigma=0.5),  # per unit of log(parameters)
    "generation_slope": Prior("Normal", mu=0.0, sigma=0.5),  # per generation step
    "sigma_family": Prior("HalfNormal", sigma=0.5),
    "sigma_generation_family": Prior("HalfNormal", sigma=0.25),
    # Used instead of a pooled scale when fewer than MIN_POOLED_FAMILIES families
    # have several generations: a scale cannot be learned from so few slopes.
    "generation_family": Prior("Normal", mu=0.0, sigma=0.1),
    "sigma_domain": Prior("HalfNormal", sigma=0.5),
    "sigma_type_domain": Prior("HalfNormal", sigma=0.5),
    "sigma_experiment": Prior("HalfNormal", sigma=0.5),
    "sigma_pair": Prior("HalfNormal", sigma=0.5),
    "sigma_cell": Prior("HalfNormal", sigma=0.5),
}


@dataclass
class EffectsSpec:
    """What the effects model contains and how it is parameterised.

    ``terms``: which terms to include (all by default; a term the data cannot
    identify is dropped with a message anyway).  ``priors``: overrides of
    :data:`DEFAULT_PRIORS`.  ``parameterization``: ``auto`` (per term,
    centred when the data pin the levels down well, else non-centred),
    ``centred`` or ``noncentred``.  ``residual``: ``marginal`` (cell residual
    integrated out analytically) or ``explicit`` (one non-centred latent per
    cell).  ``scale``: ``nats`` or ``standardised``.  ``min_participants``:
    cells with fewer participants are left out (their SD is unknown).
    ``autoscale``: when the cell values' root mean square exceeds
    :data:`PRIOR_REFERENCE_SCALE` (differences of many nats, e.g. a random
    model against a trained one), every *default* prior scale is multiplied by
    that ratio (:func:`resolve_priors`); priors given in ``priors`` are kept.
    ``generation_scale``: ``rank`` (default; 0, 1, 2, ... over the distinct
    generations of a family in the data, so one step is one successive
    generation in every family), ``number`` (``generation_order`` itself,
    e.g. 3 -> 3.1 -> 3.2 steps of 0.1 but 2 -> 2.5 -> 3 steps of 0.5) or
    ``date`` (years since the family's first release in the data, from
    ``models.release_date``; every pair needs a date).  All three are centred
    within each family, so only the spacing of a family's generations matters.
    """

    terms: dict[str, bool] = field(default_factory=lambda: {t: True for t in TERMS})
    priors: dict[str, Prior] = field(default_factory=dict)
    parameterization: str = "auto"
    residual: str = "marginal"
    scale: str = "nats"
    min_participants: int = 2
    autoscale: bool = True
    generation_scale: str = DEFAULT_GENERATION_SCALE

    def __post_init__(self) -> None:
        unknown = set(self.terms) - set(TERMS)
        if unknown:
            raise WarehouseError(f"unknown term(s) {sorted(unknown)}: terms are {', '.join(TERMS)}")
        self.terms = {t: bool(self.terms.get(t, True)) for t in TERMS}
        bad = set(self.priors) - set(DEFAULT_PRIORS)
        if bad:
            raise WarehouseError(
                f"unknown prior(s) {sorted(bad)}: priors are {', '.join(DEFAULT_PRIORS)}"
            )
        self.priors = {k: Prior.from_value(v) for k, v in self.priors.items()}
        if self.parameterization not in ("auto", "centred", "noncentred"):
            raise WarehouseError("parameterization must be auto, centred or noncentred")
        if self.residual not in ("marginal", "explicit"):
            raise WarehouseError("residual must be marginal or explicit")
        if self.scale not in ("nats", "standardised"):
            raise WarehouseError("scale must be nats or standardised")
        if self.min_participants < 1:
            raise WarehouseError("min_participants must be at least 1")
        check_generation_scale(self.generation_scale)

    def units(self) -> dict[str, str]:
        """The unit of every parameter the effects model reports (``fits.summary["units"]``).

        Effects, levels and scales are in the outcome's unit (``nats`` per
        response, or ``SD`` on the standardised scale); the generation slopes
        per step of ``generation_scale`` (:mod:`.generation_scale`), the size
        slope per unit of log(parameters).
        """
        unit = outcome_unit(self.scale)
        gen = generation_slope_unit(unit, self.generation_scale)
        return {
            **same_unit(OUTCOME_PARAMETERS, unit),
            "size_slope": size_slope_unit(unit),
            "generation_slope": gen,
            "generation_slope_family": gen,
            "sigma_generation_family": gen,
        }

    def prior(self, name: str) -> Prior:
        return self.priors.get(name, DEFAULT_PRIORS[name])

    def all_priors(self) -> dict[str, dict]:
        return {k: self.prior(k).to_dict() for k in DEFAULT_PRIORS}

    def to_dict(self) -> dict:
        return {
            "terms": dict(self.terms),
            "priors": self.all_priors(),
            "parameterization": self.parameterization,
            "residual": self.residual,
            "scale": self.scale,
            "min_participants": self.min_participants,
            "autoscale": self.autoscale,
            "generation_scale": self.generation_scale,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EffectsSpec:
        d = dict(d)
        unknown = set(d) - {
            "terms",
            "priors",
            "parameterization",
            "residual",
            "scale",
            "min_participants",
            "autoscale",
            "generation_scale",
        }
        if unknown:
            raise WarehouseError(f"unknown spec field(s) {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> EffectsSpec:
        """Read a spec from TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON."""
        try:  # a regular file (not a device such as /dev/zero, read forever), of spec size
            path = Path(PathOf("file")(path))
        except ValueError as e:
            raise WarehouseError(f"spec {e}") from None
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise WarehouseError(f"{path}: larger than {MAX_SPEC_BYTES:,} bytes: not a spec")
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".toml":
                import tomllib

                d = tomllib.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                import yaml

                d = yaml.safe_load(text) or {}
            else:
                d = json.loads(text)
        except FileNotFoundError:
            raise WarehouseError(f"{path}: no such spec file") from None
        except Exception as e:
            raise WarehouseError(f"{path}: cannot parse the spec: {e}") from None
        try:
            return cls.from_dict(d)
        except WarehouseError as e:
            raise WarehouseError(f"{path}: {e}") from None


def prior_scale_for(y: np.ndarray) -> float:
    """How much to widen the default priors for cell values ``y``: max(1, RMS(y) / reference)."""
    y = np.asarray(y, dtype=float)
    rms = float(np.sqrt(np.mean(y**2))) if y.size else 0.0
    return max(1.0, rms / PRIOR_REFERENCE_SCALE)


def resolve_priors(spec: EffectsSpec, prior_scale: float) -> EffectsSpec:
    """``spec`` with its default priors' scales multiplied by ``prior_scale`` (when ``autoscale``).

    Priors the user set are kept as given.  The result has every prior
    explicit and ``autoscale = False``, so resolving it again changes nothing.
    Why: the defaults assume differences of at most about a nat per response;
    far larger cell values against them are a prior-data conflict (the fit
    then sits between prior and data and its predictive check fails).
    """
    if not spec.autoscale or prior_scale == 1.0:
        return spec
    scaled = {}
    for name, p in DEFAULT_PRIORS.items():
        if name not in spec.priors:
            scaled[name] = Prior(
                p.dist,
                {
                    k: v * prior_scale if k in ("mu", "sigma", "beta") else v
                    for k, v in p.params.items()
                },
            )
    return replace(spec, priors={**scaled, **spec.priors}, autoscale=False)
