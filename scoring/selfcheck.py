"""The start-up self-check: the engine's path against a plain forward on a probe.

It runs once per model and configuration: a pass is remembered in a small
cache file keyed by everything that could change its outcome (the weights',
tokenizer's and adapter's fingerprints, the model class, dtype, device type,
packing, attention, sliding window, device map, and the versions of
psystats' engine, torch and transformers).  ``--recheck`` (``recheck=True``)
runs it anyway.  A failure is never cached.  The cache lives in
``$PSYSTATS_CACHE_DIR/selfcheck/`` (default ``$XDG_CACHE_HOME/psystats`` or
``~/.cache/psystats``); when it cannot be written the check simply runs
every time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ScoringError
from .forward import Forward, Results
from .rows import KIND_OPTION, MAIN, Prepared, Row, ranges
from .tokenize import Tokenized

ENV_CACHE = "PSYSTATS_CACHE_DIR"
# Bump when the probe or the tolerance changes: older passes no longer count.
CHECK_VERSION = 1


def cache_dir() -> Path:
    """Where psystats caches derived files (``$PSYSTATS_CACHE_DIR``, else the user cache)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "psystats"


def check_key(fingerprints: dict, facts: dict) -> str | None:
    """The cache key of one check, or None when the weights cannot be fingerprinted."""
    if not fingerprints.get("weights_sha256"):
        return None
    import torch
    import transformers

    spec = {
        "check_version": CHECK_VERSION,
        "fingerprints": fingerprints,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **facts,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def passed_before(key: str | None) -> bool:
    return key is not None and (cache_dir() / "selfcheck" / f"{key}.json").is_file()


def remember_pass(key: str | None, facts: dict, worst: float) -> None:
    if key is None:
        return
    folder = cache_dir() / "selfcheck"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({**facts, "worst_difference": worst}, default=str))
        os.replace(tmp, folder / f"{key}.json")
    except OSError:
        pass  # a cache we cannot write only costs the check next time


def _probe_rows(tokenizer: Any, prefix_ids: list[int]) -> tuple[list[Row], list[np.ndarray], int]:
    """Two short documents; a two-token branch from the middle of the first."""
    text_a = "In each trial you choose a box. You press <<J>>. You win 3 points."
    text_b = "Rate the pair. You answer <<7>>."
    docs = [
        np.asarray(prefix_ids + tokenizer(t, add_special_tokens=False)["input_ids"], np.int64)
        for t in (text_a, text_b)
    ]
    rows = []
    for part, ids in enumerate(docs):
        row = Row(part=part, lo=0, ids=ids)
        t = ranges(np.asarray([1]), np.asarray([len(ids)]))
        row.add_queries(MAIN, t - 1, ids[t], 0, t)
        rows.append(row)
    ids_a = docs[0]
    mid = len(ids_a) // 2
    rows[0].branch_start = [mid]
    rows[0].branch_ids = [ids_a[mid : mid + 2]]
    rows[0].add_queries(0, np.asarray([1]), ids_a[mid + 2 : mid + 3], KIND_OPTION, np.asarray([0]))
    return rows, docs, mid


def self_check(forward: Forward, tokenizer: Any, prefix_ids: list[int], model_name: str) -> float:
    """Compare the engine's path with a plain forward on a probe; refuse if they differ.

    Two short documents are scored packed together (when packing), one
    with an option branch, and their log-probabilities compared with
    ``log_softmax(model(ids).logits)``.  This catches architectures whose
    attention ignores custom masks/position ids or whose LM head does more
    than the output embedding (logit soft-capping, scaling).  Returns the
    largest difference.
    """
    import torch

    rows, docs, mid = _probe_rows(tokenizer, prefix_ids)
    prepared = [
        Prepared(
            p=None,
            tok=Tokenized(ids, np.asarray([1]), np.asarray([len(ids)])),
            rows=[r],
            opt_query_group=np.zeros(1, np.int64),
        )
        for r, ids in zip(rows, docs)
    ]
    results = [Results.empty(p, rank=False, bow=False) for p in prepared]
    groups = [rows] if forward.packing == "packed" else [[rows[0]], [rows[1]]]
    for g in groups:
        # Eager: the check is about masks, positions and the head; a compiled
        # decoder is the same computation and is tested against the eager one.
        forward.forward(g, prepared, results, compiled=False)
    lm, dev = forward.lm, forward.input_device
    worst = 0.0
    with torch.inference_mode():
        for res, ids in zip(results, docs):
            ref = torch.log_softmax(
                lm(torch.as_tensor(ids, device=dev)[None]).logits[0].double().cpu(), -1
            )
            want = ref[torch.arange(len(ids) - 1), torch.as_tensor(ids[1:])].numpy()
            worst = max(worst, float(np.max(np.abs(res.lp[1:] - want))))
        ids_a = docs[0]
        ref_b = torch.log_softmax(
            lm(torch.as_tensor(ids_a[: mid + 2], device=dev)[None]).logits[0, -1].double(), -1
        )
        worst = max(worst, abs(float(ref_b[int(ids_a[mid + 2])]) - float(results[0].oq_lp[0])))
    tol = {"float64": 1e-8, "float32": 1e-3}.get(forward.dtype, 0.1)
    if not np.isfinite(worst) or worst > tol:
        raise ScoringError(
            f"model {model_name!r}: the engine's log-probabilities differ from a "
            f"plain forward pass by {worst:.3g} on a probe (tolerance {tol:g}); this architecture "
            "needs support in psystats (custom attention masks / LM head). "
            + ("Try --packing none." if forward.packing == "packed" else "")
        )
    return worst
