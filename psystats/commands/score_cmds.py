"""`psystats score`: options in, one line out; the work is `psystats.scoring.runner.score`."""

from __future__ import annotations

from typing import Any

import click

from psystats.scoring.config import ScorerConfig
from psystats.scoring.render import CONDITION_HELP
from psystats.scoring.runner import RunOptions

from .common import db_option, db_path, friendly_errors
from .option_types import FILE, FOLDER, FRACTION, NON_NEGATIVE, POSITIVE, at_least

# The only defaults are the configuration classes': the options show them.
_C = ScorerConfig
_R = RunOptions


@click.command()
@click.option(
    "--model",
    "model_name",
    required=True,
    help="Registered model name, or a hub id / local folder / .gguf file (registered on first use).",
)
@click.option(
    "--condition",
    default=_C.condition,
    show_default=True,
    metavar="CONDITION",
    help=f"How transcripts are rendered: {CONDITION_HELP}. history:K scores each response "
    "with every earlier response but the K most recent removed (docs/scoring.md).",
)
@db_option
@click.option("--study", "studies", multiple=True, help="Only these studies (repeatable).")
@click.option(
    "--experiment", "experiments", multiple=True, help="Only these experiments (repeatable)."
)
@click.option(
    "--participants",
    "sample_participants",
    type=POSITIVE,
    default=None,
    metavar="N",
    help="Score a seeded sample: N participants per experiment (a first look; the run "
    "records it as a sample, see docs/scoring.md).",
)
@click.option(
    "--sample",
    "sample_fraction",
    type=FRACTION,
    default=None,
    metavar="FRACTION",
    help="Score a seeded sample: this fraction of each experiment's participants "
    "(with --participants: the fewer of the two).",
)
@click.option(
    "--seed",
    type=at_least(0, "INTEGER"),
    default=None,
    help="Seed of --participants / --sample [default: 0]; the same seed picks the same people.",
)
@click.option(
    "--device", default=_C.device, show_default=True, help="torch device: cpu, cuda, cuda:1, mps."
)
@click.option(
    "--device-map",
    type=click.Choice(["auto", "balanced", "sequential"]),
    default=None,
    help="Spread a model too large for one GPU over the visible GPUs (then CPU, then disk) "
    "with accelerate; the scores equal a single-device run's. Overrides --device.",
)
@click.option(
    "--max-memory",
    multiple=True,
    metavar="DEVICE=SIZE",
    help="Memory limit per device for --device-map (repeatable): 0=70GiB, 1=70GiB, cpu=200GiB.",
)
@click.option(
    "--offload-folder",
    type=FOLDER,
    default=None,
    help="Folder for weights --device-map offloads to disk.",
)
@click.option(
    "--gpus-per-model",
    type=POSITIVE,
    default=None,
    help="--engine ray: GPUs per Ray actor; each actor loads its copy of the model over its "
    "GPUs with --device-map (auto unless given). E.g. 4 on an 8-GPU node: two copies of a 70B.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64", "bfloat16", "float16"]),
    default=_C.dtype,
    show_default=True,
    help="Weights and activations dtype.",
)
@click.option(
    "--token-budget",
    type=POSITIVE,
    default=_C.token_budget,
    show_default=True,
    help="Most tokens per forward pass when packing (halved automatically on out-of-memory).",
)
@click.option(
    "--packing",
    type=click.Choice(["auto", "packed", "none"]),
    default=_C.packing,
    show_default=True,
    help="Several transcripts per forward with a document mask (packed), or one each "
    "(none). auto: packed on CUDA, none on CPU.",
)
@click.option(
    "--attention",
    type=click.Choice(["auto", "flex", "dense"]),
    default=_C.attention,
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
    type=POSITIVE,
    default=_C.compile_bucket,
    show_default=True,
    help="With --compile: pad packed forwards to a multiple of this many tokens.",
)
@click.option(
    "--max-context",
    type=at_least(2),
    default=None,
    help="Longest sequence given to the model [default: the model's maximum positions].",
)
@click.option(
    "--context-policy",
    type=click.Choice(["skip", "window"]),
    default=_C.context_policy,
    show_default=True,
    help="Transcripts longer than the context: skip them (counted), or score them in "
    "overlapping windows.",
)
@click.option(
    "--stride",
    type=POSITIVE,
    default=None,
    help="Window step for --context-policy window [default: half the context]; every "
    "token is scored with at least (context - stride) tokens before it.",
)
@click.option(
    "--tokenization",
    type=click.Choice(["segments", "whole"]),
    default=_C.tokenization,
    show_default=True,
    help="segments: context and responses tokenised separately (no boundary leaks); "
    "whole: the seed study's whole-text tokenisation with offset mapping.",
)
@click.option(
    "--token-level", is_flag=True, help="Also store every response token's log-probability."
)
@click.option(
    "--entropy",
    "token_entropy",
    is_flag=True,
    help="Store each response token's next-token entropy (nats) in token_scores "
    "(implies --token-level).",
)
@click.option(
    "--rank",
    "token_rank",
    is_flag=True,
    help="Store the rank of each human token in the model's distribution (1: its top "
    "token) in token_scores (implies --token-level).",
)
@click.option(
    "--word-level",
    is_flag=True,
    help="Also store per-word scores in word_scores (words: runs of non-space characters; "
    "needs a fast tokenizer).",
)
@click.option(
    "--bow-correction/--no-bow-correction",
    default=_C.bow_correction,
    show_default=True,
    help="With --word-level: the beginning-of-word correction (Pimentel & Meister 2024) "
    "for tokenizers whose tokens carry their leading space.",
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
    type=FILE,
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
    type=POSITIVE,
    default=_R.commit_chars,
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
    type=NON_NEGATIVE,
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
    type=FOLDER,
    default=_R.out_dir,
    show_default=True,
    help="Shard folder for --shard and --engine ray.",
)
@click.option(
    "--cpu-threads",
    type=POSITIVE,
    default=None,
    help="torch CPU threads [default: the physical cores]; on a machine busy with other "
    "work, 1 is often fastest (BENCHMARKS.md).",
)
@click.option(
    "--num-workers",
    type=POSITIVE,
    default=None,
    help="Ray workers for --engine ray [default: every GPU (or CPU) of the cluster].",
)
@click.option(
    "--unit-tokens",
    type=POSITIVE,
    default=None,
    help="Tokens per work unit (one shard each) for --engine ray / --shard "
    "[default: ray: about 8 units per worker; shard: 200000].",
)
@click.option(
    "--recheck",
    is_flag=True,
    help="Run the start-up self-check even if this model and configuration passed it before.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display and no messages.")
