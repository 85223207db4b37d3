"""One scoring runner: a local run, one shard of a job array, or a Ray cluster.

Every way of scoring goes through :func:`score`, which

1. reads what to score (the model's registry row, the selected participants,
   the experiments' option sets) in one short warehouse session;
2. loads the model (minutes for a large one) with the warehouse file closed;
3. scores, by one of three engines:

   * ``local``: this process, batch by batch; each batch is committed in its
     own short session, so readers (``psystats summary``, ``sql``, any DuckDB
     client) get the file between batches;
   * ``shard``: part ``I/N`` of the selection into Parquet shards, never
     writing the warehouse (SLURM arrays; ``psystats merge`` ingests them);
   * ``ray``: actors on a Ray cluster, each unit merged as it arrives;

4. returns a :class:`ScoreOutcome` whose ``message`` is what the CLI prints.

The CLI only parses options and prints; notebooks and scripts call
:func:`score` directly.  Nothing here computes a score: that is
:class:`psystats.scoring.engine.Scorer`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import duckdb

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.db import Target
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.progress import progress
from psystats.warehouse.validators import IntIn, Maybe

from .baselines import baseline_scorer
from .config import ScorerConfig
from .engine import ModelScorer
from .errors import ScoringError
from .inputs import ParticipantInput, load_inputs
from .naming import BASELINE_TYPE
from .sample import SampleSpec, sample_keys
from .shard_units import DEFAULT_UNIT_TOKENS, parse_shard_spec

ENGINES = ("local", "shard", "ray")

# A message for the user (progress, resumption); the CLI prints it on stderr.
Say = Callable[[str], None]


class RunOptionsError(ScoringError):
    """A run option no run accepts (the CLI shows it as a usage error)."""


@dataclass(frozen=True)
class RunOptions:
    """What a run scores and how it is driven: the only defaults and checks of these options.

    Everything here is checked when it is built, before any model loads
    (``ScorerConfig`` holds the scorer's own options).
    """

    studies: tuple[str, ...] = ()
    experiments: tuple[str, ...] = ()
    sample: SampleSpec | None = None  # a seeded sample of the selection (scoring.sample)
    engine: str = "local"  # local | shard | ray; a shard spec implies shard
    shard: str | None = None  # "I/N" (0-based)
    out_dir: str = "psystats-shards"  # shard folder for --shard and ray
    unit_tokens: int | None = None  # tokens per work unit (ray, shard)
    commit_chars: int = 200_000  # transcript characters per committed batch (local)
    force: bool = False  # score again a complete run
    option_decls: tuple[str, ...] = ()  # EXPERIMENT=A|B|...
    options_file: str | None = None
    detect_options: bool = True
    # ray: address, num_workers, num_gpus_per_worker, num_cpus_per_worker
    ray: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        engine = "shard" if self.shard else self.engine
        if engine not in ENGINES:
            raise RunOptionsError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
        object.__setattr__(self, "engine", engine)
        if engine == "shard" and not self.shard:
            raise RunOptionsError("the shard engine needs --shard I/N")
        if self.shard:
            try:
                parse_shard_spec(self.shard)
            except WarehouseError as e:
                raise RunOptionsError(str(e)) from None
        for name, value in (("commit-chars", self.commit_chars), ("unit-tokens", self.unit_tokens)):
            try:
                Maybe(IntIn(1))(value)
            except ValueError as e:
                raise RunOptionsError(f"--{name} {e}") from None
        object.__setattr__(self, "studies", tuple(sorted(self.studies)))
        object.__setattr__(self, "experiments", tuple(sorted(self.experiments)))


@dataclass
class ScoreOutcome:
    """What one call of :func:`score` did."""

    engine: str
    model: str
    condition: str
    run_id: int | None = None  # None for a shard job: runs exist once merged
    already_complete: bool = False
    message: str = ""  # one line for the user
    detail: Any = None  # RayRunResult / ShardJobResult / the run's score_runs row


@dataclass
class RunPlan:
    """What to score, read from the warehouse in one short session."""

    model: dict
    selection: dict
    inputs: list[ParticipantInput]
    option_sets: dict[str, list[str]] = field(default_factory=dict)


def _selection(run: RunOptions) -> dict:
    """The run's selection as recorded (part of the run key)."""
    out: dict[str, Any] = {
        "studies": list(run.studies) or None,
        "experiments": list(run.experiments) or None,
    }
    if run.sample is not None:
        # Only for samples, so full runs keep the run keys they had.
        out["sample"] = run.sample.text
    return out


def _load_selection(con: duckdb.DuckDBPyConnection, run: RunOptions) -> list[ParticipantInput]:
    studies, experiments = list(run.studies) or None, list(run.experiments) or None
    if run.sample is None:
        inputs = load_inputs(con, studies=studies, experiments=experiments)
    else:
        keys = sample_keys(con, run.sample, studies=studies, experiments=experiments)
        inputs = load_inputs(con, participant_keys=keys) if keys else []
    if not inputs:
        from psystats.warehouse.names import check_names

        # A misspelt study or experiment: say which, with "did you mean".
        check_names(con, "study", list(run.studies))
        check_names(con, "experiment", list(run.experiments))
        raise WarehouseError(
            "no participants match the selection "
            f"(studies={list(run.studies) or 'all'}, experiments={list(run.experiments) or 'all'})"
        )
    return inputs


def plan_run(
    db: Target,
    model_name: str,
    run: RunOptions | None = None,
    *,
    read_only: bool = False,
    trust_remote_code: bool = False,
) -> RunPlan:
    """The model row, selection, participants and option sets of a run.

    ``read_only`` (shard jobs) neither registers a new model nor stores
    detected option sets, so every task of a job array can open the file at
    once.
    """
    from . import options as option_sets

    run = run or RunOptions()
    with warehouse_db.open(db, "read" if read_only else "write") as con:
        # The selection and the declared option sets first: a typo there is refused
        # before a new model is registered.
        inputs = _load_selection(con, run)
        declared = option_sets.parse_declarations(tuple(run.option_decls), run.options_file)
        if read_only:
            from .shard_merge import resolve_model_read_only

            model = resolve_model_read_only(con, model_name)
        else:
            from .registry import resolve_model

            model = resolve_model(con, model_name, trust_remote_code=trust_remote_code)
        from .hub import require_model_files

        require_model_files(model)  # an unreachable hub id: one line now, before torch loads
        exps = sorted({p.experiment for p in inputs})
        if read_only:
            # Stored + declared (+ detected) sets, without writing them.
            sets = option_sets.stored(con, exps)
            if run.detect_options:
                for e, o in option_sets.detect(con, [e for e in exps if e not in sets]).items():
                    sets[e] = o
            sets.update({e: o for e, o in declared.items() if e in exps})
        else:
            sets = option_sets.ensure(con, exps, declared, detect_sets=run.detect_options)
    return RunPlan(model=dict(model), selection=_selection(run), inputs=inputs, option_sets=sets)


def build_scorer(
    model: dict,
    config: ScorerConfig,
    db: Target | None = None,
    *,
    inputs: Sequence[ParticipantInput] = (),
    engine: str = "local",
) -> ModelScorer:
    """The scorer of a registered model: a transformer ``Scorer``, or a baseline.

    The hook for scorers that are not transformers: a model whose registry
    row has ``post_training = 'baseline'`` is scored by
    :func:`psystats.scoring.baselines.baseline_scorer`, which returns a
    :class:`~psystats.scoring.engine.ModelScorer` (a ``ScoreBatch`` for a
    list of participants); it reads what it needs (other participants'
    responses) from ``db`` for the selected ``inputs`` before scoring starts.
    """
    if model.get("post_training") == BASELINE_TYPE:
        token_options = {
            "token_level": config.token_level,
            "entropy": config.entropy,
            "rank": config.rank,
            "word_level": config.word_level,
        }
        if db is None:
            raise ScoringError(f"{model.get('name')} needs the warehouse to count responses")
        return baseline_scorer(
            db,
            model,
            inputs,
            {e: list(o) for e, o in (config.option_sets or {}).items()},
            engine=engine,
            scorer_options=token_options,
        )
    from .engine import Scorer

    return Scorer(model, config)


def set_cpu_threads(config: ScorerConfig) -> None:
    """torch's CPU threads: ``--cpu-threads``, else the physical cores (never oversubscribed)."""
    import torch

    torch.set_num_threads(config.threads)


def score(
    db: Target,
    model_name: str,
    config: ScorerConfig | None = None,
    run: RunOptions | None = None,
    *,
    say: Say | None = None,
    quiet: bool = False,
) -> ScoreOutcome:
    """Score the selected responses of ``model_name`` under ``config.condition``.

    ``db`` is the warehouse path (opened only for short sessions) or an open
    connection (used throughout).  ``config`` holds the scorer's options
    (device, dtype, token budget, condition, ...), ``run`` what to score and
    how (selection, sample, engine ``local``/``shard``/``ray``, batches);
    both were checked when they were built, before anything loads.  ``say``
    receives messages (model loaded, resumption); ``quiet`` silences the
    progress display.
    """
    config = config or ScorerConfig()
    run = run or RunOptions()
    say = say or (lambda _msg: None)
    plan = plan_run(
        db,
        model_name,
        run,
        read_only=run.engine == "shard",
        trust_remote_code=bool(config.trust_remote_code),
    )
    config = config.replace(option_sets=plan.option_sets)
    baseline = plan.model.get("post_training") == BASELINE_TYPE
    if run.engine == "ray" and not baseline:  # a baseline refuses Ray itself, in one line
        return _score_ray(db, plan, config, run, quiet)
    if not baseline:
        set_cpu_threads(config)
    t_load = time.perf_counter()
    scorer = build_scorer(plan.model, config, db, inputs=plan.inputs, engine=run.engine)
    say(f"loaded {plan.model['name']} in {time.perf_counter() - t_load:.1f}s ({scorer.describe()})")
    if run.engine == "shard":
        return _score_shard(scorer, plan, config.condition, run, say)
    return _score_local(db, scorer, plan, config.condition, run, say, quiet)


# ---------------------------------------------------------------------------
# local: this process, one committed batch at a time


def chunks(participants: Sequence[ParticipantInput], chars: int) -> Iterator[list]:
    """Consecutive groups of about ``chars`` transcript characters: one committed batch each."""
    group: list = []
    size = 0
    for p in participants:
        group.append(p)
        size += len(p.text)
        if size >= chars:
            yield group
            group, size = [], 0
    if group:
        yield group


def _score_local(
    db: Target,
    scorer: ModelScorer,
    plan: RunPlan,
    condition: str,
    run: RunOptions,
    say: Say,
    quiet: bool,
) -> ScoreOutcome:
    from .runs import finish_run, pending_participants, start_run

    name = plan.model["name"]
    with warehouse_db.open(db, "write") as con:
        run_id, complete = start_run(
            con,
            plan.model,
            condition,
            plan.selection,
            scorer.settings,
            scorer.fingerprints,
            force=run.force,
        )
        pending = [] if complete else pending_participants(con, run_id, plan.inputs)
    out = ScoreOutcome(engine="local", model=name, condition=condition, run_id=run_id)
    if complete:
        out.already_complete = True
        out.message = (
            f"run {run_id} ({name}, {condition}) is already complete; "
            "nothing to do (--force scores again)"
        )
        return out
    if len(pending) < len(plan.inputs):
        say(
            f"resuming run {run_id}: {len(plan.inputs) - len(pending)} of "
            f"{len(plan.inputs)} participants already scored"
        )
    skips: dict[str, int] = {}
    try:
        _score_batches(db, scorer, run_id, pending, run.commit_chars, skips, quiet)
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt):
            error = str(e) if isinstance(e, WarehouseError) else f"{type(e).__name__}: {e}"
            with warehouse_db.open(db, "write") as con:
                finish_run(con, run_id, skips, status="failed", error=error[:2000])
        raise
    with warehouse_db.open(db, "write") as con:
        finish_run(con, run_id, skips, status="complete")
        row = con.execute(
            "SELECT n_participants, n_responses, n_skipped, counts FROM score_runs "
            "WHERE run_id = ?",
            [run_id],
        ).fetchall()[0]
    out.detail = dict(zip(("n_participants", "n_responses", "n_skipped", "counts"), row))
    out.message = (
        f"run {run_id}: complete; {row[0]} participants, {row[1]} responses scored, "
        f"{row[2]} participants skipped; counts {row[3]}"
    )
    return out


