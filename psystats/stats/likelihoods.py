"""Observed likelihoods for the persona, accuracy and generations analyses.

Two kinds of likelihood, both observed PyMC variables (so that
``pm.sample_posterior_predictive`` and PSIS-LOO work), never a ``pm.Potential``:

* :func:`marginal_normal`: cells y ~ N(mu + sum_f x_f[level_f(c)], var) with
  every crossed Gaussian random intercept x_f ~ N(0, sigma_f^2) integrated out
  exactly.  The cells are then jointly multivariate normal with covariance
  Sigma = diag(var) + sum_f sigma_f^2 Z_f Z_f^T; the density is
  :func:`crossed_normal_logp` (Woodbury, cost
  in levels not cells) and a replicate is drawn as mu + sum_f sigma_f z_f[level]
  + sqrt(var) e (fresh intercepts: new experiments, new models).
* :func:`binomial_logit`: hits ~ Binomial(n, logistic(eta)) whose log density
  is the binomial one written with ``gammaln`` so that fractional counts
  (top-1 ties counted 1/k, expected hits under sampling) are allowed.

The marginal normal does not factorise over cells, so its pointwise
log-likelihood for PSIS-LOO is the exact leave-one-out conditional density
(Bürkner, Gabry & Vehtari 2020, "Efficient leave-one-out cross-validation for
Bayesian non-factorized normal and Student-t models"): with
g = Sigma^-1 (y - mu) and cbar_ii = [Sigma^-1]_ii,

    log p(y_i | y_-i, theta) = -1/2 log(2 pi) + 1/2 log cbar_ii - 1/2 g_i^2 / cbar_ii,

computed per posterior draw by :func:`marginal_normal_loo` (Woodbury again, so
no n x n matrix is ever formed) and stored as a ``log_likelihood`` group
(chain, draw, cell) by :func:`pointwise_log_likelihood`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Each factor: (level index per cell, number of levels, sigma).
Factor = tuple[np.ndarray, int, Any]


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


def marginal_normal(
    name: str,
    mu: Any,
    var: Any,
    factors: Sequence[Factor],
    observed: np.ndarray,
    *,
    dims: str | None = None,
    closed_form_one_factor: bool = False,
):
    """An observed multivariate normal with crossed random intercepts integrated out.

    ``mu`` and ``var`` are length-n tensors (or arrays) of the cells' means and
    sampling variances (residual scale included), ``factors`` the crossed
    intercepts (level index per cell, number of levels, sigma tensor).  With
    ``closed_form_one_factor`` a single factor is evaluated by
    :func:`grouped_normal_logp` (per-group closed form) instead of the
    general Woodbury form; both are the same density.  The level indices
    are recorded on the variable (``tag.psystats_factors``) for
    :func:`pointwise_log_likelihood`.
    """
    import pymc as pm
    import pytensor.tensor as pt

    idx = [np.asarray(i, dtype=int) for i, _, _ in factors]
    sizes = [int(n) for _, n, _ in factors]
    sigmas = [pt.as_tensor(s) for _, _, s in factors]
    n_f = len(factors)
    if n_f == 0:
        raise ValueError("marginal_normal needs at least one factor (else use pm.Normal)")

    def logp(value, mu, var, *sig):
        if closed_form_one_factor and n_f == 1:
            return grouped_normal_logp(value, mu, var, idx[0], sizes[0], sig[0])
        return crossed_normal_logp(value, mu, var, list(zip(idx, sizes, sig)))

    def random(mu, var, *sig, rng=None, size=None):
        # A fresh draw of every intercept, then independent cell noise.
        rng = rng or np.random.default_rng()
        batch = tuple(size or ())
        if batch and batch[-1:] == (len(idx[0]),):
            batch = batch[:-1]  # some PyMC paths pass the full shape
        y = np.broadcast_to(np.asarray(mu, float), batch + (len(idx[0]),)).copy()
        for i, n, s in zip(idx, sizes, sig):
            x = rng.normal(size=batch + (n,)) * np.asarray(s, float)[..., None]
            y += x[..., i]
        y += np.sqrt(np.asarray(var, float)) * rng.normal(size=y.shape)
        return y

    mu_t = pt.as_tensor(mu).astype("float64")
    var_t = pt.as_tensor(var).astype("float64")
    mu_t = pt.broadcast_to(mu_t, (len(idx[0]),)) if mu_t.ndim == 0 else mu_t
    var_t = pt.broadcast_to(var_t, (len(idx[0]),)) if var_t.ndim == 0 else var_t
    signature = "(n),(n)" + ",()" * n_f + "->(n)"
    rv = pm.CustomDist(
        name,
        mu_t,
        var_t,
        *sigmas,
        logp=logp,
        random=random,
        signature=signature,
        observed=np.asarray(observed, dtype=float),
        dims=dims,
    )
    rv.tag.psystats_factors = [(i, n) for i, n in zip(idx, sizes)]
    return rv


def binomial_logit(name: str, eta: Any, n: np.ndarray, observed: np.ndarray, *, dims=None):
    """Observed hits ~ Binomial(n, logistic(eta)), fractional counts allowed.

    The log density k log q + (n - k) log(1 - q) + log C(n, k), with log q =
    -softplus(-eta) (stable for large |eta|) and C written with ``gammaln``
    (the continuous extension, so ties counted 1/k and expected hits enter as
    they are).  Replicates are integer binomial draws.
    """
    import pymc as pm
    import pytensor.tensor as pt

    def logp(value, eta, n):
        return (
            -value * pt.softplus(-eta)
            - (n - value) * pt.softplus(eta)
            + pt.gammaln(n + 1)
            - pt.gammaln(value + 1)
            - pt.gammaln(n - value + 1)
        )

    def random(eta, n, rng=None, size=None):
        rng = rng or np.random.default_rng()
        q = 1.0 / (1.0 + np.exp(-np.asarray(eta, float)))
        return rng.binomial(np.asarray(n).astype(np.int64), q, size=size).astype(float)

    return pm.CustomDist(
        name,
        pt.as_tensor(eta).astype("float64"),
        pt.as_tensor(np.asarray(n, dtype=float)),
        logp=logp,
        random=random,
        observed=np.asarray(observed, dtype=float),
        dtype="float64",
        dims=dims,
    )


# --------------------------------------------------------------------------- LOO


def _indicators(factors: Sequence[tuple[np.ndarray, int]]):
    """Sparse stacked indicator Z (n x k) and the pair map P (n x k^2) of each cell's levels."""
    from scipy import sparse

    n = len(factors[0][0])
    offsets = np.cumsum([0] + [k for _, k in factors])
    k = int(offsets[-1])
    cols = [np.asarray(i) + off for (i, _), off in zip(factors, offsets[:-1])]
    rows = np.arange(n)
    Z = sparse.csr_matrix(
        (np.ones(n * len(cols)), (np.tile(rows, len(cols)), np.concatenate(cols))), shape=(n, k)
    )
    pr, pc = [], []
    for ci in cols:
        for cj in cols:
            pr.append(rows)
            pc.append(ci * k + cj)
    # Duplicate (row, col) entries add up, as they must (a level pair seen twice).
    P = sparse.csr_matrix(
        (np.ones(n * len(cols) ** 2), (np.concatenate(pr), np.concatenate(pc))), shape=(n, k * k)
    )
    return Z, P, k


