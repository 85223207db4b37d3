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

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import duckdb

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.db import Target
from psystats.warehouse.errors import WarehouseError

from .inputs import ParticipantInput
from .naming import BASELINE_TYPE

ENGINES = ("local", "shard", "ray")

# A message for the user (progress, resumption); the CLI prints it on stderr.
Say = Callable[[str], None]


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


def plan_run(
    db: Target,
    model_name: str,
    *,
    studies: Sequence[str] = (),
    experiments: Sequence[str] = (),
    option_decls: Sequence[str] = (),
    options_file: str | None = None,
    detect_options: bool = True,
    read_only: bool = False,
    trust_remote_code: bool = False,
) -> RunPlan:
    """The model row, selection, participants and option sets of a run.

    ``read_only`` (shard jobs) neither registers a new model nor stores
    detected option sets, so every task of a job array can open the file at
    once.
    """
    from . import options as option_sets
    from .inputs import load_inputs

    with warehouse_db.open(db, "read" if read_only else "write") as con:
        if read_only:
            from .shard_merge import resolve_model_read_only

            model = resolve_model_read_only(con, model_name)
        else:
            from .registry import resolve_model

            model = resolve_model(con, model_name, trust_remote_code=trust_remote_code)
        selection = {
            "studies": sorted(studies) or None,
            "experiments": sorted(experiments) or None,
        }
        inputs = load_inputs(
            con, studies=list(studies) or None, experiments=list(experiments) or None
        )
        if not inputs:
            from psystats.warehouse.names import check_names

            # A misspelt study or experiment: say which, with "did you mean".
            check_names(con, "study", sorted(studies))
            check_names(con, "experiment", sorted(experiments))
            raise WarehouseError(
                "no participants match the selection "
                f"(studies={list(studies) or 'all'}, experiments={list(experiments) or 'all'})"
            )
        from .hub import require_model_files

        require_model_files(model)  # an unreachable hub id: one line now, before torch loads
        declared = option_sets.parse_declarations(tuple(option_decls), options_file)
        exps = sorted({p.experiment for p in inputs})
        if read_only:
            # Stored + declared (+ detected) sets, without writing them.
            sets = option_sets.stored(con, exps)
            if detect_options:
                for e, o in option_sets.detect(con, [e for e in exps if e not in sets]).items():
                    sets[e] = o
            sets.update({e: o for e, o in declared.items() if e in exps})
        else:
            sets = option_sets.ensure(con, exps, declared, detect_sets=detect_options)
    return RunPlan(model=dict(model), selection=selection, inputs=inputs, option_sets=sets)


