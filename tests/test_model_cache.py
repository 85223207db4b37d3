"""The converted-model cache (scoring.model_cache): atomic, verified, never in the way, and
the same numbers with or without it.

The cache layer is exercised on a tiny real model (fast); the GGUF path end to
end, with scores compared bit for bit, on the real SmolLM2 GGUF (slow: three
loads of a 135M model).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from psystats.scoring import model_cache


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(model_cache.ENV, str(root))
    return root


@pytest.fixture
def tiny_lm(tiny_models):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.float32)


def _entry(tiny_models) -> Path:
    # Any file stands in for a GGUF: the key is its SHA-256 and the dtype.
    entry = model_cache.entry_dir(tiny_models["llama"] / "model.safetensors", "float32")
    assert entry is not None
    return entry


def _store(entry: Path, lm) -> bool:
    return model_cache.store(entry, lambda tmp: model_cache.save_model(lm, tmp))


def test_location_is_configurable_and_can_be_switched_off(monkeypatch, tmp_path):
    monkeypatch.setenv(model_cache.ENV, str(tmp_path / "c"))
    assert model_cache.cache_root() == tmp_path / "c"
    for off in ("off", "OFF", "0", "none"):
        monkeypatch.setenv(model_cache.ENV, off)
        assert model_cache.cache_root() is None
        assert model_cache.entry_dir(Path(__file__), "float32") is None
    monkeypatch.delenv(model_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache.cache_root() == tmp_path / "xdg" / "psystats" / "models"


def test_an_entry_round_trips_the_weights_exactly(cache, tiny_models, tiny_lm):
    from transformers import AutoModelForCausalLM

    entry = _entry(tiny_models)
    assert entry.parent == cache and entry.name.endswith("-float32")
    assert model_cache.verified(entry) is None  # nothing yet
    assert _store(entry, tiny_lm)
    manifest = model_cache.verified(entry)
    assert manifest is not None and "model.safetensors" in manifest["files"]
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())
    back = AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32, use_safetensors=True)
    a, b = tiny_lm.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Nothing but the entry is left in the cache folder (the temporary one was renamed).
    assert [p.name for p in cache.iterdir()] == [entry.name]


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "no manifest", "old versions"])
def test_a_partial_or_corrupt_entry_is_detected_and_rebuilt(cache, tiny_models, tiny_lm, damage):
    entry = _entry(tiny_models)
    assert _store(entry, tiny_lm)
    weights = entry / "model.safetensors"
    if damage == "truncated":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    elif damage == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-100] ^= 0xFF  # same size, one weight changed
        weights.write_bytes(bytes(data))
    elif damage == "no manifest":  # what a writer killed before its last step would leave
        (entry / model_cache.MANIFEST).unlink()
    else:  # converted by another transformers: may dequantise differently
        manifest = json.loads((entry / model_cache.MANIFEST).read_text())
        manifest["versions"]["transformers"] = "0.0.1"
        (entry / model_cache.MANIFEST).write_text(json.dumps(manifest))
    assert model_cache.verified(entry) is None
    assert _store(entry, tiny_lm)  # rebuilt in place
    assert model_cache.verified(entry) is not None
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_failure(
    tmp_path, monkeypatch, tiny_models, tiny_lm, capsys
):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv(model_cache.ENV, str(blocked / "cache"))
    entry = _entry(tiny_models)
    assert not _store(entry, tiny_lm)
    assert "warning: model cache: not stored" in capsys.readouterr().err
    assert not (blocked / "cache").exists()


def test_a_failed_write_leaves_no_entry(cache, tiny_models):
    entry = _entry(tiny_models)

    def write(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    assert not model_cache.store(entry, write)
    assert not entry.exists()
    assert list(cache.iterdir()) == []  # the temporary folder went too


@pytest.mark.slow
def test_smollm2_gguf_scores_are_bit_identical_with_and_without_the_cache(
    smollm2_gguf, inputs, tmp_path, monkeypatch
):
    """Cache off, cold (dequantised and stored), warm (read back): the same score
    tables, bit for bit, and the same run fingerprints."""
    from psystats.scoring.engine import Scorer

    torch.set_num_threads(1)
    row = {
        "name": "SmolLM2-135M-Instruct",
        "source": str(smollm2_gguf.parent),
        "gguf_file": smollm2_gguf.name,
    }
    few = [inputs[0], inputs[3]]  # a franke participant and a long guenther one
    results = {}
    for label, where in (("off", "off"), ("cold", str(tmp_path / "c")), ("warm", None)):
        if where is not None:
            monkeypatch.setenv(model_cache.ENV, where)
        scorer = Scorer(row, dtype="float32", option_sets={})
        results[label] = (scorer.score(few), scorer.fingerprints, scorer.settings)
        if label == "cold":
            names = sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "c").iterdir())
            assert names == ["float32", "tokenizer"]
    base = results["off"]
    for label in ("cold", "warm"):
        batch, fingerprints, settings = results[label]
        assert batch.scores.equals(base[0].scores), label
        assert batch.options.equals(base[0].options), label
        assert fingerprints == base[1] and settings == base[2], label
