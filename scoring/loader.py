"""Load a registered model and its tokenizer, safely, and fingerprint them.

Safety rules:

* Weights load only from safetensors or GGUF files (``use_safetensors=True``;
  a folder holding only ``.bin``/``.pt``/``.pth`` pickles is refused: loading
  a pickle can run arbitrary code).
* Code from a model repository runs only when the person running psystats
  says so now: ``--trust-remote-code`` on ``psystats score`` or
  ``PSYSTATS_TRUST_REMOTE_CODE=1`` in the environment.  The ``trust_remote_code``
  flag stored in a warehouse is a note, never a permission: whoever is handed
  a warehouse does not inherit that decision (a stored flag alone is refused).

A model's ``source`` is a Hugging Face hub id, a local folder, or a local
``.gguf`` file; ``gguf_file`` names the file inside the folder/repo when the
source is a folder or hub id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from psystats.warehouse import hashing
from psystats.warehouse.db import WarehouseError

DTYPES = ("float32", "float64", "bfloat16", "float16")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ModelLoadError(WarehouseError):
    """The model or tokenizer could not be loaded; the message says why and what to do."""


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~"))
        or source.endswith(".gguf")
        or Path(source).expanduser().exists()
    )


def locate(model: dict) -> tuple[str, str | None]:
    """``(folder or hub id, gguf file name or None)`` for a models row."""
    source = model.get("source")
    if not source:
        raise ModelLoadError(
            f"model {model.get('name')!r} has no source (an external scorer): "
            "its scores come from `psystats scores import`, it cannot be run"
        )
    gguf = model.get("gguf_file")
    if source.endswith(".gguf"):
        p = Path(source).expanduser()
        return str(p.parent), p.name
    if gguf and "/" in gguf and Path(gguf).expanduser().is_file():
        p = Path(gguf).expanduser()
        return str(p.parent), p.name
    if _looks_like_path(source):
        return str(Path(source).expanduser()), gguf
    return source, gguf


def _check_local(folder: str, gguf: str | None, name: str) -> None:
    p = Path(folder)
    if not p.exists():
        raise ModelLoadError(f"model {name!r}: no such file or folder: {folder}")
    if gguf:
        if not (p / gguf).is_file():
            raise ModelLoadError(f"model {name!r}: GGUF file not found: {p / gguf}")
        return
    if not p.is_dir():
        raise ModelLoadError(f"model {name!r}: {folder} is not a model folder or .gguf file")
    if not list(p.glob("*.safetensors")):
        pickles = [f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelLoadError(
                f"model {name!r}: {folder} has only pickle checkpoints ({', '.join(pickles[:3])}); "
                "psystats loads safetensors or GGUF only (pickles can run code). Convert "
                "the checkpoint to safetensors first."
            )
        raise ModelLoadError(f"model {name!r}: no *.safetensors weights in {folder}")


TRUST_ENV = "PSYSTATS_TRUST_REMOTE_CODE"


def remote_code_allowed(model: dict, trust_remote_code: bool | None) -> bool:
    """Whether this run may execute the model repository's Python code.

    Only the caller's ``trust_remote_code`` (the command line) or
    ``$PSYSTATS_TRUST_REMOTE_CODE`` allow it.  A model whose stored flag asks
    for it, without either, is refused with the way to allow it.
    """
    if trust_remote_code:
        return True
    if os.environ.get(TRUST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if model.get("trust_remote_code") and trust_remote_code is None:
        name = model.get("name")
        raise ModelLoadError(
            f"model {name!r} is marked trust_remote_code in this warehouse, but psystats "
            "runs a model repository's own Python code only when you say so now: "
            f"`psystats score --model {name} --trust-remote-code` (or set {TRUST_ENV}=1) "
            "if you trust that code"
        )
    return False


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def load_tokenizer(model: dict, *, trust_remote_code: bool | None = None):
    from transformers import AutoTokenizer

    name = model.get("name")
    trust = remote_code_allowed(model, trust_remote_code)
    tok_source = model.get("tokenizer_source")
    folder, gguf = locate(model)
    kwargs: dict[str, Any] = {"trust_remote_code": trust}
    if model.get("revision"):
        kwargs["revision"] = model["revision"]
    if tok_source:
        folder, gguf = (
            (str(Path(tok_source).expanduser()) if _looks_like_path(tok_source) else tok_source),
            None,
        )
    elif _looks_like_path(folder):
        _check_local(folder, gguf, name)
    if not _looks_like_path(folder):
        from .registry import require_hub_files

        require_hub_files(model, folder, gguf)  # offline: one line now, not a minute of retries
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model {name!r}: cannot load tokenizer from {folder}: {e}") from None


def load_model(
    model: dict,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool | None = None,
):
    """The causal LM of a models row, in eval mode on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    name = model.get("name")
    trust = remote_code_allowed(model, trust_remote_code)
    folder, gguf = locate(model)
    if _looks_like_path(folder):
        _check_local(folder, gguf, name)
    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype(dtype),
        "trust_remote_code": trust,
        "attn_implementation": attn_implementation,
    }
    if model.get("revision"):
        kwargs["revision"] = model["revision"]
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        kwargs["use_safetensors"] = True
    try:
        lm = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        msg = str(e)
        if "trust_remote_code" in msg:
            msg = (
                "the model needs code from its repository; add --trust-remote-code to "
                f"`psystats score` (or set {TRUST_ENV}=1) if you trust that code"
            )
        raise ModelLoadError(f"model {name!r}: cannot load weights from {folder}: {msg}") from None
    lm.eval()
    lm.to(torch.device(device))
    return lm


def weight_files(model: dict) -> list[Path]:
    """The weight files the model loads from (local or in the Hugging Face cache)."""
    folder, gguf = locate(model)
    if not _looks_like_path(folder):
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(
                folder,
                revision=model.get("revision"),
                local_files_only=True,
                allow_patterns=[gguf] if gguf else ["*.safetensors"],
            )
        except Exception:  # noqa: BLE001 - no local copy: no fingerprint, said as such
            return []
    p = Path(folder)
    if gguf:
        return [p / gguf]
    return sorted(p.glob("*.safetensors"))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file; free for Hugging Face cache files, whose blob name is that hash."""
    real = path.resolve()
    if _HEX64.match(real.name):
        return real.name
    return hashing.file_sha256(real)


def weights_fingerprint(model: dict) -> str | None:
    files = weight_files(model)
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of what decides tokenisation and templating (vocabulary, merges, template)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = {
        "backend": backend.to_str() if backend is not None else None,
        "vocab": None if backend is not None else sorted(tokenizer.get_vocab().items()),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
