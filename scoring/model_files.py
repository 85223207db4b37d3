"""Where a model's files are, and what they hold, read without loading any weights.

What a user typed (hub id, safetensors folder, ``.gguf`` file) becomes a
``(kind, source, gguf_file)`` triple (:func:`classify_source`); a registered
``models`` row becomes the folder or hub id to load from (:func:`locate`).
Parameter counts come from safetensors headers or GGUF tensor shapes, never
from a name.  Nothing here touches the warehouse or imports torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import gguf
from safetensors import safe_open

from psystats.warehouse import hashing
from psystats.warehouse.errors import WarehouseError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_GGUF_FIELDS = (
    "general.architecture",
    "general.basename",
    "general.name",
    "general.finetune",
    "general.size_label",
)


class ModelLoadError(WarehouseError):
    """The model or tokenizer could not be loaded; the message says why and what to do."""


def looks_like_path(source: str) -> bool:
    """Whether a source names a local file or folder (else it is a hub id)."""
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
    gguf_file = model.get("gguf_file")
    if source.endswith(".gguf"):
        p = Path(source).expanduser()
        return str(p.parent), p.name
    if gguf_file and "/" in gguf_file and Path(gguf_file).expanduser().is_file():
        p = Path(gguf_file).expanduser()
        return str(p.parent), p.name
    if looks_like_path(source):
        return str(Path(source).expanduser()), gguf_file
    return source, gguf_file


def classify_source(source: str, gguf_file: str | None) -> tuple[str, str, str | None]:
    """('folder' | 'gguf' | 'hub', normalised source, gguf file name) for what the user typed."""
    path = Path(source).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise WarehouseError(
                    f"{source}: a file that is not .gguf; give a model folder (safetensors), "
                    f"a .gguf file or a Hugging Face id"
                )
            return "gguf", str(path.parent), path.name
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise WarehouseError(f"{source}: no GGUF file {gguf_file!r} in this folder")
            return "gguf", str(path), gguf_file
        return "folder", str(path), None
    looks_like_a_path = (
        source.startswith(("/", "./", "../", "~", "\\"))
        or source.lower().endswith(".gguf")
        or source.count("/") > 1
    )
    if looks_like_a_path or not _HUB_ID.match(source):
        raise WarehouseError(
            f"{source}: no such file or folder, and not a Hugging Face id (owner/name)"
        )
    return "hub", source, gguf_file


def read_config(folder: Path) -> dict:
    """A folder's ``config.json`` as a dict ({} when there is none)."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WarehouseError(f"{cfg}: not valid JSON ({e})") from None


def count_safetensors_params(folder: str | Path, config: dict | None = None) -> tuple[int, str]:
    """Parameters in a safetensors folder from the file headers (no weights are read).

    Follows ``model.safetensors.index.json`` for sharded checkpoints.  An
    ``lm_head`` stored beside tied input embeddings is counted once, as torch
    counts tied parameters once.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise WarehouseError(f"{index}: shard(s) missing: {', '.join(missing[:3])}")
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise WarehouseError(f"{folder}: no .safetensors files")
    shapes: dict[str, list[int]] = {}
    for f in files:
        with safe_open(str(folder / f), framework="numpy") as st:
            for key in st.keys():
                shapes[key] = st.get_slice(key).get_shape()
    tied = bool((config or {}).get("tie_word_embeddings")) and any(
        k.endswith("embed_tokens.weight") for k in shapes
    )
    total = 0
    for key, shape in shapes.items():
        if tied and key.endswith("lm_head.weight"):
            continue
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total, f"safetensors headers ({len(files)} file{'s' * (len(files) > 1)})"


def read_gguf(path: str | Path) -> tuple[int, dict[str, Any]]:
    """(parameter count from the tensor shapes, ``general.*`` metadata) of a GGUF file."""
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # a truncated or foreign file: say which
        raise WarehouseError(f"{path}: not a readable GGUF file ({e})") from None
    n = sum(int(t.n_elements) for t in reader.tensors)
    meta: dict[str, Any] = {}
    for key in _GGUF_FIELDS:
        fld = reader.fields.get(key)
        if fld is not None:
            try:
                meta[key.split(".", 1)[1]] = fld.contents()
            except Exception:  # an odd value type is not worth failing a registration
                pass
    return n, meta


# (resolved path, size, mtime_ns) -> SHA-256: a run hashes its weights for the
# model cache and again for its fingerprint; a large GGUF is read once.
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file; free for Hugging Face cache files, whose blob name is that hash."""
    real = Path(path).resolve()
    if _HEX64.match(real.name):
        return real.name
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = hashing.file_sha256(real)
    return _SHA_MEMO[key]
