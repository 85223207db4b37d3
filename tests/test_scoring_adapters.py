"""PEFT adapters: registered on a base, applied when scoring, refused when they change nothing.

The reference merges the LoRA into a float64 copy of the base by hand
(``W + lora_alpha / r * B @ A`` from the adapter's safetensors file, no PEFT
code) and runs a plain forward.
"""

from __future__ import annotations

import pytest
import torch

from helpers import check_batch, load64, model_row, reference_pieces, reference_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_hub")


def participants():
    from psystats.scoring.inputs import ParticipantInput

    out = []
    for k, answers in enumerate((["A", "green hexagon", "B"], ["B", "A"])):
        text, spans = "You see three objects and pick one.", []
        for j, a in enumerate(answers):
            text += f" Trial {j + 1}: you choose <<"
            spans.append((len(text), len(text) + len(a)))
            text += a + ">>."
        out.append(
            ParticipantInput(
                participant_key=700 + k,
                experiment="e",
                text=text,
                response_ids=tuple(7000 + 10 * k + j for j in range(len(answers))),
                spans=tuple(spans),
            )
        )
    return out


@pytest.fixture(scope="module")
def loras(tiny_models, tmp_path_factory):
    from psystats.scoring.tiny import build_tiny_lora

    root = tmp_path_factory.mktemp("lora")
    base = tiny_models["qwen3"]
    return {
        "random": build_tiny_lora(root / "tiny-qwen3-Instruct-lora", base),
        "zero": build_tiny_lora(root / "tiny-qwen3-zero-lora", base, zero=True),
    }


