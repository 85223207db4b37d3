"""Small pieces shared by the generations, persona and accuracy analyses.

Reading the warehouse for them (models, latest complete runs, per-participant
means), the optional log-size term, and the ``fit_params.coords`` of
variables indexed by a flattened (family, generation) dimension
(:func:`generation_coords`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.sql import where_clause

MODEL_COLUMNS = [
    "name",
    "family",
    "generation",
    "generation_order",
    "n_params",
    "post_training",
    "base_model",
]


def load_models(con) -> pd.DataFrame:
    """The ``models`` table (the columns the analyses use), one row per model."""
    cur = con.execute(f"SELECT {', '.join(MODEL_COLUMNS)} FROM models ORDER BY name")
    return pd.DataFrame(cur.fetchall(), columns=MODEL_COLUMNS)


def latest_participant_means(
    con,
    *,
    condition: str,
    models: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-participant mean NLL per response (``stats.data.participant_means``)."""
    from .data import participant_means

    return participant_means(con, condition=condition, models=models, experiments=experiments)


def cell_label(family: Any, generation: Any) -> str:
    """Readable label of a (family, generation) element, e.g. ``qwen 2.5``."""
    return f"{family} {generation}"


def log_size_term(cells: pd.DataFrame, keys: list[str], model_col: str):
    """Centred log parameter count per cell, if the data can separate size from the levels.

    Returns ``((x, centre), why)`` or ``(None, why)``.  Size enters only when
    every model has ``n_params`` and some group (``keys``, e.g. family and
    generation) holds models of different sizes; otherwise a size slope would
    be confounded with the levels it sits beside.
    """
    if not len(cells):
        return None, "no cells"
    if cells["n_params"].isna().any():
        missing = sorted(set(cells.loc[cells["n_params"].isna(), model_col]))
        return None, f"n_params unknown for {', '.join(missing)}"
    sizes = cells.groupby(keys)["n_params"].nunique()
    if not (sizes >= 2).any():
        return None, f"no {' and '.join(keys)} holds models of different sizes"
    logp = np.log(cells["n_params"].to_numpy(float))
    per_model = cells.drop_duplicates(model_col)
    centre = float(np.log(per_model["n_params"].to_numpy(float)).mean())
    return (logp - centre, centre), f"log(n_params) centred at {np.exp(centre):.3g} parameters"


def resolve_prior_scales(given: Any, auto: dict[str, float], what: str) -> dict[str, float]:
    """Prior scales of a priors dataclass ``given``, each ``None`` replaced by ``auto[name]``.

    Raises :class:`WarehouseError` naming any scale that is not positive.
    """
    from dataclasses import asdict

    from psystats.warehouse.errors import WarehouseError

    out = {k: (auto[k] if v is None else float(v)) for k, v in asdict(given).items()}
    bad = [k for k, v in out.items() if not (v > 0)]
    if bad:
        raise WarehouseError(f"{what} priors must be positive: {', '.join(bad)}")
    return out


def prob(mask) -> float:
    """Posterior probability of an event given as a boolean array over draws."""
    return float(np.mean(np.asarray(mask, dtype=bool)))


def generation_coords(
    generations: pd.DataFrame, dims: Sequence[str]
) -> dict[str, dict[str, dict[str, str]]]:
    """``fit_params.coords`` for dimensions that flatten (family, generation) into one label.

    The generations variables are indexed by one flattened dimension (families
    have different generations, so a dense grid would hold unestimable holes)
    whose values are :func:`cell_label`; the contract promises
    ``{"family": f, "generation": g}`` coords.  Pass the result to
    ``store.save_fit(element_coords=...)``.
    """
    per_label = {
        cell_label(f, g): {"family": str(f), "generation": str(g)}
        for f, g in zip(generations["family"], generations["generation"])
    }
    return {dim: per_label for dim in dims}


# --------------------------------------------------------------------------- simulation


