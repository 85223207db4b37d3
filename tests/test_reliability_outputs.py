"""Output files: only regular files, written under a private temporary name and renamed."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from psystats.cli import main
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.outputs import atomic_output

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "psystats" / "sample" / "psych201"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def listing(folder: Path) -> set[str]:
    return set(os.listdir(folder))


# --------------------------------------------------------------------------- the helper


def test_atomic_output_writes_and_renames(tmp_path: Path):
    out = tmp_path / "a.csv"
    out.write_text("old\n")
    with atomic_output(out) as tmp:
        assert tmp.parent.parent == tmp_path and tmp.name == "a.csv"
        assert tmp.parent.name.startswith(".a.csv.")
        # The private folder is the caller's alone.
        assert stat.S_IMODE(os.stat(tmp.parent).st_mode) == 0o700
        tmp.write_text("new\n")
        assert out.read_text() == "old\n"  # readers see the old file until the rename
    assert out.read_text() == "new\n"
    assert listing(tmp_path) == {"a.csv"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask


def test_atomic_output_failure_leaves_the_old_file(tmp_path: Path):
    out = tmp_path / "a.csv"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("renderer failed")
    assert out.read_text() == "old\n"
    assert listing(tmp_path) == {"a.csv"}


def _targets(tmp_path: Path, suffix: str = ".pdf") -> dict[str, tuple[Path, str]]:
    real = tmp_path / "real.txt"
    real.write_text("keep me\n")
    link = tmp_path / f"link{suffix}"
    link.symlink_to(real)
    devlink = tmp_path / f"dev{suffix}"
    devlink.symlink_to("/dev/null")
    fifo = tmp_path / f"fifo{suffix}"
    os.mkfifo(fifo)
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    sock = tmp_path / f"s{suffix}"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    return {
        "folder": (folder, "is a folder"),
        "symlink": (link, "is a symbolic link"),
        "symlink_to_device": (devlink, "is a symbolic link"),
        "fifo": (fifo, "is a pipe"),
        "socket": (sock, "is a socket"),
        "dev_full": (Path("/dev/full"), "is a device"),
        "dev_null": (Path("/dev/null"), "is a device"),
        "missing_folder": (tmp_path / "no" / "such" / "r.pdf", "does not exist"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "folder",
        "symlink",
        "symlink_to_device",
        "fifo",
        "socket",
        "dev_full",
        "dev_null",
        "missing_folder",
    ],
)
def test_atomic_output_refuses(tmp_path: Path, case: str):
    target, needle = _targets(tmp_path)[case]
    before = listing(tmp_path)
    with pytest.raises(WarehouseError, match=needle), atomic_output(target) as tmp:
        tmp.write_text("x")
    assert listing(tmp_path) == before
    assert (tmp_path / "real.txt").read_text() == "keep me\n"


# --------------------------------------------------------------------------- the three commands


@pytest.fixture(scope="module")
def wh(tmp_path_factory) -> Path:
    """The sample with one imported run, so every exporter has something to write."""
    import duckdb

    root = tmp_path_factory.mktemp("out")
    db = root / "w.duckdb"
    assert cli("--db", db, "ingest", SAMPLE, "-q").exit_code == 0
    con = duckdb.connect(str(db))
    rows = con.execute(
        "SELECT response_id, 1.0 + (response_id % 7) / 3.0 FROM responses"
    ).fetchall()
    con.close()
    scores = root / "scores.csv"
    scores.write_text("response_id,nll\n" + "".join(f"{r},{v}\n" for r, v in rows))
    res = cli("--db", db, "scores", "import", scores, "--model", "ext", "--type", "other")
    assert res.exit_code == 0, res.output
    return db


COMMANDS = {
    "report": (".pdf", lambda out: ["report", "-o", out]),
    "export_cells": (".csv", lambda out: ["export", "cells", "-o", out]),
    "scores_export": (".csv", lambda out: ["scores", "export", "--run", "1", "-o", out]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", ["folder", "symlink", "symlink_to_device", "fifo", "dev_full"])
def test_commands_refuse_non_regular_targets(wh: Path, tmp_path: Path, command: str, case: str):
    suffix, args = COMMANDS[command]
    target, needle = _targets(tmp_path, suffix)[case]
    before_dir = listing(tmp_path)
    before_db = wh.read_bytes()
    res = cli("--db", wh, *args(target))
    assert "Traceback" not in res.output
    if command == "export_cells" and target.suffix != suffix:
        # /dev/full has no .csv suffix: export cells refuses it as a usage error first.
        assert res.exit_code == 2 and ".parquet or .csv" in res.output, res.output
    elif case == "folder":
        # click itself refuses a folder for -o (dir_okay=False): exit 2, one line.
        assert res.exit_code in (1, 2), res.output
        assert "folder" in res.output or "directory" in res.output
    else:
        assert res.exit_code == 1, res.output
        assert needle in res.output, res.output
    assert listing(tmp_path) == before_dir
    assert (tmp_path / "real.txt").read_text() == "keep me\n"
    assert wh.read_bytes() == before_db
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.slow  # renders a report (~4 s)
def test_scores_export_and_report_write_regular_files(wh: Path, tmp_path: Path):
    out = tmp_path / "s.csv"
    out.write_text("old")
    res = cli("--db", wh, "scores", "export", "--run", "1", "-o", out)
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert '"nll"' in lines[0] and len(lines) == 1 + 360  # every sample response
    html = tmp_path / "r.html"
    res = cli("--db", wh, "report", "-o", html)
    assert res.exit_code == 0, res.output
    assert html.read_text().lstrip().lower().startswith("<!doctype html")
    assert listing(tmp_path) == {"s.csv", "r.html"}


def test_export_cells_refuses_device_target_with_csv_name(wh: Path, tmp_path: Path):
    link = tmp_path / "cells.csv"
    link.symlink_to("/dev/null")
    res = cli("--db", wh, "export", "cells", "-o", link)
    assert res.exit_code == 1 and "is a symbolic link" in res.output, res.output
    assert link.is_symlink()


def test_disk_full_while_writing_keeps_the_old_file(wh: Path, tmp_path: Path):
    import resource
    import signal
    import subprocess
    import sys

    out = tmp_path / "s.parquet"
    out.write_bytes(b"old")

    def limit():  # writes past 3 kB fail (EFBIG), as on a full disk (ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    res = subprocess.run(
        [sys.executable, "-m", "psystats.cli", "--db", str(wh), "scores", "export", "--run", "1"]
        + ["-o", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert f"Error: no space left writing {out}" in res.stderr
    assert out.read_bytes() == b"old"
    assert listing(tmp_path) == {"s.parquet"}


def test_ingest_rejects_target_is_checked_before_ingesting(tmp_path: Path):
    db = tmp_path / "w.duckdb"
    res = cli("--db", db, "ingest", SAMPLE, "--skip-bad", "--rejects", "/dev/full")
    assert res.exit_code == 1 and "Error: /dev/full is a device" in res.output, res.output
    assert not db.exists()
