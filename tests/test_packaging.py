"""The wheel installs one top-level package, `psystats`, and every documented import works from it.

The source tree keeps the design's folders (warehouse/, scoring/, reports/
beside psystats/); pyproject's package-dir maps them to psystats.warehouse,
psystats.scoring and psystats.reports.  These tests build the real wheel and
install it into a fresh virtual environment (its dependencies are borrowed
from the test environment's site-packages, so nothing is downloaded).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # setuptools copies into build/ and never deletes there: a module removed
    # from the source would still ship.  Build from a clean slate.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0 and "No module named 'setuptools'" in r.stderr + r.stdout:
        pytest.skip("setuptools is not installed in the test environment")
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("psystats-*.whl")
    return whl


def test_wheel_has_one_top_level_package(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"psystats"}
    for sub in ("warehouse", "scoring", "reports", "stats", "commands"):
        assert f"psystats/{sub}/__init__.py" in names, sub
    # Data files travel with their packages; no test fixture is shipped.
    assert "psystats/warehouse/data/experiment_domains.csv" in names
    assert any(n.startswith("psystats/sample/psych201/") for n in names)
    assert not any("example" in n and n.startswith("psystats/reports/") for n in names)
    top_level = [n for n in names if n.endswith("top_level.txt")]
    if top_level:
        assert zipfile.ZipFile(wheel).read(top_level[0]).decode().split() == ["psystats"]


def test_wheel_installs_and_every_documented_import_works(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
    )
    # Dependencies from the test environment, placed AFTER the venv's own
    # site-packages (a .pth line): psystats itself must come from the wheel.
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = (
        "import psystats, psystats.warehouse, psystats.scoring, psystats.reports, "
        "psystats.stats, psystats.warehouse.db, psystats.scoring.registry;"
        "print(psystats.warehouse.__file__)"
    )
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(site) in r.stdout
    # The console script, and no stray top-level packages next to psystats.
    r = subprocess.run(
        [str(venv / "bin" / "psystats"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 0 and "Commands:" in r.stdout, r.stderr
    for stray in ("warehouse", "scoring", "reports"):
        assert not (site / stray).exists(), stray
