"""Public release dates of the model generations (and later variants) the registry knows.

``fit effects --generation-scale date`` puts generations on a time axis, so
the registry fills ``models.release_date`` for models it recognises.  Every
date is the vendor's own announcement (blog post, model card, technical
report) of that release; each entry names its source and says whether it was
checked against a public copy of that page on 2026-12-06 (``checked``) or
written down from the announcement without a second look (``checked=False``).

**Month precision** is what is claimed.  An entry gives the announcement's
day where the announcement is dated, else ``YYYY-MM`` (stored as the 1st).
A variant released later than its generation (a size, a vision or reasoning
model, a dated re-release) has an entry of its own, and the variant's date
wins over its generation's.  ``psystats models set NAME release_date=YYYY-MM-DD``
corrects or adds any date.  docs/models.md shows this table
(:func:`markdown_table`; a test keeps the two equal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class Release:
    """One release: a generation's first models, or a later variant of a family."""

    family: str
    day: str  # YYYY-MM-DD, or YYYY-MM where the announcement gives the month only
    what: str  # the release as its announcement names it
    source: str  # URL or title of the vendor's announcement
    example: str  # a model name of this release (tests and docs)
    checked: bool  # checked against a public copy of the source on 2026-12-06
    generation: str | None = None  # a generation's first release ...
    pattern: str | None = None  # ... or a variant: a regex on the lowercase repository name


def _gen(
    family: str, generation: str, day: str, what: str, source: str, example: str, checked=False
) -> Release:
    return Release(family, day, what, source, example, checked, generation=generation)


def _var(
    family: str, pattern: str, day: str, what: str, source: str, example: str, checked=False
) -> Release:
    return Release(family, day, what, source, example, checked, pattern=pattern)


