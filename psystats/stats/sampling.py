"""Sampling a PyMC model and checking that the result can be trusted.

Every fit in psystats goes through :func:`sample` (nutpie by default, PyMC's
own NUTS when nutpie is missing or cannot compile the model) and then through
:func:`diagnose` and :func:`enforce`, which apply the project's gates:

* R-hat <= 1.01 for every scalar parameter,
* bulk and tail ESS >= 400,
* zero divergent transitions,
* E-BFMI reported for every chain (a value below 0.3 is noted, not a gate).

The sampler settings (sampler, draws, tune, chains, seed, target_accept,
compile and sampling seconds, and why a fallback happened) are recorded in
``idata.attrs["psystats_sampler"]`` as JSON so that a fit can be repeated.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from psystats.warehouse.errors import WarehouseError

from .options import SamplingOptions
from .sampling_progress import chain_draws, sample_nutpie

log = logging.getLogger(__name__)

RHAT_MAX = 1.01
ESS_MIN = 400
BFMI_MIN = 0.3  # below this E-BFMI is reported as a problem (Betancourt's rule of thumb)


class DiagnosticsFailure(WarehouseError):
    """A fit missed a diagnostic gate (R-hat, ESS, divergences, E-BFMI)."""


def _quiet_arviz() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")


def sample(model, sampling: SamplingOptions | None = None):
    """Draw posterior samples from a PyMC model; returns ``arviz.InferenceData``.

    ``sampling`` (:class:`~psystats.stats.options.SamplingOptions`, validated
    there; default: its defaults) picks the sampler: ``"nutpie"`` (default)
    or ``"pymc"``.  If nutpie is not installed or fails to compile the model,
    PyMC's NUTS runs instead and the reason is recorded.  The result carries
    ``observed_data`` and ``constant_data`` groups and
    ``attrs["psystats_sampler"]`` (JSON: sampler, draws, tune, chains, seed,
    target_accept, compile_seconds, sampling_seconds, fallback_reason).
    With ``sampling.progressbar``, the draws of every chain are reported on
    stderr as they come (``sampling_progress``: a bar on a terminal, plain
    lines in a log).
    """
    import pymc as pm

    _quiet_arviz()
    opts = sampling or SamplingOptions()
    draws, tune, chains, seed = opts.draws, opts.tune, opts.chains, opts.seed
    sampler, target_accept = opts.sampler, opts.target_accept
    record: dict[str, Any] = dict(
        sampler=sampler,
        draws=draws,
        tune=tune,
        chains=chains,
        seed=seed,
        target_accept=target_accept,
        fallback_reason=None,
    )
    idata = None
    if sampler == "nutpie":
        try:
            import nutpie
        except ImportError as e:  # pragma: no cover - nutpie is a dependency
            record["fallback_reason"] = f"nutpie not importable: {e}"
        else:
            t0 = time.perf_counter()
            try:
                compiled = nutpie.compile_pymc_model(model)
            except Exception as e:  # nutpie's numba backend refuses some graphs
                record["fallback_reason"] = f"nutpie could not compile the model: {e}"
                log.warning("nutpie could not compile the model (%s); using PyMC NUTS", e)
            else:
                record["compile_seconds"] = time.perf_counter() - t0
                t1 = time.perf_counter()
                idata = sample_nutpie(compiled, opts)
                record["sampling_seconds"] = time.perf_counter() - t1
                idata = _add_data_groups(model, _drop_transformed(model, idata))
    if idata is None:
        record["sampler"] = "pymc"
        t1 = time.perf_counter()
        # Progress through the one reporter (plain lines in a log), not PyMC's own bar.
        with model, chain_draws(opts) as progress:
            idata = pm.sample(
                draws=draws,
                tune=tune,
                chains=chains,
                random_seed=seed,
                target_accept=target_accept,
                progressbar=False,
                callback=progress.pymc_callback if opts.progressbar else None,
                cores=min(chains, 2),
                compute_convergence_checks=False,
            )
        record["compile_seconds"] = None  # included in sampling_seconds for PyMC
        record["sampling_seconds"] = time.perf_counter() - t1
    record["nutpie_version" if record["sampler"] == "nutpie" else "pymc_version"] = (
        __import__("nutpie").__version__ if record["sampler"] == "nutpie" else pm.__version__
    )
    idata.attrs["psystats_sampler"] = json.dumps(record)
    return idata


def _drop_transformed(model, idata):
    """Keep the model's own variables: nutpie also stores unconstrained values (``tau_log__``)."""
    keep = {v.name for v in model.free_RVs} | {v.name for v in model.deterministics}
    extra = [n for n in idata.posterior.data_vars if n not in keep]
    if extra:
        idata.posterior = idata.posterior.drop_vars(extra)
    return idata


