"""A seeded sample of the selection, for a first look (``score --participants N / --sample F``).

Per experiment, participants are put in a random order that depends only on
the seed and their natural key (study, experiment, participant id), never on
the order or the surrogate keys of a warehouse; the sample is the first
``N`` of them (``--participants N``), the first ``ceil(F * n)`` of the ``n``
(``--sample F``), or the fewer of the two when both are given.  So the same
seed picks the same people in any warehouse holding the study, and a larger
sample contains a smaller one.

A sampled run records what it is: ``score_runs.sample_spec`` (e.g.
``participants=5 per experiment, seed=0``) and the run's selection, so a
sample is a run of its own (scoring the whole study later starts a new run)
and is never mistaken for a full one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb

from psystats.warehouse.sql import where_clause
from psystats.warehouse.validators import FloatIn, IntIn, Maybe

from .errors import ScoringError


class SampleSpecError(ScoringError):
    """A sample no run can take (the CLI shows it as a usage error)."""


@dataclass(frozen=True)
class SampleSpec:
    """``participants`` and/or ``fraction`` per experiment, with a seed."""

    participants: int | None = None
    fraction: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.participants is None and self.fraction is None:
            raise SampleSpecError("a sample needs --participants N or --sample FRACTION")
        for name, check, value in (
            ("participants", Maybe(IntIn(1)), self.participants),
            ("sample", Maybe(FloatIn(0.0, 1.0, open_lo=True)), self.fraction),
            ("seed", IntIn(0), self.seed),
        ):
            try:
                check(value)
            except ValueError as e:
                raise SampleSpecError(f"--{name} {e}") from None

    @property
    def text(self) -> str:
        """The readable form stored in ``score_runs.sample_spec``."""
        parts = []
        if self.participants is not None:
            parts.append(f"participants={self.participants}")
        if self.fraction is not None:
            parts.append(f"fraction={self.fraction:g}")
        return f"{' and '.join(parts)} per experiment, seed={self.seed}"

    def size(self, n: int) -> int:
        """How many of an experiment's ``n`` participants the sample takes."""
        k = n
        if self.fraction is not None:
            k = min(k, math.ceil(self.fraction * n))
        if self.participants is not None:
            k = min(k, self.participants)
        return k

    def order_key(self, study: str, experiment: str, participant: str) -> str:
        text = f"{self.seed}\x1f{study}\x1f{experiment}\x1f{participant}"
        return hashlib.sha256(text.encode()).hexdigest()

    def choose(self, rows: Iterable[tuple[int, str, str, str]]) -> list[int]:
        """Sampled keys of ``(participant_key, study, experiment, participant)`` rows, sorted."""
        by_exp: dict[str, list[tuple[str, int]]] = {}
        for key, study, experiment, participant in rows:
            h = self.order_key(study, experiment, participant)
            by_exp.setdefault(experiment, []).append((h, int(key)))
        chosen: list[int] = []
        for members in by_exp.values():
            members.sort()
            chosen.extend(k for _h, k in members[: self.size(len(members))])
        return sorted(chosen)


def sample_keys(
    con: duckdb.DuckDBPyConnection,
    spec: SampleSpec,
    *,
    studies: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
) -> list[int]:
    """The participant keys ``spec`` takes from the selection (participants with responses)."""
    where, params = where_clause({"study": studies, "experiment": experiments})
    rows = con.execute(
        f"SELECT participant_key, study, experiment, participant FROM participants {where} "
        f"{'AND' if where else 'WHERE'} n_responses > 0",
        params,
    ).fetchall()
    return spec.choose(rows)