def marginal_normal_loo(
    y: np.ndarray,
    mu: np.ndarray,
    var: np.ndarray,
    sigmas: np.ndarray,
    factors: Sequence[tuple[np.ndarray, int]],
    *,
    chunk: int = 256,
) -> np.ndarray:
    """Exact leave-one-out log densities log p(y_i | y_-i, theta) of :func:`marginal_normal`.

    ``mu``, ``var``: (draws, n); ``sigmas``: (draws, factors); ``factors``:
    (level index per cell, number of levels).  Returns (draws, n).  With
    w = 1/var, U = Z L (L the sigma of each level) and K = I + U^T W U,
    Sigma^-1 = W - W U K^-1 U^T W, so g = Sigma^-1 r and diag(Sigma^-1) need
    one k x k inverse per draw (k = total levels), never an n x n matrix.
    """
    y = np.asarray(y, float)
    mu = np.atleast_2d(np.asarray(mu, float))
    var = np.broadcast_to(np.atleast_2d(np.asarray(var, float)), mu.shape)
    sigmas = np.asarray(sigmas, float).reshape(mu.shape[0], len(factors))
    from threadpoolctl import threadpool_limits

    Z, P, k = _indicators(factors)
    sizes = [n for _, n in factors]
    out = np.empty_like(mu)
    # Many small k x k inverses: a multi-threaded BLAS only adds contention (measured 50x
    # slower with 2 threads on a busy 2-core machine; benchmarks/bench_exact_loo.py).
    with threadpool_limits(1, user_api="blas"):
        for a in range(0, mu.shape[0], chunk):
            _loo_chunk(y, mu, var, sigmas, slice(a, a + chunk), Z, P, k, sizes, out)
    return out