def _score_batches(
    db: Target,
    scorer: ModelScorer,
    run_id: int,
    pending: Sequence[ParticipantInput],
    commit_chars: int,
    skips: dict[str, int],
    quiet: bool,
) -> None:
    """Score ``pending`` batch by batch, committing each in its own short session.

    Off the model's critical path: tokenisation of batch i+1 runs in one thread
    while batch i is on the model, and the commit of batch i runs in another
    while batch i+1 is scored; at most one commit is in flight, so an
    interruption loses at most the batch being committed and the one being
    scored (both are redone on resume).

    Progress counts forwarded tokens, advancing after every forward pass (not
    only when a batch commits).  The total is exact for the batches already
    tokenised and estimated for the rest from their characters at the
    tokens-per-character ratio seen so far.
    """
    from .runs import write_batch

    batches = list(chunks(pending, commit_chars))
    total_chars = sum(len(p.text) for p in pending)
    seen = {"chars": 0, "tokens": 0}
    # With an open connection, the writer thread needs its own cursor (DuckDB:
    # one connection object per thread); with a path, each commit opens the file.
    shared = db.cursor() if isinstance(db, duckdb.DuckDBPyConnection) else None

    def commit(batch: Any) -> int:
        with warehouse_db.open(shared if shared is not None else db, "write") as con:
            return write_batch(con, run_id, batch)

    def planned(chunk: list, prepared: list) -> None:
        seen["chars"] += sum(len(p.text) for p in chunk)
        seen["tokens"] += sum(prep.n_tokens for prep in prepared)
        rest = total_chars - seen["chars"]
        ratio = seen["tokens"] / max(seen["chars"], 1)
        bar.set_total(seen["tokens"] + round(rest * ratio))

    def report(i: int, batch: Any, added: int) -> None:
        if not bar.terminal:
            bar.say(
                f"committed batch {i + 1}/{len(batches)}: {added} responses, "
                f"{batch.n_tokens:,} tokens"
            )

    try:
        with (
            progress("scoring", None, "tokens", quiet=quiet) as bar,
            ThreadPoolExecutor(max_workers=1) as tokenizer_pool,
            ThreadPoolExecutor(max_workers=1) as writer,
        ):
            in_flight = None
            future = tokenizer_pool.submit(scorer.prepare, batches[0]) if batches else None
            for i, chunk in enumerate(batches):
                assert future is not None
                prepared, counts = future.result()
                planned(chunk, prepared)
                future = (
                    tokenizer_pool.submit(scorer.prepare, batches[i + 1])
                    if i + 1 < len(batches)
                    else None
                )
                for k, v in counts.items():
                    if k.startswith("skipped:"):
                        skips[k] = skips.get(k, 0) + v
                batch = scorer.score_prepared(prepared, counts, bar.advance)
                if in_flight is not None:
                    report(in_flight[1], in_flight[2], in_flight[0].result())
                in_flight = (writer.submit(commit, batch), i, batch)
            if in_flight is not None:
                report(in_flight[1], in_flight[2], in_flight[0].result())
    finally:
        if shared is not None:
            shared.close()  # the writer thread has finished: the executor waited for it


