"""Simulated data with known effects: for recovery, calibration, tests and benchmarks.

* :func:`simulate_cells` draws a cell table (what :func:`psystats.stats.cells.with_scale`
  returns) from the effects model itself, at a chosen size, and returns the
  true parameter values beside it.  Grouped effects are drawn under the same
  constraints the model uses (sum to zero, experiments within domains, pairs
  within type and family), so the truth is exactly what the model estimates.
  Cell statistics are drawn from their exact sampling distribution under
  Gaussian participants: mean ~ N(mu, s / sqrt(n)), (n - 1) var / s^2 ~ chi2(n - 1).
* :func:`simulate_warehouse` writes registered models, complete score runs and
  per-response scores into a real warehouse so the whole path
  (SQL -> cells -> fit -> fits/fit_params) runs as it does on real scores.
* :func:`add_synthetic_experiments` adds synthetic participants and responses
  when the warehouse has too few experiments or domains.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.schema import DOMAINS
from psystats.warehouse.sql import next_id, scalar, transaction, where_clause

from .effects_design import prepare
from .effects_spec import EffectsSpec

TRUE_SCALES = dict(
    intercept=0.15,
    type=0.1,
    sigma_family=0.1,
    size_slope=-0.03,
    generation_slope=0.05,
    sigma_generation_family=0.03,
    sigma_domain=0.1,
    sigma_type_domain=0.05,
    sigma_experiment=0.1,
    sigma_pair=0.05,
    sigma_cell=0.05,
)

FAMILIES = ("qwen", "llama", "olmo", "gemma", "mistral", "phi", "smollm", "falcon")
TYPES = ("instruct", "reasoning", "code", "math", "vision")


@dataclass
class Simulated:
    """A simulated cell table and the parameter values that generated it."""

    cells: pd.DataFrame
    truth: dict[str, Any]  # name -> float, or pandas Series/DataFrame indexed by level
    design: dict = field(default_factory=dict)


def simulate_design(
    n_pairs: int,
    n_experiments: int,
    *,
    n_families: int = 4,
    n_types: int = 3,
    n_domains: int = 11,
    seed: int = 0,
    participants: tuple[float, float] = (60, 0.8),
    missing: float = 0.0,
) -> pd.DataFrame:
    """A cell table layout (pairs x experiments, metadata, n per cell) without outcomes.

    Participants per experiment are log-normal (median, log-SD) and at least 5;
    ``missing`` is the share of (pair, experiment) cells left out at random.
    """
    rng = np.random.default_rng(seed)
    fams = [
        FAMILIES[i % len(FAMILIES)] + ("" if i < len(FAMILIES) else str(i))
        for i in range(n_families)
    ]
    types = list(TYPES[:n_types])
    doms = list(DOMAINS[:n_domains])
    pairs = []
    for p in range(n_pairs):
        fam = fams[p % n_families]
        typ = types[(p // n_families) % n_types]
        gen = 1 + (p // (n_families * n_types)) % 4
        npar = float(np.exp(rng.uniform(np.log(1e8), np.log(7e10))))
        pairs.append(
            dict(
                pair=f"{fam}{gen}-{typ}-{p} vs {fam}{gen}-base-{p}",
                post_model=f"{fam}{gen}-{typ}-{p}",
                base_model=f"{fam}{gen}-base-{p}",
                post_training=typ,
                family=fam,
                generation=str(gen),
                generation_order=float(gen),
                n_params=int(npar),
            )
        )
    exps = []
    for e in range(n_experiments):
        n = max(5, int(round(participants[0] * np.exp(rng.normal(0, participants[1])))))
        exps.append(
            dict(
                experiment=f"exp{e:03d}",
                study=f"study{e:03d}",
                domain=doms[e % n_domains],
                n=n,
                s=float(np.exp(rng.normal(np.log(0.3), 0.3))),
            )
        )
    df = pd.DataFrame(pairs).merge(pd.DataFrame(exps), how="cross")
    if missing > 0:
        df = df[rng.uniform(size=len(df)) >= missing]
    return df.reset_index(drop=True)


def simulate_cells(
    n_pairs: int = 20,
    n_experiments: int = 30,
    *,
    seed: int = 0,
    scales: dict | None = None,
    design: pd.DataFrame | None = None,
    spec: EffectsSpec | None = None,
    **design_kw,
) -> Simulated:
    """Cells drawn from the effects model with known parameters (see the module docstring).

    ``scales`` overrides :data:`TRUE_SCALES` (fixed values for intercept and
    slopes, SDs for the grouped effects).  Returns cells with the columns of
    ``with_scale(build_cells(...), "nats")``.
    """
    rng = np.random.default_rng(seed + 1_000_003)
    sc = dict(TRUE_SCALES, **(scales or {}))
    d = (
        design.copy()
        if design is not None
        else simulate_design(n_pairs, n_experiments, seed=seed, **design_kw)
    )
    d["y"], d["se"] = 0.0, 1.0  # placeholders: prepare() only needs the layout here
    data = prepare(d, spec or EffectsSpec(parameterization="noncentred"))
    co = data.coords
    truth: dict[str, object] = {"intercept": sc["intercept"]}

    def draw(term: str, sd: float) -> np.ndarray:
        B = data.bases[term]
        return B @ rng.normal(0, sd, B.shape[1])

    def grouped(term: str) -> np.ndarray:
        """Draw grouped effect ``term`` (SD ``sigma_<term>``) and record it and its SD."""
        effect = draw(term, sc[f"sigma_{term}"])
        truth[term] = pd.Series(effect, index=co[term])
        truth[f"sigma_{term}"] = sc[f"sigma_{term}"]
        return effect

    P, E, T, D = (len(co[k]) for k in ("pair", "experiment", "type", "domain"))
    pair_part = np.full(P, sc["intercept"])
    if "type" in data.active:
        t = draw("type", sc["type"])
        truth["type"] = pd.Series(t, index=co["type"])
        truth["type_mean"] = truth["type"] + sc["intercept"]
        pair_part += t[data.pair_type]
    if "family" in data.active:
        pair_part += grouped("family")[data.pair_family]
    if "size" in data.active:
        truth["size_slope"] = sc["size_slope"]
        pair_part += sc["size_slope"] * data.size_x
    if "generation" in data.active:
        truth["generation_slope"] = sc["generation_slope"]
        slope = np.full(P, sc["generation_slope"])
        if "generation_family" in data.active:
            dev = draw("generation_family", sc["sigma_generation_family"])
            gf = pd.Series(sc["generation_slope"] + dev, index=co["generation_family"])
            truth["generation_slope_family"] = gf
            truth["sigma_generation_family"] = sc["sigma_generation_family"]
            fam_names = np.array(co["family"])[data.pair_family]
            slope = np.array([gf.get(f, sc["generation_slope"]) for f in fam_names])
        pair_part += slope * data.generation_x
    if "pair" in data.active:
        pair_part += grouped("pair")
    truth["pair_mean"] = pd.Series(pair_part, index=co["pair"])
    exp_part = np.zeros(E)
    dom = np.zeros(D)
    if "domain" in data.active:
        dom = grouped("domain")
        exp_part += dom[data.experiment_domain]
    if "experiment" in data.active:
        exp_part += grouped("experiment")
    td = np.zeros((T, D))
    if "type_domain" in data.active:
        td = draw("type_domain", sc["sigma_type_domain"]).reshape(T, D)
        truth["type_domain"] = pd.DataFrame(td, index=co["type"], columns=co["domain"])
        truth["sigma_type_domain"] = sc["sigma_type_domain"]
    truth["pair_domain_effect"] = pd.DataFrame(
        pair_part[:, None] + dom[None, :] + td[data.pair_type, :],
        index=co["pair"],
        columns=co["domain"],
    )
    truth["sigma_cell"] = sc["sigma_cell"]

    c = data.cells
    mu = (
        pair_part[c.pair_idx]
        + exp_part[c.experiment_idx]
        + td[c.type_idx, c.domain_idx]
        + rng.normal(0, sc["sigma_cell"], len(c))
    )
    n = c["n"].to_numpy(float)
    s = c["s"].to_numpy(float)
    mean = rng.normal(mu, s / np.sqrt(n))
    var = s**2 * rng.chisquare(n - 1) / (n - 1)
    out = d.drop(columns=["y", "se", "s"]).copy()
    out["n"] = n.astype(int)
    out["mean"], out["var"] = mean, var
    # Per-model participant SDs, for the standardised scale: about 1 nat.
    out["sd_post"] = np.exp(rng.normal(0, 0.2, len(out)))
    out["sd_base"] = np.exp(rng.normal(0, 0.2, len(out)))
    out["pooled_sd"] = np.sqrt((out.sd_post**2 + out.sd_base**2) / 2)
    out["y"], out["se"], out["scale"] = mean, np.sqrt(var / n), "nats"
    return Simulated(cells=out, truth=truth, design={"scales": sc})


# ---------------------------------------------------------------------------
# Warehouse


def add_synthetic_experiments(
    con,
    *,
    n_experiments: int = 6,
    domains: Sequence[str] | None = None,
    participants: int = 12,
    responses: int = 5,
    seed: int = 0,
    study: str = "psystats-synthetic",
) -> list[str]:
    """Add synthetic experiments (participants, transcripts, responses) to a warehouse.

    Experiment ``k`` is in ``domains[k % len(domains)]`` (default: the first
    three Psych-201 domains); ``None`` in ``domains`` leaves that experiment
    without a domain.  Returns the experiment names.  One transaction.
    """
    rng = np.random.default_rng(seed)
    domains = list(domains) if domains is not None else list(DOMAINS[:3])
    names = []
    with transaction(con):
        pk = next_id(con, "participants", "participant_key")
        rid = next_id(con, "responses", "response_id")
        ingest_id = next_id(con, "ingests", "ingest_id")
        con.execute(
            "INSERT INTO ingests (ingest_id, source_path, study, content_sha256, started_at,"
            " finished_at, status, psystats_version) VALUES (?, 'simulated', ?, '', "
            "current_timestamp, current_timestamp, 'complete', 'simulated')",
            [ingest_id, study],
        )
        con.execute(
            "INSERT INTO studies (study, source_path) SELECT ?, 'simulated' "
            "WHERE NOT EXISTS (SELECT 1 FROM studies WHERE study = ?)",
            [study, study],
        )
        part_rows, tr_rows, resp_rows = [], [], []
        for e in range(n_experiments):
            exp = f"{study}/exp{e:02d}"
            names.append(exp)
            dom = domains[e % len(domains)] if domains else None
            con.execute(
                "INSERT INTO experiments VALUES (?, ?, ?, ?, ?)",
                [exp, study, dom, [dom] if dom else [], None],
            )
            for i in range(participants):
                choices = rng.choice(["A", "B", "C"], size=responses)
                text = " ".join(f"Trial {j}: You press <<{c}>>." for j, c in enumerate(choices))
                sha = hashlib.sha256(text.encode()).hexdigest()
                part_rows.append((pk, study, exp, str(i), responses, sha, ingest_id, i + 1))
                tr_rows.append((pk, text, sha, len(text)))
                pos = 0
                for j, ch in enumerate(choices):
                    start = text.index("<<", pos) + 2
                    resp_rows.append(
                        (rid, pk, study, exp, str(i), j, str(ch), start, start + len(ch))
                    )
                    pos = start
                    rid += 1
                pk += 1
        con.executemany(
            "INSERT INTO participants (participant_key, study, experiment, participant,"
            " n_responses, content_sha256, ingest_id, line) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            part_rows,
        )
        con.executemany("INSERT INTO transcripts VALUES (?, ?, ?, ?)", tr_rows)
        con.executemany(
            "INSERT INTO responses (response_id, participant_key, study, experiment,"
            " participant, response_index, text, char_start, char_end)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            resp_rows,
        )
    return names


def simulated_models(
    families: Sequence[str], generations: Sequence[int], types: Sequence[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(models, pairs): one base per (family, generation), one post-trained model per type."""
    models: list[dict[str, Any]] = []
    pair_rows: list[dict[str, Any]] = []
    for fi, fam in enumerate(families):
        for gi, g in enumerate(generations):
            # Sizes that are not a sum of a family part and a generation part, so the
            # size slope stays separable from family and generation effects.
            npar = int(1e8 * 3 ** ((fi * 7 + gi * 3 + fi * gi * 5) % 11))
            meta = dict(family=fam, generation=str(g), generation_order=float(g), n_params=npar)
            base = f"sim-{fam}{g}-base"
            models.append(dict(name=base, post_training="base", base_model=None, **meta))
            for t in types:
                post = f"sim-{fam}{g}-{t}"
                models.append(dict(name=post, post_training=t, base_model=base, **meta))
                pair_rows.append(
                    dict(
                        pair=f"{post} vs {base}",
                        post_model=post,
                        base_model=base,
                        post_training=t,
                        **meta,
                    )
                )
    return models, pair_rows


