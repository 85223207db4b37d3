"""Baseline scorers: floors every model must beat (``baseline:uniform``, ``baseline:frequency``).

Registered like models (``psystats models add baseline:frequency``: no
source, ``post_training = 'baseline'``), scored like models (``psystats score
--model baseline:frequency``) into ordinary runs, so every summary and fit
reads them as it reads a model.  They score whole responses, not tokens, and
do not read the transcript: the numbers are the same under every condition.

Definitions (docs/scoring.md, "Baselines"), for response ``y`` of participant
``p`` in experiment ``e`` at trial position ``i`` (``responses.response_index``):

* ``baseline:uniform``: ``-log(1/K)`` with ``K`` the size of the experiment's
  option set (``option_sets``).  A participant whose experiment has no option
  set is skipped (``skipped:no-option-set``); a response outside its set is
  not scored (count ``responses_outside_option_set``).
* ``baseline:frequency``: additive smoothing over the *other* participants
  of ``e`` (leave-one-participant-out: ``p``'s own responses are never
  counted), ``P(y) = (c + a) / (n + a K)``, ``a = 1/2`` (Jeffreys /
  Krichevsky-Trofimov), where ``c`` is how many other participants gave
  ``y`` at position ``i``, ``n`` how many other participants have a response
  in the support at position ``i``.  The support is the option set where
  the experiment has one (``K`` = its size; a response outside it is not
  scored), else every distinct response the other participants gave
  anywhere in the experiment plus one class for all responses none of them
  gave (``K`` = that count + 1).  With no other participant at a position it
  is uniform over the support.

Per response: ``nll`` = ``first_token_nll`` = ``-log P(y)``;
``first_token_entropy`` = the entropy of the baseline's distribution over
the support; ``top1_all`` = ``top1_first`` = whether ``y`` is its single most
probable class (a tie is not); ``n_tokens`` NULL (no tokens).  Experiments
with an option set also get every option's log-probability (``option_scores``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.db import Target
from psystats.warehouse.errors import WarehouseError

from .assemble import OPTION_SCHEMA, SCORE_SCHEMA, ScoreBatch
from .inputs import ParticipantInput
from .naming import BASELINES

ALPHA = 0.5  # additive smoothing of baseline:frequency (Jeffreys / Krichevsky-Trofimov)
VERSION = 1
OUTSIDE = "responses_outside_option_set"
# Scorer options that ask for tokens or words: a baseline has none.
TOKEN_OPTIONS = ("token_level", "entropy", "rank", "word_level")

# One row per response of the selected participants: the counts the
# leave-one-participant-out probability needs (see the module docstring).
# `c` and `n` still include the participant's own response (removed in Python).
_FREQUENCY_SQL = f"""
WITH r AS (
    SELECT r.response_id, r.participant_key AS pk, r.experiment AS e,
           r.response_index AS i, r.text AS y
    FROM responses r JOIN _bl_exp x ON x.experiment = r.experiment
),
k AS (SELECT experiment AS e, count(*) AS k FROM _bl_opt GROUP BY ALL),
s AS (  -- the support: an option of the set, or any response where there is no set
    SELECT r.* FROM r LEFT JOIN k USING (e)
    WHERE k.k IS NULL
       OR EXISTS (SELECT 1 FROM _bl_opt o WHERE o.experiment = r.e AND o.option = r.y)
),
c AS (SELECT e, i, y, count(*) AS c FROM s GROUP BY ALL),
n AS (
    SELECT e, i, sum(c)::BIGINT AS n, count(*) AS nz, max(c, 2) AS top2,
           sum((c + {ALPHA}) * ln(c + {ALPHA})) AS a
    FROM c GROUP BY ALL
),
v AS (  -- open experiments: distinct participants per response text
    SELECT e, y, count(DISTINCT pk) AS np FROM r ANTI JOIN k USING (e) GROUP BY ALL
),
vsize AS (SELECT e, count(*) AS size FROM v GROUP BY ALL),
u AS (  -- texts given by one participant only (they leave the support without them)
    SELECT r.pk, count(DISTINCT r.y) AS u FROM r JOIN v USING (e, y) WHERE v.np = 1
    GROUP BY ALL
)
SELECT r.response_id, r.e AS experiment, r.y AS response, c.c, n.n, n.nz, n.a,
       n.top2[1] AS m1, coalesce(n.top2[2], 0) AS m2,
       coalesce(k.k, vsize.size - coalesce(u.u, 0) + 1) AS k_minus,
       k.k IS NOT NULL AS has_set
