"""Observed likelihoods (stats.likelihoods) against independent dense computations.

The marginal normal's density against scipy's multivariate normal, its
replicates' covariance against Sigma, its exact leave-one-out densities
against the conditional normal obtained by partitioning Sigma, and the
binomial-logit density against scipy's binomial pmf.
"""

from __future__ import annotations

import numpy as np
import pytest


def _sigma(v, levels_sigmas):
    """Dense covariance diag(v) + sum_f s_f^2 Z_f Z_f^T (float64)."""
    S = np.diag(np.asarray(v, float))
    for idx, n, s in levels_sigmas:
        Z = np.eye(n)[idx]
        S = S + s**2 * Z @ Z.T
    return S


def _brute_force_loo(y, mu, S):
    """log p(y_i | y_-i) by partitioning Sigma: the conditional normal of cell i."""
    out = []
    for i in range(len(y)):
        o = np.r_[0:i, i + 1 : len(y)]
        A, b = S[np.ix_(o, o)], S[i, o]
        m = mu[i] + b @ np.linalg.solve(A, y[o] - mu[o])
        v = S[i, i] - b @ np.linalg.solve(A, b)
        out.append(-0.5 * np.log(2 * np.pi * v) - 0.5 * (y[i] - m) ** 2 / v)
    return np.array(out)


G = np.array([0, 0, 1, 2, 2, 2, 1, 0, 1, 3])
H = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 1])


