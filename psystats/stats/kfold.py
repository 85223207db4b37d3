"""K-fold cross-validation of stored fits: the remedy when PSIS-LOO's Pareto k is high.

PSIS-LOO approximates each leave-one-out predictive density by importance
sampling the full posterior; when an observation's Pareto k exceeds 0.7 the
approximation is unreliable (Vehtari, Gelman & Gabry 2017).  K-fold
cross-validation instead *refits* the model K times, each time without one
fold of observations, and computes each held-out observation's log
predictive density exactly from the refit's draws:

    elpd_i = log( 1/S * sum_s p(y_i | theta_s^(-k(i))) )

with S posterior draws of the refit that did not see fold k(i).  Summed over
the observations this is ``elpd_kfold``; its standard error is
sqrt(n * var(elpd_i)).  Folds are drawn once (seeded) over the observation
labels, so every fit compared sees the same folds.

A fold is left out by giving its cells an infinite measurement error (a
standard error of :data:`LEFT_OUT_SE`): every cell and group level stays in
the model, so a pair whose cells are all held out is predicted as a new
pair from its group distribution, and nothing about the held-out values
reaches the refit.  The held-out densities are then evaluated with the
cells' real standard errors.

Available for ``effects`` and ``formula`` fits (:data:`KFOLD_KINDS`): their
likelihood is a normal with a known per-cell standard error.  The effects
refits rebuild the cells from the warehouse with the fit's selection and
refuse when they no longer equal the fitted values; a formula fit carries
its cells in its NetCDF.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from psystats.warehouse.errors import WarehouseError

KFOLD_KINDS = ("effects", "formula")
LEFT_OUT_SE = 1e6  # a cell's SE while its fold is held out: its likelihood is flat


@dataclass
class Refittable:
    """What a K-fold refit needs of one stored fit."""

    labels: list[str]  # one per observation, as in the fit's pointwise LOO
    observed: np.ndarray
    model_without: Callable[[np.ndarray], Any]  # held-out mask -> the PyMC model to sample
    pointwise: Callable[[Any], np.ndarray]  # refit idata -> (chain, draw, obs), real SEs
    sampling: dict[str, Any]  # draws, tune, chains, seed, sampler, target_accept


@dataclass
class KFoldResult:
    """``elpd_i`` per observation, the total and its SE, and how the refits went."""

    elpd_i: np.ndarray
    elpd: float
    se: float
    p: float  # lpd of the full fit minus elpd_kfold: the effective number of parameters
    k: int
    notes: list[str]


def folds(labels: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) of each observation: a seeded permutation of the sorted labels,
    dealt out in turn, so the folds depend only on which observations there are."""
    labels = [str(x) for x in labels]
    n = len(labels)
    if not 2 <= k <= n:
        raise WarehouseError(
            f"--kfold {k}: K must be between 2 and {n}, the number of observations"
        )
    order = sorted(range(n), key=lambda i: labels[i])
    perm = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=int)
    for pos, i in enumerate(perm):
        out[order[i]] = pos % k
    return out


def refittable(con, row: dict, idata, stored: dict) -> Refittable:
    """The K-fold adapter of a stored fit (effects or formula); ``stored``: the labels and
    values of the observations its pointwise LOO names (the refits must see the same)."""
    kind = row["kind"]
    if kind == "formula":
        ref = _formula_refittable(row, idata)
    elif kind == "effects":
        ref = _effects_refittable(con, row, idata)
    else:
        raise WarehouseError(
            f"fit {row['fit_id']} is a {kind!r} fit: K-fold refits are available for "
            f"{' and '.join(KFOLD_KINDS)} fits only"
        )
    check_same_data(row, ref.labels, ref.observed, stored)
    return ref


def kfold(ref: Refittable, fold_of: np.ndarray, *, fit_id: int, full_lpd: float) -> KFoldResult:
    """Refit once per fold without it; the held-out observations' log predictive densities."""
    from scipy.special import logsumexp

    from .pipeline import run_fit

    k = int(fold_of.max()) + 1
    elpd_i = np.full(len(ref.labels), np.nan)
    notes: list[str] = []
    for f in range(k):
        held = fold_of == f
        # The one pipeline, without its checks: the same gates and retry rule as any fit
        # (a miss is reported once, in the notes, not also logged).
        with _quiet("psystats.stats.sampling"):
            result = run_fit(
                ref.model_without(held),
                kind="kfold",
                sampling={**ref.sampling, "seed": int(ref.sampling.get("seed", 0)) + 1 + f},
                allow_failure=True,
                checks=False,
            )
        idata, diag = result.idata, result.diagnostics
        if not diag.passed:
            notes.append(
                f"fit {fit_id}, fold {f + 1} of {k}: the refit missed its gates "
                f"({'; '.join(diag.problems)}); its held-out densities are less certain"
            )
        ll = ref.pointwise(idata)  # (chain, draw, obs)
        flat = ll.reshape(-1, ll.shape[-1])[:, held]
        elpd_i[held] = logsumexp(flat, axis=0) - np.log(flat.shape[0])
    n = elpd_i.size
    total = float(elpd_i.sum())
    return KFoldResult(
        elpd_i=elpd_i,
        elpd=total,
        se=float(np.sqrt(n * np.var(elpd_i))),
        p=float(full_lpd - total),
        k=k,
        notes=notes,
    )


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    lg = logging.getLogger(logger)
    old = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(old)


