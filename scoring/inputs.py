"""Warehouse rows -> what a scorer needs for one participant.

A :class:`ParticipantInput` is a plain, picklable value (no DuckDB handle), so
it can be shipped to Ray workers or written next to a SLURM shard.  It holds
the transcript exactly as ingested and the character spans of its responses
(``text[a:b]`` is the response, markers excluded), in response order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from psystats.warehouse.sql import where_clause
from psystats.warehouse.transcript import NORMALISED_FIELDS


@dataclass(frozen=True)
class ParticipantInput:
    participant_key: int
    experiment: str
    text: str
    response_ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]  # (char_start, char_end) per response
    # age/gender/nationality/education/diagnosis (when given) plus every other
    # metadata key as ingested; used by the persona condition.
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    study: str = ""

    @property
    def responses(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]


def load_inputs(
    con: duckdb.DuckDBPyConnection,
    *,
    studies: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
    participant_keys: Sequence[int] | None = None,
) -> list[ParticipantInput]:
    """Participants matching every given filter, ordered by ``participant_key``.

    Filters are bound parameters.  Participants without responses are left
    out: there is nothing to score.
    """
    where, params = where_clause(
        {"study": studies, "experiment": experiments, "participant_key": participant_keys},
        alias="p",
    )
    normalised = ", ".join(f"p.{c}" for c in NORMALISED_FIELDS)
    rows = con.execute(
        f"""
        SELECT p.participant_key, p.study, p.experiment, t.text, {normalised}, p.metadata
        FROM participants p JOIN transcripts t USING (participant_key)
        {where}
        ORDER BY p.participant_key
    """,
        params,
    ).fetchall()
    if not rows:
        return []
    keys = [r[0] for r in rows]
    # One query for every response of the selection (bound keys via a table
    # join rather than a giant IN list).
    con.execute("CREATE OR REPLACE TEMP TABLE _score_keys (participant_key BIGINT)")
    con.executemany("INSERT INTO _score_keys VALUES (?)", [[k] for k in keys])
    resp = con.execute("""
        SELECT r.participant_key, r.response_id, r.char_start, r.char_end
        FROM responses r JOIN _score_keys k USING (participant_key)
        ORDER BY r.participant_key, r.response_index
    """).fetchall()
    con.execute("DROP TABLE _score_keys")
    by_key: dict[int, list[tuple[int, int, int]]] = {}
    for pk, rid, a, b in resp:
        by_key.setdefault(pk, []).append((rid, a, b))

    out: list[ParticipantInput] = []
    n_norm = len(NORMALISED_FIELDS)
    for r in rows:
        pk, study, experiment, text = r[0], r[1], r[2], r[3]
        items = by_key.get(pk)
        if not items:
            continue
        meta: dict[str, Any] = {}
        for name, value in zip(NORMALISED_FIELDS, r[4 : 4 + n_norm]):
            if value is not None:
                meta[name] = value
        extra = r[4 + n_norm]
        if extra:
            for k, v in json.loads(extra).items():
                meta.setdefault(k, v)
        out.append(
            ParticipantInput(
                participant_key=int(pk),
                experiment=experiment,
                text=text,
                response_ids=tuple(int(i[0]) for i in items),
                spans=tuple((int(i[1]), int(i[2])) for i in items),
                metadata=meta,
                study=study,
            )
        )
    return out
