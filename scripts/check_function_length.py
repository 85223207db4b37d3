"""List library functions longer than the limit (issue 20: "no library function over about
120 lines"); exit 1 if there are any.

Counts every line from ``def`` to the function's last line (docstring and comments
included, nested functions inside their parent), over the installed library's folders:
warehouse/, scoring/, reports/ and psystats/ (without the embedded sample).

    python scripts/check_function_length.py [--limit 120]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("warehouse", "scoring", "reports", "psystats")
SKIP = ("psystats/sample",)


def long_functions(limit: int) -> list[tuple[int, str]]:
    """(length, "path:line name") of every function over ``limit`` lines, longest first."""
    out = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(SKIP):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = (node.end_lineno or node.lineno) - node.lineno + 1
                    if n > limit:
                        out.append((n, f"{rel}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=120)
    args = ap.parse_args()
    rows = long_functions(args.limit)
    for n, where in rows:
        print(f"{n:5d}  {where}")
    print(f"{len(rows)} function(s) over {args.limit} lines")
    return 1 if rows else 0


if __name__ == "__main__":
    sys.exit(main())
