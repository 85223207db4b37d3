"""Converted models on disk: a GGUF is dequantised once, later loads read safetensors.

Loading a GGUF makes transformers dequantise every tensor and convert the
tokenizer (tens of seconds for a 135M model, minutes under load, before any
work).  The result is kept here, keyed by the SHA-256 of the GGUF file and
the dtype (the tokenizer by the file's SHA-256 alone), so the second load of
the same model reads plain safetensors.

Location: ``$PSYSTATS_MODEL_CACHE`` if set (``off`` switches the cache off),
else ``$XDG_CACHE_HOME/psystats/models``, else ``~/.cache/psystats/models``.
One folder per entry, ``<sha256>-<dtype>`` or ``<sha256>-tokenizer``.

Guarantees:

* Atomic: an entry is written in a private temporary folder and renamed into
  place complete, its manifest (``psystats-cache.json``: sizes and SHA-256 of
  every file, the library versions that converted it) written last.  A
  process killed while writing leaves only a temporary folder, never an entry.
* Verified: every load checks the manifest, the versions (a new transformers
  may dequantise differently) and each file's size and SHA-256 (about a
  second per 500 MB).  A partial, corrupt or stale entry is rebuilt from the
  GGUF; a tokenizer whose fingerprint changed in the round trip is not used.
* Never in the way: a cache that cannot be written (read-only, disk full) is
  skipped with a warning; the model loads from the GGUF as before.
* The same numbers: the cached tensors are the dequantised ones, bit for bit
  (``tests/test_model_cache.py`` compares scores with and without the cache).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from psystats.warehouse import hashing
from psystats.warehouse.manifest import package_versions

from .model_files import file_sha256

ENV = "PSYSTATS_MODEL_CACHE"
MANIFEST = "psystats-cache.json"
FORMAT = 1
_OFF = {"off", "0", "no", "none", "false"}
_LIBRARIES = ("transformers", "gguf", "torch", "safetensors", "tokenizers")


def cache_root() -> Path | None:
    """Where converted models are kept; None when the cache is switched off."""
    env = os.environ.get(ENV, "").strip()
    if env.lower() in _OFF:
        return None
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "psystats" / "models"


def entry_dir(source: Path, variant: str) -> Path | None:
    """The folder of the cache entry for ``source`` (a GGUF file) and ``variant``
    (a dtype, or ``tokenizer``); None when the cache is off."""
    root = cache_root()
    if root is None:
        return None
    return root / f"{file_sha256(source)}-{variant}"


def _warn(message: str) -> None:
    print(f"warning: model cache: {message}", file=sys.stderr)


def verified(entry: Path) -> dict[str, Any] | None:
    """The manifest of a complete, intact entry made by these library versions, else None."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("versions") != package_versions(_LIBRARIES):
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for name, info in files.items():
        path = entry / name
        try:
            if path.stat().st_size != info["size"] or hashing.file_sha256(path) != info["sha256"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
    return manifest


def _write_manifest(tmp: Path, extra: dict[str, Any]) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": hashing.file_sha256(p)}
        for p in sorted(tmp.iterdir())
        if p.is_file()
    }
    manifest = {"format": FORMAT, "versions": package_versions(_LIBRARIES), "files": files, **extra}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")


def _install(tmp: Path, entry: Path) -> None:
    """Rename the finished ``tmp`` into place; a bad entry already there is replaced."""
    if entry.exists():
        if verified(entry) is not None:  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        stale = entry.with_name(f".stale-{entry.name}-{os.getpid()}")
        os.replace(entry, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, entry)


def store(entry: Path, write: Any, extra: dict[str, Any] | None = None) -> bool:
    """Build ``entry`` with ``write(folder)`` in a temporary folder, then rename it into place.

    Returns whether the entry was stored; any OS error (read-only, disk full)
    leaves no entry behind and is a warning, not a failure.
    """
    tmp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
        write(tmp)
        _write_manifest(tmp, extra or {})
        _install(tmp, entry)
        return True
    except OSError as e:
        _warn(f"not stored in {entry.parent} ({e.strerror or e}); loading keeps working")
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return False


def save_model(lm: Any, folder: Path) -> None:
    """The loaded (dequantised) model as a plain safetensors folder: config and weights."""
    from safetensors.torch import save_model as save_weights

    config = copy.deepcopy(lm.config)
    # The GGUF quantizer's record: the cached folder holds plain tensors.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    save_weights(lm, str(folder / "model.safetensors"))
