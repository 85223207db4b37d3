"""SHA-256 of a file, read in blocks so a large file never sits in memory whole.

One function for every place that fingerprints a file: source files at ingest
(``ingests.content_sha256``), imported score files (``scoring.importer``),
shard files (``scoring.shard_files``) and model weights (``scoring.loader``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 20  # 1 MiB: the block size changes the speed, never the digest


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the bytes of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()