FROM r JOIN _bl_keys USING (pk)
LEFT JOIN c USING (e, i, y) LEFT JOIN n USING (e, i) LEFT JOIN k USING (e)
LEFT JOIN vsize USING (e) LEFT JOIN u USING (pk)
ORDER BY r.response_id
"""

# Every option's count at the scored response's position (option experiments).
_OPTION_SQL = """
SELECT r.response_id, o.option, coalesce(c.c, 0) - (o.option = r.text)::INT AS c_minus
FROM responses r JOIN _bl_keys k ON k.pk = r.participant_key
JOIN _bl_opt o ON o.experiment = r.experiment
LEFT JOIN (
    SELECT r2.experiment, r2.response_index, r2.text, count(*) AS c
    FROM responses r2 JOIN _bl_exp x ON x.experiment = r2.experiment
    GROUP BY ALL
) c ON c.experiment = r.experiment AND c.response_index = r.response_index
   AND c.text = o.option
ORDER BY r.response_id, o.option
"""


def _f(x: np.ndarray) -> np.ndarray:
    """(x + a) log(x + a): one class's term of the entropy sum."""
    return (x + ALPHA) * np.log(x + ALPHA)


def frequency_scores(rows: pa.Table) -> dict[str, np.ndarray]:
    """nll, entropy and top1 per row of ``_FREQUENCY_SQL`` (rows outside the support: NaN)."""
    col = {k: rows[k].to_numpy(zero_copy_only=False) for k in rows.column_names}
    inside = ~np.isnan(col["c"].astype(float))
    c = np.where(inside, col["c"], 1).astype(float) - 1.0  # the participant's own answer out
    n = np.where(inside, col["n"], 1).astype(float) - 1.0
    k = col["k_minus"].astype(float)
    z = n + ALPHA * k
    nll = np.log(z) - np.log(c + ALPHA)
    # Entropy: the participant's class loses one count (and joins the classes at 0 if
    # it had only theirs); each class at 0 adds a log a.
    a = np.where(inside, col["a"], 0.0) - _f(c + 1.0) + np.where(c > 0, _f(c), 0.0)
    nz = np.where(inside, col["nz"], 0).astype(float) - (c == 0)
    entropy = np.log(z) - (a + (k - nz) * _f(np.zeros_like(c))) / z
    # The largest other class: the second count when the participant's class was the only max.
    m1 = np.where(inside, col["m1"], 0).astype(float)
    m2 = np.where(inside, col["m2"], 0).astype(float)
    other = np.where((c + 1.0 == m1) & (m2 < m1), m2, m1)
    top1 = (k == 1) | (c > other)
    nll[~inside] = np.nan
    return {"nll": nll, "entropy": entropy, "top1": top1, "inside": inside, "z": z}


@dataclass(frozen=True)
class _Work:
    """One participant a baseline will score; ``n_tokens`` is the runner's measure of work
    (a baseline's work is its responses), as a transformer plan's token count is."""

    participant: ParticipantInput

    @property
    def n_tokens(self) -> int:
        return len(self.participant.response_ids)


