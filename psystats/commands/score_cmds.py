"""`psystats score`: options in, one line out; the work is `psystats.scoring.runner.score`."""

from __future__ import annotations

import click

from .common import db_option, db_path, friendly_errors


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
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for weights --device-map offloads to disk.",
)
@click.option(
    "--gpus-per-model",
    type=int,
    default=None,
    help="--engine ray: GPUs per Ray actor; each actor loads its copy of the model over its "
    "GPUs with --device-map (auto unless given). E.g. 4 on an 8-GPU node: two copies of a 70B.",
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
    default=True,
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
    device_map: str | None,
    max_memory: tuple[str, ...],
    offload_folder: str | None,
    gpus_per_model: int | None,
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
    token_entropy: bool,
    token_rank: bool,
    word_level: bool,
    bow_correction: bool,
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

    \b
    Examples:
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

    from psystats.scoring.devices import gpus_per_model_options, parse_max_memory
    from psystats.scoring.runner import score as run_scoring

    # Checked before anything loads: a typo costs a second, not a model load.
    memory = parse_max_memory(list(max_memory))
    per_model, device_map = gpus_per_model_options(gpus_per_model, device_map, engine)
    if per_model is not None:
        num_gpus_per_worker = per_model

    if cpu_threads:
        import torch

        torch.set_num_threads(cpu_threads)
    if shard:
        engine = "shard"

    def say(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    outcome = run_scoring(
        db_path(db),
        model_name,
        condition=condition,
        studies=studies,
        experiments=experiments,
        engine=engine,
        scorer_options=dict(
            device=device,
            dtype=dtype,
            token_budget=token_budget,
            max_context=max_context,
            context_policy=context_policy,
            stride=stride,
            tokenization=tokenization,
            token_level=token_level,
            # Only when asked: runs started before these options keep their keys.
            **({"entropy": True} if token_entropy else {}),
            **({"rank": True} if token_rank else {}),
            **(dict(word_level=True, bow_correction=bow_correction) if word_level else {}),
            packing=packing,
            system_prompt=system_prompt,
            attention=attention,
            compile=compile_model,
            compile_bucket=compile_bucket,
            **(
                dict(device_map=device_map, max_memory=memory, offload_folder=offload_folder)
                if device_map is not None
                else {}
            ),
        ),
        option_decls=option_decls,
        options_file=options_file,
        detect_options=not no_detect_options,
        trust_remote_code=trust_remote_code,
        force=force,
        commit_chars=commit_chars,
        shard=shard,
        out_dir=out_dir,
        unit_tokens=unit_tokens,
        ray_options=dict(
            address=address,
            num_workers=num_workers,
            num_gpus_per_worker=num_gpus_per_worker,
            num_cpus_per_worker=cpu_threads or 1,
            quiet=quiet,
        ),
        say=say,
        progress_bar=not quiet,
    )
    click.echo(outcome.message)
