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
from psystats.stats.effects import EffectsSpec, prepare
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
