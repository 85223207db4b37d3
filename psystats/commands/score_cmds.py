"""`psystats score`: per-response log-probabilities from a language model."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import click

from .common import db_option, friendly_errors, open_db


def _chunks(participants, chars: int):
    """Consecutive groups of about ``chars`` transcript characters: one committed batch each."""
    group, size = [], 0
    for p in participants:
        group.append(p)
        size += len(p.text)
        if size >= chars:
            yield group
            group, size = [], 0
    if group:
        yield group


@click.command()
@click.option(
    "--model",
    "model_name",
    required=True,
    help="Registered model name, or a hub id / local folder / .gguf file (registered on first use).",
)
@click.option(
    "--condition",
    type=click.Choice(["plain", "chat", "persona"]),
    default="plain",
    show_default=True,
    help="How transcripts are rendered (see docs/scoring.md).",
)
@db_option
@click.option("--study", "studies", multiple=True, help="Only these studies (repeatable).")
@click.option(
    "--experiment", "experiments", multiple=True, help="Only these experiments (repeatable)."
)
@click.option(
    "--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1, mps."
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Weights and activations dtype.",
)
@click.option(
    "--token-budget",
    type=int,
    default=16384,
    show_default=True,
    help="Most tokens per forward pass when packing (halved automatically on out-of-memory).",
)
@click.option(
    "--packing",
    type=click.Choice(["auto", "packed", "none"]),
    default="auto",
    show_default=True,
    help="Several transcripts per forward with a document mask (packed), or one each "
    "(none). auto: packed on CUDA, none on CPU.",
)
@click.option(
    "--attention",
    type=click.Choice(["auto", "flex", "dense"]),
    default="auto",
    show_default=True,
    help="Mask for packed forwards: flex (FlexAttention block mask, no N x N mask) or "
    "dense (boolean mask + SDPA). auto: flex on CUDA where the model supports it.",
)
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="torch.compile the model's forward (GPU; packed lengths padded to "
    "--compile-bucket so a few shapes compile once; compile time is reported).",
)
@click.option(
    "--compile-bucket",
    type=int,
    default=4096,
    show_default=True,
    help="With --compile: pad packed forwards to a multiple of this many tokens.",
)
@click.option(
    "--max-context",
    type=int,
    default=None,
    help="Longest sequence given to the model [default: the model's maximum positions].",
)
@click.option(
    "--context-policy",
    type=click.Choice(["skip", "window"]),
    default="skip",
    show_default=True,
    help="Transcripts longer than the context: skip them (counted), or score them in "
    "overlapping windows.",
)
@click.option(
    "--stride",
    type=int,
    default=None,
    help="Window step for --context-policy window [default: half the context]; every "
    "token is scored with at least (context - stride) tokens before it.",
)
@click.option(
    "--tokenization",
    type=click.Choice(["segments", "whole"]),
    default="segments",
    show_default=True,
    help="segments: context and responses tokenised separately (no boundary leaks); "
    "whole: the seed study's whole-text tokenisation with offset mapping.",
)
@click.option(
    "--token-level", is_flag=True, help="Also store every response token's log-probability."
)
@click.option(
    "--options",
    "option_decls",
    multiple=True,
    metavar="EXPERIMENT=A|B|...",
    help="Declare an experiment's finite option set (repeatable).",
)
@click.option(
    "--options-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Option sets from CSV (experiment,option) or JSON {experiment: [options]}.",
)
@click.option(
    "--no-detect-options",
    is_flag=True,
    help="Do not detect option sets from the data (declared ones still apply).",
)
@click.option(
    "--system-prompt",
    default=None,
    help="System prompt for --condition chat [default: the chat template's own].",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Allow the model repository's own Python code to run (only for models you trust).",
)
@click.option("--force", is_flag=True, help="Score again even if this run is already complete.")
@click.option(
    "--commit-chars",
    type=int,
    default=200_000,
    show_default=True,
    help="Transcript characters per committed batch (what an interruption can lose).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process; ray: workers on a Ray cluster.",
)
@click.option(
    "--address", default=None, help="Ray address for --engine ray (auto, ray://host:10001)."
)
@click.option(
    "--num-gpus-per-worker",
    type=float,
    default=1.0,
    show_default=True,
    help="GPUs per Ray worker (0 for CPU workers).",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Score part I of N (0-based) into Parquet shards under --out, without writing "
    "the warehouse (SLURM arrays); `psystats merge DIR` ingests them.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="psystats-shards",
    show_default=True,
    help="Shard folder for --shard and --engine ray.",
)
@click.option(
    "--cpu-threads",
    type=int,
    default=None,
    help="torch CPU threads [default: torch's choice]; 1 is often fastest on a busy machine.",
)
@click.option(
    "--num-workers",
    type=int,
    default=None,
    help="Ray workers for --engine ray [default: every GPU (or CPU) of the cluster].",
)
@click.option(
    "--unit-tokens",
    type=int,
    default=None,
    help="Tokens per work unit (one shard each) for --engine ray / --shard "
    "[default: ray: about 8 units per worker; shard: 200000].",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@friendly_errors
def score(
    model_name: str,
    condition: str,
    db: str | None,
    studies: tuple[str, ...],
    experiments: tuple[str, ...],
    device: str,
    dtype: str,
    token_budget: int,
    packing: str,
    attention: str,
    compile_model: bool,
    compile_bucket: int,
    max_context: int | None,
    context_policy: str,
    stride: int | None,
    tokenization: str,
    token_level: bool,
    option_decls: tuple[str, ...],
    options_file: str | None,
    no_detect_options: bool,
    system_prompt: str | None,
    trust_remote_code: bool,
    force: bool,
    commit_chars: int,
    engine: str,
    address: str | None,
    num_gpus_per_worker: float,
    shard: str | None,
    out_dir: str,
    cpu_threads: int | None,
    num_workers: int | None,
    unit_tokens: int | None,
    quiet: bool,
) -> None:
    """Score every selected human response with a causal language model.

    For each response: summed NLL (nats) of its tokens given everything
    before it, token count, first-token NLL, whether the model's top token
    matched, first-token entropy; for experiments with a finite option set
    also every option's renormalised log-probability.  Results go to the
    `scores` / `option_scores` (/ `token_scores`) tables under one run.

    Runs are resumable: an interrupted run continues where its last committed
    batch ended; running a completed run again does nothing unless --force.

    \b
    Examples:
      psystats score --model Qwen/Qwen3-8B-Base --condition plain --device cuda --dtype bfloat16
      psystats score --model Qwen/Qwen3-8B-Base --device cuda --dtype bfloat16 --compile \
          --token-budget 65536 --commit-chars 2000000
      psystats score --model Qwen/Qwen3-8B --condition chat --study zhu2024games
      psystats score --model ./SmolLM2-135M-Instruct.Q4_1.gguf --condition persona
      psystats score --model my-llama --options "exp1=yes|no" --token-level
      psystats score --model my-llama --shard $SLURM_ARRAY_TASK_ID/16 --out shards/
    """
    from psystats.scoring import options as option_sets
    from psystats.scoring.engine import NonFiniteLogits, Scorer
    from psystats.scoring.inputs import load_inputs
    from psystats.scoring.registry import resolve_model
    from psystats.scoring.runs import finish_run, pending_participants, start_run
    from psystats.warehouse.db import WarehouseError

    if cpu_threads:
        import torch

        torch.set_num_threads(cpu_threads)
    # [distributed] A --shard task only reads the warehouse: read-only
    # connections let every task of a job array open the file at once.
    con = open_db(db, read_only=bool(shard))
    if shard:
        from psystats.scoring.shards import resolve_model_read_only

        model = resolve_model_read_only(con, model_name)
    else:
        model = resolve_model(con, model_name, trust_remote_code=trust_remote_code)
    # [/distributed]
    selection = {"studies": sorted(studies) or None, "experiments": sorted(experiments) or None}
    inputs = load_inputs(con, studies=studies or None, experiments=experiments or None)
    if not inputs:
        raise WarehouseError(
            "no participants match the selection "
            f"(studies={list(studies) or 'all'}, experiments={list(experiments) or 'all'})"
        )
    declared = option_sets.parse_declarations(option_decls, options_file)
    exps = sorted({p.experiment for p in inputs})
    if shard:
        # A shard task does not write the warehouse: use stored + declared (+ detected) sets.
        sets = option_sets.stored(con, exps)
        if not no_detect_options:
            for e, o in option_sets.detect(con, [e for e in exps if e not in sets]).items():
                sets[e] = o
        sets.update({e: o for e, o in declared.items() if e in exps})
    else:
        sets = option_sets.ensure(con, exps, declared, detect_sets=not no_detect_options)
    scorer_kwargs = dict(
        condition=condition,
        device=device,
        dtype=dtype,
        token_budget=token_budget,
        max_context=max_context,
        context_policy=context_policy,
        stride=stride,
        tokenization=tokenization,
        token_level=token_level,
        option_sets=sets,
        packing=packing,
        system_prompt=system_prompt,
        attention=attention,
        compile=compile_model,
        compile_bucket=compile_bucket,
        trust_remote_code=trust_remote_code or None,
    )

    if engine == "ray":
        import functools

        # [distributed]
        from psystats.scoring.distributed import print_progress, run_ray

        factory = functools.partial(Scorer, model, **scorer_kwargs)
        r = run_ray(
            con,
            model,
            factory,
            condition=condition,
            selection=selection,
            inputs=inputs,
            out_dir=out_dir,
            address=address,
            num_gpus_per_worker=num_gpus_per_worker,
            num_cpus_per_worker=cpu_threads or 1,
            num_workers=num_workers,
            unit_tokens=unit_tokens,
            force=force,
            progress=None if quiet else print_progress,
        )
        if r.already_complete:
            click.echo(f"run {r.run_id} is already complete; nothing to do (--force scores again)")
        else:
            click.echo(
                f"run {r.run_id}: complete; {r.participants} participants in {r.units} "
                f"units ({r.resumed_units} merged from earlier shards, {r.retries} "
                f"re-dispatched) in {r.seconds:.0f}s; shards in {r.run_dir}"
            )
        return
        # [/distributed]

    t_load = time.perf_counter()
    scorer = Scorer(model, **scorer_kwargs)
    if not quiet:
        click.echo(
            f"loaded {model['name']} in {time.perf_counter() - t_load:.1f}s "
            f"({dtype}, {device}, packing {scorer.packing}, attention {scorer.attention}"
            f"{', compiled' if scorer.compile else ''})",
            err=True,
        )

    if shard:
        from psystats.scoring.shards import DEFAULT_UNIT_TOKENS, parse_shard_spec, run_shard

        # [distributed]
        def shard_progress(done: int, total: int, tokens: int) -> None:
            if not quiet:
                click.echo(f"shard {shard}: unit {done}/{total}, {tokens:,} tokens", err=True)

        res = run_shard(
            scorer,
            model,
            condition=condition,
            selection=selection,
            inputs=inputs,
            shard=parse_shard_spec(shard),
            out_dir=out_dir,
            unit_tokens=unit_tokens or DEFAULT_UNIT_TOKENS,
            progress=shard_progress,
        )
        # [/distributed]
        click.echo(
            f"shard {shard}: {res.participants} participants, {res.units} units written, "
            f"{res.units_skipped} already there -> {res.run_dir}"
        )
        return

    run_id, complete = start_run(
        con, model, condition, selection, scorer.settings, scorer.fingerprints, force=force
    )
    if complete:
        click.echo(
            f"run {run_id} ({model['name']}, {condition}) is already complete; "
            "nothing to do (--force scores again)"
        )
        return
    pending = pending_participants(con, run_id, inputs)
    if len(pending) < len(inputs) and not quiet:
        click.echo(
            f"resuming run {run_id}: {len(inputs) - len(pending)} of {len(inputs)} "
            "participants already scored",
            err=True,
        )
    _score_local(con, scorer, run_id, pending, commit_chars, quiet, finish_run, NonFiniteLogits)
    n = con.execute(
        "SELECT n_participants, n_responses, n_skipped, counts FROM score_runs WHERE run_id = ?",
        [run_id],
    ).fetchall()[0]
    click.echo(
        f"run {run_id}: complete; {n[0]} participants, {n[1]} responses scored, "
        f"{n[2]} participants skipped; counts {n[3]}"
    )


def _score_local(
    con, scorer, run_id: int, pending, commit_chars: int, quiet: bool, finish_run, NonFiniteLogits
) -> None:
    """Score ``pending`` batch by batch, committing each.

    Off the model's critical path: tokenisation of batch i+1 runs in one thread
    while batch i is on the model, and the commit of batch i runs in another
    (on its own DuckDB cursor) while batch i+1 is scored; at most one commit is
    in flight, so an interruption loses at most the batch being committed and
    the one being scored (both are redone on resume).
    """
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from psystats.scoring.runs import write_batch

    skips: dict[str, int] = {}
    chunks = list(_chunks(pending, commit_chars))
    total_chars = sum(len(p.text) for p in pending)
    interactive = sys.stderr.isatty() and not quiet
    progress = Progress(
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
    writer_con = con.cursor()  # DuckDB: one connection object per thread
    try:
        with (
            progress,
            ThreadPoolExecutor(max_workers=1) as pool,
            ThreadPoolExecutor(max_workers=1) as writer,
        ):
            task = progress.add_task("score", total=total_chars or 1, tps="-")
            pending_write = None

            def report(i, chunk, batch, added):
                nonlocal tokens
                tokens += batch.n_tokens
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, advance=sum(len(p.text) for p in chunk), tps=f"{rate:,.0f}")
                if not interactive and not quiet:
                    click.echo(
                        f"committed batch {i + 1}/{len(chunks)}: {added} responses, "
                        f"{batch.n_tokens} tokens, {rate:,.0f} tok/s",
                        err=True,
                    )

            future = pool.submit(scorer.prepare, chunks[0]) if chunks else None
            for i, chunk in enumerate(chunks):
                prepared, counts = future.result()
                future = pool.submit(scorer.prepare, chunks[i + 1]) if i + 1 < len(chunks) else None
                for k, v in counts.items():
                    if k.startswith("skipped:"):
                        skips[k] = skips.get(k, 0) + v
                batch = scorer.score_prepared(prepared, counts)
                if pending_write is not None:
                    report(*pending_write[1:], pending_write[0].result())
                pending_write = (
                    writer.submit(write_batch, writer_con, run_id, batch),
                    i,
                    chunk,
                    batch,
                )
            if pending_write is not None:
                report(*pending_write[1:], pending_write[0].result())
    except NonFiniteLogits as e:
        finish_run(con, run_id, skips, status="failed", error=str(e))
        raise
    except Exception as e:
        finish_run(con, run_id, skips, status="failed", error=f"{type(e).__name__}: {e}"[:2000])
        raise
    finally:
        writer_con.close()  # the writer thread has finished: the executor waited for it
    finish_run(con, run_id, skips, status="complete")
