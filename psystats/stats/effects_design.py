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
    DAYS_PER_YEAR,
    MIN_POOLED_LEVELS,
    MIN_RESIDUAL_DF,
    NO_DOMAIN,
    PRIOR_REFERENCE_SCALE,
    TERMS,
    EffectsSpec,
    prior_scale_for,
    resolve_priors,
)


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


def _cell_designs(
    c: pd.DataFrame,
    active: Sequence[str],
    bases: dict[str, np.ndarray],
    coords: dict[str, list[str]],
    size_x: np.ndarray,
    gen_x: np.ndarray,
    pair_family: np.ndarray,
) -> dict[str, np.ndarray]:
    """Cell-level design matrix (cells x columns) of every active term, in basis coordinates."""
    pi = c["pair_idx"].to_numpy()
    T, D = len(coords["type"]), len(coords["domain"])
    codes = {
        "type": (c["type_idx"].to_numpy(), T),
        "family": (c["family_idx"].to_numpy(), len(coords["family"])),
        "domain": (c["domain_idx"].to_numpy(), D),
        "type_domain": ((c["type_idx"] * D + c["domain_idx"]).to_numpy(), T * D),
        "experiment": (c["experiment_idx"].to_numpy(), len(coords["experiment"])),
        "pair": (pi, len(coords["pair"])),
    }
    out = {}
    for term in active:
        if term in codes and term in bases:
            out[term] = _indicators(*codes[term]) @ bases[term]
        elif term == "size":
            out[term] = size_x[pi][:, None]
        elif term == "generation":
            out[term] = gen_x[pi][:, None]
        elif term == "generation_family" and term in bases:
            names = coords["generation_family"]
            gf = np.zeros((len(pair_family), len(names)))
            for j, name in enumerate(names):
                m = pair_family == coords["family"].index(name)
                gf[m, j] = gen_x[m]
            out[term] = gf[pi] @ bases[term]
    return out


def _years_since_first_release(cells: pd.DataFrame, pair_tab: pd.DataFrame) -> pd.Series:
    """Per pair (``pair_tab`` order): years from its family's first release date in the data.

    The pair's date is its post-trained model's ``release_date`` (the base's when
    the post model has none).  The origin drops out when the design centres the
    scale within each family; it only makes the values readable.  Refuses, naming
    the models, when a pair has no date: treating it as its family's average, as
    the other scales do for an unknown generation, would put an invented date
    into a slope whose unit is a year.
    """
    day = pd.to_datetime(pair_tab["release_date"], errors="coerce")
    if day.isna().any():
        missing = pair_tab.loc[day.isna(), "pair"].tolist()
        names = missing
        if "post_model" in cells:
            post = cells.groupby("pair", sort=True)["post_model"].first()
            names = [str(post.get(p, p)) for p in missing]
        raise WarehouseError(
            f"--generation-scale date needs the release date of every pair's model; "
            f"{_n(len(names), 'model')} without one: {_few(names, 10)}. Set each with "
            f"`psystats models set {names[0]} release_date=YYYY-MM-DD` (YYYY-MM will do), "
            "or fit with --generation-scale rank"
        )
    first = day.groupby(pair_tab["family"]).transform("min")
    return (day - first).dt.days / DAYS_PER_YEAR


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
        ("release_date", None),
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

    # Generation: generation_order (or its rank within family, or the release date)
    # centred within family.
    gen_x = np.zeros(P)
    gen_o = pd.to_numeric(pair_tab["generation_order"], errors="coerce")
    if spec.generation_scale == "rank":
        # One step per successive generation of the family, whatever the version numbers
        # (3 -> 3.1 -> 3.2 and 2 -> 2.5 -> 3 both become 0 -> 1 -> 2).
        gen_o = gen_o.groupby(pair_tab["family"]).rank(method="dense") - 1
    elif spec.generation_scale == "date" and "generation" in active:
        gen_o = _years_since_first_release(c, pair_tab)
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
            pair_cols: list[np.ndarray] = [np.ones((P, 1))]
            if "type" in active:
                pair_cols.append(_indicators(pair_type, T))
            if "family" in active:
                pair_cols.append(_indicators(pair_family, F))
            if "size" in active:
                pair_cols.append(size_x[:, None])
            if "generation" in active:
                pair_cols.append(gen_x[:, None])
            if "generation_family" in active:
                pair_cols.append(_indicators(pair_family, F) * gen_x[:, None])
            B = constraint_basis(np.hstack(pair_cols))
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

    # Centred or non-centred, per grouped term, from what the data say about its scale.
    designs = _cell_designs(c, active, bases, coords, size_x, gen_x, pair_family)

    # sigma_cell is the spread of the cells around everything else: it needs cells
    # beyond the mean's own parameters.  With fewer than MIN_RESIDUAL_DF left (one
    # cell; two pairs on one experiment) it is prior only, and its funnel with the
    # intercept makes NUTS diverge whatever the settings: fix it at 0 and say so.
    n_location = 1 + sum(Z.shape[1] for Z in designs.values())
    residual_df = len(c) - n_location
    sigma_cell_fixed = residual_df < MIN_RESIDUAL_DF
    if sigma_cell_fixed:
        messages.append(
            f"sigma_cell cannot be learned: {_n(len(c), 'cell')} and "
            f"{_n(n_location, 'location parameter')} leave "
            f"{_n(max(residual_df, 0), 'residual degree')} of freedom "
            f"(at least {MIN_RESIDUAL_DF} needed); sigma_cell is fixed "
            "at 0, so each cell's mean is taken as known up to its standard error and the "
            "intervals describe these cells only"
        )
    scale_estimates = _moment_scales(c, designs)
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
        scale_estimates={k: v[0] for k, v in scale_estimates.items()},
        sigma_cell_fixed=sigma_cell_fixed,
        residual_df=int(residual_df),
    )
