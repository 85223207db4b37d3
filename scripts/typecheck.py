"""Type-check the library packages with mypy, as they are installed.

The source tree maps warehouse/, scoring/ and reports/ into the package as
psystats.warehouse, psystats.scoring and psystats.reports (pyproject's
package-dir).  mypy follows folders, not import hooks, so this script lays the
package out under .cache/typecheck/ with symbolic links to the real files and
runs mypy there (its settings come from pyproject.toml).  Error paths read
.cache/typecheck/psystats/warehouse/db.py for warehouse/db.py, and so on.

    python scripts/typecheck.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".cache" / "typecheck"
MAPPED = {"warehouse": "warehouse", "scoring": "scoring", "reports": "reports"}


def build_tree() -> Path:
    if TREE.exists():
        shutil.rmtree(TREE)
    pkg = TREE / "psystats"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "psystats").iterdir():
        if entry.name in ("__pycache__", "sample"):
            continue
        os.symlink(entry, pkg / entry.name)
    for sub, folder in MAPPED.items():
        os.symlink(ROOT / folder, pkg / sub)
    return TREE


def main() -> int:
    tree = build_tree()
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(ROOT / ".cache" / "mypy"),
        "-p",
        "psystats",
    ]
    return subprocess.call(cmd, cwd=tree)


if __name__ == "__main__":
    sys.exit(main())
