"""Write docs/cli.md from the CLI's own --help texts, so the reference cannot drift.

    python scripts/make_cli_docs.py           # rewrite docs/cli.md
    python scripts/make_cli_docs.py --check   # exit 1 if docs/cli.md is out of date (CI)

Every command and subcommand is rendered with click's own formatter at a
fixed width, in the order `psystats --help` lists them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "cli.md"
WIDTH = 100

HEADER = """# Command-line reference

Generated from each command's `--help` by `scripts/make_cli_docs.py`; CI
checks that it is current (`python scripts/make_cli_docs.py --check`). Edit
the commands' docstrings and option help, then run the script.

Every command takes the warehouse from `--db` (given before the command:
`psystats --db psych.duckdb summary`) or the `PSYSTATS_DB` environment
variable, or uses `psystats.duckdb` in the current folder.
"""


def walk(cmd: click.Command, path: list[str], parent: click.Context | None = None):
    """Every command and subcommand under ``cmd`` in `--help` order, as
    ``(path, command, context)`` (the reference below and the CLI fuzz test walk it)."""
    ctx = click.Context(
        cmd, info_name=path[-1], parent=parent, terminal_width=WIDTH, max_content_width=WIDTH
    )
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                yield from walk(sub, [*path, name], ctx)


def _walk(root: click.Command, out: list[str]) -> None:
    for path, cmd, ctx in walk(root, ["psystats"]):
        level = min(len(path) + 1, 4)
        out.append(f"{'#' * level} `{' '.join(path)}`\n")
        out.append("```text\n" + cmd.get_help(ctx).rstrip() + "\n```\n")


def render() -> str:
    from psystats.cli import main

    out = [HEADER]
    _walk(main, out)
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if docs/cli.md is out of date")
    args = ap.parse_args()
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(
                "docs/cli.md is out of date: run `python scripts/make_cli_docs.py`",
                file=sys.stderr,
            )
            return 1
        print("docs/cli.md is current")
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
