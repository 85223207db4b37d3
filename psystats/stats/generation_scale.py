"""The one generation scale of every analysis that reports a generation slope.

``fit effects`` (``EffectsSpec.generation_scale``) and ``fit generations``
(``load_generations_data(generation_scale=...)``) put a model's generation on
the same scale, computed here and nowhere else:

* ``rank`` (the default, :data:`DEFAULT_GENERATION_SCALE`): 0, 1, 2, ... over
  the distinct ``generation_order`` values of the family in the data, so one
  step is one successive generation in every family (Llama 3 -> 3.1 -> 3.2 and
  Qwen 2 -> 2.5 -> 3 are both 0 -> 1 -> 2); a slope is "per generation step";
* ``number``: ``generation_order`` itself (the version number); a slope is
  "per version unit", which is a tenth of a step in one family and half a step
  in another;
* ``date``: years since the family's first release in the data, from
  ``models.release_date``; a slope is "per year".

Each analysis centres the values within the family, so only their spacing
matters.  ``docs/model.md`` ("Generation scale") gives the reasons for the
default.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from psystats.warehouse.errors import WarehouseError

GENERATION_SCALES = ("rank", "number", "date")
# Rank: one step per successive generation, the one unit a slope pooled across
# families (or compared between families) can have.
DEFAULT_GENERATION_SCALE = "rank"
DAYS_PER_YEAR = 365.25
# What one unit of each scale is, for the unit of a slope ("nats per generation step").
GENERATION_STEP = {"rank": "generation step", "number": "version unit", "date": "year"}


def check_generation_scale(scale: str) -> str:
    """``scale`` if it is one of :data:`GENERATION_SCALES`, else a :class:`WarehouseError`."""
    if scale not in GENERATION_SCALES:
        raise WarehouseError(
            f"generation_scale must be one of {', '.join(GENERATION_SCALES)}, got {scale!r}"
        )
    return scale


def _count(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


def years_since_first_release(
    release_date: pd.Series,
    family: pd.Series,
    names: Sequence[str],
    *,
    what: str,
    strict: bool = True,
) -> pd.Series:
    """Per row: years from the family's first release date among the rows.

    ``names[i]`` is the model that row i's date belongs to (named when a date
    is missing); ``what`` says whose date it is (e.g. "every pair's model").
    Refuses, naming the models, when a row has no date: treating it as its
    family's average, as the other scales do for an unknown generation, would
    put an invented date into a slope whose unit is a year.  ``strict=False``
    leaves such a row NaN instead (for a caller with its own message).
    """
    day = pd.to_datetime(release_date, errors="coerce")
    if strict and day.isna().any():
        missing = [str(n) for n, bad in zip(names, day.isna()) if bad]
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise WarehouseError(
            f"--generation-scale date needs the release date of {what}; "
            f"{_count(len(missing), 'model')} without one: {shown}. Set each with "
            f"`psystats models set {missing[0]} release_date=YYYY-MM-DD` (YYYY-MM will do), "
            "or fit with --generation-scale rank"
        )
    first = day.groupby(family).transform("min")
    return (day - first).dt.days / DAYS_PER_YEAR


def generation_values(
    frame: pd.DataFrame,
    scale: str,
    *,
    names: Sequence[str] | None = None,
    what: str = "",
    strict: bool = True,
) -> pd.Series:
    """Each row's generation on ``scale`` (not centred), aligned with ``frame``'s index.

    ``frame`` has ``family`` and ``generation_order`` (and ``release_date``
    for ``date``).  An unknown ``generation_order`` stays NaN on the rank and
    number scales; the date scale refuses a missing date
    (:func:`years_since_first_release`, ``names``/``what`` name the models),
    or with ``strict=False`` leaves it NaN.
    """
    check_generation_scale(scale)
    order = pd.to_numeric(frame["generation_order"], errors="coerce")
    if scale == "rank":
        # One step per successive generation of the family, whatever the version numbers.
        return order.groupby(frame["family"]).rank(method="dense") - 1
    if scale == "number":
        return order
    return years_since_first_release(
        frame["release_date"],
        frame["family"],
        list(names) if names is not None else [str(i) for i in frame.index],
        what=what or "every model",
        strict=strict,
    )
