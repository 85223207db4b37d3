"""Generation scales of `fit effects` on a real warehouse: rank, number, date.

Cells come from real score runs in a DuckDB file (``simulate_warehouse``),
generations and release dates are changed through the registry, and the
effects design (``prepare``) is compared before and after.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from psystats.cli import main
from psystats.scoring import registry
from psystats.stats.cells import build_cells, with_scale
from psystats.stats.effects_design import prepare
from psystats.stats.effects_spec import EffectsSpec
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError

# Families the registry's date table does not know: every date here is set by the test.
FAMILIES = ("alpha", "beta")
GENERATIONS = (1, 2, 3)
# Public release dates of three successive generations per family (month precision):
# unevenly spaced, so the date scale differs from the rank scale.
DATES = {
    "alpha": {1: "2024-02-05", 2: "2024-06-07", 3: "2025-04-29"},
    "beta": {1: "2024-04-18", 2: "2024-07-23", 3: "2024-09-25"},
}


@pytest.fixture
def sim_db(db_path):
    """Two families x three generations, instruct and reasoning on each base."""
    from psystats.stats.simulate import add_synthetic_experiments, simulate_warehouse

    con = warehouse_db.open(db_path, "write", create=True)
    add_synthetic_experiments(con, n_experiments=4, participants=4, responses=2, seed=1)
    simulate_warehouse(con, families=FAMILIES, generations=GENERATIONS, seed=1)
    yield con
    con.close()


def _models(con) -> list[tuple[str, str, str]]:
    """(name, family, generation) of every simulated model."""
    return [
        tuple(r)
        for r in con.execute("SELECT name, family, generation FROM models ORDER BY name").fetchall()
    ]


def _cells(con) -> pd.DataFrame:
    return with_scale(build_cells(con), "nats")


def _assert_same_design(a, b) -> None:
    assert a.active == b.active and a.coords == b.coords
    np.testing.assert_array_equal(a.cells["y"], b.cells["y"])
    np.testing.assert_array_equal(a.cells["se"], b.cells["se"])
    np.testing.assert_allclose(a.generation_x, b.generation_x, atol=1e-12)
    np.testing.assert_allclose(a.size_x, b.size_x, atol=1e-12)
    assert set(a.bases) == set(b.bases)
    for term in a.bases:
        np.testing.assert_allclose(a.bases[term], b.bases[term], atol=1e-12)
    assert a.centred == b.centred and a.fixed_scale == b.fixed_scale


def test_rank_scale_design_is_invariant_to_renaming_versions(sim_db):
    """Renaming versions in the registry (order kept; '3' -> '3.1-new' with its order
    given by hand) leaves the rank-scale design, hence the pooled slope, unchanged;
    the version-number scale changes with it (so the comparison can fail)."""
    con = sim_db
    before = _cells(con)
    rank = EffectsSpec(generation_scale="rank")
    a = prepare(before, rank)
    assert "generation" in a.active
    renames = {
        "alpha": {"1": ("2", None), "2": ("2.5", None), "3": ("3.1-new", 3.1)},
        "beta": {"1": ("3", None), "2": ("3.1", None), "3": ("3.2", None)},
    }
    for name, family, generation in _models(con):
        new, order = renames[family][generation]
        fields: dict = {"generation": new}
        if order is not None:
            fields["generation_order"] = order  # not a number: its order given by hand
        registry.set_fields(con, name, fields)
    after = _cells(con)
    assert sorted(after["generation"].unique()) == ["2", "2.5", "3", "3.1", "3.1-new", "3.2"]
    b = prepare(after, rank)
    _assert_same_design(a, b)
    # The version-number scale sees steps of 0.5/0.6 (alpha) and 0.1 (beta) now.
    num_a = prepare(before, EffectsSpec(generation_scale="number"))
    num_b = prepare(after, EffectsSpec(generation_scale="number"))
    assert not np.allclose(num_a.generation_x, num_b.generation_x)


def test_date_scale_design_uses_the_release_dates(sim_db):
    """Dates set on the base models reach the pairs (the post models have none) and the
    design's generation covariate is years since the family's first release, centred."""
    con = sim_db
    for name, family, generation in _models(con):
        if name.endswith("-base"):
            registry.set_fields(con, name, {"release_date": DATES[family][int(generation)]})
    cells = _cells(con)
    d = prepare(cells, EffectsSpec(generation_scale="date"))
    assert "generation" in d.active
    # Independent reference: per pair, days from its family's first date / 365.25, centred.
    pairs = pd.DataFrame({"pair": d.coords["pair"]})
    pairs["family"] = pairs["pair"].str.extract(r"^sim-([a-z]+)\d")[0]
    pairs["gen"] = pairs["pair"].str.extract(r"^sim-[a-z]+(\d)")[0].astype(int)
    days = np.array(
        [
            (date.fromisoformat(DATES[f][g]) - date.fromisoformat(DATES[f][1])).days
            for f, g in zip(pairs["family"], pairs["gen"])
        ],
        dtype=float,
    )
    years = pd.Series(days / 365.25)
    expected = years - years.groupby(pairs["family"]).transform("mean")
    np.testing.assert_allclose(d.generation_x, expected.to_numpy(), atol=1e-12)
    # alpha 1 -> 2 -> 3 is 0.34 then 0.89 years: not the rank scale's equal steps.
    rank = prepare(cells, EffectsSpec(generation_scale="rank"))
    assert not np.allclose(d.generation_x, rank.generation_x)
    # A post model's own date wins over its base's.
    registry.set_fields(con, "sim-alpha3-instruct", {"release_date": "2025-07"})
    d2 = prepare(_cells(con), EffectsSpec(generation_scale="date"))
    i = d2.coords["pair"].index("sim-alpha3-instruct vs sim-alpha3-base")
    j = d2.coords["pair"].index("sim-alpha3-reasoning vs sim-alpha3-base")
    assert d2.generation_x[i] - d2.generation_x[j] == pytest.approx(
        (date(2025, 7, 1) - date(2025, 4, 29)).days / 365.25
    )


def test_date_scale_refuses_pairs_without_a_date_naming_the_models(sim_db, db_path):
    con = sim_db
    for name, family, generation in _models(con):
        if name.endswith("-base") and name != "sim-beta2-base":
            registry.set_fields(con, name, {"release_date": DATES[family][int(generation)]})
    cells = _cells(con)
    with pytest.raises(WarehouseError) as e:
        prepare(cells, EffectsSpec(generation_scale="date"))
    msg = str(e.value)
    assert "2 models without one" in msg
    assert "sim-beta2-instruct" in msg and "sim-beta2-reasoning" in msg
    assert "sim-alpha" not in msg
    assert "psystats models set sim-beta2-instruct release_date=" in msg
    # Without a generation term nothing needs a date.
    spec = EffectsSpec(generation_scale="date", terms={"generation": False})
    assert "generation" not in prepare(cells, spec).active
    con.close()
    r = CliRunner().invoke(
        main,
        ["--db", str(db_path), "fit", "effects", "--generation-scale", "date", "--no-compare"],
    )
    assert r.exit_code == 1, r.output
    assert "Error: --generation-scale date needs" in r.output
    assert "sim-beta2-instruct" in r.output and "Traceback" not in r.output


# ---------------------------------------------------------------------------
# The one implementation of the scale, against hand computation


def test_generation_values_rank_number_date_by_hand():
    from psystats.stats.generation_scale import generation_values

    frame = pd.DataFrame(
        {
            "family": ["qwen", "qwen", "qwen", "llama", "llama", "llama", "llama"],
            "generation_order": [2.0, 2.5, 3.0, 3.0, 3.1, 3.1, np.nan],
            "release_date": [
                "2024-06-07",
                "2024-09-19",
                "2025-04-29",
                "2024-04-18",
                "2024-07-23",
                "2024-07-23",
                "2024-09-25",
            ],
        }
    )
    rank = generation_values(frame, "rank")
    np.testing.assert_array_equal(rank.to_numpy(), [0, 1, 2, 0, 1, 1, np.nan])
    number = generation_values(frame, "number")
    np.testing.assert_array_equal(number.to_numpy(), frame["generation_order"].to_numpy())
    date_ = generation_values(frame, "date")
    first = {"qwen": date(2024, 6, 7), "llama": date(2024, 4, 18)}
    expected = [
        (date.fromisoformat(d) - first[f]).days / 365.25
        for f, d in zip(frame["family"], frame["release_date"])
    ]
    np.testing.assert_allclose(date_.to_numpy(), expected, atol=1e-12)
    with pytest.raises(WarehouseError, match="generation_scale must be one of rank, number, date"):
        generation_values(frame, "decade")
    frame.loc[1, "release_date"] = None
    with pytest.raises(WarehouseError, match="1 model without one: m1"):
        generation_values(frame, "date", names=[f"m{i}" for i in range(7)], what="x")


def test_units_name_the_scale_of_every_slope():
    from psystats.stats.effects_spec import EffectsSpec
    from psystats.stats.generations import PARAMS, generations_units

    for scale, step in (("rank", "generation step"), ("number", "version unit"), ("date", "year")):
        u = EffectsSpec(generation_scale=scale).units()
        assert u["generation_slope"] == u["generation_slope_family"] == f"nats per {step}"
        g = generations_units(scale)
        assert g["base_slope"] == g["gap_slope"] == f"nats per {step}"
        assert set(PARAMS) <= set(g) and g["gap"] == "nats" and g["type"] == "nats"
    std = EffectsSpec(scale="standardised").units()
    assert std["type"] == "SD" and std["generation_slope"] == "SD per generation step"
    assert std["size_slope"] == "SD per unit log(parameters)"


def test_effects_units_cover_every_reported_variable(sim_db):
    """Every variable a fit stores in fit_params has a unit (all terms in, both residuals)."""
    from psystats.stats.effects_model import build_effects_model, reported_vars

    cells = _cells(sim_db)
    for spec in (EffectsSpec(), EffectsSpec(residual="explicit", scale="standardised")):
        c = with_scale(build_cells(sim_db), spec.scale)
        data = prepare(c if spec.scale != "nats" else cells, spec)
        assert {"type", "family", "size", "generation", "pair"} <= set(data.active)
        names = reported_vars(build_effects_model(data, spec))
        assert set(names) <= set(spec.units()), set(names) - set(spec.units())


def _generation_models(dates: bool = True) -> pd.DataFrame:
    """Two families whose version numbers step unevenly: qwen 2 -> 2.5 -> 3, llama 3 -> 3.1."""
    rows = []
    for fam, gens in (("qwen", (2.0, 2.5, 3.0)), ("llama", (3.0, 3.1))):
        for o in gens:
            g = f"{o:g}"
            day = DATES_BY_GEN[(fam, g)] if dates else None
            rows.append(
                dict(
                    name=f"{fam}{g}",
                    family=fam,
                    generation=g,
                    generation_order=o,
                    n_params=1e9,
                    post_training="base",
                    base_model=None,
                    release_date=day,
                )
            )
            rows.append(
                dict(
                    name=f"{fam}{g}-it",
                    family=fam,
                    generation=g,
                    generation_order=o,
                    n_params=1e9,
                    post_training="instruct",
                    base_model=f"{fam}{g}",
                    release_date=None,
                )
            )
    return pd.DataFrame(rows)


DATES_BY_GEN = {
    ("qwen", "2"): "2024-06-07",
    ("qwen", "2.5"): "2024-09-19",
    ("qwen", "3"): "2025-04-29",
    ("llama", "3"): "2024-04-18",
    ("llama", "3.1"): "2024-07-23",
}


def test_generations_data_put_generations_on_the_chosen_scale():
    """prepare_generations' generation_x (the slopes' covariate) on each scale, by hand."""
    from psystats.stats.generations import _slope_weights, prepare_generations

    models = _generation_models()
    rows, cells = [], []
    for m in models.itertuples():
        if m.post_training == "base":
            rows += [(m.name, "e", i, 1.0 + 0.1 * i, 1) for i in range(4)]
        else:
            cells.append(
                dict(
                    pair=f"{m.name} vs {m.base_model}",
                    post_model=m.name,
                    base_model=m.base_model,
                    post_training="instruct",
                    experiment="e",
                    n=4,
                    mean=0.1,
                    var=0.01,
                )
            )
    means = pd.DataFrame(
        rows, columns=["model", "experiment", "participant_key", "mean_nll", "run_id"]
    )
    expected = {
        "rank": {"qwen": [0, 1, 2], "llama": [0, 1]},
        "number": {"qwen": [2, 2.5, 3], "llama": [3, 3.1]},
        "date": {
            f: [
                (date.fromisoformat(DATES_BY_GEN[(f, g)]) - date.fromisoformat(first)).days / 365.25
                for g in gens
            ]
            for f, gens, first in (
                ("qwen", ("2", "2.5", "3"), "2024-06-07"),
                ("llama", ("3", "3.1"), "2024-04-18"),
            )
        },
    }
    slopes = {}
    for scale, by_family in expected.items():
        data = prepare_generations(means, pd.DataFrame(cells), models, generation_scale=scale)
        assert data.generation_scale == scale
        gen = data.generations.set_index(["family", "generation"])
        for fam, xs in by_family.items():
            got = gen.loc[fam].sort_values("generation_order")["generation_x"].to_numpy()
            np.testing.assert_allclose(got, xs, atol=1e-12)
        w = _slope_weights(data.generations, data.families)
        levels = data.generations["generation_x"].to_numpy() * 0.2  # a line of slope 0.2
        np.testing.assert_allclose(w @ levels, 0.2, atol=1e-12)
        slopes[scale] = _slope_weights(data.generations, data.families) @ (
            data.generations["generation_order"].to_numpy()
        )
    # One line in the version number reads as different slopes per scale: 1 per version
    # unit is 0.5 (qwen) and 0.1 (llama) per generation step.
    fams = data.families
    np.testing.assert_allclose(slopes["number"], [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(
        slopes["rank"], [0.1 if f == "llama" else 0.5 for f in fams], atol=1e-12
    )
    # A generation whose base has no date takes its post-trained model's; with neither,
    # the fit is refused, naming the base model.
    undated = models.copy()
    undated.loc[undated["name"] == "llama3.1", "release_date"] = None
    with pytest.raises(WarehouseError, match="1 model without one: llama3.1"):
        prepare_generations(means, pd.DataFrame(cells), undated, generation_scale="date")
    undated.loc[undated["name"] == "llama3.1-it", "release_date"] = "2024-07-23"
    d = prepare_generations(means, pd.DataFrame(cells), undated, generation_scale="date")
    gen = d.generations.set_index(["family", "generation"])
    assert gen.loc[("llama", "3.1"), "generation_x"] == pytest.approx(96 / 365.25)


# ---------------------------------------------------------------------------
# Recovery: each scale against its own simulated truth, in both analyses

# Version numbers that step unevenly (0.5, 0.1, 1 per release) and unevenly spaced
# release dates, so the three scales put the same generations at different places.
UNEVEN = {
    "qwen": ((2.0, 2.5, 3.0), ("2024-06-07", "2024-09-19", "2025-04-29")),
    "llama": ((3.0, 3.1, 3.2), ("2024-04-18", "2024-07-23", "2024-09-25")),
    "olmo": ((1.0, 2.0, 3.0), ("2024-02-01", "2024-11-26", "2025-03-12")),
}
SAMPLE = dict(draws=400, tune=400, chains=2, target_accept=0.95)


def _uneven_design() -> pd.DataFrame:
    from psystats.stats.simulate import simulate_design

    d = simulate_design(18, 8, n_families=3, n_types=2, n_domains=2, seed=11)
    gen = d["generation_order"].astype(int) - 1  # 0, 1, 2: which generation of the family
    d["generation_order"] = [UNEVEN[f][0][g] for f, g in zip(d["family"], gen)]
    d["release_date"] = [UNEVEN[f][1][g] for f, g in zip(d["family"], gen)]
    d["generation"] = d["generation_order"].map("{:g}".format)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["rank", "number", "date"])
def test_effects_recover_the_generation_slope_on_each_scale(scale):
    """Cells simulated with a generation slope per unit of `scale`: the fit on that scale
    recovers it and says its unit."""
    from psystats.stats.effects_fit import EffectsFitSpec, fit_cells
    from psystats.stats.options import SamplingOptions
    from psystats.stats.simulate import simulate_cells

    spec = EffectsSpec(generation_scale=scale)
    true_slope = 0.15
    sim = simulate_cells(
        design=_uneven_design(),
        spec=spec,
        seed=5,
        scales={"generation_slope": true_slope, "sigma_generation_family": 0.0},
    )
    fs = EffectsFitSpec(spec, compare=(), checks=False)
    fit = fit_cells(sim.cells, fs, SamplingOptions(seed=2, **SAMPLE), allow_failure=True)
    assert "generation" in fit.data.active
    x = fit.idata.posterior["generation_slope"].values.ravel()
    lo, hi = np.quantile(x, [0.05, 0.95])
    assert lo - 0.02 < true_slope < hi + 0.02, (scale, lo, hi)
    assert (
        fit.summary["units"]["generation_slope"]
        == {
            "rank": "nats per generation step",
            "number": "nats per version unit",
            "date": "nats per year",
        }[scale]
    )


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["rank", "number", "date"])
def test_generations_recover_the_slopes_on_each_scale(db_path, scale):
    """Scores simulated with base and gap trends per unit of `scale`: `fit generations`'
    model on that scale recovers both slopes per family."""
    from psystats.stats.generations import (
        build_generations_model,
        load_generations_data,
        simulate_generations,
        summarise_generations,
    )
    from psystats.stats.pipeline import run_fit
    from psystats.stats.simulate import add_synthetic_experiments

    con = warehouse_db.open(db_path, "write", create=True)
    add_synthetic_experiments(con, n_experiments=6, participants=20, responses=4, seed=1)
    fams = {f: UNEVEN[f] for f in ("qwen", "llama")}
    truth = simulate_generations(
        con,
        families={f: v[0] for f, v in fams.items()},
        release_dates={f: v[1] for f, v in fams.items()},
        base_slope={"qwen": -0.2, "llama": 0.1},
        gap_slope={"qwen": 0.15, "llama": 0.25},
        generation_scale=scale,
        seed=2,
    )
    data = load_generations_data(con, generation_scale=scale)
    con.close()
    model, spec = build_generations_model(data)
    assert spec["generation_scale"] == scale
    result = run_fit(
        model, kind="generations", sampling={**SAMPLE, "seed": 3}, allow_failure=True, checks=False
    )
    post = result.idata.posterior
    for name in ("base_slope", "gap_slope"):
        for fam, true in truth[name].items():
            x = post[name].sel(family=fam).values.ravel()
            lo, hi = np.quantile(x, [0.05, 0.95])
            assert lo - 0.03 < true < hi + 0.03, (scale, name, fam, lo, hi)
    units = summarise_generations(result.idata, data)["units"]
    assert units["gap_slope"] == EffectsSpec(generation_scale=scale).units()["generation_slope"]
