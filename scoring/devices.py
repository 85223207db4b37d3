"""Where a model runs: device maps, memory limits per device, GPUs per Ray actor, input device.

The options are checked here before anything loads (a typo costs a second,
not a model load); torch is imported only by the functions that look at a
loaded model.
"""

from __future__ import annotations

from typing import Any

from .model_files import ModelLoadError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: str | dict | None) -> None:
    """Refuse a named device map accelerate does not know."""
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise ModelLoadError(
            f"unknown --device-map {device_map!r}; choose from {', '.join(DEVICE_MAPS)}"
        )


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
