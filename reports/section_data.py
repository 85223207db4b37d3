"""Section 1 of the report: the data (studies, domains, models, scoring runs)."""

from __future__ import annotations

from . import figures as figs
from . import queries as q
from .blocks import Note, Para, Section, esc, fmt, no_data, plural, table_from, title


def build(con) -> Section:
    s = Section(title("Data"))
    ov = q.overview(con)
    if ov["participants"] == 0:
        return s.add(
            no_data(
                "the warehouse holds no participants",
                'Ingest studies with <font face="Courier">psystats ingest PATH</font>.',
            )
        )
    s.add(
        Para(
            f"The warehouse holds <b>{plural(ov['studies'], 'study', 'studies')}</b> with "
            f"<b>{plural(ov['experiments'], 'experiment')}</b> in "
            f"<b>{plural(ov['domains'], 'task domain')}</b>: "
            f"<b>{plural(ov['participants'], 'participant')}</b> and "
            f"<b>{plural(ov['responses'], 'response')}</b>. "
            f"<b>{plural(ov['models'], 'model')}</b> "
            f"{'is' if ov['models'] == 1 else 'are'} registered; "
            f"<b>{plural(ov['score_runs'], 'scoring run')}</b> "
            f"wrote <b>{plural(ov['scores'], 'response score')}</b>; "
            f"<b>{plural(ov['fits'], 'Bayesian fit')}</b> "
            f"{'is' if ov['fits'] == 1 else 'are'} stored."
        )
    )
    st = q.studies_table(con)
    pct = lambda v: f"{v:.0f}%" if fmt(v) else ""  # noqa: E731 (NULL/NaN: blank)
    s.add(
        *table_from(
            st,
            {
                "study": "study",
                "domains": "domain",
                "experiments": "exps",
                "participants": "participants",
                "responses": "responses",
                "age": "age",
                "gender": "gender",
                "nationality": "nation.",
                "education": "educ.",
                "diagnosis": "diag.",
                "other_metadata": "other",
            },
            caption="Studies. Metadata columns: share of participants with that field.",
            formats={c: pct for c in (*q.METADATA_FIELDS, "other_metadata")},
        )
    )
    s.add(
        *table_from(
            q.domains_table(con), caption="Task domains (first listed domain of each experiment)."
        )
    )
    models = q.models_table(con)
    if models.empty:
        s.add(
            no_data(
                "no models are registered",
                'Register one with <font face="Courier">psystats models add SOURCE</font>.',
            )
        )
    else:
        s.add(
            *table_from(
                models,
                {
                    "name": "model",
                    "family": "family",
                    "generation": "gen.",
                    "n_params": "parameters",
                    "post_training": "post-training",
                    "base_model": "base",
                },
                caption="Registered models (parameter counts are read from the weights).",
                formats={"n_params": figs.human_params},
            )
        )
    runs = q.runs_table(con)
    if runs.empty:
        return s.add(
            no_data(
                "no scoring runs",
                'Score with <font face="Courier">psystats score --model NAME</font>.',
            )
        )
    return s.add(*runs_blocks(runs))


RUN_COLUMNS = {
    "run_id": "run",
    "model": "model",
    "condition": "condition",
    "scorer": "scorer",
    "status": "status",
    "sample": "sample",
    "scored": "responses",
    "n_skipped": "skipped",
    "device": "device",
    "dtype": "dtype",
    "finished_at": "finished",
    "psystats_version": "version",
    "weights_sha256": "weights sha256",
}


def runs_blocks(runs) -> list:
    """Every scoring run with its provenance; notes for runs not complete or sampled."""
    # Imported runs have no weights hash: NULL arrives as None or NaN.
    sha = lambda v: v[:12] if isinstance(v, str) else ""  # noqa: E731
    sampled = [isinstance(v, str) and bool(v) for v in runs["sample_spec"]]
    runs = runs.assign(sample=[v if s else "full" for v, s in zip(runs["sample_spec"], sampled)])
    out = table_from(
        runs,
        RUN_COLUMNS,
        caption="Scoring runs and their provenance (sample: 'full', or how the run sampled "
        "participants; weights hash: first 12 hex digits).",
        formats={"weights_sha256": sha},
    )
    failed = runs[runs["status"] != "complete"]
    if len(failed):
        out.append(
            Note(
                f"{len(failed)} run(s) are not complete ("
                + ", ".join(f"run {r.run_id}: {esc(r.status)}" for r in failed.itertuples())
                + "); only complete runs enter the figures and fits.",
                "warning",
            )
        )
    samples = runs[sampled]
    if len(samples):
        out.append(
            Note(
                f"<b>{plural(len(samples), 'run')} scored a sample</b> of the participants, not "
                "the full studies ("
                + "; ".join(f"run {r.run_id}: {esc(r.sample)}" for r in samples.itertuples())
                + "): every number read from them describes that sample.",
                "warning",
            )
        )
    return out
