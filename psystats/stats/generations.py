"""``psystats fit generations``: base-model NLL and the post-training gap across generations.

Two questions per model family (Qwen 1.5 -> 2 -> 2.5 -> 3, Llama 2 -> 3 -> 3.1, ...):

* does the base model predict people better (lower NLL per response) in newer
  generations? (``base_nll`` by family and generation, ``base_slope`` by family)
* does post-training cost more in newer generations? (``gap`` = post-trained
  minus base NLL, by family and generation, ``gap_slope`` by family)

and the headline: the posterior probability that the gap grows while the base
NLL falls, ``P(gap_slope > 0 and base_slope < 0)`` per family
(``fits.summary["p_gap_grows_while_base_falls"]``).

Data (see ``docs/model.md`` for the model in math):

* **Base cells** (base model, experiment): the mean over participants of each
  participant's mean NLL per response.  Within a (family, experiment) the
  family's base models saw the same participants, so their cell means are
  paired: we keep the participants scored by all of them and use the
  within-participant residual SD of the two-way (participant + model)
  decomposition as the cell's sampling SD.  With the participant effects free,
  this is the exact Gaussian likelihood of the model means (the participants'
  common mean is absorbed by the (family, experiment) intercept).
* **Gap cells** (post/base pair, experiment): each participant's paired
  difference d = mean NLL under the post-trained model minus under its base,
  summarised by (n, mean, SD) as in the effects model.

``base_nll`` and ``gap`` are free per (family, generation); the slopes are
their least-squares trend within the family on the generation scale shared
with ``fit effects`` (:mod:`.generation_scale`: rank by default, so a slope is
in nats per generation step; or the version number, or years), derived
quantities, so no straight-line assumption is forced on the levels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.validators import OneOf

from .analysis_common import (
    cell_label,
    generation_coords,
    log_size_term,
    prob,
    resolve_prior_scales,
    without_thin_cells,
)
from .cells import CELL_COLUMNS
from .data import load_models
from .generation_scale import (
    DEFAULT_GENERATION_SCALE,
    GENERATION_SCALES,
    GENERATION_STEP,
    check_generation_scale,
    generation_values,
)
from .likelihoods import marginal_normal
from .options import (
    AnalysisSpec,
    Selection,
    options_of,
    validated,
)
from .pipeline import FitCall, FitResult, ParamRows, built, fit_entry
from .units import NATS, generation_slope_unit, same_unit, size_slope_unit

KIND = "generations"


# --------------------------------------------------------------------------- priors


@dataclass
class GenerationsPriors:
    """Prior scales of the generations model (nats per response).

    ``None`` means "scale from the data" (like rstanarm's autoscaling): with
    S_b the SD of the base cell means (at least 0.1) and S_g the root mean
    square of the gap cell means (at least 0.05), the defaults are

    * ``base_nll[f, g] ~ Normal(mean of family f's base cells, 2.5 S_b)``
    * ``sigma_base_experiment ~ HalfNormal(2.5 S_b)``, ``sigma_base_cell``,
      ``sigma_base_model ~ HalfNormal(S_b)``, ``size_slope_base ~ Normal(0, S_b)``
    * ``gap[f, g] ~ Normal(0, 2.5 S_g)``, ``type ~ Normal(0, 2.5 S_g)``
    * ``sigma_gap_experiment``, ``sigma_gap_pair``, ``sigma_gap_cell ~ HalfNormal(S_g)``,
      ``size_slope_gap ~ Normal(0, S_g)``

    The resolved numbers are stored in ``fits.priors``.
    """

    base_level_sd: float | None = None
    base_experiment_sd: float | None = None
    base_cell_sd: float | None = None
    base_model_sd: float | None = None
    base_size_sd: float | None = None
    gap_sd: float | None = None
    gap_type_sd: float | None = None
    gap_experiment_sd: float | None = None
    gap_pair_sd: float | None = None
    gap_cell_sd: float | None = None
    gap_size_sd: float | None = None

    def resolved(self, data: GenerationsData) -> dict[str, float]:
        """The prior scales with every ``None`` replaced by its data-derived default."""
        s_b = max(float(np.std(data.base_cells["mean"], ddof=0)), 0.1)
        s_g = max(float(np.sqrt(np.mean(np.square(data.gap_cells["mean"])))), 0.05)
        auto = dict(
            base_level_sd=2.5 * s_b,
            base_experiment_sd=2.5 * s_b,
            base_cell_sd=s_b,
            base_model_sd=s_b,
            base_size_sd=s_b,
            gap_sd=2.5 * s_g,
            gap_type_sd=2.5 * s_g,
            gap_experiment_sd=s_g,
            gap_pair_sd=s_g,
            gap_cell_sd=s_g,
            gap_size_sd=s_g,
        )
        return resolve_prior_scales(self, auto, "generations")


# --------------------------------------------------------------------------- data


@dataclass
class GenerationsData:
    """Everything the generations model sees, as plain tables.

    ``base_cells``: family, generation, generation_order, model, experiment,
    n, mean, se, log_params.  ``gap_cells``: family, generation,
    generation_order, pair, post_model, base_model, post_training,
    experiment, n, mean, sd, se, log_params.  ``generations``: family,
    generation, generation_order, has_base, has_gap, generation_x (the
    generation on ``generation_scale``, :mod:`.generation_scale`).
    ``notes``: what was dropped and why (shown by the CLI, stored in
    ``fits.selection``).
    """

    base_cells: pd.DataFrame
    gap_cells: pd.DataFrame
    generations: pd.DataFrame
    families: list[str]
    reference_type: str
    notes: list[str] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    generation_scale: str = DEFAULT_GENERATION_SCALE


def _base_cells_one(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Paired base cells of one (family, experiment); returns cells and participants dropped.

    ``frame``: model, participant_key, mean_nll for the family's base models.
    """
    wide = frame.pivot_table(
        index="participant_key", columns="model", values="mean_nll", aggfunc="first"
    )
    complete = wide.dropna()
    dropped = len(wide) - len(complete)
    n, m = complete.shape
    if n < 2:
        return pd.DataFrame(), dropped
    y = complete.to_numpy(float)
    if m >= 2:
        # Two-way decomposition: residual = y - participant mean - model mean + grand mean.
        resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
        sd = np.sqrt((resid**2).sum() / ((n - 1) * (m - 1)))
        sds = np.full(m, sd)
    else:
        sds = y.std(axis=0, ddof=1)
    cells = pd.DataFrame(
        {"model": complete.columns, "n": n, "mean": y.mean(axis=0), "se": sds / np.sqrt(n)}
    )
    return cells, dropped


def _base_models(models: pd.DataFrame, families: Sequence[str] | None, notes: list[str]):
    """The base models that can enter: selected families, family and generation known."""
    bases = models[models["post_training"] == "base"]
    if families:
        bases = bases[bases["family"].isin(list(families))]
    no_gen = bases[bases["family"].isna() | bases["generation_order"].isna()]
    if len(no_gen):
        notes.append(
            "base models without family or generation_order left out: "
            + ", ".join(sorted(no_gen.index))
            + " (set them with `psystats models set`)"
        )
        bases = bases.drop(no_gen.index)
    return bases


def _dropped_participants_note(fam: str, exp: str, dropped: int) -> str:
    return (
        f"{fam} / {exp}: {dropped} participant(s) not scored by every "
        f"base model of the family left out of the base cells"
    )


def _paired_base_cells(
    base_means: pd.DataFrame | Callable[[pd.Series], pd.DataFrame],
    bases: pd.DataFrame,
    notes: list[str],
) -> pd.DataFrame:
    """Base cells, paired within (family, experiment): aggregated in DuckDB (a callable,
    ``stats.base_cells``) or here from per-participant means (:func:`_base_cells_one`)."""
    cells = []
    if callable(base_means):  # stats.base_cells: aggregated in DuckDB, no participant rows
        sql_cells = base_means(bases["family"])
        for (fam, exp), d in sql_cells.groupby(["family", "experiment"], sort=True):
            if int(d["dropped"].iloc[0]):
                notes.append(_dropped_participants_note(fam, exp, int(d["dropped"].iloc[0])))
        ok = sql_cells[sql_cells["mean"].notna() & sql_cells["model"].notna()]
        if len(ok):
            cells.append(ok[["model", "n", "mean", "se", "family", "experiment"]])
    else:
        bm = base_means[base_means["model"].isin(bases.index)]
        for (fam, exp), frame in bm.assign(family=bm["model"].map(bases["family"])).groupby(
            ["family", "experiment"], sort=True
        ):
            c, dropped = _base_cells_one(frame)
            if dropped:
                notes.append(_dropped_participants_note(fam, exp, dropped))
            if len(c):
                c["family"], c["experiment"] = fam, exp
                cells.append(c)
    base_cells = (
        pd.concat(cells, ignore_index=True)
        if cells
        else pd.DataFrame(columns=["model", "n", "mean", "se", "family", "experiment"])
    )
    for col in ("generation", "generation_order", "n_params"):
        base_cells[col] = base_cells["model"].map(bases[col])
    return base_cells


# A gap cell: the pair's metadata as in stats.cells (the base's family and generation),
# then its sufficient statistics.
GAP_COLUMNS = [*CELL_COLUMNS[: CELL_COLUMNS.index("release_date")], "experiment", "n", "mean"]
GAP_COLUMNS += ["sd", "se"]


def _gap_cells(
    pair_cells: pd.DataFrame,
    models: pd.DataFrame,
    bases: pd.DataFrame,
    post_training: Sequence[str] | None,
    notes: list[str],
) -> pd.DataFrame:
    """Paired post - base cells (``stats.cells``) of the selected types, by the base's generation."""
    posts = models[
        (models["post_training"] != "base")
        & models["base_model"].notna()
        & models["base_model"].isin(bases.index)
    ]
    if post_training:
        posts = posts[posts["post_training"].isin(list(post_training))]
    gap_cells = pair_cells[
        pair_cells["post_model"].isin(posts.index) & pair_cells["base_model"].isin(bases.index)
    ].copy()
    gap_cells = without_thin_cells(
        gap_cells, notes, "gap cell(s) with fewer than 2 paired participants", "pair"
    )
    gap_cells["sd"] = np.sqrt(gap_cells["var"].astype(float))
    gap_cells["se"] = gap_cells["sd"] / np.sqrt(gap_cells["n"].astype(float))
    gap_cells["mean"] = gap_cells["mean"].astype(float)
    for col in ("family", "generation", "generation_order", "n_params"):
        gap_cells[col] = gap_cells["base_model"].map(bases[col])
    return gap_cells[GAP_COLUMNS].reset_index(drop=True)


def _answering_families(
    base_cells: pd.DataFrame, gap_cells: pd.DataFrame, notes: list[str]
) -> list[str]:
    """Families with base scores and pairs in two or more generations each (else an error)."""

    def gens(df):
        return (
            df.groupby("family")["generation_order"].nunique() if len(df) else pd.Series(dtype=int)
        )

    gb, gg = gens(base_cells), gens(gap_cells)
    seen = sorted(set(gb.index) | set(gg.index))
    keep = [f for f in seen if gb.get(f, 0) >= 2 and gg.get(f, 0) >= 2]
    for f in seen:
        if f not in keep:
            notes.append(
                f"family {f} left out: base scores in {gb.get(f, 0)} and post-minus-"
                f"base pairs in {gg.get(f, 0)} generation(s); both need at least 2"
            )
    if not keep:
        found = (
            ", ".join(
                f"{f}: generation(s) "
                + "/".join(
                    sorted(map(str, set(base_cells.loc[base_cells["family"] == f, "generation"])))
                )
                or "none"
                for f in seen
            )
            or "no scored base models"
        )
        raise WarehouseError(
            "fit generations needs a family with base models scored in at least two "
            "generations and post-trained models (with --base) paired to them in at least "
            f"two generations; found {found}. Register and score more generations "
            "(`psystats models add ... --base ...`, `psystats score ...`)."
        )
    return keep


def _generation_dates(
    generations: pd.DataFrame, base_cells: pd.DataFrame, gap_cells: pd.DataFrame, models
) -> tuple[pd.Series, list[str]]:
    """Each generation's release date and the models it is read from (for messages).

    A generation's date is the earliest ``release_date`` of its base models in
    the data, or of its post-trained models where no base has one.
    """
    date = models["release_date"] if "release_date" in models else pd.Series(dtype=object)
    date = pd.to_datetime(date, errors="coerce")
    out, names = [], []
    for f, g in zip(generations["family"], generations["generation"]):
        b = sorted(
            set(base_cells.loc[(base_cells.family == f) & (base_cells.generation == g), "model"])
        )
        p = sorted(
            set(gap_cells.loc[(gap_cells.family == f) & (gap_cells.generation == g), "post_model"])
        )
        days = date.reindex(b).dropna()
        if days.empty:
            days = date.reindex(p).dropna()
        out.append(days.min() if len(days) else pd.NaT)
        names.append((b or p or [f"{f} {g}"])[0])
    return pd.Series(out, index=generations.index), names


def _generations_table(
    base_cells: pd.DataFrame, gap_cells: pd.DataFrame, models: pd.DataFrame, scale: str
) -> pd.DataFrame:
    """One row per (family, generation) in the data: which cells it has, and its
    position ``generation_x`` on the generation scale (:mod:`.generation_scale`)."""
    g = pd.concat(
        [
            base_cells.assign(has_base=True, has_gap=False),
            gap_cells.assign(has_base=False, has_gap=True),
        ]
    )
    generations = (
        g.groupby(["family", "generation", "generation_order"], sort=False)
        .agg(has_base=("has_base", "any"), has_gap=("has_gap", "any"))
        .reset_index()
        .sort_values(["family", "generation_order"])
        .reset_index(drop=True)
    )
    names = None
    if scale == "date":
        generations["release_date"], names = _generation_dates(
            generations, base_cells, gap_cells, models
        )
    generations["generation_x"] = generation_values(
        generations, scale, names=names, what="every generation's base model"
    ).to_numpy(float)
    return generations


def prepare_generations(
    base_means: pd.DataFrame | Callable[[pd.Series], pd.DataFrame],
    pair_cells: pd.DataFrame,
    models: pd.DataFrame,
    *,
    families: Sequence[str] | None = None,
    post_training: Sequence[str] | None = None,
    generation_scale: str = DEFAULT_GENERATION_SCALE,
) -> GenerationsData:
    """Build the generations data from per-participant mean NLL tables.

    ``base_means``: one row per (model, experiment, participant_key) with
    ``mean_nll`` under the base condition (``stats.data.participant_means``),
    or a function of the selected base models' families (a Series, model ->
    family) returning their cells already aggregated
    (``stats.base_cells.base_cells``, as :func:`load_generations_data` does).
    ``pair_cells``: the (pair, experiment) cells of paired post-minus-base
    differences (``stats.cells.build_cells``: pair, post_model, base_model,
    post_training, experiment, n, mean, var).  ``models``: the
    ``models`` table (name, family, generation, generation_order, n_params,
    post_training, base_model; ``release_date`` for the date scale).
    ``generation_scale``: ``rank`` (default), ``number`` or ``date``
    (:mod:`.generation_scale`), the unit of the slopes.  Raises
    :class:`WarehouseError` when no family has two generations to compare.
    """
    check_generation_scale(generation_scale)
    notes: list[str] = []
    models = models.set_index("name", drop=False)
    bases = _base_models(models, families, notes)
    base_cells = _paired_base_cells(base_means, bases, notes)
    gap_cells = _gap_cells(pair_cells, models, bases, post_training, notes)
    keep = _answering_families(base_cells, gap_cells, notes)
    base_cells = base_cells[base_cells["family"].isin(keep)].reset_index(drop=True)
    gap_cells = gap_cells[gap_cells["family"].isin(keep)].reset_index(drop=True)
    types = gap_cells["post_training"].value_counts()
    reference = "instruct" if "instruct" in types.index else str(types.index[0])
    return GenerationsData(
        base_cells=base_cells,
        gap_cells=gap_cells,
        generations=_generations_table(base_cells, gap_cells, models, generation_scale),
        families=keep,
        reference_type=reference,
        notes=notes,
        generation_scale=generation_scale,
    )


def _release_dates(con) -> pd.DataFrame:
    """name, release_date of every registered model (for the date scale)."""
    cur = con.execute("SELECT name, release_date FROM models")
    return pd.DataFrame(cur.fetchall(), columns=["name", "release_date"])


def load_generations_data(
    con,
    selection: Selection | None = None,
    *,
    generation_scale: str = DEFAULT_GENERATION_SCALE,
) -> GenerationsData:
    """Read the warehouse and :func:`prepare_generations`.

    ``selection`` (default: all, plain): the base models' condition
    (``selection.base``), the post-trained models' (``selection.post``),
    families, experiments and post-training types.
    Each model's scores come from its latest complete run of each experiment
    in the given condition (``stats.data``); the gap cells pair the post and
    base scores response by response (``stats.cells.build_cells``).
    ``generation_scale`` (``rank``, the default, ``number`` or ``date``) is
    the unit of the slopes, the same choice as ``fit effects``'
    (:mod:`.generation_scale`).
    """
    from psystats.warehouse.sql import scalar

    from .base_cells import BASE_CELL_COLUMNS, base_cells
    from .cells import build_cells

    check_generation_scale(generation_scale)
    sel = selection or Selection()
    base_condition, post_condition = sel.base, sel.post
    families, experiments = sel.only("families"), sel.only("experiments")
    post_training = sel.only("post_training")
    models = load_models(con)
    if generation_scale == "date":
        models = models.merge(_release_dates(con), on="name", how="left")
    # Base cells are aggregated in DuckDB (stats.base_cells), one model at a time.
    seen = {"cells": pd.DataFrame(columns=BASE_CELL_COLUMNS)}

    def base_means(fams: pd.Series) -> pd.DataFrame:
        seen["cells"] = base_cells(con, fams, condition=base_condition, experiments=experiments)
        return seen["cells"]

    if not scalar(
        con,
        "SELECT count(*) FROM score_runs WHERE status = 'complete' AND condition = ?",
        [base_condition],
    ):
        raise WarehouseError(
            f"no complete score runs with condition {base_condition!r}: "
            "score the base models first (`psystats score`)"
        )
    try:
        pair_cells = build_cells(
            con,
            post_condition=post_condition,
            base_condition=base_condition,
            experiments=experiments,
        )
    except WarehouseError as e:
        raise WarehouseError(f"fit generations needs post-minus-base pairs: {e}") from None
    data = prepare_generations(
        base_means,
        pair_cells,
        models,
        families=families,
        post_training=post_training,
        generation_scale=generation_scale,
    )
    used = set(data.base_cells["model"]) | set(data.gap_cells["post_model"])
    bc = seen["cells"].dropna(subset=["model", "run_id"])
    runs = {
        m: sorted(int(r) for r in set(g))
        for m, g in bc.groupby("model")["run_id"]
        if m in set(data.base_cells["model"])
    }
    for col_m, col_r in (("post_model", "post_run_id"), ("base_model", "base_run_id")):
        for m, r in zip(pair_cells[col_m], pair_cells[col_r]):
            if m in used or m in set(data.gap_cells["base_model"]):
                runs.setdefault(m, [])
                if int(r) not in runs[m]:
                    runs[m] = sorted(runs[m] + [int(r)])
    data.selection = dict(
        base_condition=base_condition,
        post_condition=post_condition,
        families=list(families or []) or None,
        experiments=list(experiments or []) or None,
        post_training=list(post_training or []) or None,
        generation_scale=generation_scale,
        runs=runs,
        notes=data.notes,
    )
    return data


# --------------------------------------------------------------------------- model


def _slope_weights(
    gen: pd.DataFrame, families: list[str], column: str = "generation_x"
) -> np.ndarray:
    """(family, generation) matrix W with W @ level = least-squares slope on ``column``
    (the generation on the fit's scale) within each family."""
    w = np.zeros((len(families), len(gen)))
    for i, f in enumerate(families):
        rows = np.flatnonzero(gen["family"].to_numpy() == f)
        o = gen[column].to_numpy(float)[rows]
        c = o - o.mean()
        w[i, rows] = c / (c**2).sum()
    return w


def _zero_sum_basis(groups: Sequence[str]) -> np.ndarray:
    """Block-diagonal orthonormal basis of "sums to zero within each group".

    Column block g spans the vectors over group g's members that sum to zero
    (n_g - 1 columns, none for a group of one), so ``basis @ w`` with
    ``w ~ Normal(0, sigma)`` is a per-group ZeroSumNormal (the construction
    PyMC's ``ZeroSumNormal`` uses).
    """
    groups = list(groups)
    cols = []
    for g in dict.fromkeys(groups):
        rows = [i for i, x in enumerate(groups) if x == g]
        k = len(rows)
        if k < 2:
            continue
        # Orthonormal complement of the ones vector (Helmert-like via QR).
        q, _ = np.linalg.qr(np.column_stack([np.ones(k), np.eye(k)[:, : k - 1]]))
        block = np.zeros((len(groups), k - 1))
        block[rows, :] = q[:, 1:]
        cols.append(block)
    return np.hstack(cols) if cols else np.zeros((len(groups), 0))


@dataclass
class _Layout:
    """What the generations model indexes: levels, optional terms, coordinates.

    ``gen_b``/``gen_g``: the (family, generation) levels of the base and gap
    cells with their ``generation_x``; ``size_b``/``size_g``: the centred log
    size per cell (or None); ``model_b``, ``pair_g``, ``exp_g``: whether the
    base-model residual, the pair residual and the experiment effect on the
    gap are in.
    """

    gen_b: pd.DataFrame
    gen_g: pd.DataFrame
    fe: pd.Series  # "family | experiment" of each base cell
    fe_levels: list[str]
    types: list[str]
    exps: list[str]
    pairs: list[str]
    base_models: list[str]
    size_b: Any
    size_g: Any
    model_b: bool
    pair_g: bool
    exp_g: bool
    coords: dict = field(default_factory=dict)


def _levels(cells: pd.DataFrame, generations: pd.DataFrame) -> pd.DataFrame:
    """The (family, generation) levels of ``cells``, ordered, with their ``generation_x``."""
    gen = (
        cells[["family", "generation", "generation_order"]]
        .drop_duplicates()
        .sort_values(["family", "generation_order"])
        .reset_index(drop=True)
    )
    x = dict(zip(_labels(generations), generations["generation_x"]))
    gen["generation_x"] = [x[label] for label in _labels(gen)]
    return gen


def _labels(df: pd.DataFrame) -> list[str]:
    return [cell_label(f, g) for f, g in zip(df["family"], df["generation"])]


def _multi(df: pd.DataFrame, keys: list[str], col: str) -> bool:
    return bool(len(df)) and bool((df.groupby(keys)[col].nunique() >= 2).any())


def _layout(data: GenerationsData, spec: dict[str, Any]) -> _Layout:
    """Levels and the optional terms the data can tell apart from them (recorded in ``spec``)."""
    bc, gc = data.base_cells, data.gap_cells
    fe = bc["family"] + " | " + bc["experiment"]
    types = sorted(set(gc["post_training"]) - {data.reference_type})
    exps = sorted(set(gc["experiment"]))
    size_b, why = log_size_term(bc, ["family", "generation"], "model")
    spec["terms" if size_b else "dropped"]["size_slope_base"] = why
    size_g, why = log_size_term(gc, ["family", "generation"], "base_model")
    spec["terms" if size_g else "dropped"]["size_slope_gap"] = why
    model_b = _multi(bc, ["family", "generation"], "model")
    spec["terms" if model_b else "dropped"]["base_model residual"] = (
        "some generation has several base models"
        if model_b
        else "one base model per generation: a model residual would be confounded with base_nll"
    )
    pair_g = _multi(gc, ["family", "generation", "post_training"], "pair")
    spec["terms" if pair_g else "dropped"]["pair residual"] = (
        "some generation and type has several pairs"
        if pair_g
        else "one pair per generation and type: a pair residual would be confounded with gap"
    )
    exp_g = len(exps) >= 2
    if not exp_g:
        spec["gap_likelihood"] = (
            "cell mean of paired differences ~ Normal(mu, sqrt(sigma_gap_cell^2 + sd^2/n))"
        )
    spec["terms" if exp_g else "dropped"]["gap experiment effect"] = (
        f"random intercept over {len(exps)} experiments, integrated out analytically"
        if exp_g
        else "one experiment only"
    )
    spec["terms" if types else "dropped"]["type"] = (
        f"offsets of {', '.join(types)} relative to {data.reference_type}"
        if types
        else f"one post-training type ({data.reference_type})"
    )
    lay = _Layout(
        gen_b=_levels(bc, data.generations),
        gen_g=_levels(gc, data.generations),
        fe=fe,
        fe_levels=sorted(set(fe)),
        types=types,
        exps=exps,
        pairs=sorted(set(gc["pair"])),
        base_models=sorted(set(bc["model"])),
        size_b=size_b,
        size_g=size_g,
        model_b=model_b,
        pair_g=pair_g,
        exp_g=exp_g,
    )
    lay.coords = _model_coords(data, lay)
    return lay


def _model_coords(data: GenerationsData, lay: _Layout) -> dict[str, Any]:
    coords: dict[str, Any] = {
        "base_generation": _labels(lay.gen_b),
        "gap_generation": _labels(lay.gen_g),
        "family": data.families,
        "base_experiment": lay.fe_levels,
        "base_cell": np.arange(len(data.base_cells)),
        "gap_cell": np.arange(len(data.gap_cells)),
    }
    if lay.types:
        coords["type_level"] = lay.types  # PyMC forbids a variable named like its dimension
    if lay.pair_g:
        coords["pair"] = lay.pairs
    if lay.model_b:
        coords["base_model"] = lay.base_models
    return coords


def _base_submodel(data: GenerationsData, lay: _Layout, p: dict[str, float]):
    """Base cells: free levels per (family, generation) + experiment intercepts (+ size,
    model residual); returns ``base_nll``."""
    import pymc as pm
    import pytensor.tensor as pt

    bc = data.base_cells
    centre = bc.groupby("family")["mean"].mean()
    base_nll = pm.Normal(
        "base_nll",
        mu=centre.reindex(lay.gen_b["family"]).to_numpy(),
        sigma=p["base_level_sd"],
        dims="base_generation",
    )
    mu_b = base_nll[pd.Index(lay.coords["base_generation"]).get_indexer(_labels(bc))]
    basis = _zero_sum_basis([f for f, _ in (x.split(" | ", 1) for x in lay.fe_levels)])
    if basis.shape[1]:
        # Experiment intercepts sum to zero within each family, so base_nll[f, g] is
        # the mean over the family's experiments (identified, not a prior artefact).
        # Centred: each intercept is pinned by several precise cells.
        sigma_be = pm.HalfNormal("sigma_base_experiment", p["base_experiment_sd"])
        w = pm.Normal("base_experiment_raw", 0.0, sigma_be, shape=basis.shape[1])
        a = pm.Deterministic(
            "base_experiment_effect", pt.dot(pt.as_tensor(basis), w), dims="base_experiment"
        )
        mu_b = mu_b + a[pd.Index(lay.fe_levels).get_indexer(lay.fe)]
    if lay.size_b:
        x, _ = lay.size_b
        slope = pm.Normal("size_slope_base", 0.0, p["base_size_sd"])
        mu_b = mu_b + slope * x
    if lay.model_b:
        s_m = pm.HalfNormal("sigma_base_model", p["base_model_sd"])
        z_m = pm.Normal("z_base_model", 0.0, 1.0, dims="base_model")
        mu_b = mu_b + s_m * z_m[pd.Index(lay.base_models).get_indexer(bc["model"])]
    s_bc = pm.HalfNormal("sigma_base_cell", p["base_cell_sd"])
    pm.Normal(
        "base_obs",
        mu=mu_b,
        sigma=pt.sqrt(s_bc**2 + bc["se"].to_numpy(float) ** 2),
        observed=bc["mean"].to_numpy(float),
        dims="base_cell",
    )
    return base_nll


def _gap_submodel(data: GenerationsData, lay: _Layout, p: dict[str, float]):
    """Gap cells: free levels per (family, generation) + type offsets (+ pair residual,
    size), the experiment effect integrated out; returns ``gap``."""
    import pymc as pm
    import pytensor.tensor as pt

    gc = data.gap_cells
    gap = pm.Normal("gap", 0.0, p["gap_sd"], dims="gap_generation")
    mu_g = gap[pd.Index(lay.coords["gap_generation"]).get_indexer(_labels(gc))]
    if lay.types:
        t_eff = pm.Normal("type", 0.0, p["gap_type_sd"], dims="type_level")
        t_idx = pd.Index(lay.types).get_indexer(gc["post_training"])
        mu_g = mu_g + pt.concatenate([t_eff, pt.zeros(1)])[t_idx]  # -1 -> reference = 0
    if lay.pair_g:
        s_p = pm.HalfNormal("sigma_gap_pair", p["gap_pair_sd"])
        z_p = pm.Normal("z_gap_pair", 0.0, 1.0, dims="pair")
        mu_g = mu_g + s_p * z_p[pd.Index(lay.pairs).get_indexer(gc["pair"])]
    if lay.size_g:
        x, _ = lay.size_g
        slope_g = pm.Normal("size_slope_gap", 0.0, p["gap_size_sd"])
        mu_g = mu_g + slope_g * x
    s_gc = pm.HalfNormal("sigma_gap_cell", p["gap_cell_sd"])
    var_g = s_gc**2 + gc["se"].to_numpy(float) ** 2
    if lay.exp_g:
        # Experiment effect on the gap: x_e ~ Normal(0, sigma_gap_experiment), integrated
        # out exactly (no funnel when few experiments make sigma small).
        s_e = pm.HalfNormal("sigma_gap_experiment", p["gap_experiment_sd"])
        marginal_normal(
            "gap_obs",
            mu_g,
            var_g,
            [(pd.Index(lay.exps).get_indexer(gc["experiment"]), len(lay.exps), s_e)],
            gc["mean"].to_numpy(float),
            dims="gap_cell",
            closed_form_one_factor=True,
        )
    else:
        pm.Normal(
            "gap_obs",
            mu=mu_g,
            sigma=pt.sqrt(var_g),
            observed=gc["mean"].to_numpy(float),
            dims="gap_cell",
        )
    return gap


def build_generations_model(data: GenerationsData, priors: GenerationsPriors | None = None):
    """The PyMC model of :mod:`psystats.stats.generations` (see ``docs/model.md``).

    Returns ``(model, spec)``; ``spec`` says which optional terms are in
    (size slopes, model and pair residuals, experiment effects, type offsets)
    and why, and the generation scale of the slopes.  Statisticians can extend
    the returned model inside ``with model:``.
    """
    import pymc as pm
    import pytensor.tensor as pt

    p = (priors or GenerationsPriors()).resolved(data)
    step = GENERATION_STEP[data.generation_scale]
    spec: dict[str, Any] = dict(
        kind=KIND,
        reference_type=data.reference_type,
        base_likelihood="cell mean ~ Normal(mu, sqrt(sigma_base_cell^2 + se^2)), se from the "
        "within-participant residual SD (paired within family x experiment)",
        gap_likelihood="cell mean of paired differences ~ Normal(mu + x_experiment, "
        "sqrt(sigma_gap_cell^2 + sd^2/n)), x_experiment integrated out: one observed "
        "multivariate normal over cells (stats.likelihoods.marginal_normal)",
        slopes=f"least-squares slope of base_nll / gap on the generation within family, "
        f"per {step} (generation_scale {data.generation_scale})",
        generation_scale=data.generation_scale,
        terms={},
        dropped={},
    )
    lay = _layout(data, spec)
    with pm.Model(coords=lay.coords) as model:
        base_nll = _base_submodel(data, lay, p)
        gap = _gap_submodel(data, lay, p)
        # ---- trends across generations (derived)
        fams = data.families
        pm.Deterministic(
            "base_slope",
            pt.dot(pt.as_tensor(_slope_weights(lay.gen_b, fams)), base_nll),
            dims="family",
        )
        pm.Deterministic(
            "gap_slope", pt.dot(pt.as_tensor(_slope_weights(lay.gen_g, fams)), gap), dims="family"
        )
    spec["priors"] = p
    return model, spec


# --------------------------------------------------------------------------- summary


PARAMS = [
    "base_nll",
    "gap",
    "base_slope",
    "gap_slope",
    "type",
    "size_slope_base",
    "base_experiment_effect",
    "size_slope_gap",
    "sigma_base_experiment",
    "sigma_base_model",
    "sigma_base_cell",
    "sigma_gap_experiment",
    "sigma_gap_pair",
    "sigma_gap_cell",
]


def generations_units(generation_scale: str) -> dict[str, str]:
    """The unit of every parameter the generations model reports (``fits.summary["units"]``):
    NLL levels, gaps and their scales in nats per response, the trends per step of
    ``generation_scale``, the size slopes per unit of log(parameters)."""
    slope = generation_slope_unit(NATS, generation_scale)
    return {
        **same_unit((n for n in PARAMS if not n.endswith("slope") and "size" not in n), NATS),
        "base_slope": slope,
        "gap_slope": slope,
        "size_slope_base": size_slope_unit(NATS),
        "size_slope_gap": size_slope_unit(NATS),
    }


def summarise_generations(idata, data: GenerationsData) -> dict:
    """Headline numbers per family: slopes, and P(gap grows while base NLL falls)."""
    post = idata.posterior
    out: dict[str, Any] = {
        "p_gap_grows_while_base_falls": {},
        "p_base_falls": {},
        "p_gap_grows": {},
        "slopes": {},
        "reference_type": data.reference_type,
        "generation_scale": data.generation_scale,
        "units": generations_units(data.generation_scale),
    }
    for f in data.families:
        b = post["base_slope"].sel(family=f).values.ravel()
        g = post["gap_slope"].sel(family=f).values.ravel()
        out["p_gap_grows_while_base_falls"][f] = prob((g > 0) & (b < 0))
        out["p_base_falls"][f] = prob(b < 0)
        out["p_gap_grows"][f] = prob(g > 0)
        out["slopes"][f] = {
            "base_slope": {
                "mean": float(b.mean()),
                "q05": float(np.quantile(b, 0.05)),
                "q95": float(np.quantile(b, 0.95)),
            },
            "gap_slope": {
                "mean": float(g.mean()),
                "q05": float(np.quantile(g, 0.05)),
                "q95": float(np.quantile(g, 0.95)),
            },
        }
    return out


# --------------------------------------------------------------------------- the fit


@dataclass(frozen=True)
class GenerationsSpec(AnalysisSpec):
    """What ``fit generations`` fits beyond its selection: the generation scale of its
    slopes (:mod:`.generation_scale`; rank by default, as ``fit effects``) and the prior
    scales (:class:`GenerationsPriors`, or a dict of its fields; default: from the data)."""

    KIND = "generations"
    generation_scale: str = DEFAULT_GENERATION_SCALE
    priors: GenerationsPriors | None = None

    def __post_init__(self) -> None:
        validated("generation_scale", OneOf(GENERATION_SCALES), self.generation_scale)
        object.__setattr__(self, "priors", options_of(GenerationsPriors, self.priors, "priors"))


@fit_entry(KIND, GenerationsSpec, ["families", "post_training", "experiments"])
def fit_generations(con, call: FitCall) -> FitResult:
    """Load, build, sample, check and store a generations fit (the fit contract, docs/api.md).

    ``selection``: conditions (base models' scores: ``selection.base``;
    post-trained: ``selection.post``), families, post-training types and
    experiments.  A fit that misses its diagnostic gates raises
    :class:`DiagnosticsFailure` (nothing stored) unless ``allow_failure``,
    which stores it with ``fits.passed = false``.  Returns the pipeline's
    :class:`~psystats.stats.pipeline.FitResult` (``data``: the
    :class:`GenerationsData`); its summary holds the slopes and
    probabilities, the posterior predictive check of the base and gap cells
    (``ppc``) and PSIS-LOO over all cells (``loo``, also per observed
    variable; the gap cells' densities are the exact leave-one-cell-out
    densities of their marginal normal).
    """
    sel, gs = call.selection, call.spec
    sel.check_names(con)
    data = load_generations_data(con, sel, generation_scale=gs.generation_scale)
    model, model_spec = build_generations_model(data, gs.priors)
    bc, gc = data.base_cells, data.gap_cells
    return call.run_fit(
        model,
        con,
        kind=KIND,
        observed=["base_obs", "gap_obs"],
        observation_labels={
            "base_obs": [f"{m} / {e}" for m, e in zip(bc["model"], bc["experiment"])],
            "gap_obs": [f"{p} / {e}" for p, e in zip(gc["pair"], gc["experiment"])],
        },
        summarise=lambda idata: summarise_generations(idata, data),
        **built(model_spec, data),
        condition=sel.label,
        scale="nats",
        what=f"{len(bc)} base cells, {len(gc)} gap cells, {len(data.families)} families",
        params=ParamRows(
            var_names=[n for n in PARAMS if n in model.named_vars],
            element_coords=generation_coords(
                data.generations, ["base_generation", "gap_generation"]
            ),
        ),
    )


# --------------------------------------------------------------------------- simulation


def simulate_generations(
    con,
    *,
    families: dict[str, Sequence[float]] | None = None,
    base_slope: dict[str, float] | None = None,
    gap_slope: dict[str, float] | None = None,
    gap_mean: float = 0.3,
    participant_sd: float = 0.3,
    difference_sd: float = 0.1,
    response_sd: float = 0.3,
    condition: str = "plain",
    seed: int = 0,
    generation_scale: str = DEFAULT_GENERATION_SCALE,
    release_dates: dict[str, Sequence[str]] | None = None,
) -> dict:
    """Write base and instruct models with known generational trends into ``con``.

    For every (family, generation order o): a base model and an instruct model
    on top of it.  With x the generation on ``generation_scale``
    (:mod:`.generation_scale`; ``release_dates[family]``, aligned with its
    orders, are the base models' dates), per response of participant i in
    experiment e: base NLL = 2 + a_e + base_slope_f (x - mean x_f) + u_i + noise
    and post NLL = base NLL + gap_mean + gap_slope_f (x - mean x_f) + d_i with
    d_i ~ N(0, difference_sd).  Every response in the warehouse is scored.
    Returns the truth: ``base_slope``, ``gap_slope`` (per unit of the scale)
    and ``gap`` by (family, generation).
    """
    from psystats.warehouse.sql import transaction

    from .simulate import register_models, responses_frame, write_run

    families = families or {"qwen": (1, 2, 3), "llama": (1, 2)}
    base_slope = base_slope or {f: -0.2 for f in families}
    gap_slope = gap_slope or {f: 0.1 for f in families}
    rng = np.random.default_rng(seed)
    resp = responses_frame(con)
    exps = sorted(set(resp["experiment"]))
    a = dict(zip(exps, rng.normal(0.0, 0.5, len(exps))))
    parts = sorted(set(resp["participant_key"]))
    u = dict(zip(parts, rng.normal(0.0, participant_sd, len(parts))))
    base_level = (
        2.0 + resp["experiment"].map(a).to_numpy() + resp["participant_key"].map(u).to_numpy()
    )
    truth: dict[str, Any] = {
        "base_slope": dict(base_slope),
        "gap_slope": dict(gap_slope),
        "gap": {},
    }
    truth["generation_scale"] = generation_scale
    rows, runs = [], []
    for f, orders in families.items():
        dates = list((release_dates or {}).get(f, [None] * len(orders)))
        on_scale = generation_values(
            pd.DataFrame({"family": f, "generation_order": orders, "release_date": dates}),
            generation_scale,
        ).to_numpy(float)
        centre = float(np.mean(on_scale))
        for o, x, day in zip(orders, on_scale, dates):
            g = f"{o:g}"
            base, post = f"sim-{f}{g}-base", f"sim-{f}{g}-instruct"
            facts = dict(family=f, generation=g, generation_order=float(o), n_params=int(1e9))
            rows += [
                dict(name=base, **facts, post_training="base", release_date=day),
                dict(name=post, **facts, post_training="instruct", base_model=base),
            ]
            b = base_level + base_slope[f] * (x - centre) + rng.normal(0.0, response_sd, len(resp))
            gap = gap_mean + gap_slope[f] * (x - centre)
            truth["gap"][cell_label(f, g)] = gap
            d = dict(zip(parts, rng.normal(gap, difference_sd, len(parts))))
            runs += [(base, b), (post, b + resp["participant_key"].map(d).to_numpy())]
    with transaction(con):
        register_models(con, rows)
        for model, nll in runs:
            write_run(con, model, condition, resp["response_id"], nll)
    return truth
