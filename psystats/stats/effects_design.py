"""Cells coded for the effects model: levels, terms the data identify, constraint bases.

:func:`prepare` turns a cell table into :class:`EffectsData`, dropping (with a
message) every term the data cannot inform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError

from .effects_spec import (
    MIN_POOLED_LEVELS,
    MIN_RESIDUAL_DF,
    NO_DOMAIN,
    PRIOR_REFERENCE_SCALE,
    TERMS,
    EffectsSpec,
    prior_scale_for,
    resolve_priors,
)
from .generation_scale import generation_values


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
    # Method-of-moments scale of each grouped term (what chose its parameterisation).
    scale_estimates: dict[str, float] = field(default_factory=dict)
    sigma_cell_fixed: bool = False  # too few cells beyond the location parameters: sigma_cell = 0
    residual_df: int = 0

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


def _n(k: int, noun: str) -> str:
    """``"1 cell"``, ``"3 cells"``: a count with its noun in the right number."""
    return f"{k} {noun}" + ("" if k == 1 else "s")


def _few(names: Sequence[str], k: int = 5) -> str:
    names = list(names)
    return ", ".join(map(str, names[:k])) + (
        f" and {len(names) - k} more" if len(names) > k else ""
    )


def _moment_scales(
    c: pd.DataFrame, designs: dict[str, np.ndarray]
) -> dict[str, tuple[float, float]]:
    """Per grouped term: (moment estimate of its scale, typical SE of one coefficient).

    All terms as fixed effects in one weighted least-squares fit (weights
    1 / (se² + s²), s² the residual variance beyond the cells' own SEs).  A
    term's coefficients in its orthonormal basis are iid N(0, σ²) a priori, so
    mean(b²) - mean(Var b) estimates σ² (truncated at 0).  This is what the
    data say before any prior: σ̂ ≈ 0 means "no such effect here", the case
    in which a centred parameterisation has its funnel.
    """
    y = c["y"].to_numpy(float)
    se2 = c["se"].to_numpy(float) ** 2
    cols = [np.ones((len(y), 1))] + list(designs.values())
    X = np.hstack(cols)
    slices, at = {}, 1
    for term, Z in designs.items():
        slices[term] = slice(at, at + Z.shape[1])
        at += Z.shape[1]
    out: dict[str, tuple[float, float]] = {}
    if X.shape[1] > 2000:  # a dense solve would be slow; keep the safe default
        return {t: (0.0, np.inf) for t in designs}
    s2 = 0.0
    for _ in range(2):  # residual variance, then the weighted fit with it
        w = 1.0 / (se2 + s2)
        XtW = X.T * w
        XtWX = XtW @ X
        cov = np.linalg.pinv(XtWX, hermitian=True)
        b = cov @ (XtW @ y)
        resid = y - X @ b
        # rank(X) = rank(X'WX) for positive weights; the small matrix is cheap.
        dof = len(y) - np.linalg.matrix_rank(XtWX, hermitian=True)
        if dof <= 0:
            break
        s2 = max(0.0, float(np.sum(resid**2) / dof - np.mean(se2)))
    var = np.diag(cov)
    for term, sl in slices.items():
        bt, vt = b[sl], var[sl]
        if bt.size == 0:
            continue
        sig2 = max(0.0, float(np.mean(bt**2) - np.mean(vt)))
        out[term] = (float(np.sqrt(sig2)), float(np.sqrt(np.median(vt))))
    return out


# --------------------------------------------------------------------------- the coded cells


@dataclass
class _Coded:
    """The kept cells coded: one table per pair and per experiment, level names, codes.

    ``size_x`` and ``gen_x`` are the pair-level covariates, filled by their
    term builders (:func:`_size_term`, :func:`_generation_term`).
    """

    cells: pd.DataFrame
    pair_tab: pd.DataFrame
    exp_tab: pd.DataFrame
    coords: dict[str, list[str]]
    pair_type: np.ndarray
    pair_family: np.ndarray
    exp_domain: np.ndarray
    size_x: np.ndarray
    gen_x: np.ndarray
    size_center: float | None = None

    def n(self, level: str) -> int:
        return len(self.coords[level])


@dataclass
class _Terms:
    """Which terms are in the model, which were dropped and why, and the user's messages."""

    active: list[str]
    dropped: dict[str, str]
    messages: list[str]

    def __contains__(self, term: str) -> bool:
        return term in self.active

    def drop(self, term: str, why: str) -> None:
        if term in self.active:
            self.active.remove(term)
            self.dropped[term] = why
            self.messages.append(f"term {term!r} dropped: {why}")


def _with_defaults(cells: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``cells`` with every optional column present (missing: its default)."""
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
        ("release_date", None),
    ):
        if col not in c:
            c[col] = default
    return c


def _usable_cells(c: pd.DataFrame, spec: EffectsSpec, messages: list[str]) -> pd.DataFrame:
    """The cells the likelihood can use; every left-out group is named in ``messages``."""

    def where(mask) -> str:
        return _few(c.loc[mask, "pair"] + " / " + c.loc[mask, "experiment"])

    n_before = len(c)
    bad_n = c["n"].notna() & (c["n"] < spec.min_participants)
    if bad_n.any():
        messages.append(
            f"{int(bad_n.sum())} cell(s) with fewer than {spec.min_participants} "
            f"participant(s) left out (their participant SD is unknown): {where(bad_n)}"
        )
    zero = ~bad_n & (c["se"] == 0)
    if zero.any():
        messages.append(
            f"{int(zero.sum())} cell(s) where every participant's difference is the "
            f"same (zero variance: post and base scored identically?) left out: {where(zero)}"
        )
    nonfinite = (
        ~bad_n & ~zero & ~(np.isfinite(c["y"].astype(float)) & np.isfinite(c["se"].astype(float)))
    )
    if nonfinite.any():
        messages.append(
            f"{int(nonfinite.sum())} cell(s) without a finite mean or standard error "
            f"(e.g. zero pooled SD on the standardised scale) left out: {where(nonfinite)}"
        )
    c = c[~(bad_n | zero | nonfinite)].reset_index(drop=True)
    if c.empty:
        raise WarehouseError(
            f"none of the {n_before} cell(s) can be fitted: " + ("; ".join(messages) or "no data")
        )
    if c.duplicated(["pair", "experiment"]).any():
        raise WarehouseError("the cell table has duplicate (pair, experiment) rows")
    return c


def _code(c: pd.DataFrame, messages: list[str]) -> _Coded:
    """Pair and experiment tables, level names and integer codes of the usable cells."""
    no_dom = c["domain"].isna()
    if no_dom.any():
        exps = sorted(c.loc[no_dom, "experiment"].unique())
        messages.append(
            f"{len(exps)} experiment(s) have no domain in the domain map and form "
            f"the level {NO_DOMAIN!r}: {_few(exps)}"
        )
        c.loc[no_dom, "domain"] = NO_DOMAIN
    pair_tab = (
        c.groupby("pair", sort=True)
        .agg(
            post_training=("post_training", "first"),
            family=("family", "first"),
            n_params=("n_params", "first"),
            generation_order=("generation_order", "first"),
            release_date=("release_date", "first"),
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
    P = len(coords["pair"])
    return _Coded(
        cells=c,
        pair_tab=pair_tab,
        exp_tab=exp_tab,
        coords=coords,
        pair_type=pair_type,
        pair_family=pair_family,
        exp_domain=exp_domain,
        size_x=np.zeros(P),
        gen_x=np.zeros(P),
    )


# --------------------------------------------------------------------------- term builders
# One builder per term decides whether the data identify it (dropping it with the
# reason otherwise) and builds its covariate or its constraint basis; the cell
# design columns of every term come from _CELL_COLUMNS.


def _levels_terms(coded: _Coded, terms: _Terms) -> None:
    """type, family, domain, type x domain: each needs two levels (two of each)."""
    co = coded.coords
    if coded.n("type") < 2:
        terms.drop(
            "type",
            f"every pair has the same post-training type ({co['type'][0]}); "
            "the intercept is that type's effect",
        )
    if coded.n("family") < 2:
        terms.drop("family", f"every pair is in the same family ({co['family'][0]})")
    if coded.n("domain") < 2:
        terms.drop("domain", f"every experiment is in the same domain ({co['domain'][0]})")
    if "type" not in terms or "domain" not in terms:
        terms.drop("type_domain", "it needs at least two types and two domains")


def _size_term(coded: _Coded, terms: _Terms) -> None:
    """Size: log(parameters), centred over pairs; every pair needs its parameter count."""
    if "size" not in terms:
        return
    pair_tab = coded.pair_tab
    npar = pd.to_numeric(pair_tab["n_params"], errors="coerce")
    if npar.isna().any() or (npar <= 0).any():
        terms.drop(
            "size",
            f"parameter count unknown for {_few(pair_tab.loc[npar.isna() | (npar <= 0), 'pair'])} "
            "(set it with `psystats models` or the registry)",
        )
    elif npar.nunique() < 2:
        terms.drop("size", "every pair has the same parameter count")
    else:
        lx = np.log(npar.to_numpy(dtype=float))
        coded.size_center = float(lx.mean())
        coded.size_x = lx - coded.size_center


def _generation_term(coded: _Coded, terms: _Terms, scale: str) -> None:
    """Generation on ``scale`` (:mod:`.generation_scale`), centred within family;
    the per-family slopes (generation_family) need two such families."""
    if "generation" in terms:
        pair_tab = coded.pair_tab
        gen_o = generation_values(
            pair_tab,
            scale,
            names=_pair_models(coded.cells, pair_tab["pair"].tolist()),
            what="every pair's model",
        )
        varying = []
        for f in range(coded.n("family")):
            m = (coded.pair_family == f) & gen_o.notna().to_numpy()
            if m.sum() >= 2 and gen_o[m].nunique() >= 2:
                varying.append(f)
                coded.gen_x[m] = gen_o[m] - gen_o[m].mean()
        if not varying:
            terms.drop("generation", "no family has pairs from two or more generations")
        else:
            unknown = pair_tab.loc[gen_o.isna() & np.isin(coded.pair_family, varying), "pair"]
            if len(unknown):
                terms.messages.append(
                    f"generation unknown for {_few(unknown)}: treated as their "
                    f"family's average generation"
                )
            if len(varying) < 2:
                terms.drop(
                    "generation_family", "only one family has pairs from several generations"
                )
            else:
                coded.coords["generation_family"] = [coded.coords["family"][f] for f in varying]
    if "generation" not in terms:
        terms.drop("generation_family", "there is no generation term")


def _pair_models(cells: pd.DataFrame, pairs: Sequence[str]) -> list[str]:
    """The post-trained model of each pair (the pair's name where the cells lack it)."""
    if "post_model" not in cells:
        return list(pairs)
    post = cells.groupby("pair", sort=True)["post_model"].first()
    return [str(post.get(p, p)) for p in pairs]


def _generation_family_columns(coded: _Coded) -> np.ndarray:
    """Pairs x (families with several generations): the pair's centred generation in its family's column."""
    names = coded.coords["generation_family"]
    gf = np.zeros((len(coded.pair_family), len(names)))
    for j, name in enumerate(names):
        m = coded.pair_family == coded.coords["family"].index(name)
        gf[m, j] = coded.gen_x[m]
    return gf


def _sum_to_zero(k: int) -> np.ndarray:
    return constraint_basis(np.ones((k, 1)))


def _pair_level_design(coded: _Coded, terms: _Terms) -> np.ndarray:
    """Pairs x columns of the intercept and every pair-level term, in basis coordinates."""
    cols = [np.ones((len(coded.pair_type), 1))]
    if "type" in terms:
        cols.append(_indicators(coded.pair_type, coded.n("type")) @ _sum_to_zero(coded.n("type")))
    if "family" in terms:
        F = coded.n("family")
        cols.append(_indicators(coded.pair_family, F) @ _sum_to_zero(F))
    if "size" in terms:
        cols.append(coded.size_x[:, None])
    if "generation" in terms:
        cols.append(coded.gen_x[:, None])
    if "generation_family" in terms:
        gf = _generation_family_columns(coded)
        cols.append(gf @ _sum_to_zero(gf.shape[1]))
    return np.hstack(cols)


def _separable_pair_terms(coded: _Coded, terms: _Terms) -> None:
    """While the pair-level design is rank deficient, drop the least central term."""
    P = len(coded.pair_type)
    for term in ("generation_family", "size", "generation", "family", "type"):
        X = _pair_level_design(coded, terms)
        if np.linalg.matrix_rank(X) == X.shape[1]:
            break
        terms.drop(
            term,
            f"with these {P} pair(s) it cannot be separated from the other pair-level "
            "terms (type, family, size, generation)",
        )
        if term == "generation":
            terms.drop("generation_family", "there is no generation term")
        if term == "type":
            terms.drop("type_domain", "there is no type term")


def _type_domain_basis(coded: _Coded) -> np.ndarray:
    """Sums to zero over domains for each type and over types for each domain."""
    T, D = coded.n("type"), coded.n("domain")
    rows = np.kron(np.eye(T), np.ones((D, 1)))  # sum over domains, per type
    cols = np.kron(np.ones((T, 1)), np.eye(D))  # sum over types, per domain
    return constraint_basis(np.hstack([rows, cols]))


def _single_cells(terms: _Terms, term: str, n_cells: pd.Series, one: str) -> bool:
    """Drop ``term`` (and say so) when each of its levels has a single cell."""
    if n_cells.max() >= 2:
        return False
    terms.drop(
        term,
        f"every {term} has a single cell ({one}), so {term} effects and cell residuals "
        "are the same thing",
    )
    return True


def _kept_basis(terms: _Terms, term: str, constraints: np.ndarray, why_empty: str):
    """The basis of ``constraints``' null space, or None (``term`` dropped) when it is empty."""
    B = constraint_basis(constraints)
    if B.shape[1] == 0:
        terms.drop(term, why_empty)
        return None
    return B


def _experiment_basis(coded: _Coded, terms: _Terms) -> np.ndarray | None:
    """Experiment effects sum to zero within each domain; None (dropped) when unidentified."""
    if _single_cells(terms, "experiment", coded.exp_tab["n_cells"], "one pair"):
        return None
    E, D = coded.n("experiment"), coded.n("domain")
    group = _indicators(coded.exp_domain, D) if "domain" in terms else np.ones((E, 1))
    return _kept_basis(terms, "experiment", group, "every domain has a single experiment")


def _pair_basis(coded: _Coded, terms: _Terms) -> np.ndarray | None:
    """Pair effects: what the pair-level terms leave unexplained (orthogonal to every
    pair-level column: intercept, type, family, size, generation); None when dropped."""
    if _single_cells(terms, "pair", coded.pair_tab["n_cells"], "one experiment"):
        return None
    P, F = len(coded.pair_type), coded.n("family")
    pair_cols: list[np.ndarray] = [np.ones((P, 1))]
    if "type" in terms:
        pair_cols.append(_indicators(coded.pair_type, coded.n("type")))
    if "family" in terms:
        pair_cols.append(_indicators(coded.pair_family, F))
    if "size" in terms:
        pair_cols.append(coded.size_x[:, None])
    if "generation" in terms:
        pair_cols.append(coded.gen_x[:, None])
    if "generation_family" in terms:
        pair_cols.append(_indicators(coded.pair_family, F) * coded.gen_x[:, None])
    return _kept_basis(
        terms,
        "pair",
        np.hstack(pair_cols),
        "the pair-level terms (type, family, size, generation) already describe every pair exactly",
    )


def _constraint_bases(coded: _Coded, terms: _Terms) -> dict[str, np.ndarray]:
    """The constraint basis of every grouped term left in (experiment and pair may drop)."""
    builders = {
        "type": lambda: _sum_to_zero(coded.n("type")),
        "family": lambda: _sum_to_zero(coded.n("family")),
        "domain": lambda: _sum_to_zero(coded.n("domain")),
        "generation_family": lambda: _sum_to_zero(len(coded.coords["generation_family"])),
        "type_domain": lambda: _type_domain_basis(coded),
        "experiment": lambda: _experiment_basis(coded, terms),
        "pair": lambda: _pair_basis(coded, terms),
    }
    bases: dict[str, np.ndarray] = {}
    for term, build in builders.items():
        if term in terms:
            B = build()
            if B is not None:
                bases[term] = B
    return bases


# Each term's cell columns before its basis: (cells x levels) indicators, or the
# covariate of a slope (cells x 1).
_CELL_COLUMNS = {
    "type": lambda k, c: _indicators(c["type_idx"].to_numpy(), k.n("type")),
    "family": lambda k, c: _indicators(c["family_idx"].to_numpy(), k.n("family")),
    "domain": lambda k, c: _indicators(c["domain_idx"].to_numpy(), k.n("domain")),
    "type_domain": lambda k, c: _indicators(
        (c["type_idx"] * k.n("domain") + c["domain_idx"]).to_numpy(), k.n("type") * k.n("domain")
    ),
    "experiment": lambda k, c: _indicators(c["experiment_idx"].to_numpy(), k.n("experiment")),
    "pair": lambda k, c: _indicators(c["pair_idx"].to_numpy(), k.n("pair")),
    "size": lambda k, c: k.size_x[c["pair_idx"].to_numpy()][:, None],
    "generation": lambda k, c: k.gen_x[c["pair_idx"].to_numpy()][:, None],
    "generation_family": lambda k, c: _generation_family_columns(k)[c["pair_idx"].to_numpy()],
}


def _cell_designs(
    coded: _Coded, active: Sequence[str], bases: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Cell-level design matrix (cells x columns) of every active term, in basis coordinates."""
    out = {}
    for term in active:
        cols = _CELL_COLUMNS[term](coded, coded.cells)
        out[term] = cols @ bases[term] if term in bases else cols
    return out


# --------------------------------------------------------------------------- priors and scales


def _autoscale(
    c: pd.DataFrame, spec: EffectsSpec, messages: list[str]
) -> tuple[EffectsSpec, float]:
    """Default priors far narrower than the data: widen them (and say so)."""
    prior_scale = prior_scale_for(c["y"]) if spec.autoscale else 1.0
    if prior_scale > 1.0:
        messages.append(
            f"the cell values (root mean square {prior_scale * PRIOR_REFERENCE_SCALE:.3g}) "
            f"are far beyond the {PRIOR_REFERENCE_SCALE:g} the default priors assume: "
            f"default prior scales multiplied by {prior_scale:.3g} (fits.priors has "
            f"the priors used; set autoscale = false or your own priors to change it)"
        )
    return resolve_priors(spec, prior_scale), prior_scale


def _fixed_scale_terms(
    spec: EffectsSpec, active: Sequence[str], bases: dict[str, np.ndarray], messages: list[str]
) -> set[str]:
    """Terms with too few levels to learn a scale (whose funnel defeats the sampler):
    a fixed-scale prior instead."""
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
    return fixed_scale


def _residual_df(n_cells: int, designs: dict[str, np.ndarray], messages: list[str]) -> int:
    """Cells beyond the mean's own parameters; says so when sigma_cell cannot be learned.

    With fewer than MIN_RESIDUAL_DF left (one cell; two pairs on one experiment)
    sigma_cell is prior only, and its funnel with the intercept makes NUTS
    diverge whatever the settings: it is fixed at 0.
    """
    n_location = 1 + sum(Z.shape[1] for Z in designs.values())
    residual_df = n_cells - n_location
    if residual_df < MIN_RESIDUAL_DF:
        messages.append(
            f"sigma_cell cannot be learned: {_n(n_cells, 'cell')} and "
            f"{_n(n_location, 'location parameter')} leave "
            f"{_n(max(residual_df, 0), 'residual degree')} of freedom "
            f"(at least {MIN_RESIDUAL_DF} needed); sigma_cell is fixed "
            "at 0, so each cell's mean is taken as known up to its standard error and the "
            "intervals describe these cells only"
        )
    return residual_df


def _parameterisation(
    spec: EffectsSpec, active: Sequence[str], scale_estimates: dict[str, tuple[float, float]]
) -> dict[str, bool]:
    """Centred (True) or non-centred, per grouped term, from what the data say about its scale."""
    centred = {}
    for term in ("family", "domain", "type_domain", "experiment", "pair", "generation_family"):
        if term in active:
            if spec.parameterization == "auto":
                sigma_hat, level_se = scale_estimates.get(term, (0.0, np.inf))
                # Centred only when each level is measured much more precisely than
                # the levels spread (then non-centred has the funnel); a scale near
                # zero (an absent effect, the ordinary case) is always non-centred.
                centred[term] = bool(np.isfinite(level_se) and level_se < 0.5 * sigma_hat)
            else:
                centred[term] = spec.parameterization == "centred"
    return centred


def prepare(cells: pd.DataFrame, spec: EffectsSpec | None = None) -> EffectsData:
    """Code the cells, decide which terms the data identify, build constraint bases.

    ``cells`` needs ``pair, experiment, y, se`` and for the optional terms
    ``post_training, family, n_params, generation_order, domain, n``
    (:func:`psystats.stats.cells.with_scale` gives all of them).  Raises
    :class:`WarehouseError` when nothing can be fitted.  Each term's builder
    (:func:`_levels_terms`, :func:`_size_term`, :func:`_generation_term`,
    :func:`_separable_pair_terms`, :func:`_constraint_bases`) drops it, with
    the reason, when the data cannot inform it.
    """
    spec = spec or EffectsSpec()
    messages: list[str] = []
    c = _usable_cells(_with_defaults(cells), spec, messages)
    coded = _code(c, messages)
    terms = _Terms(
        active=[t for t in TERMS if spec.terms[t]],
        dropped={t: "left out by the specification" for t in TERMS if not spec.terms[t]},
        messages=messages,
    )
    _levels_terms(coded, terms)
    _size_term(coded, terms)
    _generation_term(coded, terms, spec.generation_scale)
    _separable_pair_terms(coded, terms)
    bases = _constraint_bases(coded, terms)
    spec, prior_scale = _autoscale(c, spec, messages)
    active = terms.active
    fixed_scale = _fixed_scale_terms(spec, active, bases, messages)
    designs = _cell_designs(coded, active, bases)
    residual_df = _residual_df(len(c), designs, messages)
    scale_estimates = _moment_scales(c, designs)
    return EffectsData(
        cells=c,
        coords=coded.coords,
        active=active,
        dropped=terms.dropped,
        messages=messages,
        pair_type=coded.pair_type,
        pair_family=coded.pair_family,
        size_x=coded.size_x,
        generation_x=coded.gen_x,
        experiment_domain=coded.exp_domain,
        bases=bases,
        centred=_parameterisation(spec, active, scale_estimates),
        size_center=coded.size_center,
        fixed_scale=fixed_scale,
        prior_scale=prior_scale,
        scale_estimates={k: v[0] for k, v in scale_estimates.items()},
        sigma_cell_fixed=residual_df < MIN_RESIDUAL_DF,
        residual_df=int(residual_df),
    )