def _add_data_groups(model, idata):
    """Attach observed and constant data, which nutpie does not see (as PyMC itself does)."""
    import pymc as pm
    from pymc.backends.arviz import (
        coords_and_dims_for_inferencedata,
        dict_to_dataset,
        find_constants,
        find_observations,
    )

    coords, dims = coords_and_dims_for_inferencedata(model)
    groups = {}
    for name, values in (
        ("observed_data", find_observations(model)),
        ("constant_data", find_constants(model)),
    ):
        if values and name not in idata.groups():
            groups[name] = dict_to_dataset(
                values, library=pm, coords=coords, dims=dims, default_dims=[]
            )
    if groups:
        idata.add_groups(groups, coords=coords, dims=dims)
    return idata


def sampler_record(idata) -> dict:
    """The sampler settings :func:`sample` stored on ``idata`` (empty dict if none)."""
    raw = idata.attrs.get("psystats_sampler")
    return json.loads(raw) if raw else {}


@dataclass
class Diagnostics:
    """Convergence diagnostics of one fit and whether it met the gates."""

    max_rhat: float
    min_ess_bulk: float
    min_ess_tail: float
    divergences: int
    min_bfmi: float
    bfmi: list[float] = field(default_factory=list)
    n_draws: int = 0
    n_chains: int = 0
    worst: dict[str, str] = field(default_factory=dict)  # gate -> parameter that set it
    passed: bool = True
    problems: list[str] = field(default_factory=list)  # failed gates
    notes: list[str] = field(default_factory=list)  # worth a look, not a gate (E-BFMI)

    def to_dict(self) -> dict:
        d = asdict(self)
        # JSON has no NaN; None says "not computable" (e.g. a single chain's R-hat).
        return {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()
        }


def _extreme(ds, which: str) -> tuple[float, str]:
    """Largest (which='max') or smallest value over every element of a Dataset, and where."""
    best, where = (-np.inf if which == "max" else np.inf), ""
    for name, da in ds.data_vars.items():
        vals = np.asarray(da.values, dtype=float)
        if vals.size == 0 or np.all(np.isnan(vals)):
            continue
        idx = np.nanargmax(vals) if which == "max" else np.nanargmin(vals)
        v = vals.flat[idx]
        if (which == "max" and v > best) or (which == "min" and v < best):
            best = float(v)
            pos = np.unravel_index(idx, vals.shape)
            labels = [str(da.coords[d].values[i]) for d, i in zip(da.dims, pos)]
            where = f"{name}[{', '.join(labels)}]" if labels else name
    return best, where


def diagnose(
    idata,
    var_names: Sequence[str] | None = None,
    rhat_max: float = RHAT_MAX,
    ess_min: float = ESS_MIN,
) -> Diagnostics:
    """R-hat, bulk/tail ESS, divergences and E-BFMI of ``idata``'s posterior, with the gates.

    ``var_names`` restricts R-hat/ESS to those posterior variables (default:
    all of them, deterministic ones included).
    """
    import arviz as az

    _quiet_arviz()
    post = idata.posterior
    if var_names is not None:
        post = post[list(var_names)]
    n_chains, n_draws = int(post.sizes["chain"]), int(post.sizes["draw"])
    problems: list[str] = []
    worst: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # R-hat on one chain etc.: we report NaN ourselves
        max_rhat, worst["rhat"] = _extreme(az.rhat(post), "max")
        min_bulk, worst["ess_bulk"] = _extreme(az.ess(post, method="bulk"), "min")
        min_tail, worst["ess_tail"] = _extreme(az.ess(post, method="tail"), "min")
    stats = idata.get("sample_stats")
    divergences = 0
    if stats is not None:
        for name in ("diverging", "divergences"):
            if name in stats:
                divergences = int(np.asarray(stats[name].values).sum())
                break
    bfmi: list[float] = []
    if stats is not None and "energy" in stats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bfmi = [float(b) for b in np.atleast_1d(az.bfmi(idata))]
    min_bfmi = min(bfmi) if bfmi else float("nan")

    if n_chains < 2:
        problems.append(f"only {n_chains} chain: R-hat needs at least 2 (use 4)")
    if not np.isfinite(max_rhat) and n_chains >= 2:
        problems.append("R-hat could not be computed")
    elif max_rhat > rhat_max:
        problems.append(f"R-hat {max_rhat:.3f} > {rhat_max} (at {worst['rhat']})")
    if not np.isfinite(min_bulk) or min_bulk < ess_min:
        problems.append(f"bulk ESS {min_bulk:.0f} < {ess_min:g} (at {worst['ess_bulk']})")
    if not np.isfinite(min_tail) or min_tail < ess_min:
        problems.append(f"tail ESS {min_tail:.0f} < {ess_min:g} (at {worst['ess_tail']})")
    if divergences:
        problems.append(f"{divergences} divergent transition{'s' if divergences > 1 else ''}")
    notes = []
    if bfmi and min_bfmi < BFMI_MIN:
        notes.append(
            f"E-BFMI {min_bfmi:.2f} < {BFMI_MIN} in some chain: the energy "
            "distribution is hard to explore (heavy tails or funnels)"
        )
    return Diagnostics(
        max_rhat=max_rhat,
        min_ess_bulk=min_bulk,
        min_ess_tail=min_tail,
        divergences=divergences,
        min_bfmi=min_bfmi,
        bfmi=bfmi,
        n_draws=n_draws,
        n_chains=n_chains,
        worst=worst,
        passed=not problems,
        problems=problems,
        notes=notes,
    )


