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
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download, try_to_load_from_cache

from . import adapters, model_cache
from .devices import check_device_map
from .hub import require_hub_files
from .model_files import (
    PICKLE_SUFFIXES,
    ModelLoadError,
    file_sha256,
    locate,
    looks_like_path,
)

DTYPES = ("float32", "float64", "bfloat16", "float16")


def _check_local(folder: str, gguf: str | None, name: str | None) -> None:
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
            (str(Path(tok_source).expanduser()) if looks_like_path(tok_source) else tok_source),
            None,
        )
    elif looks_like_path(folder):
        _check_local(folder, gguf, name)
    if not looks_like_path(folder):
        require_hub_files(model, folder, gguf)  # offline: one line now, not a minute of retries
    try:
        if gguf:
            tok = _gguf_tokenizer(model, folder, gguf, kwargs)
        else:
            tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model {name!r}: cannot load tokenizer from {folder}: {e}") from None
    if not getattr(tok, "chat_template", None) and not gguf:
        tok.chat_template = processor_chat_template(folder, model.get("revision"))
    return tok


def _gguf_tokenizer(model: dict, folder: str, gguf: str, kwargs: dict[str, Any]):
    """A GGUF's tokenizer: from the converted-model cache when its fingerprint is the one
    converted, else converted from the file and stored there."""
    from transformers import AutoTokenizer

    path = _local_gguf(model)
    entry = model_cache.entry_dir(path, "tokenizer") if path is not None else None
    manifest = model_cache.verified(entry) if entry is not None else None
    if entry is not None and manifest is not None:
        tok = AutoTokenizer.from_pretrained(entry)
        if tokenizer_fingerprint(tok) == manifest.get("tokenizer_sha256"):
            return tok
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf, **kwargs)
    if entry is not None:
        model_cache.store(
            entry, tok.save_pretrained, {"tokenizer_sha256": tokenizer_fingerprint(tok)}
        )
    return tok


def processor_chat_template(folder: str, revision: str | None = None) -> str | None:
    """The chat template a vision-language repository keeps beside its processor.

    Many VL repositories hold it in ``chat_template.jinja`` or
    ``chat_template.json`` rather than in ``tokenizer_config.json``; it is the
    template their processor applies, used here with text-only turns.
    """
    for fname in ("chat_template.jinja", "chat_template.json"):
        path: Path | None
        if looks_like_path(folder):
            path = Path(folder) / fname
            path = path if path.is_file() else None
        else:
            try:
                cached = try_to_load_from_cache(folder, fname, revision=revision)
            except Exception:  # noqa: BLE001 - no cache, no template
                cached = None
            path = Path(cached) if isinstance(cached, str) else None
        if path is None:
            continue
        text = path.read_text(encoding="utf-8")
        if fname.endswith(".jinja"):
            return text
        try:
            value = json.loads(text).get("chat_template")
        except (json.JSONDecodeError, AttributeError):
            raise ModelLoadError(
                f"{path}: not a JSON object with a 'chat_template' field"
            ) from None
        if isinstance(value, str):
            return value
    return None


def model_kind(config: Any) -> str:
    """``"vision-language"`` for a config with a vision tower, else ``"causal"``."""
    if getattr(config, "vision_config", None) is not None:
        return "vision-language"
    return "causal"


def _auto_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if kind == "vision-language" else AutoModelForCausalLM


def _load_kwargs(
    model: dict,
    dtype: str,
    attn_implementation: str,
    trust: bool,
    device_map: str | dict | None,
    max_memory: dict | None,
    offload_folder: str | None,
) -> dict[str, Any]:
    """``from_pretrained`` keywords of a models row (the GGUF file name excepted)."""
    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype(dtype),
        "trust_remote_code": trust,
        "attn_implementation": attn_implementation,
    }
    if model.get("revision"):
        kwargs["revision"] = model["revision"]
    if device_map is not None:
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = max_memory
        if offload_folder:
            kwargs["offload_folder"] = str(offload_folder)
    return kwargs


def _local_gguf(model: dict) -> Path | None:
    """The GGUF file of a models row on this machine (a local file or in the hub cache)."""
    files = weight_files(model)
    return files[0] if files and files[0].is_file() else None


def _load_gguf(model: dict, folder: str, gguf: str, kwargs: dict[str, Any], dtype: str):
    """A GGUF model: from the converted-model cache when it holds it, else dequantised
    from the file and stored there (``scoring.model_cache``)."""
    from transformers import AutoModelForCausalLM

    path = _local_gguf(model)
    entry = model_cache.entry_dir(path, dtype) if path is not None else None
    if entry is not None and model_cache.verified(entry) is not None:
        cached = {k: v for k, v in kwargs.items() if k not in ("revision", "trust_remote_code")}
        return AutoModelForCausalLM.from_pretrained(entry, use_safetensors=True, **cached)
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, **kwargs)
    if entry is not None and "device_map" not in kwargs:  # all weights in memory: storable
        model_cache.store(entry, lambda tmp: model_cache.save_model(lm, tmp))
    return lm