def draw_cell_means(design: pd.DataFrame, truth: dict, rng) -> dict[tuple[str, str], float]:
    """Each cell's mean mu_cell under the truth, with its cell residual (sigma_cell) drawn."""
    mu = {}
    for row in design.itertuples():
        m = truth["pair_mean"][row.pair]
        dom = row.domain if isinstance(row.domain, str) else "(no domain)"
        if "domain" in truth:
            m += truth["domain"].get(dom, 0.0)
        if "type_domain" in truth and dom in truth["type_domain"].columns:
            m += truth["type_domain"].loc[row.post_training, dom]
        if "experiment" in truth:
            m += truth["experiment"][row.experiment]
        mu[(row.pair, row.experiment)] = m + rng.normal(0, truth["sigma_cell"])
    return mu


def draw_scores(
    resp: pd.DataFrame,
    models: Sequence[dict],
    pair_rows: Sequence[dict],
    mu: dict[tuple[str, str], float],
    rng,
    participant_sd: float,
) -> dict[str, np.ndarray]:
    """Per-response NLL of every simulated model (aligned with ``resp``), as written.

    Base models: 1 + Exponential(1) per response.  Post-trained models: their
    base's NLL + d_i, with d_i ~ N(mu_cell, participant_sd) drawn per
    participant, so a participant's mean difference is exactly d_i.
    """
    nll = {}
    for m in models:
        if m["base_model"] is None:
            nll[m["name"]] = 1.0 + rng.exponential(1.0, len(resp))
    participants = resp[["participant_key", "experiment"]].drop_duplicates()
    for pr in pair_rows:
        d = {
            row.participant_key: rng.normal(mu[(pr["pair"], row.experiment)], participant_sd)
            for row in participants.itertuples()
        }
        nll[pr["post_model"]] = nll[pr["base_model"]] + resp.participant_key.map(d).to_numpy()
    return nll