# Names of sampler helper variables: standardised offsets of non-centred
# parameterisations and raw coefficients that are mapped to the reported
# effects.  They carry no meaning of their own, so the gates do not look at them.
HELPER_PREFIXES = ("z_",)
HELPER_SUFFIXES = ("_raw", "_coef", "_z", "_offset")


def gated_vars(model) -> list[str]:
    """The variables whose R-hat and ESS the gates check, the same rule for every analysis.

    Every free and deterministic variable that a fit reports (effects,
    slopes, scales, derived quantities), and none of the sampler's helper
    variables (``*_raw``, ``*_coef``, ``*_z``, ``z_*``): a helper's R-hat may
    sit at 1.011 while every reported quantity is converged, and a gate on it
    fails on one machine and passes on the next.
    """
    names = [v.name for v in model.free_RVs + model.deterministics]
    return [
        n for n in names if not n.startswith(HELPER_PREFIXES) and not n.endswith(HELPER_SUFFIXES)
    ]


RETRY_TARGET_ACCEPT = 0.99  # the target_accept a retry against divergences uses


def enforce(
    diag: Diagnostics, allow_failure: bool = False, attempts: Sequence[Mapping] = ()
) -> None:
    """Raise :class:`DiagnosticsFailure` naming every failed gate, unless ``allow_failure``.

    ``attempts``: every sampling of the fit (``draws``, ``target_accept``,
    ``problems``), the last one ``diag``'s; the message names each, and
    advises only what was not tried.  With ``allow_failure`` the problems
    are only logged; the fit is still stored with ``fits.passed = false``.
    """
    if diag.passed:
        return
    if allow_failure:
        log.warning(
            "the fit missed its diagnostic gates (%s); kept with passed = false as asked",
            "; ".join(diag.problems),
        )
        return
    raise DiagnosticsFailure(failure_message(diag, attempts))


def failure_message(diag: Diagnostics, attempts: Sequence[Mapping] = ()) -> str:
    """What missed, what was tried, and what is left to try."""
    msg = "the fit missed its diagnostic gates: " + "; ".join(diag.problems) + "."
    if len(attempts) > 1:
        tried = [
            f"{a['draws']} draws per chain at target_accept {a['target_accept']} "
            f"({'; '.join(a.get('problems') or []) or 'met the gates'})"
            for a in attempts
        ]
        msg += f" Sampled {len(attempts)} times: " + ", then ".join(tried) + "."
    last = attempts[-1] if attempts else {}
    advice = []
    if diag.n_chains < 2:
        advice.append("sample with --chains 4")
    if diag.divergences:
        if float(last.get("target_accept", 0.0)) < RETRY_TARGET_ACCEPT:
            advice.append(f"raise --target-accept to {RETRY_TARGET_ACCEPT}")
        else:
            advice.append(
                f"the divergences survived target_accept {last['target_accept']}: simplify or "
                "reparameterise the model, or check the data"
            )
    elif diag.n_chains >= 2:
        advice.append("sample longer (more --draws/--tune) or check the data")
    return (
        f"{msg} Next: {'; '.join(advice)}. --allow-diagnostics-failure keeps the fit anyway "
        "(marked passed = false)."
    )