def score(
    db: Target,
    model_name: str,
    *,
    condition: str = "plain",
    studies: Sequence[str] = (),
    experiments: Sequence[str] = (),
    engine: str = "local",
    scorer_options: dict[str, Any] | None = None,
    option_decls: Sequence[str] = (),
    options_file: str | None = None,
    detect_options: bool = True,
    trust_remote_code: bool = False,
    force: bool = False,
    commit_chars: int = 200_000,
    shard: str | None = None,
    out_dir: str = "psystats-shards",
    unit_tokens: int | None = None,
    ray_options: dict[str, Any] | None = None,
    say: Say | None = None,
    progress_bar: bool = False,
) -> ScoreOutcome:
    """Score the selected responses of ``model_name`` under ``condition``.

    ``db`` is the warehouse path (opened only for short sessions) or an open
    connection (used throughout).  ``scorer_options`` are
    :class:`~psystats.scoring.engine.Scorer` keyword arguments (device, dtype,
    token_budget, packing, ...).  ``engine`` is ``local``, ``shard`` (needs
    ``shard="I/N"``) or ``ray`` (``ray_options``: address, num_workers,
    num_gpus_per_worker, num_cpus_per_worker).  ``say`` receives progress and
    resumption messages; ``progress_bar`` draws a live bar on a terminal.
    """
    if engine not in ENGINES:
        raise WarehouseError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if shard and engine != "shard":
        engine = "shard"
    if engine == "shard" and not shard:
        raise WarehouseError("the shard engine needs --shard I/N")
    say = say or (lambda _msg: None)
    plan = plan_run(
        db,
        model_name,
        studies=studies,
        experiments=experiments,
        option_decls=option_decls,
        options_file=options_file,
        detect_options=detect_options,
        read_only=engine == "shard",
        trust_remote_code=trust_remote_code,
    )
    kwargs = dict(scorer_options or {})
    kwargs.update(
        condition=condition,
        option_sets=plan.option_sets,
        trust_remote_code=trust_remote_code or None,
    )
    if plan.model.get("post_training") == BASELINE_TYPE:  # a floor, not a network
        return _score_baseline(
            db,
            plan,
            condition,
            engine,
            kwargs,
            shard,
            out_dir,
            unit_tokens,
            force,
            commit_chars,
            say,
            progress_bar,
        )
    if engine == "ray":
        return _score_ray(db, plan, condition, kwargs, out_dir, unit_tokens, force, ray_options)

    from .engine import Scorer

    t_load = time.perf_counter()
    scorer = Scorer(plan.model, **kwargs)
    say(
        f"loaded {plan.model['name']} in {time.perf_counter() - t_load:.1f}s "
        f"({kwargs.get('dtype', 'float32')}, {_where(kwargs, scorer)}, packing "
        f"{scorer.packing}, attention {scorer.attention}{', compiled' if scorer.compile else ''})"
    )
    if engine == "shard":
        return _score_shard(scorer, plan, condition, shard or "", out_dir, unit_tokens, say)
    return _score_local(db, scorer, plan, condition, force, commit_chars, say, progress_bar)


def _score_baseline(
    db: Target,
    plan: RunPlan,
    condition: str,
    engine: str,
    kwargs: dict[str, Any],
    shard: str | None,
    out_dir: str,
    unit_tokens: int | None,
    force: bool,
    commit_chars: int,
    say: Say,
    progress_bar: bool,
) -> ScoreOutcome:
    """A baseline (``scoring/baselines.py``): counted in seconds instead of loaded, then
    scored, resumed and stored like a model."""
    from .baselines import baseline_scorer

    scorer = baseline_scorer(
        db, plan.model, plan.inputs, plan.option_sets, engine=engine, scorer_options=kwargs
    )
    say(scorer.describe())
    if engine == "shard":
        return _score_shard(scorer, plan, condition, shard or "", out_dir, unit_tokens, say)
    return _score_local(db, scorer, plan, condition, force, commit_chars, say, progress_bar)