def warehouse_responses(con) -> pd.DataFrame:
    resp = con.execute(
        "SELECT r.response_id, r.participant_key, r.experiment, e.domain "
        "FROM responses r LEFT JOIN experiments e USING (experiment) "
        "ORDER BY r.response_id"
    ).fetchall()
    if not resp:
        raise WarehouseError(
            "the warehouse has no responses to score: ingest studies or call "
            "add_synthetic_experiments() first"
        )
    return pd.DataFrame(resp, columns=["response_id", "participant_key", "experiment", "domain"])


def warehouse_design(
    resp: pd.DataFrame, pair_rows: Sequence[dict], participant_sd: float
) -> pd.DataFrame:
    """The cell layout (pairs x the warehouse's experiments, n participants, domain)."""
    n_by_exp = resp.groupby("experiment")["participant_key"].nunique()
    exps = pd.DataFrame(
        {"experiment": n_by_exp.index, "n": n_by_exp.to_numpy(), "s": participant_sd}
    )
    exps["domain"] = exps["experiment"].map(resp.groupby("experiment")["domain"].first())
    return pd.DataFrame(list(pair_rows)).merge(exps, how="cross")


def simulate_warehouse(
    con,
    *,
    families: Sequence[str] = ("qwen", "llama"),
    generations: Sequence[int] = (1, 2),
    types: Sequence[str] = ("instruct", "reasoning"),
    post_condition: str = "plain",
    base_condition: str | None = None,
    seed: int = 0,
    scales: dict | None = None,
    participant_sd: float = 0.3,
) -> Simulated:
    """Register simulated models and write complete score runs for every response in ``con``.

    One base per (family, generation) and one post-trained model per type on
    top of it; sizes differ per (family, generation).  Per participant i in a
    cell, d_i ~ N(mu_cell, participant_sd) where mu_cell follows the effects
    model (:func:`simulate_cells` on the warehouse's own layout); each response
    gets base NLL ~ 1 + Exponential(1) and post NLL = base NLL + d_i, so the
    participant's mean difference is exactly d_i.  Returns the truth, and as
    ``cells`` the expected cell table (the one the warehouse should yield).
    """
    base_condition = base_condition or post_condition
    rng = np.random.default_rng(seed)
    resp = warehouse_responses(con)
    models, pair_rows = simulated_models(families, generations, types)
    design = warehouse_design(resp, pair_rows, participant_sd)
    sim = simulate_cells(design=design, seed=seed, scales=scales)
    # Cell means mu (without sampling noise) are rebuilt from the truth and drawn per participant.
    mu = draw_cell_means(design, sim.truth, rng)
    nll = draw_scores(resp, models, pair_rows, mu, rng, participant_sd)
    with transaction(con):
        register_models(con, models)
        for m in models:  # bases first, then the post-trained models (run ids in that order)
            if m["base_model"] is None:
                write_run(con, m["name"], base_condition, resp.response_id, nll[m["name"]])
        for pr in pair_rows:
            post = pr["post_model"]
            write_run(con, post, post_condition, resp.response_id, nll[post])
    return sim


