"""The model registry: inference from names, parameter counts from weights, overrides, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from psystats.cli import main
from psystats.scoring import registry, registry_file
from psystats.scoring.model_facts import describe
from psystats.scoring.model_files import count_safetensors_params
from psystats.scoring.naming import infer_from_name
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar

pytestmark = pytest.mark.usefixtures("offline_hub")


@pytest.fixture
def con(db_path):
    c = warehouse_db.open(db_path, "write", create=True)
    yield c
    c.close()


# (name, family, generation, post_training, base the family rule names or None)
NAMES = [
    ("Qwen/Qwen-7B", "qwen", "1", "base", None),
    ("Qwen/Qwen1.5-7B", "qwen", "1.5", "base", None),
    ("Qwen/Qwen1.5-7B-Chat", "qwen", "1.5", "instruct", "Qwen/Qwen1.5-7B"),
    ("Qwen/CodeQwen1.5-7B-Chat", "qwen", "1.5", "code", "Qwen/CodeQwen1.5-7B"),
    ("Qwen/Qwen2-7B", "qwen", "2", "base", None),
    ("Qwen/Qwen2-7B-Instruct", "qwen", "2", "instruct", "Qwen/Qwen2-7B"),
    ("Qwen/Qwen2-Math-7B-Instruct", "qwen", "2", "math", "Qwen/Qwen2-7B"),
    ("Qwen/Qwen2-VL-7B-Instruct", "qwen", "2", "vision", "Qwen/Qwen2-7B"),
    ("Qwen/Qwen2.5-7B", "qwen", "2.5", "base", None),
    ("Qwen/Qwen2.5-0.5B-Instruct", "qwen", "2.5", "instruct", "Qwen/Qwen2.5-0.5B"),
    ("Qwen/Qwen2.5-7B-Instruct", "qwen", "2.5", "instruct", "Qwen/Qwen2.5-7B"),
    ("Qwen/Qwen2.5-Coder-7B", "qwen", "2.5", "code", "Qwen/Qwen2.5-7B"),
    ("Qwen/Qwen2.5-Coder-7B-Instruct", "qwen", "2.5", "code", "Qwen/Qwen2.5-7B"),
    ("Qwen/Qwen2.5-Math-7B", "qwen", "2.5", "math", "Qwen/Qwen2.5-7B"),
    ("Qwen/Qwen2.5-Math-7B-Instruct", "qwen", "2.5", "math", "Qwen/Qwen2.5-7B"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen", "2.5", "vision", "Qwen/Qwen2.5-7B"),
    ("Qwen/QwQ-32B", "qwen", "2.5", "reasoning", None),
    ("Qwen/Qwen3-8B-Base", "qwen", "3", "base", None),
    ("Qwen/Qwen3-8B", "qwen", "3", "reasoning", "Qwen/Qwen3-8B-Base"),
    ("Qwen/Qwen3-30B-A3B", "qwen", "3", "reasoning", "Qwen/Qwen3-30B-A3B-Base"),
    ("Qwen/Qwen3-4B-Instruct-2507", "qwen", "3", "instruct", "Qwen/Qwen3-4B-Base"),
    ("Qwen/Qwen3-4B-Thinking-2507", "qwen", "3", "reasoning", "Qwen/Qwen3-4B-Base"),
    ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen", "3", "code", "Qwen/Qwen3-30B-A3B-Base"),
    ("Qwen/Qwen3-VL-8B-Instruct", "qwen", "3", "vision", "Qwen/Qwen3-8B-Base"),
    ("Qwen/Qwen3-VL-8B-Thinking", "qwen", "3", "vision", "Qwen/Qwen3-8B-Base"),
    ("Qwen/Qwen3.5-9B-Base", "qwen", "3.5", "base", None),
    ("Qwen/Qwen3.5-9B", "qwen", "3.5", "reasoning", "Qwen/Qwen3.5-9B-Base"),
    ("meta-llama/Llama-2-7b-hf", "llama", "2", "base", None),
    ("meta-llama/Llama-2-7b-chat-hf", "llama", "2", "instruct", "meta-llama/Llama-2-7b-hf"),
    ("meta-llama/CodeLlama-7b-Instruct-hf", "llama", "2", "code", "meta-llama/CodeLlama-7b-hf"),
    ("meta-llama/Meta-Llama-3-8B", "llama", "3", "base", None),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama", "3", "instruct", "meta-llama/Meta-Llama-3-8B"),
    ("meta-llama/Llama-3.1-8B", "llama", "3.1", "base", None),
    ("meta-llama/Llama-3.1-8B-Instruct", "llama", "3.1", "instruct", "meta-llama/Llama-3.1-8B"),
    (
        "meta-llama/Meta-Llama-3.1-70B-Instruct",
        "llama",
        "3.1",
        "instruct",
        "meta-llama/Meta-Llama-3.1-70B",
    ),
    ("meta-llama/Llama-3.2-1B", "llama", "3.2", "base", None),
    ("meta-llama/Llama-3.2-3B-Instruct", "llama", "3.2", "instruct", "meta-llama/Llama-3.2-3B"),
    # Llama 3.2 Vision 11B/90B are Llama 3.1 8B/70B with image cross-attention layers.
    (
        "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "llama",
        "3.2",
        "vision",
        "meta-llama/Llama-3.1-8B",
    ),
    ("meta-llama/Llama-3.2-11B-Vision", "llama", "3.2", "vision", "meta-llama/Llama-3.1-8B"),
    (
        "meta-llama/Llama-3.2-90B-Vision-Instruct",
        "llama",
        "3.2",
        "vision",
        "meta-llama/Llama-3.1-70B",
    ),
    # Vision-language descendants of the Qwen generations, and their quantised copies.
    ("Qwen/Qwen2-VL-2B-Instruct", "qwen", "2", "vision", "Qwen/Qwen2-1.5B"),
    ("Qwen/Qwen2-VL-72B-Instruct", "qwen", "2", "vision", "Qwen/Qwen2-72B"),
    ("Qwen/Qwen2.5-VL-72B-Instruct", "qwen", "2.5", "vision", "Qwen/Qwen2.5-72B"),
    ("Qwen/Qwen2.5-VL-7B-Instruct-AWQ", "qwen", "2.5", "vision", "Qwen/Qwen2.5-7B"),
    ("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen", "3", "vision", "Qwen/Qwen3-30B-A3B-Base"),
    ("Qwen/Qwen3-VL-8B-Instruct-FP8", "qwen", "3", "vision", "Qwen/Qwen3-8B-Base"),
    ("Qwen/Qwen3.5-VL-9B", "qwen", "3.5", "vision", "Qwen/Qwen3.5-9B-Base"),
    ("Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4", "qwen", "2.5", "instruct", "Qwen/Qwen2.5-72B"),
    ("Qwen/Qwen2.5-7B-Instruct-GGUF", "qwen", "2.5", "instruct", "Qwen/Qwen2.5-7B"),
    ("unsloth/Meta-Llama-3.1-70B-bnb-4bit", "llama", "3.1", "base", None),
    (
        "unsloth/Llama-3.2-11B-Vision-Instruct-bnb-4bit",
        "llama",
        "3.2",
        "vision",
        "meta-llama/Llama-3.1-8B",
    ),
    # Centaur: Llama 3.1 fine-tuned on Psych-101 (QLoRA), published as weights and as an adapter.
    ("marcelbinz/Llama-3.1-Centaur-70B", "llama", "3.1", "other", "meta-llama/Llama-3.1-70B"),
    (
        "marcelbinz/Llama-3.1-Centaur-70B-adapter",
        "llama",
        "3.1",
        "other",
        "meta-llama/Llama-3.1-70B",
    ),
    ("marcelbinz/Llama-3.1-Centaur-8B", "llama", "3.1", "other", "meta-llama/Llama-3.1-8B"),
    ("allenai/OLMo-2-1124-7B-Instruct-GGUF", "olmo", "2", "instruct", "allenai/OLMo-2-1124-7B"),
    ("google/gemma-3-27b-it-qat-q4_0-gguf", "gemma", "3", "instruct", "google/gemma-3-27b-pt"),
    ("google/gemma-3-27b-pt", "gemma", "3", "base", None),
    ("meta-llama/Llama-3.3-70B-Instruct", "llama", "3.3", "instruct", "meta-llama/Llama-3.3-70B"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "llama", None, "reasoning", None),
    ("allenai/OLMo-7B", "olmo", "1", "base", None),
    ("allenai/OLMo-7B-Instruct-hf", "olmo", "1", "instruct", "allenai/OLMo-7B-hf"),
    ("allenai/OLMo-2-1124-7B", "olmo", "2", "base", None),
    ("allenai/OLMo-2-1124-7B-SFT", "olmo", "2", "instruct", "allenai/OLMo-2-1124-7B"),
    ("allenai/OLMo-2-1124-7B-DPO", "olmo", "2", "instruct", "allenai/OLMo-2-1124-7B"),
    ("allenai/OLMo-2-1124-7B-Instruct", "olmo", "2", "instruct", "allenai/OLMo-2-1124-7B"),
    ("allenai/OLMo-2-0425-1B-Instruct", "olmo", "2", "instruct", "allenai/OLMo-2-0425-1B"),
    ("allenai/Olmo-3-1025-7B", "olmo", "3", "base", None),
    ("allenai/Olmo-3-7B-Instruct", "olmo", "3", "instruct", "allenai/Olmo-3-7B"),
    ("allenai/Olmo-3-7B-Think", "olmo", "3", "reasoning", "allenai/Olmo-3-7B"),
    ("allenai/Olmo-3-7B-Think-SFT", "olmo", "3", "reasoning", "allenai/Olmo-3-7B"),
    ("allenai/Olmo-3.1-32B-Think", "olmo", "3.1", "reasoning", "allenai/Olmo-3.1-32B"),
    ("allenai/Olmo-3.1-32B-Instruct", "olmo", "3.1", "instruct", "allenai/Olmo-3.1-32B"),
    ("HuggingFaceTB/SmolLM-135M", "smollm", "1", "base", None),
    ("HuggingFaceTB/SmolLM2-135M", "smollm", "2", "base", None),
    (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "smollm",
        "2",
        "instruct",
        "HuggingFaceTB/SmolLM2-135M",
    ),
    (
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "smollm",
        "2",
        "instruct",
        "HuggingFaceTB/SmolLM2-1.7B",
    ),
    ("HuggingFaceTB/SmolLM3-3B-Base", "smollm", "3", "base", None),
    ("HuggingFaceTB/SmolLM3-3B", "smollm", "3", "reasoning", "HuggingFaceTB/SmolLM3-3B-Base"),
    ("google/gemma-2-9b", "gemma", "2", "base", None),
    ("google/gemma-2-9b-it", "gemma", "2", "instruct", "google/gemma-2-9b"),
    ("google/gemma-3-4b-it", "gemma", "3", "instruct", "google/gemma-3-4b-pt"),
    (
        "mistralai/Mistral-7B-Instruct-v0.2",
        "mistral",
        "0.2",
        "instruct",
        "mistralai/Mistral-7B-v0.2",
    ),
    ("microsoft/Phi-3.5-mini-instruct", "phi", "3.5", "instruct", "microsoft/Phi-3.5-mini"),
    ("EleutherAI/pythia-1b", "pythia", None, "base", None),
    ("someone/cognitive-model", "other", None, "base", None),
]


@pytest.mark.parametrize(
    "name,family,generation,post_training,base", NAMES, ids=[n[0] for n in NAMES]
)
def test_inference_from_hub_names(name, family, generation, post_training, base):
    row = describe(name)  # the whole path a hub id takes, offline
    assert (row["family"], row["generation"], row["post_training"]) == (
        family,
        generation,
        post_training,
    )
    assert row["inferred"]["base_model"]["candidate"] == base
    assert row["generation_order"] == (float(generation) if generation else None)
    assert row["n_params"] is None and "offline" in row["inferred"]["n_params"]["from"]
    # every inferred field says where it came from
    for key in ("family", "generation", "post_training", "n_params"):
        assert row["inferred"][key]["from"]


# (name, quantisation the registry records, adapter token)
QUANTISED = [
    ("Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4", "gptq-int4", None),
    ("Qwen/Qwen2.5-VL-7B-Instruct-AWQ", "awq", None),
    ("unsloth/Meta-Llama-3.1-70B-bnb-4bit", "bitsandbytes-4bit", None),
    ("Qwen/Qwen3-VL-8B-Instruct-FP8", "fp8", None),
    ("google/gemma-3-27b-it-qat-q4_0-gguf", "gguf-Q4_0", None),
    ("bartowski/Qwen2.5-7B-Instruct-Q4_K_M", "gguf-Q4_K_M", None),
    ("Qwen/Qwen2.5-7B-Instruct-GGUF", "gguf", None),
    ("marcelbinz/Llama-3.1-Centaur-70B-adapter", None, "adapter"),
    ("someone/Qwen2.5-7B-Instruct-lora", None, "lora"),
    ("Qwen/Qwen2.5-7B-Instruct", None, None),
]


@pytest.mark.parametrize("name,quant,adapter", QUANTISED, ids=[q[0] for q in QUANTISED])
def test_quantisation_and_adapter_names(name, quant, adapter):
    row = describe(name)
    assert row["quantization"] == quant
    assert row["inferred"]["quantization"]["from"]
    assert infer_from_name(name).adapter == adapter


def test_vision_inferred_from_architecture_and_paired_with_text_base(con, tmp_path):
    """A VL folder whose name says nothing is 'vision' by its config's model_type, and pairs
    with the registered base of its family, generation and size."""
    cfg = {"model_type": "qwen2_5_vl"}
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    _tiny_safetensors(folder / "model.safetensors")
    row = describe(str(folder))
    assert row["post_training"] == "vision"
    assert "qwen2_5_vl" in row["inferred"]["post_training"]["from"]
    # Natively multimodal families (Gemma 3) are not 'vision' by architecture alone.
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    assert describe(str(folder), name="gemma-3-4b-pt")["post_training"] == "base"
    # Pairing by name: the VL instruct model descends from the text base.
    registry.add_model(con, None, name="Qwen/Qwen2.5-VL-7B-Instruct", overrides={"family": "qwen"})
    base = registry.add_model(con, None, name="Qwen/Qwen2.5-7B", post_training="base")
    assert registry.get_model(con, "Qwen/Qwen2.5-VL-7B-Instruct")["base_model"] == base["name"]


def test_quantization_from_config_is_recorded(tmp_path):
    folder = tmp_path / "Qwen2.5-7B-Instruct-quantised"
    folder.mkdir()
    cfg = {"model_type": "qwen2", "quantization_config": {"quant_method": "gptq", "bits": 4}}
    (folder / "config.json").write_text(json.dumps(cfg))
    _tiny_safetensors(folder / "model.safetensors")
    row = describe(str(folder))
    assert row["quantization"] == "gptq-int4"
    assert row["inferred"]["quantization"]["from"] == "config.json quantization_config"


def _tiny_safetensors(path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((2, 3), np.float32)}, str(path))


def test_generation_order_sorts_generations():
    gens = [
        "Qwen/Qwen1.5-7B",
        "Qwen/Qwen2-7B",
        "Qwen/Qwen2.5-7B",
        "Qwen/Qwen3-8B-Base",
        "Qwen/Qwen3.5-9B-Base",
    ]
    orders = [describe(g)["generation_order"] for g in gens]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    llamas = [
        "meta-llama/Llama-2-7b-hf",
        "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Llama-3.1-8B",
        "meta-llama/Llama-3.2-1B",
        "meta-llama/Llama-3.3-70B-Instruct",
    ]
    orders = [describe(g)["generation_order"] for g in llamas]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)


def test_gguf_stem_is_read_without_its_quantisation():
    inf = infer_from_name("SmolLM2-135M-Instruct.Q4_1")
    assert (inf.family[0], inf.generation[0], inf.post_training[0]) == ("smollm", "2", "instruct")
    assert inf.base_candidate == "SmolLM2-135M"


# ------------------------------------------------------------------ parameter counts


def _torch_count(folder: Path) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


def test_tiny_model_params_equal_torch_numel(tiny_models, con):
    for arch, folder in tiny_models.items():
        row = registry.add_model(con, str(folder), post_training="base")
        assert row["n_params"] == _torch_count(folder), arch
        assert row["inferred"]["n_params"]["from"].startswith("safetensors headers")
        assert row["source"] == str(folder.resolve()) and row["name"] == folder.name
    # family and generation come from the folder name and config.json model_type
    by_name = {r["name"]: r for r in registry.list_models(con)}
    assert by_name["tiny-qwen3"]["family"] == "qwen" and by_name["tiny-qwen3"]["generation"] == "3"
    assert by_name["tiny-olmo2"]["family"] == "olmo" and by_name["tiny-olmo2"]["generation"] == "2"
    assert by_name["tiny-llama"]["family"] == "llama"


def _save_small(dest: Path, *, tie: bool, max_shard_size: str | None = None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(dest, **kwargs)
    return dest


def test_sharded_and_tied_checkpoints(tmp_path, con):
    sharded = _save_small(tmp_path / "sharded-llama", tie=False, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    row = registry.add_model(con, str(sharded))
    assert row["n_params"] == _torch_count(sharded)
    assert "files" in row["inferred"]["n_params"]["from"]

    # Some tied checkpoints store lm_head.weight beside the embeddings anyway:
    # torch counts the tied matrix once, so must we.
    from safetensors.torch import load_file, save_file

    tied = _save_small(tmp_path / "tied-llama", tie=True)
    weights = load_file(tied / "model.safetensors")
    assert "lm_head.weight" not in weights
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, tied / "model.safetensors", metadata={"format": "pt"})
    n, _ = count_safetensors_params(tied, json.loads((tied / "config.json").read_text()))
    assert n == _torch_count(tied)
    assert n == sum(w.numel() for w in weights.values()) - weights["lm_head.weight"].numel()


def _smollm2_reference_count() -> int:
    """SmolLM2-135M from its published architecture (llama; tied embeddings)."""
    vocab, d, layers, ffn, heads, kv_heads = 49152, 576, 30, 1536, 9, 3
    head = d // heads
    attn = d * d + 2 * d * (kv_heads * head) + d * d  # q, k, v, o
    mlp = 3 * d * ffn  # gate, up, down
    return vocab * d + layers * (attn + mlp + 2 * d) + d  # + 2 norms per layer, final norm


def test_gguf_file_registers_as_smollm2(smollm2_gguf, con):
    row = registry.add_model(con, str(smollm2_gguf))
    assert (row["family"], row["generation"], row["post_training"]) == ("smollm", "2", "instruct")
    assert row["source"] == str(smollm2_gguf.parent.resolve())
    assert row["gguf_file"] == smollm2_gguf.name
    assert row["n_params"] == _smollm2_reference_count()
    assert abs(row["n_params"] - 134.5e6) < 0.1e6
    # the same file again is the same model; by path it resolves to it
    assert registry.add_model(con, str(smollm2_gguf))["model_id"] == row["model_id"]
    assert registry.resolve_model(con, str(smollm2_gguf))["name"] == row["name"]
    assert scalar(con, "SELECT count(*) FROM models") == 1


# ------------------------------------------------------------------ bases, idempotency, errors


def test_base_linked_when_registered_in_either_order(con):
    post = registry.add_model(con, "Qwen/Qwen2.5-7B-Instruct")
    assert post["base_model"] is None  # base not registered: not stored
    registry.add_model(con, "Qwen/Qwen2.5-7B")
    assert registry.get_model(con, "Qwen/Qwen2.5-7B-Instruct")["base_model"] == "Qwen/Qwen2.5-7B"
    registry.add_model(con, "Qwen/Qwen3-8B-Base")
    q3 = registry.add_model(con, "Qwen/Qwen3-8B")
    assert q3["post_training"] == "reasoning" and q3["base_model"] == "Qwen/Qwen3-8B-Base"


def test_base_by_family_generation_and_size_when_names_differ(con):
    registry.add_model(con, "allenai/Olmo-3-1025-7B")
    think = registry.add_model(con, "allenai/Olmo-3-7B-Think")
    assert think["base_model"] == "allenai/Olmo-3-1025-7B"
    assert "only registered olmo 3 7b base" in think["inferred"]["base_model"]["from"]
    # removing the base undoes the inferred link; re-adding relinks
    registry.remove_model(con, "allenai/Olmo-3-1025-7B")
    assert registry.get_model(con, "allenai/Olmo-3-7B-Think")["base_model"] is None
    registry.add_model(con, "allenai/Olmo-3-1025-7B")
    assert (
        registry.get_model(con, "allenai/Olmo-3-7B-Think")["base_model"] == "allenai/Olmo-3-1025-7B"
    )


def test_explicit_base_is_kept_even_if_unregistered(con):
    row = registry.add_model(con, "Qwen/Qwen3-8B", base="Qwen/Qwen3-8B-Base")
    assert row["base_model"] == "Qwen/Qwen3-8B-Base"
    assert row["inferred"]["base_model"]["from"] == "user"


def test_add_is_idempotent_and_name_clash_is_refused(con, tmp_path):
    a = registry.add_model(con, "Qwen/Qwen2.5-7B")
    assert registry.add_model(con, "Qwen/Qwen2.5-7B")["model_id"] == a["model_id"]
    # re-adding with an explicit type updates only that field
    b = registry.add_model(con, "Qwen/Qwen2.5-7B", post_training="other")
    assert b["post_training"] == "other" and b["model_id"] == a["model_id"]
    with pytest.raises(WarehouseError, match="already registered with source 'Qwen/Qwen2.5-7B'"):
        registry.add_model(con, "Qwen/Qwen3-8B", name="Qwen/Qwen2.5-7B")
    assert scalar(con, "SELECT count(*) FROM models") == 1


def test_bad_sources_are_refused_with_the_reason(con, tmp_path):
    with pytest.raises(WarehouseError, match="no such file or folder"):
        registry.add_model(con, str(tmp_path / "missing-model"))
    pickled = tmp_path / "old-model"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(WarehouseError, match="never loads pickle"):
        registry.add_model(con, str(pickled))
    notgguf = tmp_path / "weights.txt"
    notgguf.write_text("x")
    with pytest.raises(WarehouseError, match="not .gguf"):
        registry.add_model(con, str(notgguf))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(WarehouseError, match="not a readable GGUF"):
        registry.add_model(con, str(broken))
    with pytest.raises(WarehouseError, match="not registered.*psystats models add"):
        registry.get_model(con, "nope")
    assert scalar(con, "SELECT count(*) FROM models") == 0


def test_resolve_model(con, tmp_path):
    row = registry.resolve_model(con, "Qwen/Qwen2.5-7B")  # a hub id: registered
    assert registry.resolve_model(con, "Qwen/Qwen2.5-7B")["model_id"] == row["model_id"]
    with pytest.raises(WarehouseError, match="'qwen25' is not registered"):
        registry.resolve_model(con, "qwen25")  # a bare name: a typo
    assert scalar(con, "SELECT count(*) FROM models") == 1


def test_external_scorer_needs_a_name(con):
    with pytest.raises(WarehouseError, match="needs a name"):
        registry.add_model(con, None)
    row = registry.add_model(con, None, name="my-cognitive-model")
    assert row["source"] is None and row["post_training"] == "other" and row["n_params"] is None


# ------------------------------------------------------------------ overrides


def test_set_overrides_and_records_user(con):
    registry.add_model(con, "someone/mystery-7b")
    row = registry.set_fields(
        con,
        "someone/mystery-7b",
        {"family": "llama", "generation": "3.1", "type": "instruct", "n_params": "8030261248"},
    )
    assert (row["family"], row["generation"], row["generation_order"]) == ("llama", "3.1", 3.1)
    assert row["post_training"] == "instruct" and row["n_params"] == 8030261248
    assert row["inferred"]["family"] == {"value": "llama", "from": "user"}
    with pytest.raises(WarehouseError, match="post_training: 'chatty' is not one of"):
        registry.set_fields(con, "someone/mystery-7b", {"type": "chatty"})
    with pytest.raises(WarehouseError, match="unknown field 'colour'"):
        registry.set_fields(con, "someone/mystery-7b", {"colour": "blue"})
    with pytest.raises(WarehouseError, match="n_params: '7.5' is not a valid int"):
        registry.set_fields(con, "someone/mystery-7b", {"n_params": "7.5"})
    assert registry.get_model(con, "someone/mystery-7b")["post_training"] == "instruct"


def test_load_toml_and_yaml(con, tmp_path):
    registry.add_model(con, "allenai/Olmo-3-7B-Think")
    toml = tmp_path / "models.toml"
    toml.write_text(
        '[[models]]\nsource = "allenai/Olmo-3-1025-7B"\n\n'
        '[[models]]\nname = "allenai/Olmo-3-7B-Think"\nbase = "allenai/Olmo-3-1025-7B"\n'
        "n_params = 7298011136\n\n"
        '[[models]]\nname = "my-cognitive-model"\ntype = "other"\nfamily = "other"\n'
    )
    rows = registry_file.load_file(con, toml)
    assert [r["name"] for r in rows] == [
        "allenai/Olmo-3-1025-7B",
        "allenai/Olmo-3-7B-Think",
        "my-cognitive-model",
    ]
    think = registry.get_model(con, "allenai/Olmo-3-7B-Think")
    assert think["base_model"] == "allenai/Olmo-3-1025-7B" and think["n_params"] == 7298011136
    assert think["inferred"]["base_model"]["from"] == "user"
    assert registry.get_model(con, "my-cognitive-model")["source"] is None

    yml = tmp_path / "models.yaml"
    yml.write_text(
        "models:\n  - name: my-cognitive-model\n    generation: '2'\n"
        "  - source: Qwen/Qwen2.5-7B\n    type: base\n"
    )
    registry_file.load_file(con, yml)
    assert registry.get_model(con, "my-cognitive-model")["generation_order"] == 2.0
    assert registry.get_model(con, "Qwen/Qwen2.5-7B")["post_training"] == "base"


def test_load_with_a_bad_entry_changes_nothing(con, tmp_path):
    before = scalar(con, "SELECT count(*) FROM models")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- source: Qwen/Qwen2.5-7B\n- name: x\n  type: chatty\n")
    with pytest.raises(
        WarehouseError, match=r"bad.yaml: models\[2\] \(x\): post_training: 'chatty'"
    ):
        registry_file.load_file(con, bad)
    assert scalar(con, "SELECT count(*) FROM models") == before
    notlist = tmp_path / "bad.toml"
    notlist.write_text('name = "x"\n')
    with pytest.raises(WarehouseError, match="expected a list of models"):
        registry_file.load_file(con, notlist)


# ------------------------------------------------------------------ CLI


def test_cli_add_list_set_remove(db_path, smollm2_gguf, tmp_path, monkeypatch):
    runner = CliRunner()
    db = ["--db", str(db_path)]
    r = runner.invoke(main, ["models", "add", str(smollm2_gguf), *db])
    assert r.exit_code == 0, r.output
    assert "smollm" in r.output and "134515008 (135M)" in r.output
    r = runner.invoke(
        main,
        [
            "models",
            "add",
            "Qwen/Qwen3-8B",
            "--base",
            "Qwen/Qwen3-8B-Base",
            "--set",
            "n_params=8190735360",
            *db,
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["models", "list", "--format", "json", *db])
    rows = {m["name"]: m for m in json.loads(r.output)}
    assert rows["Qwen/Qwen3-8B"]["base_model"] == "Qwen/Qwen3-8B-Base"
    assert rows["Qwen/Qwen3-8B"]["n_params"] == 8190735360
    assert rows["SmolLM2-135M-Instruct.Q4_1"]["gguf_file"] == smollm2_gguf.name
    r = runner.invoke(main, ["models", "list", *db])
    assert "8.19B" in r.output and "135M" in r.output
    r = runner.invoke(main, ["models", "set", "Qwen/Qwen3-8B", "type=instruct", *db])
    assert r.exit_code == 0 and "post_training: 'instruct' <- user" in r.output
    r = runner.invoke(main, ["models", "set", "Qwen/Qwen3-8B", "typo", *db])
    assert r.exit_code != 0 and "expected FIELD=VALUE" in r.output
    r = runner.invoke(main, ["models", "set", "nope", "type=base", *db])
    assert r.exit_code == 1 and "Error: model 'nope' is not registered" in r.output
    r = runner.invoke(main, ["models", "remove", "Qwen/Qwen3-8B", *db])
    assert r.exit_code == 0 and "removed Qwen/Qwen3-8B" in r.output


def test_remove_refuses_while_scores_exist(warehouse_copy, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from psystats.scoring.importer import import_scores

    con = warehouse_db.open(warehouse_copy, "write", create=True)
    ids = [
        r for (r,) in con.execute("SELECT response_id FROM responses ORDER BY 1 LIMIT 5").fetchall()
    ]
    pq.write_table(pa.table({"response_id": ids, "nll": [1.0] * 5}), tmp_path / "s.parquet")
    import_scores(con, tmp_path / "s.parquet", model="ext")
    with pytest.raises(WarehouseError, match="has 1 score run.*5 scores.*--force"):
        registry.remove_model(con, "ext")
    assert scalar(con, "SELECT count(*) FROM scores") == 5
    assert registry.remove_model(con, "ext", force=True) == {"runs": 1, "scores": 5}
    assert scalar(con, "SELECT count(*) FROM scores") == 0
    assert scalar(con, "SELECT count(*) FROM score_runs") == 0
    assert scalar(con, "SELECT count(*) FROM models") == 0


def test_cuda_only_quantised_checkpoint_is_recorded_and_refused_on_cpu(con, tiny_models, tmp_path):
    """A bitsandbytes checkpoint: registered with its quantisation; on a CPU-only machine
    scoring stops in one line that says what works instead."""
    import shutil

    import torch

    from psystats.scoring.loader import load_model
    from psystats.scoring.model_files import ModelLoadError

    folder = shutil.copytree(tiny_models["llama"], tmp_path / "tiny-llama-bnb")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (folder / "config.json").write_text(json.dumps(cfg))
    row = registry.add_model(con, str(folder))
    assert row["quantization"] == "bitsandbytes-4bit"
    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without CUDA")
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        load_model(row)


# ------------------------------------------------------------------ release dates

RELEASES = [
    ("Qwen/Qwen2.5-7B", "2024-09-19"),
    ("Qwen/Qwen2.5-7B-Instruct", "2024-09-19"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "2025-01-28"),  # later than the rest of 2.5: a name rule
    ("Qwen/QwQ-32B", "2025-03-06"),
    ("Qwen/Qwen3-8B", "2025-04-29"),
    ("Qwen/Qwen3-4B-Instruct-2507", "2025-08-01"),  # the 4B "2507" came in August
    ("meta-llama/Meta-Llama-3-8B", "2024-04-18"),
    ("meta-llama/Llama-3.1-8B", "2024-07-23"),
    ("meta-llama/Llama-3.2-11B-Vision-Instruct", "2024-09-25"),
    ("meta-llama/Llama-3.3-70B-Instruct", "2024-12-06"),
    ("meta-llama/CodeLlama-7b-hf", "2023-08-24"),
    ("allenai/OLMo-7B", "2024-02-01"),
    ("allenai/OLMo-2-1124-7B", "2024-11-26"),
    ("allenai/OLMo-2-0325-32B", "2025-03-13"),
    ("someone/mystery-7b", None),
]


@pytest.mark.parametrize("name,released", RELEASES)
def test_release_dates_of_known_generations(name, released):
    row = describe(name)
    got = row["release_date"]
    assert (got.isoformat() if got else None) == released
    why = row["inferred"]["release_date"]["from"]
    assert ("registry table" in why) == (released is not None)
    if released is None:
        assert "psystats models set NAME release_date=" in why


def test_release_date_set_by_user_and_refilled_from_the_table(con, tmp_path):
    from datetime import date

    row = registry.add_model(con, "Qwen/Qwen2.5-7B")
    assert row["release_date"] == date(2024, 9, 19)
    # YYYY-MM is month precision: the first of the month.
    row = registry.set_fields(con, "Qwen/Qwen2.5-7B", {"release_date": "2024-10"})
    assert row["release_date"] == date(2024, 10, 1)
    assert row["inferred"]["release_date"] == {"value": "2024-10-01", "from": "user"}
    # A new generation keeps the user's date ...
    row = registry.set_fields(con, "Qwen/Qwen2.5-7B", {"generation": "3"})
    assert row["release_date"] == date(2024, 10, 1)
    # ... while a table date follows the generation.
    registry.add_model(con, "Qwen/Qwen2-7B")
    row = registry.set_fields(con, "Qwen/Qwen2-7B", {"generation": "3"})
    assert row["release_date"] == date(2025, 4, 29)
    assert "qwen 3 first released 2025-04" in row["inferred"]["release_date"]["from"]
    for bad in ("2024-13", "September 2024", "2024"):
        with pytest.raises(WarehouseError, match=r"release_date: '.*' is not a date"):
            registry.set_fields(con, "Qwen/Qwen2-7B", {"release_date": bad})
    # Cleared by the user: stays NULL even though the table knows the generation.
    registry.set_fields(con, "Qwen/Qwen2-7B", {"release_date": "null"})
    row = registry.set_fields(con, "Qwen/Qwen2-7B", {"n_params": "7615616512"})
    assert row["release_date"] is None
    # A model registered before the column existed gets its date at the next write.
    con.execute(
        "UPDATE models SET release_date = NULL, "
        "inferred = json_object('family', json_object('value', 'qwen')) "
        "WHERE name = 'Qwen/Qwen2.5-7B'"
    )
    registry.set_fields(con, "Qwen/Qwen2-7B", {"n_params": "7615616513"})
    row = registry.get_model(con, "Qwen/Qwen2.5-7B")
    assert row["release_date"] == date(2025, 4, 29)  # its generation is now 3


def test_release_date_in_a_models_file_and_on_the_command_line(db_path, tmp_path):
    from datetime import date

    toml = tmp_path / "models.toml"
    toml.write_text(
        '[[models]]\nname = "mine"\ntype = "instruct"\nrelease_date = 2025-02-14\n\n'
        '[[models]]\nname = "theirs"\ntype = "base"\nrelease_date = "2023-06"\n'
    )
    runner = CliRunner()
    db = ["--db", str(db_path)]
    r = runner.invoke(main, ["models", "load", str(toml), *db])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        main, ["models", "add", "meta-llama/Llama-3.1-8B", "--release-date", "2024-07", *db]
    )
    assert r.exit_code == 0, r.output
    assert "release_date: '2024-07-01' <- user" in r.output
    r = runner.invoke(main, ["models", "list", "--format", "json", *db])
    rows = {m["name"]: m["release_date"] for m in json.loads(r.output)}
    assert rows == {
        "mine": "2025-02-14",
        "theirs": "2023-06-01",
        "meta-llama/Llama-3.1-8B": "2024-07-01",
    }
    r = runner.invoke(main, ["models", "set", "mine", "release_date=soon", *db])
    assert r.exit_code == 1 and "Error: release_date: 'soon' is not a date" in r.output
    con = warehouse_db.open(db_path)
    assert registry.get_model(con, "mine")["release_date"] == date(2025, 2, 14)
    con.close()