def _load_weights(folder: str, kwargs: dict[str, Any], name: Any, device: str, device_map: Any):
    """(model, kind) of a safetensors folder or hub id: the architecture's own class."""
    from transformers import AutoConfig

    cfg_kwargs = {k: kwargs[k] for k in ("trust_remote_code", "revision") if k in kwargs}
    config = AutoConfig.from_pretrained(folder, **cfg_kwargs)
    kind = model_kind(config)
    _check_quantization(config, name, device, device_map)
    try:
        return _auto_class(kind).from_pretrained(folder, use_safetensors=True, **kwargs), kind
    except ValueError as e:
        # A vision config whose class transformers registers only as a causal LM.
        if kind != "vision-language" or "Unrecognized configuration class" not in str(e):
            raise
    kind = "causal"
    return _auto_class(kind).from_pretrained(folder, use_safetensors=True, **kwargs), kind


def load_model(
    model: dict,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
    adapter: str | None = None,
    adapter_revision: str | None = None,
):
    """The model of a models row, in eval mode, on ``device`` or spread by ``device_map``.

    The class is the architecture's own: a causal LM, or for a config with a
    vision tower the image-text-to-text class (``Qwen2VLForConditionalGeneration``,
    ``MllamaForConditionalGeneration``, ...), which is scored on text only.
    ``device_map`` (``auto``/``balanced``/``sequential`` or an explicit
    ``{module: device}``) with ``max_memory`` places layers over GPUs, CPU and
    disk via accelerate.  A GGUF is dequantised once and kept in the
    converted-model cache (``scoring.model_cache``).  A PEFT adapter
    (``adapter``, or the row's ``adapter``) is applied on top (``scoring.adapters``).
    """
    import torch

    name = model.get("name")
    check_device_map(device_map)
    trust = remote_code_allowed(model, trust_remote_code)
    folder, gguf = locate(model)
    if looks_like_path(folder):
        _check_local(folder, gguf, name)
    kwargs = _load_kwargs(
        model, dtype, attn_implementation, trust, device_map, max_memory, offload_folder
    )
    try:
        if gguf:
            lm, kind = _load_gguf(model, folder, gguf, kwargs, dtype), "causal"
        else:
            lm, kind = _load_weights(folder, kwargs, name, device, device_map)
    except (OSError, ValueError) as e:
        msg = str(e)
        if "trust_remote_code" in msg:
            msg = (
                "the model needs code from its repository; add --trust-remote-code to "
                f"`psystats score` (or set {TRUST_ENV}=1) if you trust that code"
            )
        raise ModelLoadError(f"model {name!r}: cannot load weights from {folder}: {msg}") from None
    lm.eval()
    if device_map is None:
        lm.to(torch.device(device))
    lm.psystats_kind = kind
    adapter = adapter or model.get("adapter")
    if adapter:
        lm = adapters.apply(
            lm,
            adapter,
            revision=adapter_revision or model.get("adapter_revision"),
            name=name,
            merge=dtype in ("float32", "float64") and device_map is None,
            expected_sha256=model.get("adapter_sha256"),
        )
        lm.psystats_kind = kind
    return lm


CUDA_ONLY_QUANTIZATION = {"bitsandbytes", "gptq", "awq", "fp8", "compressed-tensors"}


def _check_quantization(config: Any, name: str | None, device: str, device_map: Any) -> None:
    """Refuse, in one line, a CUDA-only quantised checkpoint on a machine without CUDA."""
    qc = getattr(config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = str(getattr(method, "value", method) or "").lower()
    if not method or method not in CUDA_ONLY_QUANTIZATION:
        return
    import torch

    on_cuda = device.startswith("cuda") or device_map is not None
    if not (on_cuda and torch.cuda.is_available()):
        raise ModelLoadError(
            f"model {name!r} is a {method}-quantised checkpoint, which needs a CUDA GPU "
            "(--device cuda or --device-map auto on a machine with one); on CPU score the "
            "full-precision or a GGUF version of the model (docs/models.md, 'Quantised checkpoints')"
        )


def weight_files(model: dict) -> list[Path]:
    """The weight files the model loads from (local or in the Hugging Face cache)."""
    folder, gguf = locate(model)
    if not looks_like_path(folder):
        try:
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