class BaselineScorer:
    """Scores participants with a baseline: the runner's scorer interface, no model.

    ``prepare`` / ``score_prepared`` / ``score`` return the transformer
    scorer's :class:`~psystats.scoring.assemble.ScoreBatch`; the numbers are
    computed once at construction for the selected participants
    (:func:`baseline_scorer`).
    """

    packing = attention = "none"
    compile = False
    placement = None

    def __init__(
        self,
        model: dict,
        kind: str,
        option_sets: dict[str, list[str]],
        scores: dict[int, tuple[float, float, bool]],
        options: dict[int, list[tuple[str, float]]],
        data_sha256: str | None,
    ) -> None:
        self.model_row = dict(model)
        self.kind = kind
        self.option_sets = {e: sorted(o) for e, o in sorted(option_sets.items())}
        self._scores = scores  # response_id -> (nll, entropy, top1)
        self._options = options  # response_id -> [(option, logprob)]
        self._data_sha256 = data_sha256

    @property
    def settings(self) -> dict:
        """What decides the numbers (``score_runs.settings``; the run key)."""
        s: dict[str, Any] = {
            "baseline": self.kind,
            "baseline_version": VERSION,
            "definition": BASELINES[self.model_row["name"]],
            "input": "responses only (no transcript): the same numbers under every condition",
            "options": self.option_sets,
        }
        if self.kind == "frequency":
            s["smoothing"] = {"method": "additive", "alpha": ALPHA}
            s["position"] = "responses.response_index"
            # Other participants are the data: new or replaced ones make a new run.
            s["data_sha256"] = self._data_sha256
        return s

    @property
    def fingerprints(self) -> dict:
        return {}

    def describe(self) -> str:
        """The line the runner prints where a model says 'loaded'."""
        return (
            f"{self.model_row['name']}: {BASELINES[self.model_row['name']]}; "
            f"{len(self._scores)} responses counted"
        )

    def count_tokens(self, p: ParticipantInput) -> int:
        """Work units are sized by this: a baseline's work is its responses."""
        return len(p.response_ids)

    def prepare(
        self, participants: Sequence[ParticipantInput]
    ) -> tuple[list[_Work], dict[str, int]]:
        """The participants a baseline can score, and skip counts for the others."""
        counts: dict[str, int] = {}
        out = []
        for p in participants:
            if self.kind == "uniform" and p.experiment not in self.option_sets:
                counts["skipped:no-option-set"] = counts.get("skipped:no-option-set", 0) + 1
            else:
                out.append(_Work(p))
        return out, counts

    def score_prepared(
        self, prepared: list[_Work], counts: dict[str, int] | None = None, progress=None
    ) -> ScoreBatch:
        counts = dict(counts or {})
        rows: dict[str, list] = {k: [] for k in SCORE_SCHEMA.names}
        opts: dict[str, list] = {k: [] for k in OPTION_SCHEMA.names}
        for work in prepared:
            p = work.participant
            if progress is not None:
                progress(work.n_tokens)
            for rid in p.response_ids:
                if rid not in self._scores:
                    counts[OUTSIDE] = counts.get(OUTSIDE, 0) + 1
                    continue
                nll, entropy, top1 = self._scores[rid]
                for name, value in zip(
                    SCORE_SCHEMA.names, (rid, nll, None, nll, top1, top1, entropy)
                ):
                    rows[name].append(value)
                for option, logprob in self._options.get(rid, ()):
                    opts["response_id"].append(rid)
                    opts["option"].append(option)
                    opts["logprob"].append(logprob)
        return ScoreBatch(
            scores=pa.table(rows, schema=SCORE_SCHEMA),
            options=pa.table(opts, schema=OPTION_SCHEMA),
            tokens=None,
            participant_keys=[w.participant.participant_key for w in prepared],
            counts=counts,
        )

    def score(self, participants: Sequence[ParticipantInput], progress=None) -> ScoreBatch:
        prepared, counts = self.prepare(participants)
        return self.score_prepared(prepared, counts, progress)


def _uniform(
    inputs: Sequence[ParticipantInput], option_sets: dict[str, list[str]]
) -> tuple[dict[int, tuple[float, float, bool]], dict[int, list[tuple[str, float]]]]:
    scores: dict[int, tuple[float, float, bool]] = {}
    options: dict[int, list[tuple[str, float]]] = {}
    for p in inputs:
        opts = option_sets.get(p.experiment)
        if not opts:
            continue
        k = len(set(opts))
        logp = -math.log(k)
        for rid, text in zip(p.response_ids, p.responses):
            if text in opts:
                # All options tie: none is the single most probable (top1 False).
                scores[rid] = (-logp, math.log(k), False)
                options[rid] = [(o, logp) for o in sorted(set(opts))]
    return scores, options


