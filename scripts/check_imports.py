"""The import contract: layers only import downward and no module takes part in a cycle.

Runs import-linter (contracts in pyproject.toml, ``[tool.importlinter]``) on the
package laid out as installed (:func:`package_tree.build_tree`), counting
imports inside functions too: a lazy import is still a dependency.  Exit status
is import-linter's (non-zero when a contract is broken).

    python scripts/check_imports.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from package_tree import ROOT, build_tree


def main() -> int:
    tree = build_tree("imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint), str(ROOT / "pyproject.toml"), "--no-cache"]
    return subprocess.call(cmd, cwd=tree, env=env)


if __name__ == "__main__":
    sys.exit(main())
