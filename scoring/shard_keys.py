"""Run keys of distributed scoring: what identifies a run across machines, and its shard folder.

The same key means the same numbers: shards of one run land in one folder
wherever they were computed, and shards of different runs never mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psystats.warehouse.errors import WarehouseError

if TYPE_CHECKING:  # heavy imports (torch) stay out of `psystats merge`
    pass


FORMAT_VERSION = 1
TABLES = ("scores", "options", "tokens", "words")
# Columns of each shard table: the warehouse table minus run_id (the run id is
# only known to the warehouse that merges the shard).
COLUMNS = {
    "scores": (
        "response_id",
        "nll",
        "n_tokens",
        "first_token_nll",
        "top1_all",
        "top1_first",
        "first_token_entropy",
    ),
    "options": ("response_id", "option", "logprob"),
    "tokens": ("response_id", "token_index", "token_id", "token", "logprob", "entropy", "rank"),
    "words": (
        "response_id",
        "word_index",
        "word",
        "char_start",
        "char_end",
        "token_start",
        "n_tokens",
        "nll",
        "token_nll",
    ),
}


class ShardError(WarehouseError):
    """A shard that cannot be merged (missing file, wrong hash, wrong columns); names the file."""


def _fsync_replace(tmp: Path, dest: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    _fsync_replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable JSON ({e})") from None


# ---------------------------------------------------------------------------
# Run keys
# ---------------------------------------------------------------------------


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_key(
    model: Mapping[str, Any] | str,
    condition: str,
    selection: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
    fingerprints: Mapping[str, Any] | None,
) -> dict:
    """What identifies a scoring run across machines: the same key means the same numbers.

    ``model`` is a ``models`` row (only its ``name`` is used) or a name.  The
    key mirrors what ``scoring.runs.start_run`` matches on, so merging a
    shard finds (or opens) exactly the run a single-machine ``psystats
    score`` would have used.
    """
    from psystats.scoring.runs import run_key_settings

    name = model if isinstance(model, str) else model["name"]
    # Round-trip through JSON so tuples/lists and key order cannot change the hash.
    return json.loads(
        _canonical(
            {
                "model": name,
                "condition": condition,
                "selection": dict(selection or {}),
                # Batching (batch size, device) changes no result, so a job on a
                # smaller GPU still writes into the same run (as start_run matches).
                "settings": run_key_settings(dict(settings)),
                "fingerprints": dict(fingerprints or {}),
            }
        )
    )


def run_hash(key: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the canonical run key (the folder name's suffix)."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]


def run_dir(
    out: str | os.PathLike, key: Mapping[str, Any], settings: Mapping[str, Any] | None = None
) -> Path:
    """``out/run-<hash>``, created, with ``run.json`` holding the key (checked if present).

    ``settings``: the full scorer settings (batching included), recorded in
    ``run.json`` so the merged run shows how the shards were computed.
    """
    d = Path(out) / f"run-{run_hash(key)}"
    d.mkdir(parents=True, exist_ok=True)
    meta = d / "run.json"
    if meta.exists():
        stored = _read_json(meta)
        if stored.get("key") != key:
            raise ShardError(
                f"{meta}: holds a different run key than this run (hash collision or edited file)"
            )
    else:
        _write_json_atomic(
            meta,
            {
                "format": FORMAT_VERSION,
                "hash": run_hash(key),
                "key": key,
                "settings": dict(settings or key["settings"]),
            },
        )
    return d