def _load_tables(
    con: duckdb.DuckDBPyConnection,
    inputs: Sequence[ParticipantInput],
    option_sets: dict[str, list[str]],
) -> None:
    exps = sorted({p.experiment for p in inputs})
    con.register("_bl_exp", pa.table({"experiment": exps}))
    con.register("_bl_keys", pa.table({"pk": [p.participant_key for p in inputs]}))
    pairs = [(e, o) for e in exps for o in sorted(set(option_sets.get(e, ())))]
    con.register(
        "_bl_opt",
        pa.table(
            {"experiment": [e for e, _ in pairs], "option": [o for _, o in pairs]},
            schema=pa.schema([("experiment", pa.string()), ("option", pa.string())]),
        ),
    )


def _data_sha256(con: duckdb.DuckDBPyConnection) -> str:
    """SHA-256 of the participants whose responses are counted (their content hashes)."""
    h = hashlib.sha256()
    for exp, pk, sha in con.execute(
        "SELECT p.experiment, p.participant_key, p.content_sha256 FROM participants p "
        "JOIN _bl_exp x ON x.experiment = p.experiment ORDER BY 1, 2"
    ).fetchall():
        h.update(f"{exp}\t{pk}\t{sha}\n".encode())
    return h.hexdigest()


def _frequency(
    con: duckdb.DuckDBPyConnection,
) -> tuple[dict[int, tuple[float, float, bool]], dict[int, list[tuple[str, float]]]]:
    rows = con.sql(_FREQUENCY_SQL).to_arrow_table()
    got = frequency_scores(rows)
    rids = rows["response_id"].to_numpy()
    scores = {
        int(r): (float(nll), float(ent), bool(t))
        for r, nll, ent, t, ok in zip(rids, got["nll"], got["entropy"], got["top1"], got["inside"])
        if ok
    }
    z = dict(zip(rids.tolist(), got["z"].tolist()))
    options: dict[int, list[tuple[str, float]]] = {}
    for rid, option, c_minus in con.execute(_OPTION_SQL).fetchall():
        if rid in scores:
            options.setdefault(rid, []).append(
                (option, math.log(c_minus + ALPHA) - math.log(z[rid]))
            )
    return scores, options


def baseline_scorer(
    db: Target,
    model: dict,
    inputs: Sequence[ParticipantInput],
    option_sets: dict[str, list[str]],
    *,
    engine: str = "local",
    scorer_options: dict[str, Any] | None = None,
) -> BaselineScorer:
    """The scorer of a baseline's models row, its numbers counted for ``inputs``.

    ``baseline:frequency`` reads the responses of every participant of the
    selected experiments (read-only, one short session), not only the
    selected ones.  Refuses what a baseline cannot do (tokens, words, Ray).
    """
    name = model.get("name")
    if name not in BASELINES:
        raise WarehouseError(f"{name!r} is not a baseline: {', '.join(BASELINES)}")
    asked = [o for o in TOKEN_OPTIONS if (scorer_options or {}).get(o)]
    if asked:
        raise WarehouseError(
            f"{name} scores whole responses, it has no tokens or words: drop "
            + ", ".join(f"--{o.replace('_', '-')}" for o in asked)
        )
    if engine == "ray":
        raise WarehouseError(
            f"{name} is counted in seconds by this process: score it without --engine ray"
        )
    kind = str(name).split(":", 1)[1]
    sets = {e: list(o) for e, o in option_sets.items() if e in {p.experiment for p in inputs}}
    if kind == "uniform":
        scores, options = _uniform(inputs, sets)
        return BaselineScorer(model, kind, sets, scores, options, None)
    with warehouse_db.open(db, "read") as con:
        _load_tables(con, inputs, sets)
        try:
            digest = _data_sha256(con)
            scores, options = _frequency(con)
        finally:
            for t in ("_bl_exp", "_bl_keys", "_bl_opt"):
                con.unregister(t)
    return BaselineScorer(model, kind, sets, scores, options, digest)
