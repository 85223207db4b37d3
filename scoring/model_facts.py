"""What a model is, inferred from its files and its name, without touching the warehouse.

:func:`describe` reads the weights' headers (parameter count, ``config.json``,
GGUF metadata), asks the name rules (``scoring.naming``) for family,
generation, size, post-training type and the base's name, lets the
architecture fill what the name left open, and records every guess with its
reason in ``inferred`` (``{field: {"value": ..., "from": "why"}}``).  The
registry (``scoring.registry``) stores the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psystats.warehouse.errors import WarehouseError

from . import naming
from .hub import hub_facts
from .model_files import classify_source, count_safetensors_params, read_config, read_gguf
from .release_dates import release_date_for

Reasoned = tuple[str, str]  # (value, why)


@dataclass
class Weights:
    """What the files say: where they are, their config / GGUF metadata, how many parameters."""

    kind: str  # "external" | "baseline" | "gguf" | "folder" | "hub"
    source: str | None
    gguf_file: str | None
    default_name: str | None  # the name the weights came with
    config: dict = field(default_factory=dict)
    gguf_meta: dict = field(default_factory=dict)
    n_params: int | None = None
    n_how: str = "not counted: external scorer (no weights)"

    @property
    def architecture(self) -> tuple[str | None, str]:
        """(config model_type or GGUF architecture, where it was read)."""
        if self.config.get("model_type"):
            return self.config["model_type"], "config.json model_type"
        return self.gguf_meta.get("architecture"), "GGUF general.architecture"


def read_weights(
    source: str | None, name: str | None, gguf_file: str | None, revision: str | None
) -> Weights:
    """The :class:`Weights` of what the user typed (None: an external scorer, ``name`` required)."""
    if source is None and name in naming.BASELINES:
        return Weights("baseline", None, None, name, n_how="no weights: a baseline scorer")
    if source is None:
        if not name:
            raise WarehouseError("a model without a source (an external scorer) needs a name")
        return Weights("external", None, None, name)
    kind, source, gguf_file = classify_source(source, gguf_file)
    if kind == "gguf" and gguf_file is not None and Path(source).is_dir():
        n, meta = read_gguf(Path(source) / gguf_file)
        return Weights(
            "gguf", source, gguf_file, Path(gguf_file).stem, {}, meta, n, "GGUF tensor shapes"
        )
    if kind == "folder":
        return _folder_weights(Path(source), name, revision)
    config, counted, how = hub_facts(source, revision, gguf_file)
    return Weights("hub", source, gguf_file, source, config, {}, counted, how)


def _folder_weights(folder: Path, name: str | None, revision: str | None) -> Weights:
    """A local folder: safetensors (counted from headers), or exactly one GGUF file."""
    config = read_config(folder)
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        n, how = count_safetensors_params(folder, config)
        return Weights("folder", str(folder), None, folder.name, config, {}, n, how)
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return read_weights(str(folder / ggufs[0]), name, None, revision)
    if ggufs:
        raise WarehouseError(
            f"{folder}: several GGUF files ({', '.join(ggufs)}); choose one with --gguf-file"
        )
    pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    raise WarehouseError(
        f"{folder}: no safetensors or GGUF weights"
        + (
            f" (found {', '.join(pickles[:3])}: psystats never loads pickle checkpoints; "
            f"convert them to safetensors)"
            if pickles
            else ""
        )
    )


def read_name(w: Weights, name: str | None) -> tuple[naming.Inference, str | None]:
    """(what the first name naming a family says, that name).

    The name speaks first (it says "Instruct", "2.5"), then config / GGUF
    metadata.  Read the name the weights came with (hub id, folder, GGUF
    file), then the user's ``--name``, then config's ``_name_or_path``.
    """
    candidates = [
        naming.strip_quant(Path(w.gguf_file).stem)
        if w.kind == "gguf" and w.gguf_file
        else w.default_name,
        name,
        w.config.get("_name_or_path"),
    ]
    readable = [r for r in candidates if isinstance(r, str) and r]
    by_name = naming.infer_from_name(readable[0])
    for r in readable[1:]:
        if by_name.family is None:
            by_name = naming.infer_from_name(r)
    return by_name, readable[0] if readable else None


def family_generation(by_name: naming.Inference, w: Weights) -> tuple[Reasoned, Reasoned | None]:
    """Family and generation: the name's, else GGUF ``general.basename``'s, else the architecture's."""
    family, generation = by_name.family, by_name.generation
    basename = w.gguf_meta.get("basename")
    if basename and (family is None or generation is None):
        by_meta = naming.infer_from_name(str(basename))
        if family is None and by_meta.family:
            family = (by_meta.family[0], f"GGUF general.basename {basename!r}")
        if (
            generation is None
            and by_meta.generation
            and by_meta.family  # always set with a generation
            and by_meta.family[0] == (family or ("",))[0]
        ):
            generation = (by_meta.generation[0], f"GGUF general.basename {basename!r}")
    arch, arch_from = w.architecture
    if arch in naming.ARCHITECTURES:
        fam_a, gen_a = naming.ARCHITECTURES[arch]
        if family is None:
            family = (fam_a, f"{arch_from} {arch!r}")
        if generation is None and gen_a and fam_a == family[0]:
            generation = (gen_a, f"{arch_from} {arch!r}")
    if family is None:
        family = (
            "other",
            "no known family in name" + (f" or architecture {arch!r}" if arch else ""),
        )
    return family, generation