def _where(kwargs: dict[str, Any], scorer: Any) -> str:
    """Where the model runs, for the 'loaded' line: a device, or a device map's devices."""
    if kwargs.get("device_map") is None:
        return str(kwargs.get("device", "cpu"))
    devices = sorted(set((scorer.placement or {}).values())) or ["one device"]
    return f"device map {kwargs['device_map']} over {', '.join(devices)}"


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
    scorer: Any,
    plan: RunPlan,
    condition: str,
    force: bool,
    commit_chars: int,
    say: Say,
    progress_bar: bool,
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
            force=force,
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
        _score_batches(db, scorer, run_id, pending, commit_chars, skips, say, progress_bar)
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
    scorer: Any,
    run_id: int,
    pending: Sequence[ParticipantInput],
    commit_chars: int,
    skips: dict[str, int],
    say: Say,
    progress_bar: bool,
) -> None:
    """Score ``pending`` batch by batch, committing each in its own short session.

    Off the model's critical path: tokenisation of batch i+1 runs in one thread
    while batch i is on the model, and the commit of batch i runs in another
    while batch i+1 is scored; at most one commit is in flight, so an
    interruption loses at most the batch being committed and the one being
    scored (both are redone on resume).
    """
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .runs import write_batch

    batches = list(chunks(pending, commit_chars))
    interactive = progress_bar and sys.stderr.isatty()
    bar = Progress(
        TextColumn("scoring"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not interactive,
        transient=False,
    )
    t0 = time.perf_counter()
    tokens = 0
    # With an open connection, the writer thread needs its own cursor (DuckDB:
    # one connection object per thread); with a path, each commit opens the file.
    shared = db.cursor() if isinstance(db, duckdb.DuckDBPyConnection) else None

    def commit(batch: Any) -> int:
        with warehouse_db.open(shared if shared is not None else db, "write") as con:
            return write_batch(con, run_id, batch)

    def report(i: int, chunk: list, batch: Any, added: int) -> None:
        nonlocal tokens
        tokens += batch.n_tokens
        rate = tokens / max(time.perf_counter() - t0, 1e-9)
        bar.update(task, advance=sum(len(p.text) for p in chunk), tps=f"{rate:,.0f}")
        if not interactive:
            say(
                f"committed batch {i + 1}/{len(batches)}: {added} responses, "
                f"{batch.n_tokens} tokens, {rate:,.0f} tok/s"
            )

    try:
        with (
            bar,
            ThreadPoolExecutor(max_workers=1) as tokenizer_pool,
            ThreadPoolExecutor(max_workers=1) as writer,
        ):
            task = bar.add_task("score", total=sum(len(p.text) for p in pending) or 1, tps="-")
            in_flight = None
            future = tokenizer_pool.submit(scorer.prepare, batches[0]) if batches else None
            for i, chunk in enumerate(batches):
                assert future is not None
                prepared, counts = future.result()
                future = (
                    tokenizer_pool.submit(scorer.prepare, batches[i + 1])
                    if i + 1 < len(batches)
                    else None
                )
                for k, v in counts.items():
                    if k.startswith("skipped:"):
                        skips[k] = skips.get(k, 0) + v
                batch = scorer.score_prepared(prepared, counts)
                if in_flight is not None:
                    report(*in_flight[1:], in_flight[0].result())
                in_flight = (writer.submit(commit, batch), i, chunk, batch)
            if in_flight is not None:
                report(*in_flight[1:], in_flight[0].result())
    finally:
        if shared is not None:
            shared.close()  # the writer thread has finished: the executor waited for it


# ---------------------------------------------------------------------------
# shard: part I of N into Parquet files (SLURM arrays), no warehouse writes


def _score_shard(
    scorer: Any,
    plan: RunPlan,
    condition: str,
    shard: str,
    out_dir: str,
    unit_tokens: int | None,
    say: Say,
) -> ScoreOutcome:
    from .shard_job import run_shard
    from .shard_units import DEFAULT_UNIT_TOKENS, parse_shard_spec

    res = run_shard(
        scorer,
        plan.model,
        condition=condition,
        selection=plan.selection,
        inputs=plan.inputs,
        shard=parse_shard_spec(shard),
        out_dir=out_dir,
        unit_tokens=unit_tokens or DEFAULT_UNIT_TOKENS,
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
    db: Target,
    plan: RunPlan,
    condition: str,
    scorer_kwargs: dict[str, Any],
    out_dir: str,
    unit_tokens: int | None,
    force: bool,
    ray_options: dict[str, Any] | None,
) -> ScoreOutcome:
    import functools

    from .distributed import print_progress, run_ray
    from .engine import Scorer

    opts = dict(ray_options or {})
    quiet = opts.pop("quiet", False)
    factory = functools.partial(Scorer, plan.model, **scorer_kwargs)
    # run_ray opens the warehouse only to start the run, merge each unit and close it.
    r = run_ray(
        db,
        plan.model,
        factory,
        condition=condition,
        selection=plan.selection,
        inputs=plan.inputs,
        out_dir=out_dir,
        unit_tokens=unit_tokens,
        force=force,
        progress=None if quiet else print_progress,
        **opts,
    )
    out = ScoreOutcome(
        engine="ray",
        model=plan.model["name"],
        condition=condition,
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