@friendly_errors
def score(**opts: Any) -> None:
    """Score every selected human response with a language model.

    For each response: summed NLL (nats) of its tokens given everything
    before it, token count, first-token NLL, whether the model's top token
    matched, first-token entropy; for experiments with a finite option set
    also every option's renormalised log-probability.  Results go to the
    `scores` / `option_scores` (/ `token_scores`, `word_scores`) tables under
    one run.  --entropy and --rank add per-token columns; --word-level adds
    per-word NLLs with the beginning-of-word correction (docs/scoring.md,
    "Token and word scores").

    Runs are resumable: an interrupted run continues where its last committed
    batch ended; running a completed run again does nothing unless --force.

    Causal LMs, vision-language models (scored on text, no image), models
    larger than one GPU (--device-map) and adapters registered with
    `models add BASE --adapter PATH` all score this way (docs/scoring.md).

    --participants N / --sample F score a seeded sample per experiment for a
    first look (recorded as a sample: score_runs.sample_spec); --condition
    history:K removes every earlier response but the K most recent.

    \b
    Examples:
      psystats score --model ./SmolLM2-135M-Instruct.Q4_1.gguf --study franke2024bayesian \\
          --participants 5
      psystats score --model Qwen/Qwen3-8B-Base --condition history:0 --device cuda
      psystats score --model Qwen/Qwen3-8B-Base --condition plain --device cuda --dtype bfloat16
      psystats score --model Qwen/Qwen3-8B-Base --device cuda --dtype bfloat16 --compile \
          --token-budget 65536 --commit-chars 2000000
      psystats score --model Qwen/Qwen3-8B --condition chat --study zhu2024games
      psystats score --model ./SmolLM2-135M-Instruct.Q4_1.gguf --condition persona
      psystats score --model my-llama --options "exp1=yes|no" --token-level
      psystats score --model my-llama --word-level --entropy --rank
      psystats score --model my-llama --shard $SLURM_ARRAY_TASK_ID/16 --out shards/
      psystats score --model Qwen/Qwen2.5-VL-7B-Instruct --condition chat --device cuda
      psystats score --model meta-llama/Llama-3.1-70B --dtype bfloat16 --device-map auto \\
          --max-memory 0=70GiB --max-memory 1=70GiB
      psystats score --model meta-llama/Llama-3.1-70B --dtype bfloat16 --engine ray \\
          --address auto --gpus-per-model 4 --out /scratch/shards
    """

    from psystats.scoring.errors import ScoringError
    from psystats.scoring.runner import score as run_scoring

    # Everything is checked before anything loads: a typo costs a second, not a model load.
    try:
        config, run = _configs(opts)
    except ScoringError as e:
        raise click.UsageError(str(e)) from None
    quiet = opts["quiet"]

    def say(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    outcome = run_scoring(
        db_path(opts["db"]), opts["model_name"], config, run, say=say, quiet=quiet
    )
    click.echo(outcome.message)


def _configs(o: dict[str, Any]) -> tuple[ScorerConfig, RunOptions]:
    """The scorer's configuration and the run's options, from the command's options."""
    from psystats.scoring.devices import gpus_per_model_options, parse_max_memory
    from psystats.scoring.runner import RunOptionsError
    from psystats.scoring.sample import SampleSpec

    memory = parse_max_memory(list(o["max_memory"]))
    per_model, device_map = gpus_per_model_options(
        o["gpus_per_model"], o["device_map"], o["engine"]
    )
    gpus_per_worker = per_model if per_model is not None else o["num_gpus_per_worker"]
    config = ScorerConfig(
        condition=o["condition"],
        device=o["device"],
        dtype=o["dtype"],
        token_budget=o["token_budget"],
        max_context=o["max_context"],
        context_policy=o["context_policy"],
        stride=o["stride"],
        tokenization=o["tokenization"],
        token_level=o["token_level"],
        entropy=o["token_entropy"],
        rank=o["token_rank"],
        word_level=o["word_level"],
        bow_correction=o["bow_correction"],
        packing=o["packing"],
        system_prompt=o["system_prompt"],
        attention=o["attention"],
        compile=o["compile_model"],
        compile_bucket=o["compile_bucket"],
        device_map=device_map,
        max_memory=memory if device_map is not None else None,
        offload_folder=o["offload_folder"] if device_map is not None else None,
        cpu_threads=o["cpu_threads"],
        trust_remote_code=o["trust_remote_code"] or None,
        recheck=o["recheck"],
    )
    n, fraction, seed = o["sample_participants"], o["sample_fraction"], o["seed"]
    sample = None
    if n is not None or fraction is not None:
        sample = SampleSpec(n, fraction, 0 if seed is None else seed)
    elif seed is not None:
        raise RunOptionsError("--seed chooses a sample: give --participants N or --sample F")
    run = RunOptions(
        studies=o["studies"],
        experiments=o["experiments"],
        sample=sample,
        engine=o["engine"],
        shard=o["shard"],
        out_dir=o["out_dir"],
        unit_tokens=o["unit_tokens"],
        commit_chars=o["commit_chars"],
        force=o["force"],
        option_decls=o["option_decls"],
        options_file=o["options_file"],
        detect_options=not o["no_detect_options"],
        ray=dict(
            address=o["address"],
            num_workers=o["num_workers"],
            num_gpus_per_worker=gpus_per_worker,
            num_cpus_per_worker=o["cpu_threads"] or 1,
        ),
    )
    return config, run