def _loo_chunk(
    y: np.ndarray,
    mu: np.ndarray,
    var: np.ndarray,
    sigmas: np.ndarray,
    sl: slice,
    Z: Any,
    P: Any,
    k: int,
    sizes: list[int],
    out: np.ndarray,
) -> None:
    """:func:`marginal_normal_loo` for the draws ``sl`` (written into ``out[sl]``)."""
    w = 1.0 / var[sl]
    r = y - mu[sl]
    ell = np.repeat(sigmas[sl], sizes, axis=1)  # (S, k)
    b = ell * np.asarray((Z.T @ (w * r).T).T)
    if len(sizes) == 1:
        # One factor: Z^T W Z is diagonal, so K is too (no k x k inverse).
        kd = 1.0 + ell**2 * np.asarray((Z.T @ w.T).T)
        Uh = np.asarray((Z @ (ell * b / kd).T).T)
        diag = np.asarray((Z @ (ell**2 / kd).T).T)
    else:
        M = np.asarray((P.T @ w.T).T).reshape(-1, k, k)  # Z^T W Z per draw
        K = np.eye(k) + ell[:, :, None] * M * ell[:, None, :]
        Kinv = np.linalg.inv(K)
        h = np.einsum("sab,sb->sa", Kinv, b)
        Uh = np.asarray((Z @ (ell * h).T).T)
        LKL = (ell[:, :, None] * Kinv * ell[:, None, :]).reshape(-1, k * k)
        diag = np.asarray((P @ LKL.T).T)  # diag(U K^-1 U^T)
    g = w * r - w * Uh
    cbar = w - w**2 * diag
    out[sl] = -0.5 * np.log(2 * np.pi) + 0.5 * np.log(cbar) - 0.5 * g**2 / cbar


def _draw_function(model, outputs: list):
    """A compiled function from one posterior draw of the free variables to ``outputs``."""
    import pytensor
    from pytensor.graph.replace import clone_replace

    free = list(model.free_RVs)
    inputs = [rv.type() for rv in free]
    replaced = clone_replace(outputs, replace=dict(zip(free, inputs)))
    return pytensor.function(inputs, replaced, on_unused_input="ignore"), [rv.name for rv in free]


def pointwise_log_likelihood(model, idata, var_name: str):
    """The (chain, draw, obs) log-likelihood of an observed variable of ``model``.

    A :func:`marginal_normal` variable gets its exact leave-one-out conditional
    densities (:func:`marginal_normal_loo`, the quantity PSIS-LOO needs for a
    non-factorised normal); any other observed variable its ordinary
    pointwise log density (``pm.compute_log_likelihood``).  Returns an
    ``xarray.DataArray`` named ``var_name`` with the variable's observation
    dimension.
    """
    import warnings

    import pymc as pm
    import xarray as xr

    rv = model[var_name]
    factors = getattr(rv.tag, "psystats_factors", None)
    if factors is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ll = pm.compute_log_likelihood(
                idata,
                model=model,
                var_names=[var_name],
                extend_inferencedata=False,
                progressbar=False,
            )
        # PyMC numbers the draws afresh; keep the posterior's (thinned) draw labels.
        post = idata.posterior
        return ll[var_name].assign_coords(chain=post["chain"].values, draw=post["draw"].values)
    params = rv.owner.op.dist_params(rv.owner)
    fn, names = _draw_function(model, list(params))
    post = idata.posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    arrays = [post[n].values.reshape((n_chain * n_draw,) + post[n].shape[2:]) for n in names]
    vals = [fn(*[a[s] for a in arrays]) for s in range(n_chain * n_draw)]
    n_obs = len(factors[0][0])
    mu = np.stack([np.broadcast_to(v[0], (n_obs,)) for v in vals])
    var = np.stack([np.broadcast_to(v[1], (n_obs,)) for v in vals])
    sig = np.stack([np.array([float(s) for s in v[2:]]) for v in vals])
    from pymc.backends.arviz import find_observations

    y = np.asarray(find_observations(model)[var_name], float).ravel()
    ll = marginal_normal_loo(y, mu, var, sig, factors).reshape(n_chain, n_draw, n_obs)
    dims = model.named_vars_to_dims.get(var_name) or (f"{var_name}_dim_0",)
    coords = {"chain": post["chain"].values, "draw": post["draw"].values}
    if dims[0] in model.coords and model.coords[dims[0]] is not None:
        coords[dims[0]] = np.asarray(model.coords[dims[0]])
    return xr.DataArray(ll, dims=("chain", "draw", dims[0]), coords=coords, name=var_name)


def add_log_likelihood(model, idata, var_names: Sequence[str]) -> dict:
    """Add the pointwise log-likelihood of ``var_names`` to ``idata``; returns the arrays."""
    import xarray as xr

    arrays = {v: pointwise_log_likelihood(model, idata, v) for v in var_names}
    ds = xr.Dataset(arrays)
    if "log_likelihood" in idata.groups():
        idata.log_likelihood = idata.log_likelihood.merge(ds)
    else:
        idata.add_groups({"log_likelihood": ds})
    return arrays