def merged_reference(base_dir, lora_dir):
    """The base in float64 with every LoRA pair merged by hand from the safetensors file."""
    import json

    from safetensors.torch import load_file

    cfg = json.loads((lora_dir / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    weights = load_file(str(lora_dir / "adapter_model.safetensors"))
    model = load64(base_dir)
    modules = dict(model.named_modules())
    n = 0
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        path = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        with torch.no_grad():
            modules[path].weight += scale * (b.double() @ a.double())
        n += 1
    assert n > 0
    return model


def test_lora_scores_match_a_merged_weight_reference(tiny_models, loras):
    from psystats.scoring.engine import Scorer

    base_dir, lora_dir = tiny_models["qwen3"], loras["random"]
    row = dict(model_row(base_dir), name="tiny-lora", adapter=str(lora_dir))
    sc = Scorer(row, dtype="float64")
    assert sc.settings["adapter"] == {"source": str(lora_dir), "merged": True}
    assert len(sc.fingerprints["adapter_sha256"]) == 64
    ref_model = merged_reference(base_dir, lora_dir)
    ps = participants()
    refs = [
        reference_scores(ref_model, sc.tokenizer, reference_pieces(p), len(p.spans), sc.prefix_ids)
        for p in ps
    ]
    batch = sc.score(ps)
    assert check_batch(batch, ps, refs, atol=1e-8) < 1e-8
    # And the adapter matters: the base alone scores differently.
    base = Scorer(model_row(base_dir), dtype="float64", tokenizer=sc.tokenizer).score(ps)
    diff = abs(base.scores["nll"].to_numpy() - batch.scores["nll"].to_numpy()).max()
    assert diff > 1e-2


def test_unmerged_peft_model_under_a_device_map_matches_too(tiny_models, loras):
    """Device maps (and bf16/fp16) keep the adapter unmerged: W x + scale * B (A x)."""
    from psystats.scoring.engine import Scorer

    base_dir, lora_dir = tiny_models["qwen3"], loras["random"]
    row = dict(model_row(base_dir), name="tiny-lora", adapter=str(lora_dir))
    sc = Scorer(row, dtype="float64", device_map={"": "cpu"})
    assert sc.settings["adapter"]["merged"] is False
    ref_model = merged_reference(base_dir, lora_dir)
    ps = participants()
    refs = [
        reference_scores(ref_model, sc.tokenizer, reference_pieces(p), len(p.spans), sc.prefix_ids)
        for p in ps
    ]
    assert check_batch(sc.score(ps), ps, refs, atol=1e-8) < 1e-8


def test_adapter_that_changes_nothing_is_refused(tiny_models, loras):
    from psystats.scoring.adapters import AdapterError
    from psystats.scoring.engine import Scorer

    row = dict(model_row(tiny_models["qwen3"]), name="noop", adapter=str(loras["zero"]))
    with pytest.raises(AdapterError, match="changes nothing"):
        Scorer(row, dtype="float32")


def test_pickled_adapter_is_refused(tmp_path):
    from psystats.scoring.adapters import AdapterError, describe

    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(AdapterError, match="never loads pickle"):
        describe(str(tmp_path))


def test_registry_records_adapter_and_scoring_checks_its_hash(db_path, tiny_models, loras):
    import shutil

    from psystats.scoring import registry
    from psystats.scoring.adapter_models import add_adapter
    from psystats.scoring.adapters import AdapterError
    from psystats.scoring.engine import Scorer
    from psystats.warehouse import db as warehouse_db

    con = warehouse_db.open(db_path, "write", create=True)
    try:
        base = registry.add_model(con, str(tiny_models["qwen3"]))
        row = add_adapter(con, str(tiny_models["qwen3"]), str(loras["random"]))
        assert row["name"] == "tiny-qwen3-Instruct-lora"
        assert row["adapter"] == str(loras["random"].resolve())
        assert row["base_model"] == base["name"]
        assert row["post_training"] == "instruct"
        assert row["n_params"] == base["n_params"]
        assert row["family"] == base["family"] and row["source"] == base["source"]
        assert len(row["adapter_sha256"]) == 64
        assert row["inferred"]["adapter"]["peft_type"] == "LORA"
        # Idempotent, and the plain base is still what its source resolves to.
        again = add_adapter(con, base["name"], str(loras["random"]))
        assert again["model_id"] == row["model_id"]
        assert registry.resolve_model(con, str(tiny_models["qwen3"]))["name"] == base["name"]
        # An adapter whose name says nothing is "other", never "base".
        other = shutil.copytree(loras["random"], db_path.parent / "psych-tune")
        assert add_adapter(con, base["name"], str(other))["post_training"] == "other"
        # Scoring applies it; weights that changed after registration are refused.
        sc = Scorer(registry.get_model(con, "psych-tune"), dtype="float32")
        assert (
            sc.fingerprints["adapter_sha256"]
            == registry.get_model(con, "psych-tune")["adapter_sha256"]
        )
        shutil.copy(loras["zero"] / "adapter_model.safetensors", other)
        with pytest.raises(AdapterError, match="changed since it was registered"):
            Scorer(registry.get_model(con, "psych-tune"), dtype="float32")
    finally:
        con.close()


@pytest.mark.slow
def test_cli_adapter_is_registered_and_scored_like_any_model(
    tmp_path, psych201, tiny_models, loras
):
    """`models add BASE --adapter PATH`, then `score --model` of the adapter and of the base:
    two runs, different numbers, the adapter's hash in the run's settings."""
    import json

    from helpers import cli_base_warehouse, cli_ok
    from psystats.warehouse import db as warehouse_db

    db = cli_base_warehouse(tmp_path, psych201, tiny_models["qwen3"])
    out = cli_ok("--db", db, "models", "add", "tiny-qwen3", "--adapter", loras["random"]).output
    assert "adapter_sha256" in out and "tiny-qwen3-Instruct-lora" in out
    cli_ok("--db", db, "score", "--model", "tiny-qwen3-Instruct-lora", "-q")
    cli_ok("--db", db, "score", "--model", "tiny-qwen3", "-q")
    con = warehouse_db.open(db)
    try:
        runs = dict(con.execute("SELECT model, run_id FROM score_runs").fetchall())
        nll = {
            m: dict(
                con.execute("SELECT response_id, nll FROM scores WHERE run_id = ?", [r]).fetchall()
            )
            for m, r in runs.items()
        }
        settings = con.execute(
            "SELECT settings FROM score_runs WHERE model = ?", ["tiny-qwen3-Instruct-lora"]
        ).fetchall()[0][0]
        base_row = con.execute(
            "SELECT base_model, post_training FROM models WHERE name = ?",
            ["tiny-qwen3-Instruct-lora"],
        ).fetchall()[0]
    finally:
        con.close()
    assert base_row == ("tiny-qwen3", "instruct")
    a, b = nll["tiny-qwen3-Instruct-lora"], nll["tiny-qwen3"]
    assert a.keys() == b.keys() and len(a) > 0
    assert max(abs(a[k] - b[k]) for k in a) > 1e-2
    assert json.loads(settings)["adapter"]["merged"] is True


def test_models_load_file_registers_an_adapter_entry(db_path, tiny_models, loras, tmp_path):
    from psystats.scoring import registry, registry_file
    from psystats.warehouse import db as warehouse_db

    f = tmp_path / "models.toml"
    f.write_text(
        f'[[models]]\nsource = "{tiny_models["qwen3"]}"\nname = "base"\n\n'
        f'[[models]]\nsource = "base"\nadapter = "{loras["random"]}"\nname = "tuned"\n'
        'type = "other"\n'
    )
    con = warehouse_db.open(db_path, "write", create=True)
    try:
        rows = registry_file.load_file(con, f)
        assert [r["name"] for r in rows] == ["base", "tuned"]
        tuned = registry.get_model(con, "tuned")
        assert (tuned["base_model"], tuned["post_training"]) == ("base", "other")
        assert tuned["inferred"]["post_training"]["from"] == "user"
        assert len(tuned["adapter_sha256"]) == 64
    finally:
        con.close()