# ---------------------------------------------------------------------------
# shard: part I of N into Parquet files (SLURM arrays), no warehouse writes


def _score_shard(
    scorer: ModelScorer, plan: RunPlan, condition: str, run: RunOptions, say: Say
) -> ScoreOutcome:
    from .shard_job import run_shard

    shard = run.shard or ""
    res = run_shard(
        scorer,
        plan.model,
        condition=condition,
        selection=plan.selection,
        inputs=plan.inputs,
        shard=parse_shard_spec(shard),
        out_dir=run.out_dir,
        unit_tokens=run.unit_tokens or DEFAULT_UNIT_TOKENS,
        progress=lambda done, total, tokens: say(
            f"shard {shard}: unit {done}/{total}, {tokens:,} tokens"
        ),
    )
    return ScoreOutcome(
        engine="shard",
        model=plan.model["name"],
        condition=condition,
        detail=res,
        message=(
            f"shard {shard}: {res.participants} participants, {res.units} units written, "
            f"{res.units_skipped} already there -> {res.run_dir}"
        ),
    )


# ---------------------------------------------------------------------------
# ray: actors on a cluster, units merged as they arrive


def _score_ray(
    db: Target, plan: RunPlan, config: ScorerConfig, run: RunOptions, quiet: bool
) -> ScoreOutcome:
    from .distributed import report_to, run_ray

    factory = functools.partial(build_scorer, plan.model, config, None)
    bar = progress("scoring", None, "tokens", quiet=quiet)
    try:
        # run_ray opens the warehouse only to start the run, merge each unit and close it.
        r = run_ray(
            db,
            plan.model,
            factory,
            condition=config.condition,
            selection=plan.selection,
            inputs=plan.inputs,
            out_dir=run.out_dir,
            unit_tokens=run.unit_tokens,
            force=run.force,
            progress=report_to(bar),
            **run.ray,
        )
    finally:
        bar.close()
    out = ScoreOutcome(
        engine="ray",
        model=plan.model["name"],
        condition=config.condition,
        run_id=r.run_id,
        already_complete=r.already_complete,
        detail=r,
    )
    if r.already_complete:
        out.message = f"run {r.run_id} is already complete; nothing to do (--force scores again)"
    else:
        out.message = (
            f"run {r.run_id}: complete; {r.participants} participants in {r.units} "
            f"units ({r.resumed_units} merged from earlier shards, {r.retries} "
            f"re-dispatched) in {r.seconds:.0f}s; shards in {r.run_dir}"
        )
    return out
