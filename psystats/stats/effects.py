"""The effects model: how post-training changes NLL, by type, family, size, generation and domain.

Specification (:class:`EffectsSpec`, :class:`Prior`) is separate from the
PyMC graph (:func:`build_effects_model`), which statisticians can call and
extend (``extra=``, or by adding to the returned model), and from the
orchestration that reads the warehouse, samples, checks and stores
(:func:`fit_cells`, :func:`fit_effects`).  ``docs/model.md`` writes the
model out in full.

For cell c = (pair p, experiment e) with observed mean paired difference y_c
and standard error se_c (from n_c participants, plug-in participant SD):

    y_c ~ Normal(eta_c, sqrt(sigma_cell^2 + se_c^2))       (cell residual integrated out)
    eta_c = intercept + type[t(p)] + family[f(p)] + size_slope * x_p
            + generation_slope_family[f(p)] * g_p + domain[d(e)]
            + type_domain[t(p), d(e)] + experiment[e] + pair[p]

x_p = log(n_params) centred over pairs; g_p = generation_order centred within
the pair's family.  Every grouped effect is a vector constrained to a linear
subspace (sum to zero over its levels; experiments within each domain; pairs
orthogonal to every pair-level term), parameterised by an orthonormal basis of that
subspace, so every reported effect is identified.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.db import WarehouseError

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
MIN_POOLED_LEVELS = 5  # fewer levels than this: a fixed-scale prior instead of a pooled scale
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
    """

    terms: dict[str, bool] = field(default_factory=lambda: {t: True for t in TERMS})
    priors: dict[str, Prior] = field(default_factory=dict)
    parameterization: str = "auto"
    residual: str = "marginal"
    scale: str = "nats"
    min_participants: int = 2
    autoscale: bool = True

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
        }
        if unknown:
            raise WarehouseError(f"unknown spec field(s) {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> EffectsSpec:
        """Read a spec from TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON."""
        path = Path(path)
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


# ---------------------------------------------------------------------------
# Data preparation: codes, constraint bases, dropped terms


def constraint_basis(constraints: np.ndarray) -> np.ndarray:
    """Orthonormal basis (levels x k) of {v : constraints.T @ v = 0}.

    With ``constraints`` a column of ones this is the sum-to-zero subspace, and
    ``basis @ z`` with z ~ N(0, sigma^2 I) has the ZeroSumNormal distribution:
    an iid N(0, sigma^2) vector conditioned on the constraints.
    """
    from scipy.linalg import null_space

    constraints = np.atleast_2d(np.asarray(constraints, dtype=float))
    if constraints.shape[1] == 0:
        return np.eye(constraints.shape[0])
    return null_space(constraints.T)


def _indicators(codes: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((len(codes), k))
    m[np.arange(len(codes)), codes] = 1.0
    return m


@dataclass
class EffectsData:
    """Cells coded for the model, with the terms it can identify.

    ``cells`` holds the kept cells with ``y``, ``se`` and integer codes
    (``pair_idx``, ``experiment_idx``, ``domain_idx``, ``type_idx``,
    ``family_idx``); ``coords`` the level names; ``active`` the terms in the
    model; ``dropped`` the terms left out and why; ``messages`` everything
    the user should read.
    """

    cells: pd.DataFrame
    coords: dict[str, list[str]]
    active: list[str]
    dropped: dict[str, str]
    messages: list[str]
    pair_type: np.ndarray
    pair_family: np.ndarray
    size_x: np.ndarray
    generation_x: np.ndarray
    experiment_domain: np.ndarray
    bases: dict[str, np.ndarray]
    centred: dict[str, bool]
    size_center: float | None = None
    fixed_scale: set[str] = field(default_factory=set)
    prior_scale: float = 1.0  # default priors widened by this factor (resolve_priors)

    @property
    def n_cells(self) -> int:
        return len(self.cells)


def fixed_sigma(spec: EffectsSpec, term: str) -> float:
    """Scale of the fixed prior a term gets when it has too few levels to pool.

    The scale parameter of its ``sigma_<term>`` prior (0.5 by default).
    """
    if term == "generation_family":
        return float(spec.prior("generation_family").params.get("sigma", 0.1))
    p = spec.prior(f"sigma_{term}").params
    return float(p.get("sigma", p.get("beta", 0.5)))


def _few(names: Sequence[str], k: int = 5) -> str:
    names = list(names)
    return ", ".join(map(str, names[:k])) + (
        f" and {len(names) - k} more" if len(names) > k else ""
    )


def _informative(y: np.ndarray, codes: np.ndarray, k: int) -> bool:
    """Are these levels' means pinned down by the data (then a centred parameterisation)?

    Compares the typical standard error of a level's mean with the spread of
    the level means: non-centred is better when the data are weak.
    """
    if k < 2:
        return False
    df = pd.DataFrame({"y": y, "g": codes})
    g = df.groupby("g")["y"]
    means, counts = g.mean(), g.size()
    within = float(np.sqrt(np.nanmean(g.var(ddof=1)))) if (counts > 1).any() else np.inf
    se = within / np.sqrt(counts.median())
    spread = float(means.std(ddof=1)) if len(means) > 1 else 0.0
    return bool(np.isfinite(se) and spread > 0 and se < 0.5 * spread)


def prepare(cells: pd.DataFrame, spec: EffectsSpec | None = None) -> EffectsData:
    """Code the cells, decide which terms the data identify, build constraint bases.

    ``cells`` needs ``pair, experiment, y, se`` and for the optional terms
    ``post_training, family, n_params, generation_order, domain, n``
    (:func:`psystats.stats.cells.with_scale` gives all of them).  Raises
    :class:`WarehouseError` when nothing can be fitted.
    """
    spec = spec or EffectsSpec()
    messages: list[str] = []
    dropped: dict[str, str] = {}
    need = {"pair", "experiment", "y", "se"}
    missing = need - set(cells.columns)
    if missing:
        raise WarehouseError(f"the cell table lacks column(s) {sorted(missing)}")
    c = cells.copy().reset_index(drop=True)
    for col, default in (
        ("post_training", "post-trained"),
        ("family", "unknown"),
        ("domain", None),
        ("n", np.nan),
        ("n_params", np.nan),
        ("generation_order", np.nan),
    ):
        if col not in c:
            c[col] = default

    # Cells the likelihood cannot use.
    n_before = len(c)
    bad_n = c["n"].notna() & (c["n"] < spec.min_participants)
    if bad_n.any():
        messages.append(
            f"{int(bad_n.sum())} cell(s) with fewer than {spec.min_participants} "
            f"participant(s) left out (their participant SD is unknown): "
            f"{_few(c.loc[bad_n, 'pair'] + ' / ' + c.loc[bad_n, 'experiment'])}"
        )
    zero = ~bad_n & (c["se"] == 0)
    if zero.any():
        messages.append(
            f"{int(zero.sum())} cell(s) where every participant's difference is the "
            f"same (zero variance: post and base scored identically?) left out: "
            f"{_few(c.loc[zero, 'pair'] + ' / ' + c.loc[zero, 'experiment'])}"
        )
    nonfinite = (
        ~bad_n & ~zero & ~(np.isfinite(c["y"].astype(float)) & np.isfinite(c["se"].astype(float)))
    )
    if nonfinite.any():
        messages.append(
            f"{int(nonfinite.sum())} cell(s) without a finite mean or standard error "
            f"(e.g. zero pooled SD on the standardised scale) left out: "
            f"{_few(c.loc[nonfinite, 'pair'] + ' / ' + c.loc[nonfinite, 'experiment'])}"
        )
    c = c[~(bad_n | zero | nonfinite)].reset_index(drop=True)
    if c.empty:
        raise WarehouseError(
            f"none of the {n_before} cell(s) can be fitted: " + ("; ".join(messages) or "no data")
        )
    if c.duplicated(["pair", "experiment"]).any():
        raise WarehouseError("the cell table has duplicate (pair, experiment) rows")

    no_dom = c["domain"].isna()
    if no_dom.any():
        exps = sorted(c.loc[no_dom, "experiment"].unique())
        messages.append(
            f"{len(exps)} experiment(s) have no domain in the domain map and form "
            f"the level {NO_DOMAIN!r}: {_few(exps)}"
        )
        c.loc[no_dom, "domain"] = NO_DOMAIN

    # Pair-level table (one row per pair) and codes.
    pair_tab = (
        c.groupby("pair", sort=True)
        .agg(
            post_training=("post_training", "first"),
            family=("family", "first"),
            n_params=("n_params", "first"),
            generation_order=("generation_order", "first"),
            n_cells=("experiment", "size"),
        )
        .reset_index()
    )
    for col in ("post_training", "family"):
        pair_tab[col] = pair_tab[col].fillna("unknown").astype(str)
    exp_tab = (
        c.groupby("experiment", sort=True)
        .agg(domain=("domain", "first"), n_cells=("pair", "size"))
        .reset_index()
    )
    coords = {
        "pair": pair_tab["pair"].tolist(),
        "experiment": exp_tab["experiment"].tolist(),
        "type": sorted(pair_tab["post_training"].unique()),
        "family": sorted(pair_tab["family"].unique()),
        "domain": sorted(exp_tab["domain"].unique()),
    }
    code = {k: {v: i for i, v in enumerate(vals)} for k, vals in coords.items()}
    pair_type = pair_tab["post_training"].map(code["type"]).to_numpy()
    pair_family = pair_tab["family"].map(code["family"]).to_numpy()
    exp_domain = exp_tab["domain"].map(code["domain"]).to_numpy()
    c["pair_idx"] = c["pair"].map(code["pair"]).to_numpy()
    c["experiment_idx"] = c["experiment"].map(code["experiment"]).to_numpy()
    c["type_idx"] = pair_type[c["pair_idx"]]
    c["family_idx"] = pair_family[c["pair_idx"]]
    c["domain_idx"] = exp_domain[c["experiment_idx"]]
    P, E = len(coords["pair"]), len(coords["experiment"])
    T, F, D = (len(coords[k]) for k in ("type", "family", "domain"))

    active = [t for t in TERMS if spec.terms[t]]
    for t in TERMS:
        if not spec.terms[t]:
            dropped[t] = "left out by the specification"

    def drop(term: str, why: str) -> None:
        if term in active:
            active.remove(term)
            dropped[term] = why
            messages.append(f"term {term!r} dropped: {why}")

    if T < 2:
        drop(
            "type",
            f"every pair has the same post-training type ({coords['type'][0]}); "
            "the intercept is that type's effect",
        )
    if F < 2:
        drop("family", f"every pair is in the same family ({coords['family'][0]})")
    if D < 2:
        drop("domain", f"every experiment is in the same domain ({coords['domain'][0]})")
    if "type" not in active or "domain" not in active:
        drop("type_domain", "it needs at least two types and two domains")

    # Size: log(parameters), centred over pairs.
    size_x = np.zeros(P)
    size_center = None
    if "size" in active:
        npar = pd.to_numeric(pair_tab["n_params"], errors="coerce")
        if npar.isna().any() or (npar <= 0).any():
            drop(
                "size",
                f"parameter count unknown for {_few(pair_tab.loc[npar.isna() | (npar <= 0), 'pair'])} "
                "(set it with `psystats models` or the registry)",
            )
        elif npar.nunique() < 2:
            drop("size", "every pair has the same parameter count")
        else:
            lx = np.log(npar.to_numpy(dtype=float))
            size_center = float(lx.mean())
            size_x = lx - size_center

    # Generation: generation_order centred within family.
    gen_x = np.zeros(P)
    gen_o = pd.to_numeric(pair_tab["generation_order"], errors="coerce")
    if "generation" in active:
        varying = []
        for f in range(F):
            m = (pair_family == f) & gen_o.notna().to_numpy()
            if m.sum() >= 2 and gen_o[m].nunique() >= 2:
                varying.append(f)
                gen_x[m] = gen_o[m] - gen_o[m].mean()
        if not varying:
            drop("generation", "no family has pairs from two or more generations")
        else:
            unknown = pair_tab.loc[gen_o.isna() & np.isin(pair_family, varying), "pair"]
            if len(unknown):
                messages.append(
                    f"generation unknown for {_few(unknown)}: treated as their "
                    f"family's average generation"
                )
            if len(varying) < 2:
                drop("generation_family", "only one family has pairs from several generations")
            else:
                coords["generation_family"] = [coords["family"][f] for f in varying]
    if "generation" not in active:
        drop("generation_family", "there is no generation term")

    # Every pair-level term must be estimable from the pairs: while the
    # pair-level design is rank deficient, drop the least central term.
    def pair_design() -> np.ndarray:
        cols = [np.ones((P, 1))]
        if "type" in active:
            cols.append(_indicators(pair_type, T) @ constraint_basis(np.ones((T, 1))))
        if "family" in active:
            cols.append(_indicators(pair_family, F) @ constraint_basis(np.ones((F, 1))))
        if "size" in active:
            cols.append(size_x[:, None])
        if "generation" in active:
            cols.append(gen_x[:, None])
        if "generation_family" in active:
            G = len(coords["generation_family"])
            gf = np.zeros((P, G))
            for j, name in enumerate(coords["generation_family"]):
                m = pair_family == coords["family"].index(name)
                gf[m, j] = gen_x[m]
            cols.append(gf @ constraint_basis(np.ones((G, 1))))
        return np.hstack(cols)

    for term in ("generation_family", "size", "generation", "family", "type"):
        X = pair_design()
        if np.linalg.matrix_rank(X) == X.shape[1]:
            break
        drop(
            term,
            f"with these {P} pair(s) it cannot be separated from the other pair-level "
            "terms (type, family, size, generation)",
        )
        if term == "generation":
            drop("generation_family", "there is no generation term")
        if term == "type":
            drop("type_domain", "there is no type term")

    # Constraint bases.
    bases: dict[str, np.ndarray] = {}
    if "type" in active:
        bases["type"] = constraint_basis(np.ones((T, 1)))
    if "family" in active:
        bases["family"] = constraint_basis(np.ones((F, 1)))
    if "domain" in active:
        bases["domain"] = constraint_basis(np.ones((D, 1)))
    if "generation_family" in active:
        bases["generation_family"] = constraint_basis(
            np.ones((len(coords["generation_family"]), 1))
        )
    if "type_domain" in active:
        rows = np.kron(np.eye(T), np.ones((D, 1)))  # sum over domains, per type
        cols = np.kron(np.ones((T, 1)), np.eye(D))  # sum over types, per domain
        bases["type_domain"] = constraint_basis(np.hstack([rows, cols]))
    if "experiment" in active:
        if exp_tab["n_cells"].max() < 2:
            drop(
                "experiment",
                "every experiment has a single cell (one pair), so experiment "
                "effects and cell residuals are the same thing",
            )
        else:
            group = _indicators(exp_domain, D) if "domain" in active else np.ones((E, 1))
            B = constraint_basis(group)
            if B.shape[1] == 0:
                drop("experiment", "every domain has a single experiment")
            else:
                bases["experiment"] = B
    if "pair" in active:
        if pair_tab["n_cells"].max() < 2:
            drop(
                "pair",
                "every pair has a single cell (one experiment), so pair effects and "
                "cell residuals are the same thing",
            )
        else:
            # Pair effects are what the pair-level terms leave unexplained: orthogonal
            # to every pair-level column (intercept, type, family, size, generation).
            cols = [np.ones((P, 1))]
            if "type" in active:
                cols.append(_indicators(pair_type, T))
            if "family" in active:
                cols.append(_indicators(pair_family, F))
            if "size" in active:
                cols.append(size_x[:, None])
            if "generation" in active:
                cols.append(gen_x[:, None])
            if "generation_family" in active:
                cols.append(_indicators(pair_family, F) * gen_x[:, None])
            B = constraint_basis(np.hstack(cols))
            if B.shape[1] == 0:
                drop(
                    "pair",
                    "the pair-level terms (type, family, size, generation) already "
                    "describe every pair exactly",
                )
            else:
                bases["pair"] = B

    # Default priors far narrower than the data: widen them (and say so).
    prior_scale = prior_scale_for(c["y"]) if spec.autoscale else 1.0
    if prior_scale > 1.0:
        messages.append(
            f"the cell values (root mean square {prior_scale * PRIOR_REFERENCE_SCALE:.3g}) "
            f"are far beyond the {PRIOR_REFERENCE_SCALE:g} the default priors assume: "
            f"default prior scales multiplied by {prior_scale:.3g} (fits.priors has "
            f"the priors used; set autoscale = false or your own priors to change it)"
        )
    spec = resolve_priors(spec, prior_scale)

    # A scale cannot be learned from a handful of levels (and its funnel then
    # defeats the sampler): such terms get a fixed-scale prior instead.
    fixed_scale = set()
    for term in ("family", "generation_family", "domain", "type_domain", "experiment", "pair"):
        if term in active and bases[term].shape[1] < MIN_POOLED_LEVELS - 1:
            fixed_scale.add(term)
            what = (
                "the fixed prior 'generation_family'"
                if term == "generation_family"
                else f"a fixed Normal(0, {fixed_sigma(spec, term):g}) prior"
            )
            messages.append(
                f"term {term!r} has only {bases[term].shape[1] + 1} free levels: "
                f"{what} instead of a pooled scale"
            )

    # Centred or non-centred, per grouped term.
    y = c["y"].to_numpy(float)
    level_codes = {
        "family": c["family_idx"].to_numpy(),
        "domain": c["domain_idx"].to_numpy(),
        "experiment": c["experiment_idx"].to_numpy(),
        "pair": c["pair_idx"].to_numpy(),
        "type_domain": (c["type_idx"] * D + c["domain_idx"]).to_numpy(),
        "generation_family": c["family_idx"].to_numpy(),
    }
    centred = {}
    for term in ("family", "domain", "type_domain", "experiment", "pair", "generation_family"):
        if term in active:
            if spec.parameterization == "auto":
                k = {"type_domain": T * D}.get(term, len(coords.get(term, coords["family"])))
                # Family slopes are fitted to the pair means: as well pinned down as
                # the pairs themselves.
                if term == "generation_family":
                    centred[term] = _informative(y, level_codes["pair"], len(coords["pair"]))
                else:
                    centred[term] = _informative(y, level_codes[term], k)
            else:
                centred[term] = spec.parameterization == "centred"
    return EffectsData(
        cells=c,
        coords=coords,
        active=active,
        dropped=dropped,
        messages=messages,
        pair_type=pair_type,
        pair_family=pair_family,
        size_x=size_x,
        generation_x=gen_x,
        experiment_domain=exp_domain,
        bases=bases,
        centred=centred,
        size_center=size_center,
        fixed_scale=fixed_scale,
        prior_scale=prior_scale,
    )


# ---------------------------------------------------------------------------
# The PyMC model


def build_effects_model(
    data: EffectsData,
    spec: EffectsSpec | None = None,
    *,
    extra: Callable[[Any, EffectsData], Any] | None = None,
):
    """The PyMC model for prepared cells; returns ``pm.Model``.

    Variables (dims in brackets): ``intercept``, ``type[type]``,
    ``type_mean[type]`` (intercept + type), ``family[family]``,
    ``sigma_family``, ``size_slope``, ``generation_slope``,
    ``generation_slope_family[generation_family]`` (total slope per family),
    ``domain[domain]``, ``type_domain[type, domain]``,
    ``experiment[experiment]``, ``pair[pair]``, the ``sigma_*`` scales,
    ``pair_mean[pair]`` and ``pair_domain_effect[pair, domain]`` (expected
    post-minus-base difference of the pair, averaged over experiments and
    over domains / in one domain), and the observed ``y[cell]``.
    Raw basis coefficients are ``<term>_coef``.

    ``extra(model, data)``, called inside the model context, may return a
    tensor of length ``data.n_cells`` added to the linear predictor: the hook
    for covariates of your own.
    """
    import pymc as pm
    import pytensor.tensor as pt

    spec = resolve_priors(spec or EffectsSpec(), data.prior_scale)
    c = data.cells
    active = set(data.active)
    # PyMC forbids a variable named like its dimension: the dims are "<name>_level"
    # (the store writes them back as "<name>" in fit_params.coords).
    coords = {f"{k}_level": v for k, v in data.coords.items()}
    coords["cell"] = [f"{p} / {e}" for p, e in zip(c["pair"], c["experiment"])]
    for term, B in data.bases.items():
        coords[f"{term}_basis"] = list(range(B.shape[1]))
    T, D = len(data.coords["type"]), len(data.coords["domain"])
    P, E = len(data.coords["pair"]), len(data.coords["experiment"])

    def constrained(term: str, sigma_name: str | None, fixed_prior: Prior | None = None):
        """basis @ coefficients: centred (coef ~ N(0, sigma)) or non-centred (sigma * N(0, 1))."""
        B = pt.as_tensor_variable(data.bases[term])
        if fixed_prior is not None:
            coef = pm.Normal(
                f"{term}_coef", 0.0, fixed_prior.params.get("sigma", 1.0), dims=f"{term}_basis"
            )
            return pt.dot(B, coef)
        sigma = spec.prior(sigma_name).rv(sigma_name)
        if data.centred.get(term, False):
            return pt.dot(B, pm.Normal(f"{term}_coef", 0.0, sigma, dims=f"{term}_basis"))
        return sigma * pt.dot(B, pm.Normal(f"{term}_coef", 0.0, 1.0, dims=f"{term}_basis"))

    def grouped(term: str, dims, sigma_name: str | None, fixed_prior: Prior | None = None):
        if fixed_prior is None and term in data.fixed_scale:
            fixed_prior = Prior("Normal", mu=0.0, sigma=fixed_sigma(spec, term))
        value = constrained(term, sigma_name, fixed_prior)
        if isinstance(dims, tuple):
            value = value.reshape([len(coords[d]) for d in dims])
        return pm.Deterministic(term, value, dims=dims)

    with pm.Model(coords=coords) as model:
        intercept = spec.prior("intercept").rv("intercept")
        pair_part = intercept * pt.ones(P)
        type_eff = None
        if "type" in active:
            tp = spec.prior("type")
            if tp.dist != "Normal" or tp.params.get("mu", 0.0) != 0.0:
                raise WarehouseError(
                    "the 'type' prior must be Normal with mu = 0 (a sum-to-zero "
                    "effect); set its sigma"
                )
            type_eff = grouped("type", "type_level", None, fixed_prior=tp)
            pm.Deterministic("type_mean", intercept + type_eff, dims="type_level")
            pair_part = pair_part + type_eff[data.pair_type]
        if "family" in active:
            fam = grouped("family", "family_level", "sigma_family")
            pair_part = pair_part + fam[data.pair_family]
        if "size" in active:
            size = spec.prior("size_slope").rv("size_slope")
            pair_part = pair_part + size * data.size_x
        if "generation" in active:
            gslope = spec.prior("generation_slope").rv("generation_slope")
            slope_by_pair = gslope * pt.ones(P)
            if "generation_family" in active:
                # Stored as each family's total slope: global + its (sum-to-zero) deviation.
                dev = (
                    constrained(
                        "generation_family",
                        None,
                        fixed_prior=Prior(
                            "Normal", mu=0.0, sigma=fixed_sigma(spec, "generation_family")
                        ),
                    )
                    if "generation_family" in data.fixed_scale
                    else constrained("generation_family", "sigma_generation_family")
                )
                fam_slope = pm.Deterministic(
                    "generation_slope_family", gslope + dev, dims="generation_family_level"
                )
                gf_names = data.coords["generation_family"]
                to_gf = np.array(
                    [
                        gf_names.index(data.coords["family"][f])
                        if data.coords["family"][f] in gf_names
                        else -1
                        for f in data.pair_family
                    ]
                )
                has = to_gf >= 0
                slope_by_pair = pt.switch(has, fam_slope[np.where(has, to_gf, 0)], gslope)
            pair_part = pair_part + slope_by_pair * data.generation_x
        if "pair" in active:
            pair_part = pair_part + grouped("pair", "pair_level", "sigma_pair")
        pair_mean = pm.Deterministic("pair_mean", pair_part, dims="pair_level")

        exp_part = pt.zeros(E)
        dom_eff = pt.zeros(D)
        if "domain" in active:
            dom_eff = grouped("domain", "domain_level", "sigma_domain")
            exp_part = exp_part + dom_eff[data.experiment_domain]
        if "experiment" in active:
            exp_part = exp_part + grouped("experiment", "experiment_level", "sigma_experiment")
        td = pt.zeros((T, D))
        if "type_domain" in active:
            td = grouped("type_domain", ("type_level", "domain_level"), "sigma_type_domain")

        pm.Deterministic(
            "pair_domain_effect",
            pair_mean[:, None] + dom_eff[None, :] + td[data.pair_type, :],
            dims=("pair_level", "domain_level"),
        )

        pi, ei = c["pair_idx"].to_numpy(), c["experiment_idx"].to_numpy()
        eta = (
            pair_part[pi] + exp_part[ei] + td[c["type_idx"].to_numpy(), c["domain_idx"].to_numpy()]
        )
        if extra is not None:
            eta = eta + extra(model, data)
        # Data containers: a compiled model can be re-run on new cell values of the
        # same layout (nutpie's ``compiled.with_data(y_obs=..., se=...)``).
        se = pm.Data("se", c["se"].to_numpy(float), dims="cell")
        y_obs = pm.Data("y_obs", c["y"].to_numpy(float), dims="cell")
        sigma_cell = spec.prior("sigma_cell").rv("sigma_cell")
        if spec.residual == "marginal":
            pm.Normal(
                "y", mu=eta, sigma=pt.sqrt(sigma_cell**2 + se**2), observed=y_obs, dims="cell"
            )
        else:
            z = pm.Normal("cell_z", 0.0, 1.0, dims="cell")
            pm.Normal("y", mu=eta + sigma_cell * z, sigma=se, observed=y_obs, dims="cell")
    return model


def reported_vars(model) -> list[str]:
    """The variables that get ``fit_params`` rows: effects, slopes, scales, derived."""
    from .sampling import gated_vars

    return gated_vars(model)


LABELS = {"type_domain": "{type} × {domain}", "pair_domain_effect": "{pair} × {domain}"}


# ---------------------------------------------------------------------------
# Checks and the whole fit


def posterior_predictive_summary(
    model,
    idata,
    *,
    max_draws: int = 400,
    seed: int = 0,
    var_name: str = "y",
    add_to_idata: bool = True,
) -> dict:
    """Posterior predictive check on the cell means.

    Replicates ``var_name`` from (at most ``max_draws``) posterior draws and
    reports the share of cells inside their 90% predictive interval and
    Bayesian p-values (P(T(y_rep) >= T(y))) for the mean, SD, minimum and
    maximum of the standardised cell values (y - E y_rep) / sd(y_rep).  With
    ``add_to_idata`` the replicated draws become ``idata``'s
    ``posterior_predictive`` group (stored in the fit's NetCDF, where the
    report draws its predictive check from them).
    """
    from .sampling import posterior_predictive_draws, ppc_statistics

    rep, y = posterior_predictive_draws(
        model, idata, var_name, max_draws=max_draws, seed=seed, add_to_idata=add_to_idata
    )
    return ppc_statistics(y, rep)


def loo_summary(model, idata, *, max_draws: int = 1000) -> tuple[dict, Any]:
    """PSIS-LOO (leave one cell out) with ArviZ on at most ``max_draws`` draws; (summary, ELPDData)."""
    import warnings

    import arviz as az
    import pymc as pm

    from .sampling import thin_draws

    thin = thin_draws(idata, max_draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll = pm.compute_log_likelihood(
            thin, model=model, var_names=["y"], extend_inferencedata=False, progressbar=False
        )
        thin = thin.copy()
        thin.add_groups(
            {"log_likelihood": ll.log_likelihood if hasattr(ll, "log_likelihood") else ll}
        )
        res = az.loo(thin, pointwise=True)
    k = np.asarray(res.pareto_k)
    return (
        {
            "elpd_loo": float(res.elpd_loo),
            "se": float(res.se),
            "p_loo": float(res.p_loo),
            "n_cells": int(k.size),
            "pareto_k_over_0.7": int(np.sum(k > 0.7)),
            "draws": int(thin.posterior.sizes["chain"] * thin.posterior.sizes["draw"]),
        },
        res,
    )


@dataclass
class EffectsFit:
    """What :func:`fit_cells` returns (and :func:`fit_effects` after storing it)."""

    idata: Any
    model: Any
    data: EffectsData
    spec: EffectsSpec
    diagnostics: Any
    summary: dict
    seconds: float
    fit_id: int | None = None


def fit_cells(
    cells: pd.DataFrame,
    spec: EffectsSpec | None = None,
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: int = 0,
    sampler: str = "nutpie",
    target_accept: float = 0.95,
    allow_failure: bool = False,
    compare: bool = True,
    checks: bool = True,
    progressbar: bool = False,
) -> EffectsFit:
    """Fit the effects model to a cell table (with ``y``/``se``), check it, summarise it.

    Raises :class:`~psystats.stats.sampling.DiagnosticsFailure` when a gate
    fails and ``allow_failure`` is false.  ``checks`` runs the posterior
    predictive check and PSIS-LOO; ``compare`` also fits the model without
    type x domain and compares the two by LOO.
    """
    from .sampling import diagnose, enforce, sample, sampler_record

    spec = spec or EffectsSpec()
    t0 = time.perf_counter()
    data = prepare(cells, spec)
    for m in data.messages:
        log.warning(m)
    model = build_effects_model(data, spec)
    idata = sample(
        model,
        draws=draws,
        tune=tune,
        chains=chains,
        seed=seed,
        sampler=sampler,
        target_accept=target_accept,
        progressbar=progressbar,
    )
    diag = diagnose(idata, var_names=reported_vars(model))
    enforce(diag, allow_failure)
    summary: dict[str, Any] = {
        "messages": data.messages,
        "dropped_terms": data.dropped,
        "active_terms": data.active,
        "centred": data.centred,
        "n_cells": data.n_cells,
        "size_center_log_params": data.size_center,
        "prior_scale": data.prior_scale,
        "coords": {k: len(v) for k, v in data.coords.items()},
    }
    if checks:
        loo, loo_full = loo_summary(model, idata)
        summary["loo"] = {"full": loo}
        # Also adds the replicated draws to idata (posterior_predictive, in the NetCDF).
        summary["ppc"] = posterior_predictive_summary(model, idata, seed=seed)
        if compare and "type_domain" in data.active:
            spec2 = replace(spec, terms={**spec.terms, "type_domain": False})
            data2 = prepare(cells, spec2)
            model2 = build_effects_model(data2, spec2)
            idata2 = sample(
                model2,
                draws=draws,
                tune=tune,
                chains=chains,
                seed=seed,
                sampler=sampler,
                target_accept=target_accept,
            )
            diag2 = diagnose(idata2, var_names=reported_vars(model2))
            loo2, loo_reduced = loo_summary(model2, idata2)
            diff = loo_full.elpd_loo - loo_reduced.elpd_loo
            # SE of the difference from the pointwise differences (as arviz.compare does).
            pw = np.asarray(loo_full.loo_i) - np.asarray(loo_reduced.loo_i)
            se_diff = float(np.sqrt(pw.size * np.var(pw)))
            summary["loo"].update(
                {
                    "without_type_domain": loo2,
                    "without_type_domain_passed": diag2.passed,
                    "elpd_diff_full_minus_without": float(diff),
                    "se_diff": se_diff,
                    "preferred": (
                        "with type x domain"
                        if diff > 2 * se_diff
                        else "without type x domain"
                        if diff < -2 * se_diff
                        else "no clear difference (|elpd diff| < 2 SE)"
                    ),
                }
            )
    seconds = time.perf_counter() - t0
    summary["sampler"] = sampler_record(idata)
    # The spec as fitted: every prior explicit, default ones widened by data.prior_scale.
    return EffectsFit(
        idata=idata,
        model=model,
        data=data,
        spec=resolve_priors(spec, data.prior_scale),
        diagnostics=diag,
        summary=summary,
        seconds=seconds,
    )


def fit_effects(
    con,
    *,
    post_condition: str = "plain",
    base_condition: str | None = None,
    models: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
    spec: EffectsSpec | None = None,
    netcdf_dir: str | Path | None = None,
    name: str | None = None,
    **fit_kw,
) -> EffectsFit:
    """Cells from the warehouse -> :func:`fit_cells` -> ``fits``/``fit_params`` + NetCDF.

    Nothing is written when the fit misses its gates (unless
    ``allow_failure=True``, then it is stored with ``passed = false``).
    """
    from .cells import build_cells, with_scale
    from .store import save_fit

    spec = spec or EffectsSpec()
    base_condition = base_condition or post_condition
    cells = with_scale(
        build_cells(
            con,
            post_condition=post_condition,
            base_condition=base_condition,
            models=models,
            experiments=experiments,
        ),
        spec.scale,
    )
    fit = fit_cells(cells, spec, **fit_kw)
    selection = {
        "models": list(models) if models else None,
        "experiments": list(experiments) if experiments else None,
        "post_condition": post_condition,
        "base_condition": base_condition,
        "pairs": fit.data.coords["pair"],
        "runs": sorted(
            {int(r) for r in pd.concat([cells.post_run_id, cells.base_run_id]).dropna()}
        ),
        "n_cells": fit.data.n_cells,
        "n_experiments": len(fit.data.coords["experiment"]),
    }
    condition = (
        post_condition
        if post_condition == base_condition
        else f"{post_condition} vs {base_condition}"
    )
    fit.fit_id = save_fit(
        con,
        kind="effects",
        idata=fit.idata,
        spec=spec.to_dict(),
        priors=fit.spec.all_priors(),
        selection=selection,
        condition=condition,
        scale=spec.scale,
        sampler=fit.summary["sampler"],
        diagnostics=fit.diagnostics,
        summary=fit.summary,
        seconds=fit.seconds,
        netcdf_dir=netcdf_dir,
        var_names=reported_vars(fit.model),
        labels=LABELS,
        name=name,
    )
    return fit