QWEN_BLOG = "https://qwenlm.github.io/blog/"
# (family, generation) -> the generation's first public release.
GENERATIONS: tuple[Release, ...] = (
    _gen("qwen", "1", "2023-08-03", "Qwen-7B", QWEN_BLOG + "qwen/", "Qwen/Qwen-7B", True),
    _gen("qwen", "1.5", "2024-02-05", "Qwen1.5", QWEN_BLOG + "qwen1.5/", "Qwen/Qwen1.5-7B", True),
    _gen("qwen", "2", "2024-06-07", "Qwen2", QWEN_BLOG + "qwen2/", "Qwen/Qwen2-7B"),
    _gen("qwen", "2.5", "2024-09-19", "Qwen2.5", QWEN_BLOG + "qwen2.5/", "Qwen/Qwen2.5-7B"),
    _gen("qwen", "3", "2025-04-29", "Qwen3", QWEN_BLOG + "qwen3/", "Qwen/Qwen3-8B"),
    _gen(
        "qwen",
        "3.5",
        "2026-02-16",
        "Qwen3.5 (Qwen3.5-397B-A17B open weights)",
        "Qwen blog 'Qwen3.5: Towards Native Multimodal Agents'",
        "Qwen/Qwen3.5-397B-A17B",
        True,
    ),
    _gen(
        "llama",
        "1",
        "2023-02-24",
        "LLaMA",
        "https://ai.meta.com/blog/large-language-model-llama-meta-ai/",
        "huggyllama/llama-7b",
    ),
    _gen(
        "llama",
        "2",
        "2023-07-18",
        "Llama 2",
        "https://ai.meta.com/blog/llama-2/",
        "meta-llama/Llama-2-7b-hf",
    ),
    _gen(
        "llama",
        "3",
        "2024-04-18",
        "Meta Llama 3",
        "https://ai.meta.com/blog/meta-llama-3/",
        "meta-llama/Meta-Llama-3-8B",
    ),
    _gen(
        "llama",
        "3.1",
        "2024-07-23",
        "Llama 3.1",
        "https://ai.meta.com/blog/meta-llama-3-1/",
        "meta-llama/Llama-3.1-8B",
    ),
    _gen(
        "llama",
        "3.2",
        "2024-09-25",
        "Llama 3.2 (1B/3B text, 11B/90B vision)",
        "https://ai.meta.com/blog/llama-3-2-connect-2024-vision-edge-mobile-devices/",
        "meta-llama/Llama-3.2-3B",
    ),
    _gen(
        "llama",
        "3.3",
        "2024-12-06",
        "Llama 3.3 70B",
        "Llama-3.3-70B-Instruct model card (Meta)",
        "meta-llama/Llama-3.3-70B-Instruct",
    ),
    _gen(
        "llama",
        "4",
        "2025-04-05",
        "Llama 4 Scout and Maverick",
        "https://ai.meta.com/blog/llama-4-multimodal-intelligence/",
        "meta-llama/Llama-4-Scout-17B-16E",
        True,
    ),
    _gen(
        "olmo",
        "1",
        "2024-02-01",
        "OLMo 1B/7B",
        "https://allenai.org/blog/olmo-open-language-model-87ccfc95f580",
        "allenai/OLMo-7B",
        True,
    ),
    _gen(
        "olmo",
        "1.7",
        "2024-04-17",
        "OLMo 1.7-7B (OLMo 7B April 2024)",
        "https://huggingface.co/allenai/OLMo-1.7-7B (model card)",
        "allenai/OLMo-1.7-7B",
        True,
    ),
    _gen(
        "olmo",
        "2",
        "2024-11-26",
        "OLMo 2 7B/13B",
        "https://allenai.org/blog/olmo2",
        "allenai/OLMo-2-1124-7B",
    ),
    _gen(
        "olmo",
        "3",
        "2025-11-20",
        "Olmo 3 7B/32B",
        "https://allenai.org/blog/olmo3",
        "allenai/Olmo-3-1025-7B",
        True,
    ),
    _gen(
        "olmo",
        "3.1",
        "2025-12",
        "Olmo 3.1 Think/Instruct 32B",
        "Olmo 3 technical report (arXiv:2512.13961)",
        "allenai/Olmo-3.1-32B-Think",
        True,
    ),
    _gen(
        "smollm",
        "1",
        "2024-07-16",
        "SmolLM",
        "https://huggingface.co/blog/smollm",
        "HuggingFaceTB/SmolLM-135M",
    ),
    _gen(
        "smollm",
        "2",
        "2024-11",
        "SmolLM2",
        "SmolLM2 model cards (Hugging Face, November 2024)",
        "HuggingFaceTB/SmolLM2-135M",
        True,
    ),
    _gen(
        "smollm",
        "3",
        "2025-07-08",
        "SmolLM3",
        "https://huggingface.co/blog/smollm3",
        "HuggingFaceTB/SmolLM3-3B-Base",
        True,
    ),
    _gen(
        "gemma",
        "1",
        "2024-02-21",
        "Gemma",
        "https://blog.google/technology/developers/gemma-open-models/",
        "google/gemma-7b",
    ),
    _gen(
        "gemma",
        "1.1",
        "2024-04",
        "Gemma 1.1",
        "gemma-1.1-7b-it model card (Google)",
        "google/gemma-1.1-7b-it",
    ),
    _gen(
        "gemma",
        "2",
        "2024-06-27",
        "Gemma 2 9B/27B",
        "https://blog.google/technology/developers/google-gemma-2/",
        "google/gemma-2-9b",
    ),
    _gen(
        "gemma",
        "3",
        "2025-03-12",
        "Gemma 3",
        "https://blog.google/technology/developers/gemma-3/",
        "google/gemma-3-4b-pt",
    ),
    _gen(
        "mistral",
        "0.1",
        "2023-09-27",
        "Mistral 7B",
        "https://mistral.ai/news/announcing-mistral-7b",
        "mistralai/Mistral-7B-v0.1",
    ),
    _gen(
        "mistral",
        "0.2",
        "2023-12-11",
        "Mistral-7B-Instruct-v0.2",
        "https://mistral.ai/news/la-plateforme",
        "mistralai/Mistral-7B-Instruct-v0.2",
    ),
    _gen(
        "mistral",
        "0.3",
        "2024-05-22",
        "Mistral-7B-v0.3",
        "Mistral-7B-v0.3 model card (Mistral AI)",
        "mistralai/Mistral-7B-v0.3",
    ),
    _gen(
        "phi",
        "1",
        "2023-06-20",
        "phi-1",
        "Textbooks Are All You Need (arXiv:2306.11644)",
        "microsoft/phi-1",
    ),
    _gen(
        "phi",
        "1.5",
        "2023-09-11",
        "phi-1.5",
        "Textbooks Are All You Need II (arXiv:2309.05463)",
        "microsoft/phi-1_5",
    ),
    _gen(
        "phi",
        "2",
        "2023-12-12",
        "Phi-2",
        "Microsoft Research blog 'Phi-2: The surprising power of small language models'",
        "microsoft/phi-2",
    ),
    _gen(
        "phi",
        "3",
        "2024-04-23",
        "Phi-3-mini",
        "Azure blog 'Introducing Phi-3' (Phi-3 technical report, arXiv:2404.14219)",
        "microsoft/Phi-3-mini-4k-instruct",
        True,
    ),
    _gen(
        "phi",
        "3.5",
        "2024-08-20",
        "Phi-3.5 mini/MoE/vision",
        "Phi-3.5 model cards (Microsoft, August 2024)",
        "microsoft/Phi-3.5-mini-instruct",
        True,
    ),
    _gen(
        "phi",
        "4",
        "2024-12-12",
        "Phi-4 (14B)",
        "Microsoft Tech Community 'Introducing Phi-4'",
        "microsoft/phi-4",
        True,
    ),
    _gen(
        "gpt2",
        "2",
        "2019-02-14",
        "GPT-2 (124M)",
        "https://openai.com/index/better-language-models/",
        "openai-community/gpt2",
    ),
    _gen(
        "falcon",
        "3",
        "2024-12-17",
        "Falcon 3",
        "https://huggingface.co/blog/falcon3",
        "tiiuae/Falcon3-7B-Base",
        True,
    ),
    _gen(
        "deepseek",
        "2",
        "2024-05",
        "DeepSeek-V2",
        "DeepSeek-V2 technical report (arXiv:2405.04434)",
        "deepseek-ai/DeepSeek-V2-Lite",
    ),
    _gen(
        "deepseek",
        "2.5",
        "2024-09",
        "DeepSeek-V2.5",
        "DeepSeek API news 'DeepSeek-V2.5'",
        "deepseek-ai/DeepSeek-V2.5",
    ),
    _gen(
        "deepseek",
        "3",
        "2024-12-26",
        "DeepSeek-V3",
        "DeepSeek API news 'Introducing DeepSeek-V3'",
        "deepseek-ai/DeepSeek-V3-Base",
    ),
    _gen(
        "deepseek",
        "3.1",
        "2025-08",
        "DeepSeek-V3.1",
        "DeepSeek API news 'DeepSeek-V3.1 Release'",
        "deepseek-ai/DeepSeek-V3.1-Base",
    ),
)