def sampling_of(row: dict) -> dict[str, Any]:
    """The stored fit's own sampler settings (the refits repeat them)."""
    s = row.get("sampler") or {}
    keys = ("draws", "tune", "chains", "seed", "target_accept")
    out = {k: s[k] for k in keys if s.get(k) is not None}
    out["sampler"] = s.get("sampler") if s.get("sampler") in ("nutpie", "pymc") else "nutpie"
    return out


def pointwise_loglik(model, idata, name: str) -> np.ndarray:
    """log p(y_i | theta_s) of observed variable ``name`` as (chain, draw, obs)."""
    import pymc as pm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll = pm.compute_log_likelihood(
            idata, model=model, var_names=[name], extend_inferencedata=False, progressbar=False
        )
    da = ll[name]
    return np.asarray(da.values, dtype=float).reshape(da.sizes["chain"], da.sizes["draw"], -1)


def check_same_data(row: dict, labels: Sequence[str], y: np.ndarray, stored) -> None:
    """Refuse when rebuilt observations differ from the ones the fit stored."""
    got = dict(zip(map(str, labels), np.asarray(y, dtype=float)))
    want = dict(zip(map(str, stored["labels"]), np.asarray(stored["values"], dtype=float)))
    same = set(got) == set(want) and all(np.isclose(got[k], want[k], rtol=1e-9) for k in want)
    if not same:
        raise WarehouseError(
            f"fit {row['fit_id']}: the warehouse's cells no longer equal the ones it was fitted "
            "to (new or replaced scores since?), so it cannot be refitted fold by fold; refit "
            "it first"
        )


def _effects_refittable(con, row: dict, idata) -> Refittable:
    import pymc as pm

    from .cells import build_cells, with_scale
    from .effects_design import prepare
    from .effects_model import build_effects_model
    from .effects_spec import EffectsSpec

    sel = row.get("selection") or {}
    cells = with_scale(
        build_cells(
            con,
            post_condition=sel.get("post_condition", "plain"),
            base_condition=sel.get("base_condition"),
            models=sel.get("models"),
            experiments=sel.get("experiments"),
        ),
        row.get("scale") or "nats",
    )
    # The priors exactly as fitted (autoscaling already applied and recorded).
    spec = EffectsSpec.from_dict({**row["spec"], "priors": row["priors"], "autoscale": False})
    data = prepare(cells, spec)
    model = build_effects_model(data, spec)
    labels = [str(c) for c in model.coords["cell"]]
    y = data.cells["y"].to_numpy(float)
    se = data.cells["se"].to_numpy(float)

    def model_without(held: np.ndarray):
        pm.set_data({"se": np.where(held, LEFT_OUT_SE, se)}, model=model)
        return model

    def pointwise(refit) -> np.ndarray:
        pm.set_data({"se": se}, model=model)
        return pointwise_loglik(model, refit, "y")

    return Refittable(labels, y, model_without, pointwise, sampling_of(row))


def _formula_refittable(row: dict, idata) -> Refittable:
    """A formula fit's cells from its NetCDF, the same formula and priors; a held-out fold's
    SEs set to :data:`LEFT_OUT_SE` (the known-SE family reads them as constants)."""
    from .formula import build_formula_model, stored_frame, used_priors

    spec = row["spec"]
    formula, priors = spec["formula"], spec.get("priors") or None
    frame = stored_frame(idata)
    full = build_formula_model(frame, formula, priors=priors)
    response = full.response_component.response.name
    se = frame["se"].to_numpy(float)

    def model_without(held: np.ndarray):
        model = build_formula_model(
            frame.assign(se=np.where(held, LEFT_OUT_SE, se)), formula, priors=priors
        )
        # Bambi's default priors read the predictors, not the SEs: the refit's are the fit's.
        if used_priors(model) != used_priors(full):
            raise WarehouseError(
                f"fit {row['fit_id']}: the refits' priors differ from the fit's; K-fold would "
                "compare another model"
            )
        return model.backend.model

    def pointwise(refit) -> np.ndarray:
        return pointwise_loglik(full.backend.model, refit, response)

    labels = [f"{p} / {e}" for p, e in zip(frame["pair"], frame["experiment"])]
    return Refittable(
        labels, frame["mean"].to_numpy(float), model_without, pointwise, sampling_of(row)
    )