def register_models(con, rows: Sequence[dict]) -> None:
    """Insert simulated models (name, family, generation, generation_order, n_params,
    post_training, base_model, release_date; missing keys are NULL).  The caller holds
    the transaction."""
    for m in rows:
        con.execute(
            "INSERT INTO models (model_id, name, source, family, generation, generation_order,"
            " n_params, post_training, base_model, inferred, release_date) VALUES"
            " (nextval('model_id_seq'), ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                m["name"],
                m.get("family"),
                m.get("generation"),
                m.get("generation_order"),
                m.get("n_params"),
                m["post_training"],
                m.get("base_model"),
                json.dumps({"simulated": True}),
                m.get("release_date"),
            ],
        )


def write_run(
    con, model: str, condition: str, response_ids, nll, options: pd.DataFrame | None = None
) -> int:
    """Write one complete simulated score run (and its option scores); returns its run_id.

    ``options``: ``response_id, option, logprob`` rows for ``option_scores``.
    Every score gets ``n_tokens = 1`` (valid).  The caller holds the transaction.
    """
    run_id = int(scalar(con, "SELECT nextval('run_id_seq')"))
    con.execute(
        "INSERT INTO score_runs (run_id, model, condition, scorer, selection, settings,"
        " psystats_version, started_at, finished_at, status, n_responses, n_skipped)"
        " VALUES (?, ?, ?, 'simulated', '{}', '{}', 'simulated', current_timestamp,"
        " current_timestamp, 'complete', ?, 0)",
        [run_id, model, condition, len(nll)],
    )
    scores = pd.DataFrame(
        {
            "run_id": run_id,
            "response_id": np.asarray(response_ids),
            "nll": np.asarray(nll, dtype=float),
            "n_tokens": 1,
        }
    )
    tables = [("scores", "run_id, response_id, nll, n_tokens", scores)]
    if options is not None and len(options):
        tables.append(
            (
                "option_scores",
                "run_id, response_id, option, logprob",
                options[["response_id", "option", "logprob"]].assign(run_id=run_id),
            )
        )
    from psystats.warehouse.parquet_layout import write_rows

    for table, cols, df in tables:
        con.register("_sim_rows", df)
        try:  # the one writer of score rows: either scores layout
            write_rows(con, table, run_id, "_sim_rows", cols.split(", ")[1:])
        finally:
            con.unregister("_sim_rows")
    return run_id


def responses_frame(con, experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """response_id, participant_key, experiment, text of the warehouse's responses."""
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
