"""Reproducibility manifests: what it takes to repeat a score run or a fit.

Every score run and fit records the software it ran with
(:func:`environment`: psystats, torch, transformers, PyMC, nutpie, DuckDB,
ArviZ, Bambi, NumPy and Python versions, and the git revision when psystats
runs from a checkout) beside what the warehouse already keeps: seeds and
sampler settings (``fits.sampler``), weights and tokenizer hashes
(``score_runs.weights_sha256`` / ``tokenizer_sha256``), rendering settings
and the chat template's hash (``score_runs.settings``).  :func:`manifest`
gathers all of it for one run or fit (``psystats manifest fit:3``); a fit's
manifest includes the manifests of the score runs it read.

Versions are read from package metadata, never by importing the packages
(importing torch takes seconds).
"""

from __future__ import annotations

import json
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import WarehouseError

PACKAGES = (
    "psystats",
    "torch",
    "transformers",
    "pymc",
    "pytensor",
    "nutpie",
    "duckdb",
    "arviz",
    "bambi",
    "numpy",
    "pandas",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each of ``names`` (default :data:`PACKAGES`; None when not
    installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def git_revision() -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` when psystats runs from a git checkout, else None."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(status.strip())} if sha else None


def environment() -> dict[str, Any]:
    """The software environment of this process, as recorded with each run and fit."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": package_versions(),
        "git": git_revision(),
    }


def _rows(con, query: str, params: list) -> list[dict]:
    cur = con.execute(query, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _parse(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def parse_ref(ref: str | int) -> tuple[str, int]:
    """``"fit:3"``, ``"run:7"`` or a bare number (a fit) -> (kind, id)."""
    text = str(ref).strip()
    kind, _, num = text.rpartition(":")
    kind = (kind or "fit").lower()
    if kind not in ("fit", "run") or not num.isdigit():
        raise WarehouseError(
            f"{ref!r}: name a fit or a score run as fit:ID or run:ID (a bare ID is a fit)"
        )
    return kind, int(num)


def _recorded(con, table: str, key: str, value: int, what: str, shown: str) -> dict[str, Any]:
    """The row of ``table`` whose ``key`` is ``value``; else an error saying how to list them."""
    rows = _rows(con, f"SELECT * FROM {table} WHERE {key} = ?", [int(value)])
    if not rows:
        raise WarehouseError(f'no {what} {value}: see `psystats sql "SELECT {shown} FROM {table}"`')
    return rows[0]


def run_manifest(con, run_id: int) -> dict[str, Any]:
    """What a score run recorded: model, weights/tokenizer hashes, settings, software."""
    r = _recorded(con, "score_runs", "run_id", run_id, "score run", "run_id, model")
    settings = _parse(r.get("settings")) or {}
    model = _rows(
        con,
        "SELECT name, source, revision, gguf_file, tokenizer_source, family, generation,"
        " n_params, post_training, base_model FROM models WHERE name = ?",
        [r["model"]],
    )
    return {
        "run_id": int(r["run_id"]),
        "model": model[0] if model else {"name": r["model"]},
        "condition": r["condition"],
        "scorer": r["scorer"],
        "status": r["status"],
        "started_at": str(r["started_at"]),
        "finished_at": None if r["finished_at"] is None else str(r["finished_at"]),
        "weights_sha256": r.get("weights_sha256"),
        "tokenizer_sha256": r.get("tokenizer_sha256"),
        "template_sha256": _find(settings, "template_sha256"),
        "dtype": r.get("dtype"),
        "device": r.get("device"),
        "seed": _find(settings, "seed"),
        "selection": _parse(r.get("selection")),
        "settings": {k: v for k, v in settings.items() if k != "environment"},
        "psystats_version": r.get("psystats_version"),
        "environment": settings.get("environment") if isinstance(settings, dict) else None,
    }


def _find(obj: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a nested dict (settings nest by topic)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def fit_manifest(con, fit_id: int) -> dict[str, Any]:
    """What a fit recorded: kind, spec, priors, sampler and seed, software, and its runs."""
    f = _recorded(con, "fits", "fit_id", fit_id, "fit", "fit_id, kind, created_at")
    sampler = _parse(f.get("sampler")) or {}
    selection = _parse(f.get("selection")) or {}
    runs = selection.get("runs") if isinstance(selection, dict) else None
    known = {
        int(r[0])
        for r in con.execute("SELECT run_id FROM score_runs").fetchall()
        if r[0] is not None
    }
    return {
        "fit_id": int(f["fit_id"]),
        "kind": f["kind"],
        "name": f.get("name"),
        "created_at": str(f["created_at"]),
        "condition": f.get("condition"),
        "scale": f.get("scale"),
        "passed": f.get("passed"),
        "seed": sampler.get("seed") if isinstance(sampler, dict) else None,
        "sampler": (
            {k: v for k, v in sampler.items() if k != "environment"}
            if isinstance(sampler, dict)
            else sampler
        ),
        "spec": _parse(f.get("spec")),
        "priors": _parse(f.get("priors")),
        "selection": selection,
        "netcdf_path": f.get("netcdf_path"),
        "psystats_version": f.get("psystats_version"),
        "environment": sampler.get("environment") if isinstance(sampler, dict) else None,
        "runs": [run_manifest(con, r) for r in (runs or []) if int(r) in known],
    }


def manifest(con, ref: str | int) -> dict[str, Any]:
    """The manifest of ``fit:ID`` / ``run:ID`` (a bare ID is a fit), with the current software."""
    kind, num = parse_ref(ref)
    out = fit_manifest(con, num) if kind == "fit" else run_manifest(con, num)
    out["inspected_with"] = environment()
    return out