def responses_frame(con, experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """response_id, participant_key, experiment, text of the warehouse's responses."""
    from psystats.warehouse.errors import WarehouseError

    where, params = where_clause({"experiment": experiments})
    cur = con.execute(
        "SELECT response_id, participant_key, experiment, text FROM responses "
        f"{where} ORDER BY response_id",
        params,
    )
    df = pd.DataFrame(
        cur.fetchall(), columns=["response_id", "participant_key", "experiment", "text"]
    )
    if df.empty:
        raise WarehouseError(
            "the warehouse has no responses to simulate scores for: ingest "
            "studies or call stats.simulate.add_synthetic_experiments() first"
        )
    return df


def grouped_normal_logp(y, mu, var, group: np.ndarray, n_groups: int, sigma):
    """Log density of cells y ~ N(mu + x_group, var) with x_g ~ N(0, sigma^2) integrated out.

    The exact marginal (a multivariate normal whose covariance is
    diag(var) + sigma^2 Z Z^T, Z the cell-to-group indicator), evaluated per
    group in closed form (Woodbury / matrix determinant lemma), so a random
    intercept over groups costs one scalar parameter and no funnel:

        sum_g [ -1/2 sum_c (log 2 pi v_c + r_c^2 / v_c)
                - 1/2 log(1 + sigma^2 A_g) + sigma^2 B_g^2 / (2 (1 + sigma^2 A_g)) ]

    with r = y - mu, A_g = sum_{c in g} 1/v_c, B_g = sum_{c in g} r_c / v_c.
    Works on numpy arrays and PyTensor tensors alike.
    """
    import pytensor.tensor as pt

    r = y - mu
    w = 1.0 / var
    A = pt.zeros(n_groups)
    A = pt.inc_subtensor(A[group], w)
    B = pt.zeros(n_groups)
    B = pt.inc_subtensor(B[group], r * w)
    s2 = sigma**2
    return (
        -0.5 * pt.sum(pt.log(2 * np.pi * var) + r**2 * w)
        - 0.5 * pt.sum(pt.log1p(s2 * A))
        + 0.5 * pt.sum(s2 * B**2 / (1.0 + s2 * A))
    )


def crossed_normal_logp(y, mu, var, factors: Sequence[tuple[np.ndarray, int, Any]]):
    """Log density of cells y ~ N(mu + sum_f x_f[level_f(c)], var), x_f ~ N(0, sigma_f^2) iid,
    with every random intercept integrated out exactly.

    ``factors``: (level index per cell, number of levels, sigma) per crossed
    factor (e.g. model and experiment).  The covariance is
    D + Z Lambda Z^T (D = diag(var), Z the stacked indicators, Lambda the
    sigma_f^2 on the diagonal); with L = Lambda^(1/2) and
    K = I + L Z^T D^-1 Z L (k x k, k = total levels),

        log|Sigma| = log|D| + log|K|
        r^T Sigma^-1 r = r^T D^-1 r - b^T K^-1 b,  b = L Z^T D^-1 r

    (matrix determinant lemma and Woodbury, written without Lambda^-1 so a
    sigma of 0 is fine).  Z^T D^-1 Z is assembled by scatter-adds in O(cells)
    and K is k x k, so the cost grows with the number of levels, not cells.
    With one factor this equals :func:`grouped_normal_logp`.
    """
    import pytensor.tensor as pt
    from pytensor.tensor.slinalg import cholesky, solve_triangular

    r = y - mu
    w = 1.0 / var
    sizes = [n for _, n, _ in factors]
    offsets = np.cumsum([0] + sizes)
    k = int(offsets[-1])
    cols = [np.asarray(idx) + off for (idx, _, _), off in zip(factors, offsets[:-1])]
    M = pt.zeros((k, k))
    for ci in cols:
        for cj in cols:
            M = pt.inc_subtensor(M[ci, cj], w)
    zr = pt.zeros(k)
    for ci in cols:
        zr = pt.inc_subtensor(zr[ci], r * w)
    ell = pt.concatenate([pt.ones(n) * s for _, n, s in factors])
    K = pt.eye(k) + ell[:, None] * M * ell[None, :]
    chol = cholesky(K)
    b = ell * zr
    v = solve_triangular(chol, b, lower=True)
    return (
        -0.5 * pt.sum(pt.log(2 * np.pi * var) + r**2 * w)
        - pt.sum(pt.log(pt.diag(chol)))
        + 0.5 * pt.sum(v**2)
    )
