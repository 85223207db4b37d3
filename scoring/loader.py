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
from psystats.warehouse.errors import WarehouseError

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
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model {name!r}: cannot load tokenizer from {folder}: {e}") from None
    if not getattr(tok, "chat_template", None) and not gguf:
        tok.chat_template = processor_chat_template(folder, model.get("revision"))
    return tok


def processor_chat_template(folder: str, revision: str | None = None) -> str | None:
    """The chat template a vision-language repository keeps beside its processor.

    Many VL repositories hold it in ``chat_template.jinja`` or
    ``chat_template.json`` rather than in ``tokenizer_config.json``; it is the
    template their processor applies, used here with text-only turns.
    """
    for fname in ("chat_template.jinja", "chat_template.json"):
        path: Path | None
        if _looks_like_path(folder):
            path = Path(folder) / fname
            path = path if path.is_file() else None
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

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


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# config.json model_types that are a text decoder with a vision tower but whose
# transformers class is registered only for image-text-to-text.
TEXT_SCORING_NOTE = (
    "vision-language models are scored on text only: input ids and (for Qwen's "
    "multimodal rotary embedding) text positions, no image"
)


def model_kind(config: Any) -> str:
    """``"vision-language"`` for a config with a vision tower, else ``"causal"``."""
    if getattr(config, "vision_config", None) is not None:
        return "vision-language"
    return "causal"


def _auto_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if kind == "vision-language" else AutoModelForCausalLM


def parse_max_memory(values: Any) -> dict | None:
    """``{"0": "70GiB", "cpu": "200GiB"}`` from ``["0=70GiB", "cpu=200GiB"]`` (or a dict).

    Keys are GPU indices, ``cpu`` or ``disk``; values are accelerate's sizes
    (``"70GiB"``, ``"500MB"``) or bytes.
    """
    if not values:
        return None
    items = values.items() if isinstance(values, dict) else (v.partition("=")[::2] for v in values)
    out: dict = {}
    for key, size in items:
        key = str(key).strip()
        size = str(size).strip()
        if not key or not size:
            raise ModelLoadError(
                f"--max-memory {key}={size}: expected DEVICE=SIZE, e.g. 0=70GiB or cpu=200GiB"
            )
        if key.isdigit():
            out[int(key)] = int(size) if size.isdigit() else size
        elif key in ("cpu", "disk", "mps") or key.startswith(("cuda:", "xpu:", "npu:")):
            out[key] = int(size) if size.isdigit() else size
        else:
            raise ModelLoadError(
                f"--max-memory {key}={size}: unknown device {key!r}; use a GPU index, cpu or disk"
            )
    return out


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
    disk via accelerate.  A PEFT adapter (``adapter``, or the row's
    ``adapter``) is applied on top (``scoring.adapters``).
    """
    import torch

    name = model.get("name")
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise ModelLoadError(
            f"unknown --device-map {device_map!r}; choose from {', '.join(DEVICE_MAPS)}"
        )
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
    if device_map is not None:
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = max_memory
        if offload_folder:
            kwargs["offload_folder"] = str(offload_folder)
    kind = "causal"
    try:
        if not gguf:
            from transformers import AutoConfig

            cfg_kwargs = {k: kwargs[k] for k in ("trust_remote_code", "revision") if k in kwargs}
            config = AutoConfig.from_pretrained(folder, **cfg_kwargs)
            kind = model_kind(config)
            _check_quantization(config, name, device, device_map)
        try:
            lm = _auto_class(kind).from_pretrained(folder, **kwargs)
        except ValueError as e:
            # A vision config whose class transformers registers only as a causal LM.
            if kind != "vision-language" or "Unrecognized configuration class" not in str(e):
                raise
            kind = "causal"
            lm = _auto_class(kind).from_pretrained(folder, **kwargs)
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
        from . import adapters

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


def input_device(lm) -> Any:
    """Where input ids go: the device that runs the input embeddings.

    Under an accelerate device map with CPU/disk offload the embedding's
    weights may sit on the ``meta`` device; its hook knows where it executes.
    """
    import torch

    emb = lm.get_input_embeddings()
    hook = getattr(emb, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    return emb.weight.device


def device_map_of(lm) -> dict | None:
    """The module -> device placement accelerate chose (None when on one device)."""
    dm = getattr(lm, "hf_device_map", None)
    return {k: str(v) for k, v in dm.items()} if dm else None


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


def gpus_per_model_options(
    gpus_per_model: int | None, device_map: str | None, engine: str
) -> tuple[float | None, str | None]:
    """``(num_gpus_per_worker, device_map)`` for ``--gpus-per-model N``.

    Ray gives each actor N GPUs (it sets the actor's ``CUDA_VISIBLE_DEVICES``)
    and the actor spreads its copy of the model over them with a device map
    (``auto`` unless one is given).  ``None`` leaves the engine's defaults.
    """
    if gpus_per_model is None:
        return None, device_map
    if gpus_per_model < 1:
        raise ModelLoadError(f"--gpus-per-model {gpus_per_model}: give 1 or more GPUs")
    if engine != "ray":
        raise ModelLoadError(
            "--gpus-per-model places one Ray actor per group of GPUs: use it with --engine ray "
            "(in one process, --device-map auto spreads the model over every visible GPU; "
            "with --shard, request N GPUs per task and use --device-map auto)"
        )
    if gpus_per_model > 1 and device_map is None:
        device_map = "auto"
    return float(gpus_per_model), device_map
