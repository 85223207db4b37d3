"""PEFT adapters (LoRA and friends) on a registered base: locate, fingerprint, apply, check.

A model registered with ``psystats models add BASE --adapter PATH_OR_HUB_ID``
has the base's ``source`` and the adapter's location in ``models.adapter``
(``adapter_revision`` for a hub id).  Scoring loads the base, then the
adapter on top:

* float32/float64 on one device: the adapter is merged into the weights
  (``merge_and_unload``), so the model is a plain transformers model again
  and every engine path (packing, FlexAttention, compile) applies.  Merging is
  exact up to the dtype's rounding of ``W + scale * B @ A``.
* bfloat16/float16, device maps, quantised bases: kept as a PEFT model
  (``W x + scale * B (A x)``), because rounding the merged weights to 8
  mantissa bits would change the numbers.

Start-up check: the logits of a probe with the adapter are compared with
the base's; when they are equal the adapter changes nothing (not applied,
zero-initialised, wrong target modules) and scoring stops, instead of
silently scoring the base under the adapter's name.

Adapter weights load from safetensors only (``adapter_model.safetensors``);
a pickled ``adapter_model.bin`` is refused like any pickle checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

from .devices import input_device
from .model_files import PICKLE_SUFFIXES, ModelLoadError, file_sha256, looks_like_path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterError(ModelLoadError):
    """The adapter cannot be used; the message says why."""


def adapter_folder(source: str, revision: str | None = None, *, local_only: bool = True) -> Path:
    """The local folder of an adapter (a path, or a hub id in the Hugging Face cache)."""
    if looks_like_path(source):
        p = Path(source).expanduser().resolve()
        if not p.is_dir():
            raise AdapterError(f"adapter {source}: no such folder")
        return p
    try:
        return Path(
            snapshot_download(
                source,
                revision=revision,
                local_files_only=local_only,
                allow_patterns=[ADAPTER_CONFIG, ADAPTER_WEIGHTS, "*.json"],
            )
        )
    except Exception as e:  # noqa: BLE001 - offline / unknown repo: say which and how
        raise AdapterError(
            f"adapter {source}: not a local folder and not in the Hugging Face cache "
            f"({type(e).__name__}); download it first (huggingface-cli download {source})"
        ) from None


def read_config(folder: Path) -> dict[str, Any]:
    cfg = folder / ADAPTER_CONFIG
    if not cfg.is_file():
        raise AdapterError(f"{folder}: no {ADAPTER_CONFIG}: not a PEFT adapter folder")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict) or "peft_type" not in data:
        raise AdapterError(f"{cfg}: field 'peft_type' missing: not a PEFT adapter config")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        raise AdapterError(
            f"{folder}: no {ADAPTER_WEIGHTS}"
            + (
                f" (found {', '.join(pickles[:3])}: psystats never loads pickle checkpoints; "
                "convert the adapter to safetensors)"
                if pickles
                else ""
            )
        )
    return data


def fingerprint(folder: Path) -> str:
    """SHA-256 over the adapter's weights and config (what decides its numbers)."""
    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        h.update(f"{name}:{file_sha256(folder / name)}\n".encode())
    return h.hexdigest()


def describe(source: str, revision: str | None = None) -> dict[str, Any]:
    """What the registry records about an adapter: hash, PEFT type, rank, targets, base."""
    folder = adapter_folder(source, revision)
    cfg = read_config(folder)
    targets = cfg.get("target_modules")
    return {
        "sha256": fingerprint(folder),
        "peft_type": cfg.get("peft_type"),
        "r": cfg.get("r"),
        "lora_alpha": cfg.get("lora_alpha"),
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "base_model_name_or_path": cfg.get("base_model_name_or_path"),
        "folder": str(folder),
    }


def _probe_logits(lm):
    import torch

    emb = lm.get_input_embeddings()
    n = int(emb.weight.shape[0]) if emb.weight.device.type != "meta" else 1000
    ids = (torch.arange(1, 17) * 7919) % max(n, 2)
    with torch.inference_mode():
        return lm(ids[None].to(input_device(lm))).logits.float().cpu()


def apply(
    lm,
    source: str,
    *,
    revision: str | None = None,
    name: str | None = None,
    merge: bool,
    expected_sha256: str | None = None,
):
    """``lm`` with the adapter applied (merged when ``merge``); refuses a no-op adapter.

    ``expected_sha256`` (the registered hash) must match the adapter found now.
    """
    import torch

    try:
        from peft import PeftModel
    except ImportError:
        raise AdapterError(
            f"model {name!r} has an adapter but the 'peft' package is not installed: "
            "pip install peft"
        ) from None
    folder = adapter_folder(source, revision)
    read_config(folder)
    sha = fingerprint(folder)
    if expected_sha256 and sha != expected_sha256:
        raise AdapterError(
            f"model {name!r}: the adapter at {source} changed since it was registered "
            f"(sha256 {sha[:12]}..., registered {expected_sha256[:12]}...); register it again "
            "(psystats models add BASE --adapter PATH --name NEW_NAME) to score the new weights"
        )
    before = _probe_logits(lm)
    try:
        peft_model = PeftModel.from_pretrained(lm, str(folder), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise AdapterError(f"model {name!r}: cannot apply adapter {source}: {e}") from None
    peft_model.eval()
    out = peft_model.merge_and_unload() if merge else peft_model
    after = _probe_logits(out)
    if torch.equal(before, after):
        raise AdapterError(
            f"model {name!r}: the adapter {source} changes nothing: the logits of a probe "
            "equal the base model's (zero-initialised or untrained LoRA, or target modules "
            "that do not exist in this base). Refusing to score the base under the adapter's name."
        )
    out.psystats_adapter = {"source": source, "merged": bool(merge), "sha256": sha}
    return out