def post_training(
    by_name: naming.Inference, w: Weights, family: Reasoned, generation: Reasoned | None
) -> Reasoned:
    """The post-training type: the name's, corrected by what the generation and architecture say."""
    post = by_name.post_training
    assert post is not None  # infer_from_name always decides one
    if w.kind == "external" and family[0] == "other" and post[1].startswith("no post-training"):
        post = ("other", "external scorer of no known model family")
    if post[0] == "base" and post[1].startswith("no post-training") and generation:
        # The generation may have come from the config (e.g. a local "my-qwen3" folder).
        key = (family[0], generation[0])
        if key in naming.UNSUFFIXED_POST_TRAINED:
            post = (
                naming.UNSUFFIXED_POST_TRAINED[key],
                f"no suffix: un-suffixed {key[0]} {key[1]} models are post-trained",
            )
    arch, arch_from = w.architecture
    if arch in naming.VISION_ARCHITECTURES and post[0] != "vision":
        post = (
            "vision",
            f"{arch_from} {arch!r}: a vision-language extension of a text model "
            f"(the name said {post[0]!r}: {post[1]})",
        )
    return post


def quantization(w: Weights, by_name: naming.Inference) -> tuple[str | None, str]:
    """(label or None, why): the checkpoint's quantisation, from its config, GGUF file or name."""
    config = w.config
    qc = config.get("quantization_config") or (config.get("text_config") or {}).get(
        "quantization_config"
    )
    if isinstance(qc, dict) and qc.get("quant_method"):
        method = str(qc["quant_method"]).lower()
        bits = qc.get("bits")
        if method == "bitsandbytes":
            bits = 4 if qc.get("load_in_4bit") else 8 if qc.get("load_in_8bit") else bits
            label = f"bitsandbytes-{bits}bit" if bits else "bitsandbytes"
        else:
            label = f"{method}-int{bits}" if bits else method
        return label, "config.json quantization_config"
    if w.kind == "gguf" and w.gguf_file:
        q = naming.quantization_from_name(Path(w.gguf_file).stem)
        return (q[0], f"GGUF file name: {q[1]}") if q else ("gguf", "GGUF file")
    if by_name.quantization:
        return by_name.quantization
    return None, "no quantization_config, not GGUF, none in name (full precision)"


def _inferred(
    w: Weights,
    by_name: naming.Inference,
    family: Reasoned,
    generation: Reasoned | None,
    post: Reasoned,
    quant: tuple[str | None, str],
    released: tuple[Any, str],
) -> dict[str, Any]:
    """``models.inferred``: every guessed value with the reason it was chosen."""
    arch, _ = w.architecture
    inferred: dict[str, Any] = {
        "family": {"value": family[0], "from": family[1]},
        "generation": {
            "value": generation[0] if generation else None,
            "from": generation[1] if generation else "not found in name or config",
        },
        "generation_order": {
            "value": naming.generation_order(generation[0] if generation else None),
            "from": "generation",
        },
        "post_training": {"value": post[0], "from": post[1]},
        "n_params": {"value": w.n_params, "from": w.n_how},
        "base_model": {
            "value": None,
            "candidate": by_name.base_candidate,
            "from": "no registered base yet",
        },
    }
    if by_name.size_label:
        inferred["size_label"] = by_name.size_label
    if arch:
        inferred["architecture"] = arch
    if w.config.get("auto_map"):
        inferred["needs_remote_code"] = True
    inferred["source_kind"] = w.kind
    inferred["quantization"] = {"value": quant[0], "from": quant[1]}
    inferred["release_date"] = {
        "value": released[0].isoformat() if released[0] else None,
        "from": released[1],
    }
    return inferred


def describe(
    source: str | None,
    *,
    name: str | None = None,
    gguf_file: str | None = None,
    revision: str | None = None,
) -> dict:
    """Everything the registry can infer about a model: the ``models`` column values.

    ``inferred`` is a dict (``{field: {"value", "from"}}``); its
    ``base_model.candidate`` and ``size_label`` are what links a base model.
    """
    w = read_weights(source, name, gguf_file, revision)
    name = name or w.default_name
    by_name, read_as = read_name(w, name)
    family, generation = family_generation(by_name, w)
    post = post_training(by_name, w, family, generation)
    quant = quantization(w, by_name)
    gen = generation[0] if generation else None
    released = release_date_for(read_as or name, family[0], gen)
    return {
        "release_date": released[0],
        "quantization": quant[0],
        "name": name,
        "source": w.source,
        "revision": revision,
        "gguf_file": w.gguf_file,
        "tokenizer_source": None,
        "family": family[0],
        "generation": gen,
        "generation_order": naming.generation_order(gen),
        "n_params": w.n_params,
        "post_training": post[0],
        "base_model": None,
        "inferred": _inferred(w, by_name, family, generation, post, quant, released),
    }
