"""The library laid out as installed, for tools that follow folders rather than import hooks.

The source tree maps warehouse/, scoring/ and reports/ into the package as
psystats.warehouse, psystats.scoring and psystats.reports (pyproject's
package-dir).  mypy and import-linter read folders, so :func:`build_tree` lays
the package out under .cache/<name>/ with symbolic links to the real files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"warehouse": "warehouse", "scoring": "scoring", "reports": "reports"}


def build_tree(name: str) -> Path:
    """``.cache/<name>/psystats`` with links to the real files; returns ``.cache/<name>``."""
    tree = ROOT / ".cache" / name
    if tree.exists():
        shutil.rmtree(tree)
    pkg = tree / "psystats"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "psystats").iterdir():
        if entry.name in ("__pycache__", "sample"):
            continue
        os.symlink(entry, pkg / entry.name)
    for sub, folder in MAPPED.items():
        os.symlink(ROOT / folder, pkg / sub)
    return tree