def test_marginal_normal_loo_matches_the_partitioned_conditional_normal():
    from psystats.stats.likelihoods import marginal_normal_loo

    rng = np.random.default_rng(3)
    n = len(G)
    draws = []
    for _ in range(5):  # several "posterior draws" with different parameters
        mu, v = rng.normal(size=n), rng.uniform(0.05, 1.0, n)
        s, t = rng.uniform(0.0, 1.5), rng.uniform(0.0, 1.5)
        draws.append((mu, v, s, t))
    y = rng.normal(size=n) * 1.5
    mu = np.stack([d[0] for d in draws])
    var = np.stack([d[1] for d in draws])
    two = marginal_normal_loo(y, mu, var, np.array([[d[2], d[3]] for d in draws]), [(G, 4), (H, 2)])
    one = marginal_normal_loo(y, mu, var, np.array([[d[2]] for d in draws]), [(G, 4)])
    for j, (m, v, s, t) in enumerate(draws):
        ref2 = _brute_force_loo(y, m, _sigma(v, [(G, 4, s), (H, 2, t)]))
        ref1 = _brute_force_loo(y, m, _sigma(v, [(G, 4, s)]))
        np.testing.assert_allclose(two[j], ref2, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(one[j], ref1, rtol=1e-9, atol=1e-10)
    # A scale of exactly zero: the cells are independent and LOO is the plain normal density.
    zero = marginal_normal_loo(y, mu[:1], var[:1], np.zeros((1, 2)), [(G, 4), (H, 2)])
    plain = -0.5 * np.log(2 * np.pi * var[0]) - 0.5 * (y - mu[0]) ** 2 / var[0]
    np.testing.assert_allclose(zero[0], plain, rtol=1e-12)


def test_marginal_normal_density_and_replicates_match_the_dense_normal():
    import pymc as pm
    from scipy.stats import multivariate_normal

    from psystats.stats.likelihoods import marginal_normal

    rng = np.random.default_rng(0)
    n = len(G)
    y, v = rng.normal(size=n), rng.uniform(0.1, 0.6, n)
    x = rng.normal(size=n)
    with pm.Model() as model:
        b = pm.Normal("b", 0.0, 1.0)
        s = pm.HalfNormal("s", 1.0)
        t = pm.HalfNormal("t", 1.0)
        obs = marginal_normal("obs", b * x, v, [(G, 4, s), (H, 2, t)], y)
    point = {"b": 0.3, "s_log__": np.log(0.7), "t_log__": np.log(0.4)}
    got = model.compile_fn(model.logp(vars=[obs], sum=True), mode="FAST_COMPILE")(point)
    S = _sigma(v, [(G, 4, 0.7), (H, 2, 0.4)])
    assert float(got) == pytest.approx(multivariate_normal(0.3 * x, S).logpdf(y), rel=1e-10)

    # Replicates: fresh intercepts and noise, so their covariance is Sigma.
    fixed = pm.do(model, {"b": 0.3, "s": 0.7, "t": 0.4})
    reps = pm.draw(fixed["obs"], draws=10_000, random_seed=1)
    assert reps.shape == (10_000, n)
    np.testing.assert_allclose(reps.mean(axis=0), 0.3 * x, atol=0.08)
    np.testing.assert_allclose(np.cov(reps.T), S, atol=0.1)


def test_pointwise_log_likelihood_of_a_model_equals_the_direct_loo():
    """The per-draw parameters are read from the posterior and the model's graph."""
    import arviz as az
    import pymc as pm
    from scipy.stats import norm

    from psystats.stats.likelihoods import (
        marginal_normal,
        marginal_normal_loo,
        pointwise_log_likelihood,
    )

    rng = np.random.default_rng(1)
    n = len(G)
    y, se = rng.normal(size=n), rng.uniform(0.1, 0.5, n)
    with pm.Model(coords={"cell": [f"c{i}" for i in range(n)], "lvl": range(4)}) as model:
        a = pm.Normal("a", 0.0, 1.0, dims="lvl")
        s = pm.HalfNormal("s", 1.0)
        c = pm.HalfNormal("c", 1.0)
        marginal_normal("obs", a[G], c**2 + se**2, [(H, 2, s)], y, dims="cell")
        pm.Normal("plain", a[G], c, observed=y, dims="cell")
    post = {
        "a": rng.normal(size=(2, 3, 4)),
        "s": rng.uniform(0.1, 1.0, (2, 3)),
        "c": rng.uniform(0.1, 1.0, (2, 3)),
    }
    idata = az.from_dict(posterior=post, coords={"lvl": range(4)}, dims={"a": ["lvl"]})
    # Thinned draws keep their labels (every 4th draw of a longer run).
    idata.posterior = idata.posterior.assign_coords(draw=[0, 4, 8])
    ll = pointwise_log_likelihood(model, idata, "obs")
    assert ll.dims == ("chain", "draw", "cell") and ll.shape == (2, 3, n)
    plain = pointwise_log_likelihood(model, idata, "plain")
    assert list(ll["draw"].values) == list(plain["draw"].values) == [0, 4, 8]
    np.testing.assert_allclose(
        plain.values, norm.logpdf(y, post["a"][..., G], post["c"][..., None]), rtol=1e-10
    )
    for ch in range(2):
        for d in range(3):
            mu = post["a"][ch, d][G]
            var = post["c"][ch, d] ** 2 + se**2
            ref = marginal_normal_loo(y, mu[None], var[None], [[post["s"][ch, d]]], [(H, 2)])
            np.testing.assert_allclose(ll.values[ch, d], ref[0], rtol=1e-10)
            direct = _brute_force_loo(y, mu, _sigma(var, [(H, 2, post["s"][ch, d])]))
            np.testing.assert_allclose(ll.values[ch, d], direct, rtol=1e-9)


def test_binomial_logit_is_the_binomial_pmf_and_allows_fractions():
    import pymc as pm
    from scipy.special import expit, gammaln, log_expit
    from scipy.stats import binom

    from psystats.stats.likelihoods import binomial_logit

    eta = np.array([-2.0, 0.0, 0.5, 3.0, 30.0])
    n = np.array([5.0, 10.0, 1.0, 8.0, 4.0])
    k = np.array([1.0, 4.0, 1.0, 7.0, 4.0])
    with pm.Model() as model:
        obs = binomial_logit("hits", eta, n, k)
    lp = model.compile_fn(model.logp(vars=[obs], sum=False)[0], mode="FAST_COMPILE")({})
    np.testing.assert_allclose(lp, binom.logpmf(k, n, expit(eta)), rtol=1e-9, atol=1e-12)

    # Fractional counts (a 3-way tie = 1/3 hit; expected hits): the gammaln extension.
    kf = np.array([1.0 / 3.0, 2.5, 0.75, 6.2, 3.9])
    with pm.Model() as model_f:
        obs_f = binomial_logit("hits", eta, n, kf)
    lpf = model_f.compile_fn(model_f.logp(vars=[obs_f], sum=False)[0], mode="FAST_COMPILE")({})
    q = expit(eta)
    ref = (
        kf * log_expit(eta)
        + (n - kf) * log_expit(-eta)
        + gammaln(n + 1)
        - gammaln(kf + 1)
        - gammaln(n - kf + 1)
    )
    np.testing.assert_allclose(lpf, ref, rtol=1e-7)
    # Replicates are binomial counts with mean n q.
    reps = pm.draw(obs_f, draws=20_000, random_seed=2)
    assert np.all(reps == np.round(reps)) and np.all((reps >= 0) & (reps <= n))
    np.testing.assert_allclose(reps.mean(axis=0), n * q, atol=0.05)
