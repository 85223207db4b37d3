"""Release dates: every entry of the table pinned, reached through the registry's own inference.

The expected months below are written out here, not read from the table, so a
change of a date in ``scoring/release_dates.py`` fails until it is made here
too (with its source).  Each example goes through ``model_facts.describe``,
the path ``psystats models add`` takes, offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from psystats.scoring import release_dates
from psystats.scoring.model_facts import describe

pytestmark = pytest.mark.usefixtures("offline_hub")

# (a model of the release, the month its vendor announced it)
PINNED = [
    ("Qwen/Qwen-7B", "2023-08"),
    ("Qwen/Qwen1.5-7B", "2024-02"),
    ("Qwen/Qwen2-7B", "2024-06"),
    ("Qwen/Qwen2.5-7B", "2024-09"),
    ("Qwen/Qwen3-8B", "2025-04"),
    ("Qwen/Qwen3.5-397B-A17B", "2026-02"),
    ("huggyllama/llama-7b", "2023-02"),
    ("meta-llama/Llama-2-7b-hf", "2023-07"),
    ("meta-llama/Meta-Llama-3-8B", "2024-04"),
    ("meta-llama/Llama-3.1-8B", "2024-07"),
    ("meta-llama/Llama-3.2-3B", "2024-09"),
    ("meta-llama/Llama-3.3-70B-Instruct", "2024-12"),
    ("meta-llama/Llama-4-Scout-17B-16E", "2025-04"),
    ("allenai/OLMo-7B", "2024-02"),
    ("allenai/OLMo-1.7-7B", "2024-04"),
    ("allenai/OLMo-2-1124-7B", "2024-11"),
    ("allenai/Olmo-3-1025-7B", "2025-11"),
    ("allenai/Olmo-3.1-32B-Think", "2025-12"),
    ("HuggingFaceTB/SmolLM-135M", "2024-07"),
    ("HuggingFaceTB/SmolLM2-135M", "2024-11"),
    ("HuggingFaceTB/SmolLM3-3B-Base", "2025-07"),
    ("google/gemma-7b", "2024-02"),
    ("google/gemma-1.1-7b-it", "2024-04"),
    ("google/gemma-2-9b", "2024-06"),
    ("google/gemma-3-4b-pt", "2025-03"),
    ("mistralai/Mistral-7B-v0.1", "2023-09"),
    ("mistralai/Mistral-7B-Instruct-v0.2", "2023-12"),
    ("mistralai/Mistral-7B-v0.3", "2024-05"),
    ("microsoft/phi-1", "2023-06"),
    ("microsoft/phi-1_5", "2023-09"),
    ("microsoft/phi-2", "2023-12"),
    ("microsoft/Phi-3-mini-4k-instruct", "2024-04"),
    ("microsoft/Phi-3.5-mini-instruct", "2024-08"),
    ("microsoft/phi-4", "2024-12"),
    ("openai-community/gpt2", "2019-02"),
    ("tiiuae/Falcon3-7B-Base", "2024-12"),
    ("deepseek-ai/DeepSeek-V2-Lite", "2024-05"),
    ("deepseek-ai/DeepSeek-V2.5", "2024-09"),
    ("deepseek-ai/DeepSeek-V3-Base", "2024-12"),
    ("deepseek-ai/DeepSeek-V3.1-Base", "2025-08"),
    ("Qwen/Qwen-14B", "2023-09"),
    ("Qwen/Qwen-72B", "2023-11"),
    ("Qwen/Qwen1.5-MoE-A2.7B", "2024-03"),
    ("Qwen/Qwen1.5-32B", "2024-04"),
    ("Qwen/Qwen1.5-110B", "2024-04"),
    ("Qwen/CodeQwen1.5-7B-Chat", "2024-04"),
    ("Qwen/Qwen2-Math-7B-Instruct", "2024-08"),
    ("Qwen/Qwen2-Audio-7B-Instruct", "2024-08"),
    ("Qwen/Qwen2-VL-72B-Instruct", "2024-09"),
    ("Qwen/Qwen2-VL-7B-Instruct", "2024-08"),
    ("Qwen/Qwen2.5-Coder-32B-Instruct", "2024-11"),
    ("Qwen/Qwen2.5-VL-32B-Instruct", "2025-03"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "2025-01"),
    ("Qwen/Qwen2.5-7B-Instruct-1M", "2025-01"),
    ("Qwen/Qwen2.5-Omni-7B", "2025-03"),
    ("Qwen/QwQ-32B-Preview", "2024-11"),
    ("Qwen/QwQ-32B", "2025-03"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "2025-01"),
    ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "2025-07"),
    ("Qwen/Qwen3-VL-235B-A22B-Instruct", "2025-09"),
    ("Qwen/Qwen3-VL-8B-Instruct", "2025-10"),
    ("Qwen/Qwen3-Next-80B-A3B-Instruct", "2025-09"),
    ("Qwen/Qwen3-Omni-30B-A3B-Instruct", "2025-09"),
    ("Qwen/Qwen3-4B-Instruct-2507", "2025-08"),
    ("Qwen/Qwen3-30B-A3B-Instruct-2507", "2025-07"),
    ("meta-llama/CodeLlama-70b-hf", "2024-01"),
    ("meta-llama/CodeLlama-7b-hf", "2023-08"),
    ("marcelbinz/Llama-3.1-Centaur-70B-adapter", "2024-10"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "2025-01"),
    ("allenai/OLMo-7B-0424-hf", "2024-04"),
    ("allenai/OLMo-7B-0724-hf", "2024-07"),
    ("allenai/OLMo-2-0325-32B", "2025-03"),
    ("allenai/OLMo-2-0425-1B", "2025-05"),
    ("allenai/OLMoE-1B-7B-0125", "2025-01"),
    ("allenai/OLMoE-1B-7B-0924", "2024-09"),
    ("google/gemma-2-2b", "2024-07"),
    ("google/gemma-3-270m", "2025-08"),
    ("google/gemma-3n-E4B", "2025-06"),
    ("google/codegemma-7b", "2024-04"),
    ("google/paligemma2-3b-pt-224", "2024-12"),
    ("google/paligemma-3b-pt-224", "2024-05"),
    ("mistralai/Mixtral-8x22B-v0.1", "2024-04"),
    ("mistralai/Mixtral-8x7B-v0.1", "2023-12"),
    ("mistral-community/Mistral-7B-v0.2", "2024-03"),
    ("mistralai/Mistral-Nemo-Base-2407", "2024-07"),
    ("microsoft/Phi-3-medium-4k-instruct", "2024-05"),
    ("microsoft/Phi-4-mini-flash-reasoning", "2025-07"),
    ("microsoft/Phi-4-reasoning", "2025-04"),
    ("microsoft/Phi-4-mini-instruct", "2025-02"),
    ("openai-community/gpt2-medium", "2019-05"),
    ("openai-community/gpt2-large", "2019-08"),
    ("openai-community/gpt2-xl", "2019-11"),
    ("tiiuae/falcon-180B", "2023-09"),
    ("tiiuae/falcon-11B", "2024-05"),
    ("tiiuae/falcon-7b", "2023-05"),
    ("deepseek-ai/DeepSeek-R1-0528", "2025-05"),
    ("deepseek-ai/DeepSeek-R1", "2025-01"),
    ("deepseek-ai/DeepSeek-V3-0324", "2025-03"),
    ("deepseek-ai/DeepSeek-Coder-V2-Lite-Base", "2024-06"),
    ("deepseek-ai/deepseek-coder-6.7b-base", "2023-11"),
    ("deepseek-ai/deepseek-llm-7b-base", "2023-11"),
    ("EleutherAI/pythia-160m", "2023-02"),
]


@pytest.mark.parametrize("example,month", PINNED)
def test_every_release_date_is_pinned(example, month):
    row = describe(example)
    assert row["release_date"] is not None, example
    assert row["release_date"].isoformat()[:7] == month
    assert "registry table" in row["inferred"]["release_date"]["from"]


def test_the_pinned_list_covers_the_whole_table():
    entries = release_dates.GENERATIONS + release_dates.VARIANTS
    assert sorted(r.example for r in entries) == sorted(e for e, _ in PINNED)
    for r in entries:
        assert r.source and r.what
        release_dates.parse_date(r.day)  # a valid YYYY-MM or YYYY-MM-DD


# The corrections of issue 19: name inference had given these their generation's date.
CORRECTED = [
    ("microsoft/Phi-4-mini-instruct", "2025-02"),  # was 2024-12 (Phi-4)
    ("microsoft/Phi-4-multimodal-instruct", "2025-02"),
    ("microsoft/Phi-4-reasoning", "2025-04"),
    ("microsoft/Phi-4-mini-reasoning", "2025-04"),
    ("allenai/OLMo-7B-0424-hf", "2024-04"),  # was 2024-02 (OLMo 1)
    ("allenai/OLMo-7B-0724-hf", "2024-07"),
    ("allenai/OLMo-1B-0724-hf", "2024-07"),
    ("marcelbinz/Llama-3.1-Centaur-70B", "2024-10"),  # was 2024-07 (Llama 3.1)
    ("Qwen/Qwen2-Audio-7B", "2024-08"),  # was 2024-06 (Qwen2)
    ("microsoft/Phi-3-medium-128k-instruct", "2024-05"),  # was 2024-04 (Phi-3-mini)
    ("microsoft/Phi-3-small-8k-instruct", "2024-05"),
    ("microsoft/Phi-3-vision-128k-instruct", "2024-05"),
    ("microsoft/phi-4", "2024-12"),  # the generation itself keeps its date
    ("microsoft/Phi-3-mini-4k-instruct", "2024-04"),
]


@pytest.mark.parametrize("name,month", CORRECTED)
def test_variants_released_later_carry_their_own_date(name, month):
    assert describe(name)["release_date"].isoformat()[:7] == month


def test_an_adapter_carries_its_own_release_when_the_table_has_one(db_path, tiny_models, tmp_path):
    """Centaur is a LoRA on Llama 3.1 70B, released three months after it: the adapter's
    own date wins; any other adapter carries its base's date."""
    import shutil

    from psystats.scoring.adapter_models import add_adapter
    from psystats.scoring.registry import add_model, set_fields
    from psystats.scoring.tiny import build_tiny_lora
    from psystats.warehouse import db as warehouse_db

    lora = build_tiny_lora(tmp_path / "lora", tiny_models["llama"])
    centaur = shutil.copytree(lora, tmp_path / "Llama-3.1-Centaur-70B-adapter")
    con = warehouse_db.open(db_path, "write", create=True)
    try:
        add_model(con, str(tiny_models["llama"]), name="base")
        set_fields(con, "base", {"family": "llama", "generation": "3.1"})
        row = add_adapter(con, "base", str(centaur))
        assert row["release_date"].isoformat() == "2024-10-26"
        assert "Centaur" in row["inferred"]["release_date"]["from"]
        plain = add_adapter(con, "base", str(lora), name="plain-lora")
        assert plain["release_date"].isoformat() == "2024-07-23"  # Llama 3.1's
        assert plain["inferred"]["release_date"]["from"] == "the base's"
    finally:
        con.close()


def test_docs_show_the_table():
    docs = Path(__file__).resolve().parents[1] / "docs" / "models.md"
    assert release_dates.markdown_table() in docs.read_text(encoding="utf-8"), (
        "docs/models.md is out of date: paste release_dates.markdown_table() "
        "into its 'Release dates' section"
    )
