"""The Hugging Face hub: is it switched off, reachable, are a model's files cached; what it says.

Registration reads a hub id's config and parameter count from the local
cache first, then from the hub's safetensors headers (a few KB, never the
weights).  Scoring fails at once, in one line, when a hub id's files are
neither cached nor reachable, instead of letting transformers retry for a
minute.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import (
    constants,
    get_safetensors_metadata,
    hf_hub_download,
    try_to_load_from_cache,
)

from psystats.warehouse.errors import WarehouseError

from .model_files import count_safetensors_params, locate, looks_like_path, read_config, read_gguf


def hub_offline() -> bool:
    """Whether the hub is switched off (``HF_HUB_OFFLINE``)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    return bool(constants.HF_HUB_OFFLINE)


def hub_files_cached(repo: str, revision: str | None, gguf_file: str | None) -> bool:
    """Whether the config and weights of a hub id are in the local Hugging Face cache."""
    if not gguf_file and not isinstance(
        try_to_load_from_cache(repo, "config.json", revision=revision), str
    ):
        return False
    names = [gguf_file] if gguf_file else ["model.safetensors.index.json", "model.safetensors"]
    return any(isinstance(try_to_load_from_cache(repo, n, revision=revision), str) for n in names)


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(whether the hub's host answers a TCP connection within ``timeout`` s, why not)."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return False, f"{host}: {e.strerror or e}"
    return True, ""


def require_hub_files(model: dict, repo: str, gguf_file: str | None = None) -> None:
    """Fail at once, in one line, when a hub id's files are neither cached nor reachable.

    Without this, transformers retries an unreachable hub for about a minute
    before saying the same thing.
    """
    if hub_files_cached(repo, model.get("revision"), gguf_file):
        return
    name = model.get("name")
    if hub_offline():
        why = "the hub is switched off (HF_HUB_OFFLINE)"
    else:
        ok, why = hub_reachable()
        if ok:
            return  # the hub answers: transformers downloads (or says the id is wrong)
        why = f"the hub cannot be reached ({why})"
    raise WarehouseError(
        f"model {name!r}: the files of {repo} are not in the local Hugging Face cache and "
        f"{why}: download them where there is a network (`huggingface-cli download {repo}`) "
        "and copy the cache (HF_HOME) here, or register a local folder or .gguf file"
    )


def require_model_files(model: dict) -> None:
    """:func:`require_hub_files` for a models row whose source is a hub id (else nothing).

    Called before the scorer imports torch, so a hub id that cannot be
    fetched fails in a second or two.
    """
    if not model.get("source"):
        return  # an external scorer or a baseline: nothing to fetch
    folder, gguf_file = locate(model)
    if not looks_like_path(folder):
        require_hub_files(model, folder, gguf_file)


def _cached_facts(
    repo: str, revision: str | None, gguf_file: str | None
) -> tuple[dict, int | None, str]:
    """(config, parameter count or None, how) from the local Hugging Face cache."""
    cached = try_to_load_from_cache(repo, "config.json", revision=revision)
    if not isinstance(cached, str):
        return {}, None, ""
    folder = Path(cached).parent
    config = read_config(folder)
    if gguf_file and (folder / gguf_file).is_file():
        n, _ = read_gguf(folder / gguf_file)
        return config, n, "GGUF tensor shapes (Hugging Face cache)"
    try:
        n, how = count_safetensors_params(folder, config)
    except WarehouseError:
        return config, None, ""  # weights not (all) cached: ask the hub
    return config, n, how + " in the Hugging Face cache"


def hub_facts(
    repo: str, revision: str | None, gguf_file: str | None
) -> tuple[dict, int | None, str]:
    """(config, parameter count, how) for a hub id, without downloading weights.

    The local cache is used first.  Over the network only the safetensors
    headers' summary and config.json are fetched; the first failed request
    stops further ones, so an offline machine answers at once.
    """
    config, n, how = _cached_facts(repo, revision, gguf_file)
    if n is not None:
        return config, n, how
    if gguf_file:
        return config, None, "not counted: GGUF on the hub is not downloaded; set n_params"
    if hub_offline():
        return config, None, "not counted: hub offline (HF_HUB_OFFLINE); set n_params"
    try:
        meta = get_safetensors_metadata(repo, revision=revision)
    except Exception as e:  # no network, no such repo, gated, no safetensors...
        return (
            config,
            None,
            f"not counted: hub safetensors metadata unavailable ({type(e).__name__}); set n_params",
        )
    n = int(sum(meta.parameter_count.values()))
    if not config:
        try:
            config = read_config(
                Path(hf_hub_download(repo, "config.json", revision=revision)).parent
            )
        except Exception:
            pass  # the parameter count is what matters; the name rules still apply
    return config, n, "hub safetensors headers (huggingface_hub.get_safetensors_metadata)"
