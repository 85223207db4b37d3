"""Fabricated analysis results with known values, for previewing and testing the report.

``fabricate(con)`` writes, on top of the responses already ingested in a
warehouse, a realistic set of registered models (two families, two
generations, base/instruct/reasoning), complete scoring runs whose per-response
NLLs follow a known formula, and fits of every kind whose posterior draws are
centred on known values (stored through the real ``psystats.stats.store``,
with NetCDF files holding posterior predictive checks).  The returned
:class:`Truth` lists those values so tests can check each figure's data.

Nothing here is an estimate: it is a fixture for the report's layout and
arithmetic, and the report it produces says nothing about real models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from psystats.warehouse.sql import next_id, transaction

# family, generation, generation_order, sizes, post-training types
FAMILIES = (
    ("qwen", "2.5", 1.0, (0.5e9, 1.5e9), ("base", "instruct")),
    ("qwen", "3", 2.0, (0.6e9, 1.7e9), ("base", "instruct", "reasoning")),
    ("llama", "3", 1.0, (1.0e9, 8.0e9), ("base", "instruct")),
    ("llama", "3.1", 2.0, (1.0e9, 8.0e9), ("base", "instruct")),
)
TYPE_SHIFT = {"base": 0.0, "instruct": 0.4, "reasoning": 0.6}
FAMILY_SHIFT = {"qwen": 0.0, "llama": 0.1}
DOMAINS = ("Psycholinguistics", "Economic Games", "Reinforcement Learning")
ALL_KINDS = ("effects", "generations", "persona", "accuracy")


@dataclass
class Truth:
    model_mean: dict[str, float] = field(default_factory=dict)  # expected NLL per response
    n_params: dict[str, int] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)  # model -> complete plain run
    fits: dict[str, int] = field(default_factory=dict)  # kind -> fit_id
    effects: dict[str, dict] = field(default_factory=dict)  # parameter -> {label: value}
    failed: tuple[str, ...] = ()  # kinds stored as failing their gates (passed = false)


def model_name(family: str, gen: str, size: float, ptype: str) -> str:
    suffix = {"base": "-Base", "instruct": "-Instruct", "reasoning": "-Think"}[ptype]
    return f"{family.capitalize()}{gen}-{size / 1e9:g}B{suffix}"


def true_nll(family: str, order: float, size: float, ptype: str) -> float:
    """The NLL per response the fabricated scores are drawn around."""
    return (
        3.0
        - 0.3 * math.log10(size / 1e9)
        + TYPE_SHIFT[ptype]
        + FAMILY_SHIFT[family]
        - 0.15 * (order - 1)
    )


def _models(con, truth: Truth) -> list[dict]:
    rows = []
    mid = next_id(con, "models", "model_id")
    for family, gen, order, sizes, types in FAMILIES:
        for size in sizes:
            base = model_name(family, gen, size, "base")
            for ptype in types:
                name = model_name(family, gen, size, ptype)
                rows.append(
                    dict(
                        model_id=mid,
                        name=name,
                        source=f"example/{name}",
                        family=family,
                        generation=gen,
                        generation_order=order,
                        n_params=int(size),
                        post_training=ptype,
                        base_model=None if ptype == "base" else base,
                    )
                )
                truth.model_mean[name] = true_nll(family, order, size, ptype)
                truth.n_params[name] = int(size)
                mid += 1
    df = pd.DataFrame(rows)
    con.register("_ex_models", df)
    con.execute(
        "INSERT INTO models (model_id, name, source, family, generation, generation_order,"
        " n_params, post_training, base_model) SELECT model_id, name, source, family,"
        " generation, generation_order, n_params, post_training, base_model FROM _ex_models"
    )
    con.unregister("_ex_models")
    return rows


def _scores(con, models: list[dict], truth: Truth, rng: np.random.Generator) -> None:
    resp = con.execute(
        "SELECT response_id, participant_key FROM responses ORDER BY response_id"
    ).fetchall()
    resp = pd.DataFrame(resp, columns=["response_id", "participant_key"])
    keys = resp["participant_key"].unique()
    person = pd.Series(rng.normal(0, 0.3, len(keys)), index=keys)  # shared by all models
    run_id = next_id(con, "score_runs", "run_id")
    runs, frames = [], []
    for m in models:
        conditions = ["plain"] + (
            ["persona"] if m["family"] == "qwen" and m["generation"] == "3" else []
        )
        for cond in conditions:
            mu = truth.model_mean[m["name"]] + (-0.02 if cond == "persona" else 0.0)
            nll = (
                mu + person.loc[resp["participant_key"]].to_numpy() + rng.normal(0, 0.5, len(resp))
            )
            frames.append(
                pd.DataFrame(
                    {
                        "run_id": run_id,
                        "response_id": resp["response_id"],
                        "nll": nll,
                        "n_tokens": rng.integers(1, 6, len(resp)),
                        "first_token_nll": nll * 0.6,
                        "top1_all": rng.random(len(resp)) < 0.2,
                        "top1_first": rng.random(len(resp)) < 0.4,
                        "first_token_entropy": rng.uniform(1, 4, len(resp)),
                    }
                )
            )
            runs.append((run_id, m["name"], cond, "complete"))
            if cond == "plain":
                truth.runs[m["name"]] = run_id
            run_id += 1
    # An interrupted run the report must flag and the figures must ignore.
    runs.append((run_id, models[0]["name"], "plain", "failed"))
    frames.append(
        pd.DataFrame(
            {
                "run_id": run_id,
                "response_id": resp["response_id"][:5],
                "nll": 99.0,
                "n_tokens": 1,
                "first_token_nll": 99.0,
                "top1_all": False,
                "top1_first": False,
                "first_token_entropy": 1.0,
            }
        )
    )
    for rid, model, cond, status in runs:
        con.execute(
            "INSERT INTO score_runs (run_id, model, condition, scorer, selection, settings, dtype,"
            " device, tokenizer_sha256, weights_sha256, psystats_version, started_at, finished_at,"
            " status, n_participants, n_responses, n_skipped, counts) VALUES (?, ?, ?, 'psystats',"
            " '{}', ?, 'float32', 'cpu', ?, ?, 'example', now(), now(), ?, ?, ?, 0, '{}')",
            [
                rid,
                model,
                cond,
                '{"tokenization": "segments", "token_budget": 8192, "context": "skip"}',
                "ab" * 32,
                f"{rid:064x}",
                status,
                len(keys),
                len(resp),
            ],
        )
    scores = pd.concat(frames, ignore_index=True)
    con.register("_ex_scores", scores)
    con.execute("INSERT INTO scores SELECT * FROM _ex_scores")
    con.unregister("_ex_scores")


def _idata(posterior: dict, coords: dict, dims: dict, rng, *, ppc_cells: int = 0):
    """InferenceData with draws ~ Normal(value, sd) for each (value, sd) given."""
    import arviz as az

    chains, draws = 4, 250
    post = {}
    for name, (value, sd) in posterior.items():
        value = np.asarray(value, dtype=float)
        post[name] = value + sd * rng.standard_normal((chains, draws, *value.shape))
    groups = dict(posterior=post, coords=coords, dims=dims)
    if ppc_cells:
        # A calibrated model: each draw's cell means scatter around the truth, observations
        # and replications are those means plus noise of sd se; the pointwise
        # log-likelihood is the same normal density (what LOO-PIT needs).
        truth = rng.normal(0.3, 0.3, ppc_cells)
        se = 0.1
        means = truth + rng.normal(0, 0.05, (chains, draws, ppc_cells))
        obs = truth + rng.normal(0, se, ppc_cells)
        groups["observed_data"] = {"d_bar": obs}
        groups["posterior_predictive"] = {
            "d_bar": means + rng.normal(0, se, (chains, draws, ppc_cells))
        }
        groups["log_likelihood"] = {
            "d_bar": -0.5 * ((obs - means) / se) ** 2 - np.log(se * np.sqrt(2 * np.pi))
        }
        groups["coords"] = {**coords, "cell": np.arange(ppc_cells)}
        groups["dims"] = {**dims, "d_bar": ["cell"]}
    return az.from_dict(**groups)


def ppc_summary(idata) -> dict:
    """The stored summary of a predictive check, as the pipeline writes it (in sample)."""
    obs = idata.observed_data["d_bar"].values
    rep = idata.posterior_predictive["d_bar"].values.reshape(-1, obs.size)
    lo, hi = np.quantile(rep, [0.05, 0.95], axis=0)
    return {"coverage_90": float(np.mean((obs >= lo) & (obs <= hi))), "draws": len(rep)}


def _diagnostics(idata, passed: bool = True) -> dict:
    from psystats.stats.sampling import diagnose

    d = diagnose(idata).to_dict()
    if not passed:
        d["passed"] = False
        d["problems"] = list(d.get("problems") or []) + ["example: max R-hat 1.04 > 1.01"]
    return d


# Which fits read which models (fits.selection.runs, as the real analyses record
# it): the persona fit only the Qwen 3 models scored with a persona, the
# accuracy fit only the Llama models, the others every model.
def _reads(kind: str, name: str) -> bool:
    if kind == "persona":
        return name.startswith("Qwen3")
    if kind == "accuracy":
        return name.startswith("Llama")
    return True


# The sampling attempts the retry rule discarded (summary.sampler.redrawn), for one kind.
REDRAWN = {
    "generations": [
        {"draws": 125, "target_accept": 0.95, "problems": ["example: 3 divergences"]},
    ]
}


def _save(con, kind, idata, truth: Truth, netcdf_dir, **kw) -> int:
    from psystats.stats.store import save_fit

    runs = {m: [r] for m, r in truth.runs.items() if _reads(kind, m)}
    kw.setdefault("selection", {})
    kw["selection"] = {**kw["selection"], "runs": runs}
    failed = kind in truth.failed
    fit_id = save_fit(
        con,
        kind=kind,
        idata=idata,
        netcdf_dir=netcdf_dir,
        condition="plain",
        scale="nats",
        seconds=1.0,
        diagnostics=_diagnostics(idata, passed=not failed),
        sampler=dict(
            sampler="example",
            chains=4,
            draws=250,
            tune=0,
            seed=0,
            **({"redrawn": REDRAWN[kind]} if kind in REDRAWN else {}),
        ),
        **kw,
    )
    truth.fits[kind] = fit_id
    return fit_id


def _effects(con, models, truth, rng, netcdf_dir) -> None:
    pairs = [f"{m['name']} vs {m['base_model']}" for m in models if m["base_model"]]
    types = ["instruct", "reasoning"]
    fams = ["llama", "qwen"]
    # Known pair x domain effects: alternating clear and null effects.
    pde = np.array(
        [[0.5 if (i + j) % 2 == 0 else 0.0 for j in range(len(DOMAINS))] for i in range(len(pairs))]
    )
    values = {
        "intercept": (0.45, 0.03),
        "type": ([0.4, 0.6], 0.05),
        "family": ([0.05, -0.05], 0.04),
        "size_slope": (-0.1, 0.02),
        "generation_slope": (-0.05, 0.03),
        "generation_slope_family": ([0.02, -0.02], 0.03),
        "domain": ([0.1, -0.2, 0.1], 0.05),
        "sigma_experiment": (0.2, 0.03),
        "sigma_pair": (0.1, 0.02),
        "pair_domain_effect": (pde, 0.2),
    }
    # As in psystats.stats.effects: a variable may not share its dimension's name,
    # so dims are "<name>_level"; the store writes coords back as "<name>".
    coords = {
        "type_level": types,
        "family_level": fams,
        "domain_level": list(DOMAINS),
        "pair_level": pairs,
    }
    dims = {
        "type": ["type_level"],
        "family": ["family_level"],
        "generation_slope_family": ["family_level"],
        "domain": ["domain_level"],
        "pair_domain_effect": ["pair_level", "domain_level"],
    }
    idata = _idata(values, coords, dims, rng, ppc_cells=40)
    truth.effects = {k: v[0] for k, v in values.items()}
    _save(
        con,
        "effects",
        idata,
        truth,
        netcdf_dir,
        spec={
            "terms": [
                "type",
                "family",
                "size_slope",
                "generation_slope",
                "domain",
                "pair_domain_effect",
            ],
            "coding": "sum-to-zero",
        },
        priors={"intercept": "Normal(0, 1)", "sigma_*": "HalfNormal(0.5)"},
        selection={"condition": "plain", "pairs": len(pairs)},
        summary={"ppc": ppc_summary(idata)},
    )


def _generations(con, models, truth, rng, netcdf_dir) -> None:
    fams = ["llama", "qwen"]
    gens = ["2.5", "3", "3.1"]
    valid = {("qwen", "2.5"), ("qwen", "3"), ("llama", "3"), ("llama", "3.1")}
    base = np.array(
        [[3.0 - 0.2 * gens.index(g) if (f, g) in valid else 0.0 for g in gens] for f in fams]
    )
    gap = np.array(
        [[0.3 + 0.1 * gens.index(g) if (f, g) in valid else 0.0 for g in gens] for f in fams]
    )
    values = {
        "base_nll": (base, 0.05),
        "gap": (gap, 0.05),
        "base_slope": ([-0.2, -0.2], 0.03),
        "gap_slope": ([0.1, 0.1], 0.03),
    }
    dims = {
        "base_nll": ["family", "generation"],
        "gap": ["family", "generation"],
        "base_slope": ["family"],
        "gap_slope": ["family"],
    }
    idata = _idata(values, {"family": fams, "generation": gens}, dims, rng)
    fit_id = _save(
        con,
        "generations",
        idata,
        truth,
        netcdf_dir,
        summary={"p_gap_grows_while_base_falls": {"llama": 0.97, "qwen": 0.95}},
    )
    # A family has only its own generations: drop the grid's empty corners.
    for f, g in [(f, g) for f in fams for g in gens if (f, g) not in valid]:
        con.execute(
            "DELETE FROM fit_params WHERE fit_id = ? AND coords->>'family' = ? "
            "AND coords->>'generation' = ?",
            [fit_id, f, g],
        )


def _persona(con, truth, rng, netcdf_dir) -> None:
    values = {"persona_effect": ([-0.02, 0.0, 0.005], 0.01)}
    idata = _idata(
        values,
        {"post_training": ["base", "instruct", "reasoning"]},
        {"persona_effect": ["post_training"]},
        rng,
    )
    _save(
        con,
        "persona",
        idata,
        truth,
        netcdf_dir,
        summary={
            "rope": [-0.01, 0.01],
            "p_in_rope": {"base": 0.16, "instruct": 0.68, "reasoning": 0.65},
        },
    )


def _accuracy(con, truth, rng, netcdf_dir) -> None:
    values = {
        "accuracy_gap": ([-0.3, -0.4], 0.05),
        "accuracy_gap_calibrated": ([-0.05, -0.1], 0.05),
    }
    idata = _idata(
        values,
        {"post_training": ["instruct", "reasoning"]},
        {"accuracy_gap": ["post_training"], "accuracy_gap_calibrated": ["post_training"]},
        rng,
    )
    _save(
        con,
        "accuracy",
        idata,
        truth,
        netcdf_dir,
        summary={"gap_survives_calibration": {"instruct": False, "reasoning": True}},
    )


def fabricate(
    con,
    *,
    kinds=ALL_KINDS,
    seed: int = 0,
    netcdf_dir: str | Path | None = None,
    failed: tuple[str, ...] = (),
) -> Truth:
    """Write example models, scores and fits of ``kinds`` into ``con``; returns the truth.

    The warehouse must already hold responses (ingest a study first).  Fits
    of the kinds in ``failed`` are stored with ``passed = false`` and a
    failed gate in their diagnostics.
    """
    rng = np.random.default_rng(seed)
    truth = Truth(failed=tuple(failed))
    with transaction(con):
        models = _models(con, truth)
        _scores(con, models, truth, rng)
    if "effects" in kinds:
        _effects(con, models, truth, rng, netcdf_dir)
    if "generations" in kinds:
        _generations(con, models, truth, rng, netcdf_dir)
    if "persona" in kinds:
        _persona(con, truth, rng, netcdf_dir)
    if "accuracy" in kinds:
        _accuracy(con, truth, rng, netcdf_dir)
    return truth


def full_copy(small_warehouse: Path, root: Path, **kw) -> tuple[Path, Truth]:
    """A copy of ``small_warehouse`` in ``root`` with everything :func:`fabricate` writes."""
    import shutil

    from psystats.warehouse import db as warehouse_db

    db = root / "full.duckdb"
    shutil.copy(small_warehouse, db)
    con = warehouse_db.open(db, "write", create=True)
    truth = fabricate(con, netcdf_dir=root / "fits", **kw)
    con.close()
    return db, truth


def add_floor(
    con,
    name: str = "baseline:uniform",
    nll: float = 4.0,
    seed: int = 1,
    experiments: list[str] | None = None,
    condition: str = "plain",
) -> int:
    """Register a floor (``post_training = 'baseline'``) with a complete run whose response
    NLLs scatter around ``nll``, ``n_tokens`` NULL as a baseline scorer writes them
    (scoring/baselines.py), over every response (or those of ``experiments``, as
    baseline:uniform skips experiments without an option set); returns the run id."""
    rng = np.random.default_rng(seed)
    where = ""
    if experiments:
        where = "WHERE experiment IN (" + ", ".join("?" * len(experiments)) + ")"
    resp = [
        r
        for (r,) in con.execute(
            f"SELECT response_id FROM responses {where} ORDER BY response_id", experiments or []
        ).fetchall()
    ]
    run_id = next_id(con, "score_runs", "run_id")
    with transaction(con):
        con.execute(
            "INSERT INTO models (model_id, name, source, post_training) VALUES (?, ?, ?, 'baseline')",
            [next_id(con, "models", "model_id"), name, name],
        )
        con.execute(
            "INSERT INTO score_runs (run_id, model, condition, scorer, selection, settings, dtype,"
            " device, psystats_version, started_at, finished_at, status, n_participants,"
            " n_responses, n_skipped, counts) VALUES (?, ?, ?, 'baseline', '{}', '{}',"
            " NULL, NULL, 'example', now(), now(), 'complete', 0, ?, 0, '{}')",
            [run_id, name, condition, len(resp)],
        )
        scores = pd.DataFrame(
            {
                "run_id": run_id,
                "response_id": resp,
                "nll": nll + rng.normal(0, 0.2, len(resp)),
                "n_tokens": None,
                "first_token_nll": nll,
                "top1_all": False,
                "top1_first": False,
                "first_token_entropy": 1.0,
            }
        )
        scores["n_tokens"] = scores["n_tokens"].astype("Int64")
        con.register("_ex_floor", scores)
        con.execute("INSERT INTO scores SELECT * FROM _ex_floor")
        con.unregister("_ex_floor")
    return run_id


# The task-information gain (history:0 − plain) per post-training type of the Qwen 3
# models (the ones with several types) that add_task_information writes.
GAIN = {"base": 0.3, "instruct": 0.1, "reasoning": 0.2}


def add_task_information(con, truth: Truth, netcdf_dir, seed: int = 2) -> int:
    """Qwen 3 models scored under ``history:0`` (their plain scores plus a known gain per
    type, :data:`GAIN`, and noise) and a persona-model fit of history:0 against plain
    whose draws are centred on those gains; returns the fit id."""
    from psystats.stats.store import save_fit

    rng = np.random.default_rng(seed)
    models = {
        name: ptype
        for name, ptype in con.execute(
            "SELECT name, post_training FROM models WHERE name LIKE 'Qwen3%' ORDER BY name"
        ).fetchall()
    }
    run_id = next_id(con, "score_runs", "run_id")
    runs: dict[str, list[int]] = {}
    with transaction(con):
        for name, ptype in models.items():
            plain = truth.runs[name]
            con.execute(
                "INSERT INTO score_runs SELECT * REPLACE (? AS run_id, 'history:0' AS condition) "
                "FROM score_runs WHERE run_id = ?",
                [run_id, plain],
            )
            rows = pd.DataFrame(
                con.execute(
                    "SELECT * FROM scores WHERE run_id = ? ORDER BY response_id", [plain]
                ).fetchdf()
            )
            rows["run_id"] = run_id
            rows["nll"] = rows["nll"] + GAIN[ptype] + rng.normal(0, 0.2, len(rows))
            con.register("_ex_history", rows)
            con.execute("INSERT INTO scores SELECT * FROM _ex_history")
            con.unregister("_ex_history")
            runs[name] = [plain, run_id]
            run_id += 1
    types = sorted(set(models.values()))
    idata = _idata(
        {
            "persona_effect": ([GAIN[t] for t in types], 0.02),
            "persona_model_effect": ([GAIN[t] for t in models.values()], 0.03),
        },
        {"post_training": types, "model": list(models)},
        {"persona_effect": ["post_training"], "persona_model_effect": ["model"]},
        rng,
    )
    return save_fit(
        con,
        kind="persona",
        idata=idata,
        netcdf_dir=netcdf_dir,
        condition="history:0 vs plain",
        scale="nats",
        seconds=1.0,
        name="task-information gain",
        selection={"persona_condition": "history:0", "plain_condition": "plain", "runs": runs},
        spec={"kind": "persona", "model_effects": "fixed"},
        diagnostics=_diagnostics(idata),
        summary={"units": {"persona_effect": "nats", "persona_model_effect": "nats"}},
        sampler=dict(sampler="example", chains=4, draws=250, tune=0, seed=0),
    )


def add_participants(con, truth: Truth, netcdf_dir, seed: int = 4) -> int:
    """A participants fit (``psystats fit participants``): an age slope and gender levels,
    stored with the summary the analysis writes (``stats.participants.summarise_participants``)."""
    rng = np.random.default_rng(seed)
    idata = _idata(
        {
            "effect": ([0.04], 0.01),
            "slope": ([0.004], 0.001),
            "level_effect": ([0.02, -0.02], 0.01),
        },
        {"covariate": ["age"], "level": ["gender=female", "gender=male"]},
        {"effect": ["covariate"], "slope": ["covariate"], "level_effect": ["level"]},
        rng,
    )
    post = idata.posterior

    def interval(x) -> dict:
        x = np.asarray(x).ravel()
        q05, q95 = np.quantile(x, [0.05, 0.95])
        return dict(mean=float(x.mean()), q05=float(q05), q95=float(q95),
                    p_positive=float(np.mean(x > 0)))  # fmt: skip

    summary = {
        "outcome": "gap",
        "missing": {"age": 3, "gender": 0},
        "participants": dict(selected=40, used=37, left_out=3, rows=37, cells=2),
        "covariates": {
            "age": dict(
                kind="numeric",
                missing=3,
                mean=40.0,
                sd=10.0,
                effect=interval(post["effect"]),
                slope=interval(post["slope"]),
            ),  # fmt: skip
            "gender": dict(
                kind="categorical",
                missing=0,
                levels={
                    lv: {
                        **interval(post["level_effect"].sel(level=f"gender={lv}")),
                        "participants": n,
                    }  # fmt: skip
                    for lv, n in (("female", 20), ("male", 17))
                },
                sigma_level=None,
            ),
        },
        "units": {
            "effect": "nats per SD of the covariate",
            "slope": "nats per unit of the covariate",
            "level_effect": "nats",
        },  # fmt: skip
    }
    return _save(con, "participants", idata, truth, netcdf_dir, summary=summary)
