"""Environment failures are one-line errors (exit 1), and read-only commands never write.

Real processes hold real locks; permissions are real (as root, the command
runs without CAP_DAC_OVERRIDE via ``setpriv`` so file modes apply); "disk
full" is a real write failure (RLIMIT_FSIZE in the child process).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from psystats.cli import main
from psystats.warehouse import db as wdb
from psystats.warehouse.settings import LOCK_TIMEOUT_ENV

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "psystats" / "sample" / "psych201"
PSYSTATS = [sys.executable, "-m", "psystats.cli"]


def cli(*args, env: dict | None = None):
    res = CliRunner().invoke(main, [str(a) for a in args], env=env)
    return res


def one_line_error(res, *needles: str) -> str:
    """Exit 1, 'Error: ...' on one line, no traceback; returns the message."""
    out = res.output if hasattr(res, "output") else res.stdout + res.stderr
    code = res.exit_code if hasattr(res, "exit_code") else res.returncode
    assert code == 1, out
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], lines[0]
    if hasattr(res, "exception") and res.exception is not None:
        assert isinstance(res.exception, SystemExit), repr(res.exception)
    return lines[0]


def run(args, *, env: dict | None = None, unprivileged: bool = False, fsize: int | None = None):
    """``python -m psystats.cli ARGS`` in a real child process."""
    cmd = PSYSTATS + [str(a) for a in args]
    if unprivileged and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: file modes cannot be tested")
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        cmd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        preexec_fn=limit if fsize else None,
        timeout=300,
    )


@pytest.fixture
def sample_db(tmp_path: Path) -> Path:
    db = tmp_path / "w.duckdb"
    res = cli("--db", db, "ingest", SAMPLE, "-q")
    assert res.exit_code == 0, res.output
    return db


# --------------------------------------------------------------------------- lock


HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
con.close()
print("released", flush=True)
"""


