"""Type-check the library packages with mypy, as they are installed.

mypy follows folders, not import hooks, so this script lays the package out
under .cache/typecheck/ (:func:`package_tree.build_tree`) and runs mypy there
(its settings come from pyproject.toml).  Error paths read
.cache/typecheck/psystats/warehouse/db.py for warehouse/db.py, and so on.

    python scripts/typecheck.py
"""

from __future__ import annotations

import subprocess
import sys

from package_tree import ROOT, build_tree


def main() -> int:
    tree = build_tree("typecheck")
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
