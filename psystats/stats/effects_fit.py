"""Fitting the effects model: sample, check, summarise (:func:`fit_cells`) and store (:func:`fit_effects`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from .cells import cell_runs, selected_cells
from .cohens_d import pair_cohens_d
from .effects_design import EffectsData, prepare
from .effects_model import LABELS, build_effects_model, reported_vars
from .effects_spec import TERMS, EffectsSpec, resolve_priors
from .options import OptionError, SamplingOptions
from .pipeline import FitCall, FitResult, ParamRows, fit_entry, run_fit, save_result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EffectsFitSpec:
    """What ``fit effects`` fits and checks: the model (:class:`EffectsSpec`), the LOO
    comparison refits (``compare``: the terms to refit without; empty: none) and whether
    to run the posterior predictive check and PSIS-LOO at all (``checks``)."""

    model: EffectsSpec = field(default_factory=EffectsSpec)
    compare: tuple[str, ...] = ("type_domain",)
    checks: bool = True
    # The names of from_options: the fit effects options, as wh.fit("effects", ...) takes them.
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "scale",
        "generation_scale",
        "no_terms",
        "compare",
        "compare_without",
        "checks",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model, EffectsSpec):
            raise OptionError(f"model must be an EffectsSpec, got {self.model!r}")
        compare = (self.compare,) if isinstance(self.compare, str) else tuple(self.compare)
        unknown = set(compare) - set(TERMS)
        if unknown:
            raise OptionError(
                f"cannot compare without {sorted(unknown)}: terms are {', '.join(TERMS)}"
            )
        object.__setattr__(self, "compare", compare)
        object.__setattr__(self, "checks", bool(self.checks))

    @classmethod
    def of(cls, value: Any) -> EffectsFitSpec:
        """An :class:`EffectsFitSpec` from itself, an :class:`EffectsSpec` (default comparisons
        and checks), a spec file path, a mapping of :meth:`from_options` names, or None."""
        if isinstance(value, Mapping) and set(value) & set(cls.OPTIONS):
            return cls.from_options(**value)
        return cls.from_options(value)

    @classmethod
    def from_options(
        cls,
        spec: EffectsFitSpec | EffectsSpec | str | Path | Mapping | None = None,
        *,
        scale: str | None = None,
        generation_scale: str | None = None,
        no_terms: Sequence[str] = (),
        compare: bool = True,
        compare_without: Sequence[str] = (),
        checks: bool = True,
    ) -> EffectsFitSpec:
        """The spec from the ``fit effects`` options, named as on the command line
        (``--spec``, ``--scale``, ``--generation-scale``, ``--no-term``, ``--compare/--no-compare``,
        ``--compare-without``, ``--checks/--no-checks``) and in ``wh.fit("effects", ...)``;
        ``spec`` is the model (an :class:`EffectsSpec`, a dict or a spec file)."""
        if isinstance(spec, EffectsFitSpec):
            changed = (scale, generation_scale, no_terms, compare_without) != (None, None, (), ())
            if changed or not compare or not checks:
                raise OptionError("give an EffectsFitSpec or the spec options, not both")
            return spec
        if spec is None:
            model = EffectsSpec()
        elif isinstance(spec, EffectsSpec):
            model = spec
        elif isinstance(spec, Mapping):
            model = EffectsSpec.from_dict(spec)
        elif isinstance(spec, (str, Path)):
            model = EffectsSpec.from_file(spec)
        else:
            raise OptionError(f"spec must be an EffectsSpec, a dict or a spec file, got {spec!r}")
        no_terms = (no_terms,) if isinstance(no_terms, str) else tuple(no_terms or ())
        if no_terms:
            terms = {**model.terms, **{t: False for t in no_terms}}
            model = EffectsSpec.from_dict({**model.to_dict(), "terms": terms})
        if scale:
            model = replace(model, scale=scale)
        if generation_scale:
            model = replace(model, generation_scale=generation_scale)
        without = (compare_without,) if isinstance(compare_without, str) else compare_without
        chosen = (tuple(without or ()) or ("type_domain",)) if compare else ()
        return cls(model=model, compare=chosen, checks=checks)


def fit_cells(
    cells: pd.DataFrame,
    spec: EffectsFitSpec | EffectsSpec | None = None,
    sampling: SamplingOptions | Mapping[str, Any] | None = None,
    *,
    allow_failure: bool = False,
) -> FitResult:
    """Fit the effects model to a cell table (with ``y``/``se``), check it, summarise it.

    Runs the fit pipeline (:func:`.pipeline.run_fit`: sample, gates on the
    reported variables, posterior predictive check, PSIS-LOO) and returns its
    :class:`~.pipeline.FitResult` (not stored; :func:`fit_effects` stores it)
    with ``data`` the :class:`EffectsData` and ``extras["fitted_spec"]`` the
    spec as fitted (every prior explicit, after autoscaling).  Raises
    :class:`~psystats.stats.sampling.DiagnosticsFailure` when a gate fails
    and ``allow_failure`` is false.  ``spec.compare`` also refits the model
    without each named term and compares each refit with the full model by
    PSIS-LOO (``summary["loo"]["without"]``).
    """
    fs = EffectsFitSpec.of(spec)
    model_spec, sampling = fs.model, SamplingOptions.of(sampling)
    t0 = time.perf_counter()
    data = prepare(cells, model_spec)
    # The messages travel with the result (notes) and the stored fit; the CLI prints
    # each once as "note: ...", so the log keeps them at INFO.
    for m in data.messages:
        log.info(m)
    model = build_effects_model(data, model_spec)
    summary: dict[str, Any] = {
        "messages": data.messages,
        "dropped_terms": data.dropped,
        "active_terms": data.active,
        "centred": data.centred,
        "n_cells": data.n_cells,
        "size_center_log_params": data.size_center,
        "prior_scale": data.prior_scale,
        "scale_estimates": data.scale_estimates,
        "sigma_cell_fixed": data.sigma_cell_fixed,
        "residual_df": data.residual_df,
        "coords": {k: len(v) for k, v in data.coords.items()},
        "units": model_spec.units(),
    }
    # The published study's headline statistic beside the posterior (docs/model.md).
    cd = pair_cohens_d(data.cells, seed=sampling.seed)
    if not cd.empty:
        summary["cohens_d"] = {
            "statistic": "mean over experiments of Cohen's d_av; 90% percentile bootstrap "
            "over experiments",
            "pairs": cd.to_dict("records"),
        }
    # The spec as fitted: every prior explicit, default ones widened by data.prior_scale.
    fitted_spec = resolve_priors(model_spec, data.prior_scale)
    result = run_fit(
        model,
        kind="effects",
        observed="y",
        reported=reported_vars(model),
        sampling=sampling,
        allow_failure=allow_failure,
        checks=fs.checks,
        spec=model_spec.to_dict(),
        priors=fitted_spec.all_priors(),
        dropped=data.dropped,
        notes=data.messages,
        summary=summary,
        scale=model_spec.scale,
        what=(
            f"{data.n_cells} cells, {len(data.coords['pair'])} pairs, "
            f"{len(data.coords['experiment'])} experiments"
        ),
        params=ParamRows(var_names=reported_vars(model), labels=LABELS),
        data=data,
        extras={"fitted_spec": fitted_spec},
        started=t0,
    )
    if fs.checks and fs.compare:
        result.summary["loo"]["without"] = {
            term: _compare_without(cells, model_spec, term, data, result.loo, sampling)
            for term in fs.compare
        }
    result.seconds = time.perf_counter() - t0
    return result


def _compare_without(
    cells: pd.DataFrame, spec: EffectsSpec, term: str, data: EffectsData, loo_full, sampling
) -> dict:
    """Refit without ``term`` through the same pipeline; PSIS-LOO difference to the full fit."""
    if term not in data.active:
        return {"skipped": f"term {term!r} is not in the fitted model"}
    spec2 = replace(spec, terms={**spec.terms, term: False})
    data2 = prepare(cells, spec2)
    model2 = build_effects_model(data2, spec2)
    # The reduced fit is only scored, not stored: its gates are reported, not enforced.
    reduced = run_fit(
        model2,
        kind="effects",
        observed="y",
        reported=reported_vars(model2),
        sampling=sampling.replace(progressbar=False),
        allow_failure=True,
        ppc=False,
    )
    loo_reduced = reduced.loo
    diff = loo_full.elpd_loo - loo_reduced.elpd_loo
    # SE of the difference from the pointwise differences (as arviz.compare does).
    pw = np.asarray(loo_full.loo_i) - np.asarray(loo_reduced.loo_i)
    se_diff = float(np.sqrt(pw.size * np.var(pw)))
    return {
        "loo": reduced.summary["loo"]["full"],
        "passed": reduced.diagnostics.passed,
        "elpd_diff_full_minus_without": float(diff),
        "se_diff": se_diff,
        "preferred": (
            f"with {term}"
            if diff > 2 * se_diff
            else f"without {term}"
            if diff < -2 * se_diff
            else "no clear difference (|elpd diff| < 2 SE)"
        ),
    }


@fit_entry("effects", EffectsFitSpec, ["models", "experiments"])
def fit_effects(con, call: FitCall) -> FitResult:
    """Cells from the warehouse -> :func:`fit_cells` -> ``fits``/``fit_params`` + NetCDF.

    The fit contract (docs/api.md): ``selection`` picks the pairs' scores
    (conditions, models, experiments), ``spec`` the model and its checks,
    ``sampling`` how to sample, ``store`` where the fit goes.  Nothing is
    written when the fit misses its gates (unless ``allow_failure``, then it
    is stored with ``passed = false``).
    """
    sel, fs = call.selection, call.spec
    cells = selected_cells(con, sel, fs.model.scale)
    result = fit_cells(cells, fs, call.sampling, allow_failure=call.allow_failure)
    data = result.data
    result.selection = {
        **sel.record(),
        "pairs": data.coords["pair"],
        "runs": cell_runs(cells),
        "n_cells": data.n_cells,
        "n_experiments": len(data.coords["experiment"]),
    }
    result.condition = sel.label
    save_result(con, result, call.store)
    return result