PHI_BLOG = "Azure blog 'One year of Phi: small language models making big leaps in AI'"
# Variants released later than their generation (or with no generation in their
# name): (family, pattern on the lowercase repository name).  First match wins,
# so a narrower pattern comes before a wider one.
VARIANTS: tuple[Release, ...] = (
    # Qwen
    _var("qwen", r"^qwen-14b", "2023-09", "Qwen-14B", QWEN_BLOG + "qwen/", "Qwen/Qwen-14B"),
    _var(
        "qwen",
        r"^qwen-(?:1\.8|72)b",
        "2023-11-30",
        "Qwen-1.8B and Qwen-72B",
        QWEN_BLOG + "qwen/",
        "Qwen/Qwen-72B",
        True,
    ),
    _var(
        "qwen",
        r"^qwen1\.5-moe",
        "2024-03-28",
        "Qwen1.5-MoE-A2.7B",
        QWEN_BLOG + "qwen-moe/",
        "Qwen/Qwen1.5-MoE-A2.7B",
    ),
    _var(
        "qwen",
        r"^qwen1\.5-32b",
        "2024-04-02",
        "Qwen1.5-32B",
        QWEN_BLOG + "qwen1.5-32b/",
        "Qwen/Qwen1.5-32B",
        True,
    ),
    _var(
        "qwen",
        r"^qwen1\.5-110b",
        "2024-04-25",
        "Qwen1.5-110B",
        QWEN_BLOG + "qwen1.5-110b/",
        "Qwen/Qwen1.5-110B",
        True,
    ),
    _var(
        "qwen",
        r"^codeqwen1\.5",
        "2024-04-16",
        "CodeQwen1.5",
        QWEN_BLOG + "codeqwen1.5/",
        "Qwen/CodeQwen1.5-7B-Chat",
    ),
    _var(
        "qwen",
        r"^qwen2-math",
        "2024-08-08",
        "Qwen2-Math",
        QWEN_BLOG + "qwen2-math/",
        "Qwen/Qwen2-Math-7B-Instruct",
    ),
    _var(
        "qwen",
        r"^qwen2-audio",
        "2024-08",
        "Qwen2-Audio (technical report July 2024, weights August 2024)",
        QWEN_BLOG + "qwen2-audio/",
        "Qwen/Qwen2-Audio-7B-Instruct",
        True,
    ),
    _var(
        "qwen",
        r"^qwen2-vl-72b",
        "2024-09-19",
        "Qwen2-VL-72B (with Qwen2.5)",
        QWEN_BLOG + "qwen2-vl/",
        "Qwen/Qwen2-VL-72B-Instruct",
    ),
    _var(
        "qwen",
        r"^qwen2-vl",
        "2024-08-29",
        "Qwen2-VL 2B/7B",
        QWEN_BLOG + "qwen2-vl/",
        "Qwen/Qwen2-VL-7B-Instruct",
    ),
    _var(
        "qwen",
        r"^qwen2\.5-coder-(?:0\.5|3|14|32)b",
        "2024-11-12",
        "Qwen2.5-Coder 0.5/3/14/32B",
        QWEN_BLOG + "qwen2.5-coder-family/",
        "Qwen/Qwen2.5-Coder-32B-Instruct",
    ),
    _var(
        "qwen",
        r"^qwen2\.5-vl-32b",
        "2025-03-24",
        "Qwen2.5-VL-32B",
        QWEN_BLOG + "qwen2.5-vl-32b/",
        "Qwen/Qwen2.5-VL-32B-Instruct",
    ),
    _var(
        "qwen",
        r"^qwen2\.5-vl",
        "2025-01-28",
        "Qwen2.5-VL 3B/7B/72B",
        QWEN_BLOG + "qwen2.5-vl/",
        "Qwen/Qwen2.5-VL-7B-Instruct",
    ),
    _var(
        "qwen",
        r"^qwen2\.5-.*-1m",
        "2025-01-26",
        "Qwen2.5-1M",
        QWEN_BLOG + "qwen2.5-1m/",
        "Qwen/Qwen2.5-7B-Instruct-1M",
    ),
    _var(
        "qwen",
        r"^qwen2\.5-omni",
        "2025-03-26",
        "Qwen2.5-Omni",
        QWEN_BLOG + "qwen2.5-omni/",
        "Qwen/Qwen2.5-Omni-7B",
    ),
    _var(
        "qwen",
        r"^qwq-32b-preview",
        "2024-11-28",
        "QwQ-32B-Preview",
        QWEN_BLOG + "qwq-32b-preview/",
        "Qwen/QwQ-32B-Preview",
    ),
    _var("qwen", r"^qwq", "2025-03-06", "QwQ-32B", QWEN_BLOG + "qwq-32b/", "Qwen/QwQ-32B"),
    _var(
        "qwen",
        r"deepseek-r1-distill",
        "2025-01-20",
        "DeepSeek-R1-Distill (Qwen2.5 bases)",
        "https://api-docs.deepseek.com/news/news250120",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        True,
    ),
    _var(
        "qwen",
        r"^qwen3-coder",
        "2025-07-22",
        "Qwen3-Coder",
        QWEN_BLOG + "qwen3-coder/",
        "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    ),
    _var(
        "qwen",
        r"^qwen3-vl-235b",
        "2025-09-23",
        "Qwen3-VL-235B-A22B",
        "Qwen3-VL announcement (Qwen blog, September 2025)",
        "Qwen/Qwen3-VL-235B-A22B-Instruct",
        True,
    ),
    _var(
        "qwen",
        r"^qwen3-vl",
        "2025-10",
        "Qwen3-VL 30B-A3B/32B/8B/4B/2B",
        "Qwen3-VL model cards (October 2025); Qwen3-VL technical report (arXiv:2511.21631)",
        "Qwen/Qwen3-VL-8B-Instruct",
        True,
    ),
    _var(
        "qwen",
        r"^qwen3-next",
        "2025-09-11",
        "Qwen3-Next-80B-A3B",
        QWEN_BLOG + "qwen3_next/",
        "Qwen/Qwen3-Next-80B-A3B-Instruct",
        True,
    ),
    _var(
        "qwen",
        r"^qwen3-omni",
        "2025-09",
        "Qwen3-Omni",
        "Qwen3-Omni technical report (arXiv:2509.17765)",
        "Qwen/Qwen3-Omni-30B-A3B-Instruct",
    ),
    _var(
        "qwen",
        r"^qwen3-4b-.*2507",
        "2025-08",
        "Qwen3-4B 2507 update",
        "Qwen3-4B-Instruct-2507 model card (August 2025)",
        "Qwen/Qwen3-4B-Instruct-2507",
        True,
    ),
    _var(
        "qwen",
        r"^qwen3-.*-2507",
        "2025-07-21",
        "Qwen3 2507 update (235B-A22B, 30B-A3B)",
        "Qwen3-235B-A22B-Instruct-2507 model card",
        "Qwen/Qwen3-30B-A3B-Instruct-2507",
    ),
    # Llama
    _var(
        "llama",
        r"codellama-70b",
        "2024-01-29",
        "Code Llama 70B",
        "https://ai.meta.com/blog/code-llama-large-language-model-coding/",
        "meta-llama/CodeLlama-70b-hf",
    ),
    _var(
        "llama",
        r"codellama",
        "2023-08-24",
        "Code Llama",
        "https://ai.meta.com/blog/code-llama-large-language-model-coding/",
        "meta-llama/CodeLlama-7b-hf",
    ),
    _var(
        "llama",
        r"centaur",
        "2024-10-26",
        "Centaur (Llama-3.1-70B fine-tuned on Psych-101)",
        "Binz et al., 'Centaur: a foundation model of human cognition' (arXiv:2410.20268)",
        "marcelbinz/Llama-3.1-Centaur-70B-adapter",
        True,
    ),
    _var(
        "llama",
        r"deepseek-r1-distill",
        "2025-01-20",
        "DeepSeek-R1-Distill (Llama bases)",
        "https://api-docs.deepseek.com/news/news250120",
        "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        True,
    ),
    # OLMo: OLMo 1's later 7B/1B releases carry their month in the name.
    _var(
        "olmo",
        r"^olmo-7b-0424",
        "2024-04",
        "OLMo 7B April 2024 (= OLMo 1.7-7B)",
        "https://huggingface.co/allenai/OLMo-7B-0424 (model card 'OLMo 7B April 2024')",
        "allenai/OLMo-7B-0424-hf",
        True,
    ),
    _var(
        "olmo",
        r"^olmo-\d+b-0724",
        "2024-07",
        "OLMo 1B/7B July 2024",
        "https://huggingface.co/allenai/OLMo-7B-0724-hf (model card 'OLMo 7B July 2024')",
        "allenai/OLMo-7B-0724-hf",
        True,
    ),
    _var(
        "olmo",
        r"^olmo-2-0325",
        "2025-03-13",
        "OLMo 2 32B",
        "https://allenai.org/blog/olmo2-32B",
        "allenai/OLMo-2-0325-32B",
    ),
    _var(
        "olmo",
        r"^olmo-2-0425",
        "2025-05-01",
        "OLMo 2 1B",
        "OLMo-2-0425-1B model card (Ai2)",
        "allenai/OLMo-2-0425-1B",
    ),
    _var(
        "olmo",
        r"^olmoe-.*-0125",
        "2025-01",
        "OLMoE-1B-7B January 2025",
        "OLMoE-1B-7B-0125 model card (Ai2)",
        "allenai/OLMoE-1B-7B-0125",
    ),
    _var(
        "olmo",
        r"^olmoe",
        "2024-09-03",
        "OLMoE",
        "OLMoE paper (arXiv:2409.02060)",
        "allenai/OLMoE-1B-7B-0924",
    ),
    # Gemma
    _var(
        "gemma",
        r"^gemma-2-2b",
        "2024-07-31",
        "Gemma 2 2B",
        "https://huggingface.co/blog/gemma-july-update",
        "google/gemma-2-2b",
        True,
    ),
    _var(
        "gemma",
        r"^gemma-3-270m",
        "2025-08-14",
        "Gemma 3 270M",
        "Google Developers blog 'Introducing Gemma 3 270M'",
        "google/gemma-3-270m",
    ),
    _var(
        "gemma",
        r"^gemma-3n",
        "2025-06-26",
        "Gemma 3n",
        "Google Developers blog 'Introducing Gemma 3n'",
        "google/gemma-3n-E4B",
    ),
    _var(
        "gemma",
        r"^codegemma",
        "2024-04-09",
        "CodeGemma",
        "Google Developers blog 'CodeGemma and RecurrentGemma'",
        "google/codegemma-7b",
    ),
    _var(
        "gemma",
        r"^paligemma2",
        "2024-12-05",
        "PaliGemma 2",
        "Google Developers blog 'Introducing PaliGemma 2'",
        "google/paligemma2-3b-pt-224",
    ),
    _var(
        "gemma",
        r"^paligemma",
        "2024-05-14",
        "PaliGemma",
        "Google Developers blog 'PaliGemma' (Google I/O 2024)",
        "google/paligemma-3b-pt-224",
    ),
    # Mistral
    _var(
        "mistral",
        r"^mixtral-8x22b",
        "2024-04-17",
        "Mixtral 8x22B",
        "https://mistral.ai/news/mixtral-8x22b",
        "mistralai/Mixtral-8x22B-v0.1",
        True,
    ),
    _var(
        "mistral",
        r"^mixtral-8x7b",
        "2023-12-11",
        "Mixtral 8x7B",
        "https://mistral.ai/news/mixtral-of-experts",
        "mistralai/Mixtral-8x7B-v0.1",
    ),
    _var(
        "mistral",
        r"^mistral-7b-v0\.2",
        "2024-03-23",
        "Mistral-7B-v0.2 base",
        "Mistral-7B-v0.2 model card (Mistral AI)",
        "mistral-community/Mistral-7B-v0.2",
    ),
    _var(
        "mistral",
        r"^mistral-nemo",
        "2024-07-18",
        "Mistral NeMo",
        "https://mistral.ai/news/mistral-nemo",
        "mistralai/Mistral-Nemo-Base-2407",
    ),
    # Phi
    _var(
        "phi",
        r"^phi-3-(?:small|medium|vision)",
        "2024-05-21",
        "Phi-3-small, -medium, -vision (Microsoft Build 2024)",
        "Azure blog 'New models added to the Phi-3 family' (Build 2024)",
        "microsoft/Phi-3-medium-4k-instruct",
        True,
    ),
    _var(
        "phi",
        r"^phi-4-mini-flash",
        "2025-07",
        "Phi-4-mini-flash-reasoning",
        "Azure blog 'Reasoning reimagined: Phi-4-mini-flash-reasoning'",
        "microsoft/Phi-4-mini-flash-reasoning",
    ),
    _var(
        "phi",
        r"^phi-4-.*reasoning",
        "2025-04-30",
        "Phi-4-reasoning, -reasoning-plus, -mini-reasoning",
        PHI_BLOG,
        "microsoft/Phi-4-reasoning",
        True,
    ),
    _var(
        "phi",
        r"^phi-4-(?:mini|multimodal)",
        "2025-02-26",
        "Phi-4-mini and Phi-4-multimodal",
        "Azure blog 'Empowering innovation: The next generation of the Phi family'",
        "microsoft/Phi-4-mini-instruct",
        True,
    ),
    # GPT-2's staged release
    _var(
        "gpt2",
        r"^gpt2-medium",
        "2019-05",
        "GPT-2 355M",
        "https://openai.com/index/gpt-2-6-month-follow-up/",
        "openai-community/gpt2-medium",
    ),
    _var(
        "gpt2",
        r"^gpt2-large",
        "2019-08",
        "GPT-2 774M",
        "https://openai.com/index/gpt-2-6-month-follow-up/",
        "openai-community/gpt2-large",
    ),
    _var(
        "gpt2",
        r"^gpt2-xl",
        "2019-11-05",
        "GPT-2 1.5B",
        "https://openai.com/index/gpt-2-1-5b-release/",
        "openai-community/gpt2-xl",
    ),
    # Falcon 1 and the Falcon 2 11B name carry no generation number.
    _var(
        "falcon",
        r"^falcon-180b",
        "2023-09-06",
        "Falcon 180B",
        "https://huggingface.co/blog/falcon-180b",
        "tiiuae/falcon-180B",
    ),
    _var(
        "falcon",
        r"^falcon-11b",
        "2024-05-13",
        "Falcon 2 11B",
        "TII announcement 'Falcon 2'",
        "tiiuae/falcon-11B",
    ),
    _var(
        "falcon",
        r"^falcon-(?:7b|40b)",
        "2023-05",
        "Falcon 7B/40B",
        "https://huggingface.co/blog/falcon",
        "tiiuae/falcon-7b",
    ),
    # DeepSeek releases named without a V number
    _var(
        "deepseek",
        r"^deepseek-r1-0528",
        "2025-05-28",
        "DeepSeek-R1-0528",
        "DeepSeek API news 'DeepSeek-R1-0528'",
        "deepseek-ai/DeepSeek-R1-0528",
    ),
    _var(
        "deepseek",
        r"^deepseek-r1",
        "2025-01-20",
        "DeepSeek-R1",
        "https://api-docs.deepseek.com/news/news250120",
        "deepseek-ai/DeepSeek-R1",
        True,
    ),
    _var(
        "deepseek",
        r"^deepseek-v3-0324",
        "2025-03-24",
        "DeepSeek-V3-0324",
        "DeepSeek API news 'DeepSeek-V3-0324'",
        "deepseek-ai/DeepSeek-V3-0324",
    ),
    _var(
        "deepseek",
        r"^deepseek-coder-v2",
        "2024-06",
        "DeepSeek-Coder-V2",
        "DeepSeek-Coder-V2 paper (arXiv:2406.11931)",
        "deepseek-ai/DeepSeek-Coder-V2-Lite-Base",
    ),
    _var(
        "deepseek",
        r"^deepseek-coder",
        "2023-11",
        "DeepSeek Coder",
        "DeepSeek-Coder paper (arXiv:2401.14196)",
        "deepseek-ai/deepseek-coder-6.7b-base",
    ),
    _var(
        "deepseek",
        r"^deepseek-llm",
        "2023-11-29",
        "DeepSeek LLM 7B/67B",
        "DeepSeek LLM paper (arXiv:2401.02954)",
        "deepseek-ai/deepseek-llm-7b-base",
    ),
    _var(
        "pythia",
        r"^pythia",
        "2023-02",
        "Pythia suite",
        "Biderman et al., 'Pythia' (arXiv:2304.01373); EleutherAI model cards",
        "EleutherAI/pythia-160m",
    ),
)

TABLE = "registry table, scoring/release_dates.py"


def parse_date(value: object) -> date:
    """A release date from ``date``/``datetime``, ``YYYY-MM-DD`` or ``YYYY-MM`` (day 1).

    Raises ValueError for anything else (the caller names the field).
    """
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    if re.fullmatch(r"\d{4}-\d{2}", text):
        text += "-01"  # month precision
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ValueError(text)
    return date.fromisoformat(text)


def variant_release(name: str | None, family: str | None) -> Release | None:
    """The later variant of ``family`` that ``name`` (hub id, folder or file stem) is, if any."""
    repo = (name or "").rpartition("/")[2].lower()
    return next(
        (r for r in VARIANTS if r.family == family and r.pattern and re.search(r.pattern, repo)),
        None,
    )


def generation_release(family: str | None, generation: str | None) -> Release | None:
    """The first release of a family's generation, if the table knows it."""
    return next((r for r in GENERATIONS if (r.family, r.generation) == (family, generation)), None)


def _why(r: Release) -> str:
    if r.generation is not None:
        return f"{r.family} {r.generation} first released {r.day[:7]} ({TABLE})"
    return f"{r.what} released {r.day[:7]} ({TABLE})"


def known_release_date(
    name: str | None, family: str | None, generation: str | None
) -> tuple[date, str] | None:
    """(release date, why) for a model the table knows, else None.

    ``name`` is a hub id, folder name or file stem: only the part after the
    last '/' is read.  A variant's own date wins over its generation's.
    """
    if family is None:
        return None
    r = variant_release(name, family) or generation_release(family, generation)
    return (parse_date(r.day), _why(r)) if r else None


NO_RELEASE_DATE = (
    "not in the registry's table of release dates (scoring/release_dates.py); "
    "set it with `psystats models set NAME release_date=YYYY-MM-DD`"
)


def release_date_for(
    name: str | None, family: str | None, generation: str | None
) -> tuple[date | None, str]:
    """(release date or None, why): :func:`known_release_date`, or None with how to set one."""
    known = known_release_date(name, family, generation)
    return known if known else (None, NO_RELEASE_DATE)


def markdown_table() -> str:
    """The table as docs/models.md shows it (one row per entry, source and whether checked)."""
    lines = [
        "| family | generation / variant | released | example | source | checked |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in GENERATIONS + VARIANTS:
        which = r.generation if r.generation is not None else f"{r.what} (`{r.pattern}`)"
        lines.append(
            f"| {r.family} | {which} | {r.day} | `{r.example}` | {r.source} | "
            f"{'yes' if r.checked else 'no'} |"
        )
    return "\n".join(lines)