def _hold(db: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_reader_waits_for_a_lock_and_succeeds_when_it_is_released(sample_db: Path):
    holder = _hold(sample_db)
    try:
        reader = subprocess.Popen(
            PSYSTATS + ["--db", str(sample_db), "summary", "--format", "csv"],
            env={**os.environ, LOCK_TIMEOUT_ENV: "120"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The one waiting line comes first; only then is the lock released.
        waiting = reader.stderr.readline()
        assert f"is in use by PID {holder.pid}" in waiting, waiting
        assert "waiting up to 120 s" in waiting
        holder.stdin.write("\n")
        holder.stdin.flush()
        out, err = reader.communicate(timeout=120)
    finally:
        holder.kill() if holder.poll() is None else None
        holder.wait()
    assert reader.returncode == 0, err
    assert "Traceback" not in err
    assert out.splitlines()[0].startswith("study,experiments")
    assert len(out.splitlines()) == 5  # header + the sample's 4 studies


def test_lock_timeout_gives_one_line_with_the_pid(sample_db: Path):
    before = sample_db.read_bytes()
    holder = _hold(sample_db)
    try:
        res = run(["--db", sample_db, "--lock-timeout", "0.3", "summary"])
        res_write = run(["--db", sample_db, "init"], env={LOCK_TIMEOUT_ENV: "0"})
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait()
    msg = one_line_error(res, f"is in use by PID {holder.pid}", "waited 0.3 s")
    assert LOCK_TIMEOUT_ENV in msg
    assert "waiting up to 0.3 s" in res.stderr  # told once while waiting
    one_line_error(res_write, f"is in use by PID {holder.pid}")
    assert sample_db.read_bytes() == before


def test_bad_lock_timeout_value(sample_db: Path):
    one_line_error(
        cli("--db", sample_db, "summary", env={LOCK_TIMEOUT_ENV: "soon"}),
        "PSYSTATS_LOCK_TIMEOUT='soon'",
    )


# --------------------------------------------------------------------------- files


def test_missing_folder(tmp_path: Path):
    db = tmp_path / "no" / "such" / "w.duckdb"
    one_line_error(cli("--db", db, "init"), "does not exist", "mkdir -p")
    one_line_error(cli("--db", db, "summary"), "no warehouse at")
    assert not (tmp_path / "no").exists()


def test_db_that_is_a_folder(tmp_path: Path):
    # --db is checked by click (a usage error); $PSYSTATS_DB reaches the warehouse layer.
    res = cli("--db", tmp_path, "summary")
    assert res.exit_code == 2 and "is a directory" in res.output
    one_line_error(cli("summary", env={wdb.ENV_VAR: str(tmp_path)}), "is a folder")


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world" * 100, "truncated"],
    ids=["empty", "junk", "truncated"],
)
def test_corrupt_or_truncated_file(sample_db: Path, tmp_path: Path, content):
    bad = tmp_path / "bad.duckdb"
    data = sample_db.read_bytes()[:5000] if content == "truncated" else content
    bad.write_bytes(data)
    for args in (["summary"], ["sql", "SELECT 1"], ["init"], ["report", "-o", tmp_path / "r.pdf"]):
        msg = one_line_error(cli("--db", bad, *args), "not a readable DuckDB warehouse")
        assert str(bad) in msg
    assert bad.read_bytes() == data
    assert not (tmp_path / "r.pdf").exists()


def test_permission_denied(sample_db: Path, tmp_path: Path):
    sample_db.chmod(0o000)
    try:
        res = run(["summary", "--db", sample_db], unprivileged=True)
    finally:
        sample_db.chmod(0o644)
    one_line_error(res, "permission denied", "read access needed")


def test_read_only_file_read_only_commands_work_and_writers_get_one_line(sample_db: Path):
    sample_db.chmod(0o444)
    before = sample_db.read_bytes()
    try:
        summary = run(["--db", sample_db, "summary", "--format", "csv"], unprivileged=True)
        init = run(["--db", sample_db, "init"], unprivileged=True)
    finally:
        sample_db.chmod(0o644)
    assert summary.returncode == 0, summary.stderr
    assert "franke2024bayesian" in summary.stdout
    one_line_error(init, "permission denied", "read and write access needed")
    assert sample_db.read_bytes() == before


@pytest.mark.slow  # two child processes and an ingest (~6 s)
def test_disk_full_is_one_line_and_keeps_earlier_files(tmp_path: Path):
    db = tmp_path / "w.duckdb"
    # Writes past 100 kB fail (EFBIG), as they would on a full disk (ENOSPC).
    res = run(["--db", db, "ingest", SAMPLE], fsize=100_000)
    one_line_error(res, "no space left writing")
    check = run(["--db", db, "summary", "--format", "csv"])
    assert check.returncode == 0, check.stderr  # the warehouse still opens


# --------------------------------------------------------------------------- schema


def test_read_only_commands_do_not_migrate_an_older_schema(tmp_path: Path):
    import duckdb

    from psystats.warehouse.schema import MIGRATIONS

    # A warehouse as the previous psystats left it: every migration but the last.
    sample_db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(sample_db))
    for version, migration in enumerate(MIGRATIONS[:-1], start=1):
        con.execute(migration)
        con.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
    con.close()
    before = sample_db.read_bytes()
    for args in (
        ["summary"],
        ["sql", "SELECT 1"],
        ["report", "-o", tmp_path / "r.pdf"],
        ["export", "cells", "-o", tmp_path / "c.csv"],
        ["scores", "export", "--run", "1", "-o", tmp_path / "s.csv"],
    ):
        one_line_error(
            cli("--db", sample_db, *args),
            f"schema version {wdb.SCHEMA_VERSION - 1}",
            f"psystats init --db {sample_db}",
        )
        assert sample_db.read_bytes() == before
    # The hint is a valid command, and it upgrades the file.
    assert cli("--db", sample_db, "init").exit_code == 0
    assert cli("--db", sample_db, "summary").exit_code == 0


def test_plain_duckdb_file_is_not_a_warehouse(tmp_path: Path):
    import duckdb

    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()
    before = other.read_bytes()
    one_line_error(cli("--db", other, "summary"), "not a psystats warehouse")
    assert other.read_bytes() == before


def test_db_that_is_a_pipe_or_device_does_not_hang(tmp_path: Path, sample_db: Path):
    fifo = tmp_path / "fifo.duckdb"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/null"), Path("/dev/full")):
        for args in (["summary"], ["init"]):
            one_line_error(cli("--db", target, *args), "is not a regular file")
    # A symbolic link to a real warehouse is fine.
    link = tmp_path / "link.duckdb"
    link.symlink_to(sample_db)
    res = cli("--db", link, "summary", "--format", "csv")
    assert res.exit_code == 0 and "franke2024bayesian" in res.output


def test_new_warehouse_in_a_read_only_folder(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        res = run(["--db", folder / "w.duckdb", "init"], unprivileged=True)
    finally:
        folder.chmod(0o755)
    one_line_error(res, "permission denied")
    assert list(folder.iterdir()) == []


def test_missing_warehouse_hints_run(tmp_path: Path):
    import re
    import shlex

    db = tmp_path / "new.duckdb"
    msg = one_line_error(cli("--db", db, "summary"), "no warehouse at")
    init, ingest = re.findall(r"`(psystats [^`]+)`", msg)
    words = shlex.split(ingest.replace("FOLDER", str(SAMPLE)))[1:]
    assert cli(*words, "-q").exit_code == 0
    assert cli("--db", db, "summary").exit_code == 0
    other = tmp_path / "other.duckdb"
    assert cli(*shlex.split(init.replace(str(db), str(other)))[1:]).exit_code == 0
