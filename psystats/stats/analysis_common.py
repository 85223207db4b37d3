"""What the generations, persona and accuracy models are built and summarised from.

Prior scales given or derived from the data (:func:`resolve_prior_scales`),
the optional log-size term (:func:`log_size_term`), posterior probabilities
(:func:`prob`), and the labels and ``fit_params.coords`` of variables indexed
by a flattened (family, generation) dimension (:func:`cell_label`,
:func:`generation_coords`).  What they read comes from :mod:`.data`
(``load_models``), their likelihoods from :mod:`.likelihoods`, their
simulated scores from :mod:`.simulate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError


def cell_label(family: Any, generation: Any) -> str:
    """Readable label of a (family, generation) element, e.g. ``qwen 2.5``."""
    return f"{family} {generation}"


def without_thin_cells(
    cells: pd.DataFrame, notes: list[str], what: str, label: str
) -> pd.DataFrame:
    """``cells`` less those of fewer than 2 participants (no standard error), with a note
    naming them (``what``: what they are, e.g. "cell(s) with fewer than 2 participants";
    ``label``: the column that names each beside its experiment)."""
    thin = cells[cells["n"] < 2]
    if len(thin):
        notes.append(
            f"{len(thin)} {what} left out: "
            + ", ".join(f"{a} / {e}" for a, e in zip(thin[label], thin["experiment"]))
        )
    return cells[cells["n"] >= 2]


def log_size_term(cells: pd.DataFrame, keys: list[str], model_col: str):
    """Centred log parameter count per cell, if the data can separate size from the levels.

    Returns ``((x, centre), why)`` or ``(None, why)``.  Size enters only when
    every model has ``n_params`` and some group (``keys``, e.g. family and
    generation) holds models of different sizes; otherwise a size slope would
    be confounded with the levels it sits beside.
    """
    if not len(cells):
        return None, "no cells"
    if cells["n_params"].isna().any():
        missing = sorted(set(cells.loc[cells["n_params"].isna(), model_col]))
        return None, f"n_params unknown for {', '.join(missing)}"
    sizes = cells.groupby(keys)["n_params"].nunique()
    if not (sizes >= 2).any():
        return None, f"no {' and '.join(keys)} holds models of different sizes"
    logp = np.log(cells["n_params"].to_numpy(float))
    per_model = cells.drop_duplicates(model_col)
    centre = float(np.log(per_model["n_params"].to_numpy(float)).mean())
    return (logp - centre, centre), f"log(n_params) centred at {np.exp(centre):.3g} parameters"


def resolve_prior_scales(given: Any, auto: dict[str, float], what: str) -> dict[str, float]:
    """Prior scales of a priors dataclass ``given``, each ``None`` replaced by ``auto[name]``.

    Raises :class:`WarehouseError` naming any scale that is not positive.
    """
    out = {k: (auto[k] if v is None else float(v)) for k, v in asdict(given).items()}
    bad = [k for k, v in out.items() if not (v > 0)]
    if bad:
        raise WarehouseError(f"{what} priors must be positive: {', '.join(bad)}")
    return out


def prob(mask) -> float:
    """Posterior probability of an event given as a boolean array over draws."""
    return float(np.mean(np.asarray(mask, dtype=bool)))


def generation_coords(
    generations: pd.DataFrame, dims: Sequence[str]
) -> dict[str, dict[str, dict[str, str]]]:
    """``fit_params.coords`` for dimensions that flatten (family, generation) into one label.

    The generations variables are indexed by one flattened dimension (families
    have different generations, so a dense grid would hold unestimable holes)
    whose values are :func:`cell_label`; the contract promises
    ``{"family": f, "generation": g}`` coords.  Pass the result to
    ``store.save_fit(element_coords=...)``.
    """
    per_label = {
        cell_label(f, g): {"family": str(f), "generation": str(g)}
        for f, g in zip(generations["family"], generations["generation"])
    }
    return {dim: per_label for dim in dims}
