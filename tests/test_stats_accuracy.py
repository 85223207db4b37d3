"""fit accuracy: hits, temperatures (against brute force), held-out folds, errors, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError


def _converged(diag: dict) -> bool:
    """Converged with a margin no CPU or BLAS can cross (the gates themselves are 1.01/400)."""
    return diag["max_rhat"] < 1.05 and diag["min_ess_bulk"] > 100 and diag["divergences"] <= 10


def _matrix(lp, target, participants=None):
    from psystats.stats.accuracy import OptionMatrix

    lp = np.asarray(lp, float)
    n = len(lp)
    parts = np.arange(n) if participants is None else np.asarray(participants)
    return OptionMatrix(lp, np.asarray(target), parts, np.arange(n))


def test_top1_hits_and_option_nll_by_hand():
    from psystats.stats.accuracy import option_nll, top1_hits

    m = _matrix(
        [
            [np.log(0.7), np.log(0.2), np.log(0.1)],
            [np.log(0.4), np.log(0.4), np.log(0.2)],  # two-way tie at the top
            [np.log(0.5), np.log(0.5), -np.inf],
        ],
        [0, 1, 2],
    )  # padded third option
    assert list(top1_hits(m)) == [1.0, 0.5, 0.0]
    assert option_nll(m)[:2] == pytest.approx([-np.log(0.7), -np.log(0.4)])
    # T = 2 flattens: p ~ sqrt(p), renormalised.
    p = np.sqrt([0.7, 0.2, 0.1])
    assert option_nll(m, 2.0)[0] == pytest.approx(-np.log(p[0] / p.sum()))


def test_fit_temperature_matches_brute_force():
    from psystats.stats.accuracy import fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 4))
    target = rng.integers(0, 4, 400)
    z[np.arange(400), target] += 1.0
    lp = 3.0 * z - np.log(np.exp(3.0 * z).sum(axis=1, keepdims=True))  # over-confident
    m = _matrix(lp, target)
    grid = np.exp(np.linspace(np.log(0.2), np.log(20), 4001))

    def mean_nll(t):  # written out independently of the module
        s = lp / t
        s = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        return -s[np.arange(400), target].mean()

    best = grid[np.argmin([mean_nll(t) for t in grid])]
    assert fit_temperature(m) == pytest.approx(best, rel=2e-3)
    assert fit_temperature(m) > 1.5  # the over-confident model is flattened


def test_calibration_uses_only_held_out_participants():
    from psystats.stats.accuracy import calibrate, fit_temperature, folds_for

    rng = np.random.default_rng(1)
    parts = np.repeat(np.arange(10), 5)
    z = rng.normal(size=(50, 3))
    target = rng.integers(0, 3, 50)
    z[np.arange(50), target] += rng.uniform(0, 2, 50)
    m = _matrix(z - np.log(np.exp(z).sum(axis=1, keepdims=True)), target, parts)
    temps, per_fold = calibrate(m, folds=5, seed=7)
    fold = folds_for(parts, 5, 7)
    assert sorted(set(fold.values())) == [0, 1, 2, 3, 4]
    for j in range(5):
        held = np.array([fold[p] == j for p in parts])
        assert np.allclose(temps[held], per_fold[j])
        assert per_fold[j] == pytest.approx(fit_temperature(m, np.flatnonzero(~held)))
    one = _matrix(m.logprob[:5], m.target[:5], parts[:5])  # one participant: no held-out data
    t1, f1 = calibrate(one)
    assert f1 == [1.0] and np.all(t1 == 1.0)


def test_no_option_scores_is_a_clear_error(tmp_path):
    from psystats.stats.accuracy import fit_accuracy
    from psystats.stats.simulate import add_synthetic_experiments

    con = warehouse_db.open(tmp_path / "a.duckdb", "write", create=True)
    add_synthetic_experiments(con, n_experiments=2, participants=4, responses=2)
    with pytest.raises(WarehouseError, match="no option scores"):
        fit_accuracy(con)
    with pytest.raises(WarehouseError, match="--folds must be at least 2"):
        fit_accuracy(con, folds=1)
    assert con.execute("SELECT count(*) FROM fits").fetchall()[0][0] == 0


def test_unmatched_responses_are_counted_not_scored():
    from psystats.stats.accuracy import option_matrix

    rows = pd.DataFrame(
        {
            "response_id": [1, 1, 2, 2],
            "participant_key": [10, 10, 11, 11],
            "response": ["A", "A", "maybe", "maybe"],
            "option": ["A", "B", "A", "B"],
            "logprob": np.log([0.6, 0.4, 0.5, 0.5]),
        }
    )
    m, unmatched = option_matrix(rows)
    assert unmatched == 1 and list(m.response_id) == [1] and list(m.target) == [0]


def test_survives_calibration_logic():
    """The verdict per type from posterior draws (an InferenceData built from arrays)."""
    import arviz as az

    from psystats.stats.accuracy import AccuracyData, summarise_accuracy

    rng = np.random.default_rng(0)

    def draws(mean, sd):
        return rng.normal(mean, sd, size=(2, 500, 3))

    idata = az.from_dict(
        posterior={
            "accuracy_gap": draws([-0.8, -0.8, 0.05], 0.1),
            "accuracy_gap_calibrated": draws([-0.7, 0.0, 0.0], 0.1),
        },
        coords={"post_training": ["instruct", "reasoning", "code"]},
        dims={"accuracy_gap": ["post_training"], "accuracy_gap_calibrated": ["post_training"]},
    )
    data = AccuracyData(
        participants=pd.DataFrame(), calibration=pd.DataFrame(), pairs=pd.DataFrame()
    )
    s = summarise_accuracy(idata, data, folds=5)
    assert s["survives_calibration"] == {"instruct": True, "reasoning": False, "code": None}
    assert s["by_post_training"]["reasoning"]["verdict"] == "gap does not survive calibration"


@pytest.fixture
def accuracy_warehouse(tmp_path):
    from psystats.stats.accuracy import simulate_accuracy
    from psystats.stats.simulate import add_synthetic_experiments

    path = tmp_path / "acc.duckdb"
    con = warehouse_db.open(path, "write", create=True)
    add_synthetic_experiments(con, n_experiments=4, participants=30, responses=8, seed=1)
    truth = simulate_accuracy(con, seed=2)
    con.close()
    return path, truth


@pytest.mark.slow
def test_fit_accuracy_cli_recovers_gap_and_temperatures(accuracy_warehouse):
    from click.testing import CliRunner

    from psystats.commands.fit_analyses_cmds import accuracy

    path, truth = accuracy_warehouse
    res = CliRunner().invoke(
        accuracy,
        [
            "--db",
            str(path),
            "--draws",
            "1000",
            "--tune",
            "600",
            "--seed",
            "2",
            "--allow-diagnostics-failure",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "gap survives calibration" in res.output
    con = warehouse_db.open(path)
    ((fit_id, summary, diag, nc),) = con.execute(
        "SELECT fit_id, summary, diagnostics, netcdf_path FROM fits WHERE kind = 'accuracy'"
    ).fetchall()
    params = {
        (p, l): (m, lo, hi)
        for p, l, m, lo, hi in con.execute(
            "SELECT parameter, label, mean, q05, q95 FROM fit_params WHERE fit_id = ?", [fit_id]
        ).fetchall()
    }
    con.close()
    assert _converged(json.loads(diag)), diag
    for name in ("accuracy_gap", "accuracy_gap_calibrated"):
        mean, lo, hi = params[(name, "instruct")]
        assert lo - 0.05 < truth[name] < hi + 0.05 and abs(mean - truth[name]) < 0.2
    s = json.loads(summary)
    assert s["survives_calibration"] == {"instruct": True}
    temps = pd.DataFrame(s["calibration"]).groupby("model")["temperature"].mean()
    for model, t in truth["models"].items():
        assert temps[model] == pytest.approx(t["temperature"], rel=0.2)
    # Observed binomial likelihoods: predictive check, pointwise log-likelihood, PSIS-LOO.
    import arviz as az

    idata = az.from_netcdf(nc)
    n_rows = idata.observed_data["hits"].size
    assert n_rows == 2 * 4 * 30  # two models x 4 experiments x 30 participants
    for var in ("hits", "hits_calibrated"):
        assert idata.posterior_predictive[var].shape[-1] == n_rows
        assert idata.log_likelihood[var].shape[-1] == n_rows
        assert s["ppc"][var]["coverage_90"] > 0.5
        assert s["loo"]["by_variable"][var]["n_observations"] == n_rows
    assert s["loo"]["full"]["n_observations"] == 2 * n_rows
    assert float(idata["psystats_loo"]["loo_i"].sum()) == pytest.approx(
        s["loo"]["full"]["elpd_loo"]
    )
