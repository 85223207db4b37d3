"""fit accuracy: hits, temperatures (against brute force), held-out folds, errors, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from reanalysis_helpers import assert_loo_stands_alone

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
    with pytest.raises(WarehouseError, match="folds must be an integer from 2"):
        fit_accuracy(con, spec={"folds": 1})
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
    _assert_accuracy_summary_is_its_draws(s, idata.posterior)
    assert set(s["units"].values()) == {"logit"}


def _gap_oracle(draws) -> dict:
    """mean, 90% interval and P(gap < 0) of one type's gap, from a (chain, draw) DataArray."""
    x = np.asarray(draws.values, dtype=np.float64).reshape(-1)
    q = draws.quantile([0.05, 0.95], dim=("chain", "draw")).values
    return dict(
        mean=float(x.sum() / x.size),
        q05=float(q[0]),
        q95=float(q[1]),
        p_negative=np.count_nonzero(x < 0) / x.size,
    )


def _survival_oracle(raw: dict, cal: dict | None) -> tuple[bool | None, str]:
    """docs/model.md, "Survival": credible = the 90% interval excludes 0; survives = the
    calibrated interval excludes 0 on the same side."""
    credible = raw["q05"] > 0 or raw["q95"] < 0
    if not credible:
        return None, "no credible raw gap (90% interval includes 0)"
    if cal is None:
        return None, "not calibrated"
    above = raw["q05"] > 0
    same_side = cal["q05"] > 0 if above else cal["q95"] < 0
    return (
        same_side,
        "gap survives calibration" if same_side else "gap does not survive calibration",
    )


def _assert_accuracy_summary_is_its_draws(summary: dict, posterior) -> None:
    raw_gap = posterior["accuracy_gap"]
    types = {str(t) for t in raw_gap.coords["post_training"].values}
    assert set(summary["by_post_training"]) == types == set(summary["survives_calibration"])
    for t, got in summary["by_post_training"].items():
        raw = _gap_oracle(raw_gap.sel(post_training=t))
        cal = (
            _gap_oracle(posterior["accuracy_gap_calibrated"].sel(post_training=t))
            if "accuracy_gap_calibrated" in posterior
            else None
        )
        for part, want in (("raw", raw), ("calibrated", cal)):
            if want is None:
                assert part not in got
                continue
            for k, v in want.items():
                assert got[part][k] == pytest.approx(v, abs=1e-12), (t, part, k)
        survives, verdict = _survival_oracle(raw, cal)
        assert got["verdict"] == verdict, t
        assert summary["survives_calibration"][t] is survives and got["survives"] is survives
        assert got["raw_gap_credible"] == (raw["q05"] > 0 or raw["q95"] < 0)


def test_survival_verdicts_against_the_oracle_on_every_side():
    """Positive and negative raw gaps, calibrated on the same side, the other side, across
    zero; and a fit without the calibrated outcome."""
    import arviz as az

    from psystats.stats.accuracy import AccuracyData, summarise_accuracy

    rng = np.random.default_rng(3)
    raw = [0.8, 0.8, -0.8, -0.8, 0.05, 0.8]
    cal = [0.7, -0.7, -0.7, 0.0, 0.6, 0.0]
    types = ["a", "b", "c", "d", "e", "f"]
    idata = az.from_dict(
        posterior={
            "accuracy_gap": rng.normal(raw, 0.1, size=(2, 300, 6)),
            "accuracy_gap_calibrated": rng.normal(cal, 0.1, size=(2, 300, 6)),
        },
        coords={"post_training": types},
        dims={"accuracy_gap": ["post_training"], "accuracy_gap_calibrated": ["post_training"]},
    )
    data = AccuracyData(
        participants=pd.DataFrame(), calibration=pd.DataFrame(), pairs=pd.DataFrame()
    )
    s = summarise_accuracy(idata, data, folds=5)
    _assert_accuracy_summary_is_its_draws(s, idata.posterior)
    assert s["survives_calibration"] == dict(zip(types, [True, False, True, False, None, False]))
    uncal = az.from_dict(
        posterior={"accuracy_gap": rng.normal(raw, 0.1, size=(2, 300, 6))},
        coords={"post_training": types},
        dims={"accuracy_gap": ["post_training"]},
    )
    s = summarise_accuracy(uncal, data, folds=5)
    _assert_accuracy_summary_is_its_draws(s, uncal.posterior)
    assert s["by_post_training"]["a"]["verdict"] == "not calibrated"


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
    assert_loo_stands_alone(nc, s)
    # Every gap, interval and verdict, stored and printed, from the NetCDF's draws alone.
    _assert_accuracy_summary_is_its_draws(s, idata.posterior)
    import re

    for t, v in s["by_post_training"].items():
        (row,) = [line for line in res.output.splitlines() if line.split()[:1] == [t]]
        assert v["verdict"] in row
        printed = [float(x) for x in re.findall(r"[-+]?\d+\.\d+", row)]
        want = [
            _gap_oracle(idata.posterior[n].sel(post_training=t))
            for n in ("accuracy_gap", "accuracy_gap_calibrated")
        ]
        for w in want:
            for k in ("mean", "q05", "q95"):
                assert any(abs(p - w[k]) <= 5e-4 for p in printed), (t, k, row)
