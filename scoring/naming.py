"""What a model's name says about it: family, generation, post-training type, base.

Pure string rules, no I/O, so they are easy to read, test and override.  The
rules are documented as a table in ``docs/models.md``; keep the two in step.

Every function returns the value *and* the reason, because the registry
records in ``models.inferred`` what was inferred from what.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

POST_TRAINING_TYPES: tuple[str, ...] = (
    "base",
    "instruct",
    "reasoning",
    "vision",
    "code",
    "math",
    "other",
)

# psystats' own floors (scoring/baselines.py): registered under these names only,
# with this post-training type, which no model can be given.
BASELINE_TYPE = "baseline"
BASELINES: dict[str, str] = {
    "baseline:uniform": "uniform over the response's option set",
    "baseline:frequency": (
        "smoothed frequency of the response among the other participants of the "
        "experiment at the same trial position (leave-one-participant-out)"
    ),
}

# Families and the lowercase word that names them.  Order matters only when a
# name contains two family words (e.g. "DeepSeek-R1-Distill-Qwen-7B" is a Qwen
# network, so qwen/llama come before deepseek).
FAMILY_WORDS: tuple[tuple[str, str], ...] = (
    ("qwen", "qwen"),
    ("qwen", "qwq"),
    ("llama", "llama"),
    ("olmo", "olmo"),
    ("smollm", "smollm"),
    ("gemma", "gemma"),
    ("mistral", "mistral"),
    ("mistral", "mixtral"),
    ("phi", "phi"),
    ("deepseek", "deepseek"),
    ("falcon", "falcon"),
    ("pythia", "pythia"),
    ("gpt2", "gpt2"),
)

# config.json "model_type" / GGUF "general.architecture" -> (family, generation or None).
# qwen2 is shared by Qwen1.5, 2 and 2.5, llama by every Llama, so those give no generation.
ARCHITECTURES: dict[str, tuple[str, str | None]] = {
    "qwen": ("qwen", "1"),
    "qwen2": ("qwen", None),
    "qwen2_moe": ("qwen", None),
    "qwen2_vl": ("qwen", "2"),
    "qwen2_5_vl": ("qwen", "2.5"),
    "qwen3": ("qwen", "3"),
    "qwen3_moe": ("qwen", "3"),
    "qwen3_next": ("qwen", "3"),
    "qwen3_vl": ("qwen", "3"),
    "qwen3_vl_moe": ("qwen", "3"),
    "qwen3_5": ("qwen", "3.5"),
    "qwen3_5_text": ("qwen", "3.5"),
    "qwen3_5_moe": ("qwen", "3.5"),
    "llama": ("llama", None),
    "mllama": ("llama", "3.2"),
    "llama4": ("llama", "4"),
    "olmo": ("olmo", "1"),
    "olmo2": ("olmo", "2"),
    "olmo3": ("olmo", "3"),
    "olmoe": ("olmo", None),
    "smollm3": ("smollm", "3"),
    "gemma": ("gemma", "1"),
    "gemma2": ("gemma", "2"),
    "gemma3": ("gemma", "3"),
    "gemma3_text": ("gemma", "3"),
    "mistral": ("mistral", None),
    "mixtral": ("mistral", None),
    "phi": ("phi", None),
    "phi3": ("phi", "3"),
    "gpt2": ("gpt2", "2"),
    "falcon": ("falcon", None),
    "gpt_neox": ("other", None),
}

# Generations whose un-suffixed name is the post-trained model and whose base
# carries "-Base": Qwen3 ("Qwen/Qwen3-8B" is the hybrid-reasoning model),
# Qwen3.5 and SmolLM3.  (family, generation) -> type of the un-suffixed name.
UNSUFFIXED_POST_TRAINED: dict[tuple[str, str], str] = {
    ("qwen", "3"): "reasoning",
    ("qwen", "3.5"): "reasoning",
    ("smollm", "3"): "reasoning",
}

# Name tokens (lowercase, split at - _ and non-decimal dots) that mark a type.
# Checked in this order: a "Qwen2.5-Coder-7B-Instruct" is code, a
# "Qwen3-VL-8B-Thinking" is vision.
_VISION = {"vl", "vision", "vlm"}
_REASONING = {"think", "thinking", "reasoning", "reasoner", "r1", "qwq"}
_INSTRUCT = {"instruct", "chat", "it", "sft", "dpo", "rlhf", "ift"}
_BASE = {"base", "pt"}
# Tokens removed from a post-trained name to get its base's name.
_STRIP_FOR_BASE = _VISION | _REASONING | _INSTRUCT | {"coder", "code", "math"}

# Adapters and quantised copies keep the model's type; their tokens name neither
# a type nor the base ("Llama-3.1-Centaur-70B-adapter", "Qwen2.5-72B-Instruct-GPTQ-Int4").
_ADAPTER = {"adapter", "lora", "qlora", "peft"}
_QUANT_WORDS = {"awq", "gptq", "gguf", "bnb", "exl2", "mlx", "fp8", "int4", "int8", "4bit", "8bit"}
# Fine-tunes on psychology experiments (Psych-101): a type of their own is not in
# POST_TRAINING_TYPES, so they are "other", descending from the model they tuned.
_PSYCH_FINETUNES = {"centaur": "fine-tuned on Psych-101 (Binz et al. 2025)"}
# Owners of the families' base checkpoints, for fine-tunes published by someone else.
FAMILY_OWNERS = {"llama": "meta-llama", "qwen": "Qwen", "olmo": "allenai", "gemma": "google"}
# Vision models whose language part is another generation's text model:
# (family, generation, size) -> that text base.  Llama 3.2 Vision 11B/90B add
# cross-attention image layers to Llama 3.1 8B/70B.  The base is the hub id.
VISION_TEXT_BASES: dict[tuple[str, str, str], str] = {
    ("llama", "3.2", "11b"): "meta-llama/Llama-3.1-8B",
    ("llama", "3.2", "90b"): "meta-llama/Llama-3.1-70B",
    # Qwen2-VL-2B's language model is Qwen2-1.5B (the other sizes keep their number).
    ("qwen", "2", "2b"): "Qwen/Qwen2-1.5B",
}
# config.json model_types of vision-language extensions of a text family; a
# model with one of these is "vision" whatever its name says.  Natively
# multimodal families (Gemma 3, Llama 4, Qwen3.5: the base itself sees images)
# are not here: their architecture says nothing about post-training.
VISION_ARCHITECTURES = frozenset(
    {
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "qwen3_vl_moe",
        "mllama",
        "llava",
        "llava_next",
        "llava_onevision",
        "idefics2",
        "idefics3",
        "smolvlm",
        "paligemma",
        "molmo",
        "molmo2",
    }
)

_NUMBERED_LATER = {"qwen", "llama", "olmo", "smollm", "gemma"}
_QUANT = re.compile(r"[.-](?:i?q\d[\w]*|f16|f32|bf16|fp16|fp32)$", re.IGNORECASE)
_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])")


@dataclass
class Inference:
    """What the name says, each value with the reason it was chosen."""

    family: tuple[str, str] | None = None  # (value, reason)
    generation: tuple[str, str] | None = None
    post_training: tuple[str, str] | None = None
    base_candidate: str | None = None  # models.name the base would have
    size_label: str | None = None  # "7b", "135m": only to pair a base
    quantization: tuple[str, str] | None = None  # ("gptq-int4", reason)
    adapter: str | None = None  # the name token that marks an adapter
    notes: list[str] = field(default_factory=list)


def strip_quant(stem: str) -> str:
    """'SmolLM2-135M-Instruct.Q4_1' -> 'SmolLM2-135M-Instruct' (GGUF file stems)."""
    stem = re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
    return _QUANT.sub("", stem)


def quantization_from_name(name: str) -> tuple[str, str] | None:
    """The quantisation a name states ("GPTQ-Int4", "AWQ", "bnb-4bit", "FP8", GGUF "Q4_K_M")."""
    repo = name.rpartition("/")[2]
    low = re.sub(r"\.gguf$", "", repo.lower())
    m = _QUANT.search(low)
    if m and not re.fullmatch(r"[.-](?:f32|fp32)", m.group(0)):
        return f"gguf-{m.group(0)[1:].upper()}", f"GGUF file type '{m.group(0)[1:]}' in name"
    rules = (
        (r"gptq[-_]?int(\d+)", "gptq-int{0}"),
        (r"gptq", "gptq"),
        (r"awq", "awq"),
        (r"bnb[-_]?(\d+)bit", "bitsandbytes-{0}bit"),
        (r"(?<![a-z0-9])(\d+)bit(?![a-z0-9])", "{0}bit"),
        (r"(?<![a-z0-9])fp8(?![a-z0-9])", "fp8"),
        (r"(?<![a-z0-9])exl2(?![a-z0-9])", "exl2"),
        (r"(?<![a-z0-9])(i?q\d(?:_(?:k|\d|s|m|l|xs|xxs))*)(?![a-z0-9])", "gguf-{0}"),
        (r"(?<![a-z0-9])gguf(?![a-z0-9])", "gguf"),
    )
    for pattern, label in rules:
        m = re.search(pattern, low)
        if m:
            value = label.format(
                *(g.upper() for g in m.groups()) if "gguf-" in label else m.groups()
            )
            return value, f"'{m.group(0)}' in name"
    return None


def tokens(repo_name: str) -> list[str]:
    """Lowercase name tokens; a dot between digits ('Qwen2.5') does not split."""
    return [t for t in re.split(r"[-_\s]+|\.(?!\d)|(?<!\d)\.", repo_name.lower()) if t]


def size_label(repo_name: str) -> str | None:
    """The first size in a name ('7B', '0.5B', '135M', '30B' of '30B-A3B'), lowercase."""
    m = _SIZE.search(repo_name.lower())
    return f"{m.group(1)}{m.group(2)}" if m else None


def _generation(family: str, word: str, low: str) -> tuple[str, str] | None:
    """The version number written after the family word, and why."""
    if family == "qwen" and word == "qwq":
        return "2.5", "QwQ is built on Qwen2.5"
    if family == "gpt2":
        return "2", "GPT-2"
    if family == "llama" and "codellama" in low:
        return "2", "Code Llama is built on Llama 2"
    if family == "mistral":
        m = re.search(r"(?:^|[-_])v(\d+(?:\.\d+)?)(?=$|[-_])", low)
        return (m.group(1), f"version 'v{m.group(1)}' in name") if m else None
    # A version right after the word ("qwen2.5", "llama-3.1", "olmo-2", "phi-1_5"),
    # but not a size ("llama-7b", "olmo-1b").
    m = re.search(rf"{word}[-_ ]?v?(\d+(?:[._]\d+)?)(?=$|[-_ /.])", low)
    if m:
        gen = m.group(1).replace("_", ".")
        return gen, f"'{word}{gen}' in name"
    # First generations carry no number: "Qwen-7B", "OLMo-7B", "SmolLM-135M", "gemma-7b"
    # (only for families that went on to numbered generations).
    if family in _NUMBERED_LATER and re.match(rf"{word}[-_]\d+(?:\.\d+)?[bm](?![a-z0-9])", low):
        return "1", f"no version after '{word}' (first generation)"
    return None


def infer_from_name(name: str) -> Inference:
    """Family, generation, post-training type and base name from a model name.

    ``name`` is a hub id ("Qwen/Qwen2.5-7B-Instruct"), a folder name or a GGUF
    file stem; only the part after the last '/' is read, the owner is kept for
    the base's name.
    """
    if name in BASELINES:
        return Inference(
            family=("baseline", "a psystats baseline scorer"),
            post_training=(BASELINE_TYPE, f"baseline scorer: {BASELINES[name]}"),
        )
    owner, _, repo = name.rpartition("/")
    repo = strip_quant(repo)
    low = repo.lower()
    toks = tokens(repo)
    inf = Inference(size_label=size_label(repo), quantization=quantization_from_name(name))

    for family, word in FAMILY_WORDS:
        if word in low:
            inf.family = (family, f"'{word}' in name '{repo}'")
            inf.generation = _generation(family, word, low)
            break

    def has(words: set[str]) -> str | None:
        return next((t for t in toks if t in words), None)

    code = next((t for t in toks if "code" in t), None)
    math = next((t for t in toks if "math" in t), None)
    vision = has(_VISION) or next(
        (t for t in toks if t.startswith(("llava", "molmo", "idefics", "smolvlm", "paligemma"))),
        None,
    )
    reasoning = has(_REASONING) or next(
        (t for t in toks if t.startswith("think") or t.startswith("qwq")), None
    )
    instruct = has(_INSTRUCT) or next((t for t in toks if t.startswith("instruct")), None)
    base = has(_BASE)
    inf.adapter = has(_ADAPTER)
    psych = has(set(_PSYCH_FINETUNES))
    for value, tok in (
        ("vision", vision),
        ("other", psych),
        ("code", code),
        ("math", math),
        ("reasoning", reasoning),
        ("instruct", instruct),
        ("base", base),
    ):
        if tok:
            why = f"name token '{tok}'"
            if tok in _PSYCH_FINETUNES:
                why += f": {_PSYCH_FINETUNES[tok]}"
            inf.post_training = (value, why)
            break
    else:
        key = (inf.family[0] if inf.family else None, inf.generation[0] if inf.generation else None)
        if key in UNSUFFIXED_POST_TRAINED:
            inf.post_training = (
                UNSUFFIXED_POST_TRAINED[key],
                f"no suffix: the un-suffixed {key[0]} {key[1]} model is post-trained "
                f"(hybrid reasoning); its base is '-Base'",
            )
        else:
            inf.post_training = ("base", "no post-training marker in name")

    if inf.post_training[0] != "base":
        inf.base_candidate = _base_name(owner, repo, inf)
    return inf


def _base_name(owner: str, repo: str, inf: Inference) -> str | None:
    """The name the base model would have, by the family's naming rule, or None."""
    fam = inf.family[0] if inf.family else None
    gen = inf.generation[0] if inf.generation else None
    if (
        inf.post_training
        and inf.post_training[0] == "vision"
        and fam is not None
        and gen is not None
    ):
        text_base = VISION_TEXT_BASES.get((fam, gen, inf.size_label or ""))
        if text_base:
            return text_base
    # GGUF file types inside a repo name ("gemma-3-27b-it-qat-q4_0-gguf") name no base.
    repo = re.sub(r"(?i)[-_](?:qat|i?q\d(?:_(?:k|\d|s|m|l|xs|xxs))*)(?=[-_.]|$)", "", repo)
    parts = re.split(r"([-_])", repo)  # keep separators to rebuild the name
    kept: list[str] = []
    removed_any = False
    drop_date = False
    psych = False
    for i in range(0, len(parts), 2):
        tok = parts[i]
        low = tok.lower()
        if low in _QUANT_WORDS or low in _ADAPTER:
            continue  # a quantised copy or an adapter of X: X's base, not X's own
        if low in _PSYCH_FINETUNES:
            removed_any = psych = True
            continue
        if low in _STRIP_FOR_BASE or (drop_date and re.fullmatch(r"\d{4}", low)):
            removed_any = True
            drop_date = low in _INSTRUCT or low in _REASONING  # "Instruct-2507"
            continue
        drop_date = False
        if kept:
            kept.append(parts[i - 1])
        kept.append(tok)
    stem = "".join(kept)
    key = (inf.family[0] if inf.family else None, inf.generation[0] if inf.generation else None)
    if key in UNSUFFIXED_POST_TRAINED:
        stem, removed_any = stem + "-Base", True
    elif key == ("gemma", "3") and removed_any:
        stem += "-pt"
    # A base name must still name the family ("QwQ-32B" has no rule) and a
    # distillation's base is another family's model, not its name minus tokens.
    if (
        not removed_any
        or stem == repo
        or "distill" in repo.lower()
        or not any(word in stem.lower() for _, word in FAMILY_WORDS)
    ):
        return None
    if psych and fam in FAMILY_OWNERS:
        owner = FAMILY_OWNERS[fam]  # published by the fine-tune's authors, tuned from the family's
    return f"{owner}/{stem}" if owner else stem


def generation_order(generation: str | None) -> float | None:
    """Numeric order of a generation within its family: '2.5' -> 2.5; None if not a number."""
    if generation is None:
        return None
    try:
        return float(generation)
    except ValueError:
        return None
