"""The model registry: which models exist, and what they are.

A row in ``models`` says where the weights are (hub id, local safetensors
folder or GGUF file; NULL for external scorers), the family and generation,
the parameter count (counted from the weights), the post-training type and
the base model it descends from.  Everything that was guessed is recorded in
``models.inferred`` as ``{field: {"value": ..., "from": "why"}}`` so a reader
can see (and ``psystats models set`` can correct) each guess.

Sources
-------
* hub id ``owner/name``: ``source`` is the id; config and parameter count come
  from the local Hugging Face cache, else from the hub's safetensors headers
  (``huggingface_hub.get_safetensors_metadata``, a few KB, never the weights)
  when the network is reachable, else they stay NULL and ``inferred`` says so.
* local folder: ``source`` is its absolute path; it must hold safetensors
  (psystats never loads pickle checkpoints) or a ``.gguf`` file.
* local ``.gguf`` file: ``source`` is its folder and ``gguf_file`` its file
  name, exactly the two arguments ``transformers`` takes
  (``from_pretrained(source, gguf_file=gguf_file)``).
"""

from __future__ import annotations

import json
import os
import re
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar, transaction

from . import naming
from .naming import POST_TRAINING_TYPES
from .release_dates import known_release_date, parse_date

# Fields a user may set (``psystats models set`` / ``models load``) and their types.
EDITABLE: dict[str, type] = {
    "source": str,
    "revision": str,
    "gguf_file": str,
    "tokenizer_source": str,
    "family": str,
    "generation": str,
    "generation_order": float,
    "n_params": int,
    "post_training": str,
    "base_model": str,
    "trust_remote_code": bool,
    "quantization": str,
    "release_date": date,  # YYYY-MM-DD, or YYYY-MM (month precision)
    "pipeline_check": str,  # why the model only checks the pipeline (NULL: a real model)
}
# Friendlier names accepted in files and on the command line.
ALIASES = {"type": "post_training", "base": "base_model", "params": "n_params"}

_COLUMNS = (
    "model_id",
    "name",
    "source",
    "revision",
    "gguf_file",
    "tokenizer_source",
    "family",
    "generation",
    "generation_order",
    "n_params",
    "post_training",
    "base_model",
    "trust_remote_code",
    "inferred",
    "created_at",
    "adapter",
    "adapter_revision",
    "adapter_sha256",
    "quantization",
    "pipeline_check",
    "release_date",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
USER = "user"


# --------------------------------------------------------------------------- reading


def _row(con: duckdb.DuckDBPyConnection, where: str, params: list) -> dict | None:
    rows = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM models WHERE {where}", params).fetchall()
    if not rows:
        return None
    row = dict(zip(_COLUMNS, rows[0]))
    row["inferred"] = json.loads(row["inferred"]) if row["inferred"] else {}
    return row


def list_models(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every registered model as a dict, by family, generation, size and name."""
    names = con.execute(
        "SELECT name FROM models ORDER BY family NULLS LAST, generation_order NULLS LAST, "
        "n_params NULLS LAST, name"
    ).fetchall()
    return [get_model(con, n) for (n,) in names]


def get_model(con: duckdb.DuckDBPyConnection, name: str) -> dict:
    """The ``models`` row called ``name`` (``inferred`` parsed), or a WarehouseError saying how to add it."""
    row = _row(con, "name = ?", [name])
    if row is None:
        from psystats.warehouse.names import did_you_mean

        known = [n for (n,) in con.execute("SELECT name FROM models").fetchall()]
        hint = did_you_mean(name, known)
        if hint:
            raise WarehouseError(f"model {name!r} is not registered{hint}")
        raise WarehouseError(
            f"model {name!r} is not registered: `psystats models add SOURCE --name {name}` "
            "registers it (SOURCE: a hub id, model folder or .gguf file); "
            "`psystats models list` shows what is"
        )
    return row


def resolve_model(con: duckdb.DuckDBPyConnection, name_or_source: str, **add_kwargs: Any) -> dict:
    """The registered model with this name or source; registers it first if it is a new path or hub id."""
    row = _row(con, "name = ?", [name_or_source])
    if row is not None:
        return row
    if "/" not in name_or_source and not Path(name_or_source).expanduser().exists():
        get_model(con, name_or_source)  # a bare name is a typo more often than a legacy hub id
    _, source, gguf_file = _classify(name_or_source, add_kwargs.get("gguf_file"))
    rows = con.execute(
        "SELECT name FROM models WHERE source = ? AND coalesce(gguf_file, '') = ? "
        "AND adapter IS NULL ORDER BY model_id",
        [source, gguf_file or ""],
    ).fetchall()
    if rows:
        return get_model(con, rows[0][0])
    return add_model(con, name_or_source, **add_kwargs)


# --------------------------------------------------------------------------- inspecting weights


def _classify(source: str, gguf_file: str | None) -> tuple[str, str, str | None]:
    """('folder' | 'gguf' | 'hub', normalised source, gguf file name) for what the user typed."""
    path = Path(source).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise WarehouseError(
                    f"{source}: a file that is not .gguf; give a model folder (safetensors), "
                    f"a .gguf file or a Hugging Face id"
                )
            return "gguf", str(path.parent), path.name
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise WarehouseError(f"{source}: no GGUF file {gguf_file!r} in this folder")
            return "gguf", str(path), gguf_file
        return "folder", str(path), None
    looks_like_path = (
        source.startswith(("/", "./", "../", "~", "\\"))
        or source.lower().endswith(".gguf")
        or source.count("/") > 1
    )
    if looks_like_path or not _HUB_ID.match(source):
        raise WarehouseError(
            f"{source}: no such file or folder, and not a Hugging Face id (owner/name)"
        )
    return "hub", source, gguf_file


def _read_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WarehouseError(f"{cfg}: not valid JSON ({e})") from None


def count_safetensors_params(folder: str | Path, config: dict | None = None) -> tuple[int, str]:
    """Parameters in a safetensors folder from the file headers (no weights are read).

    Follows ``model.safetensors.index.json`` for sharded checkpoints.  An
    ``lm_head`` stored beside tied input embeddings is counted once, as torch
    counts tied parameters once.
    """
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise WarehouseError(f"{index}: shard(s) missing: {', '.join(missing[:3])}")
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise WarehouseError(f"{folder}: no .safetensors files")
    shapes: dict[str, list[int]] = {}
    for f in files:
        with safe_open(str(folder / f), framework="numpy") as st:
            for key in st.keys():
                shapes[key] = st.get_slice(key).get_shape()
    tied = bool((config or {}).get("tie_word_embeddings")) and any(
        k.endswith("embed_tokens.weight") for k in shapes
    )
    total = 0
    for key, shape in shapes.items():
        if tied and key.endswith("lm_head.weight"):
            continue
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total, f"safetensors headers ({len(files)} file{'s' * (len(files) > 1)})"


def read_gguf(path: str | Path) -> tuple[int, dict[str, Any]]:
    """(parameter count from the tensor shapes, ``general.*`` metadata) of a GGUF file."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # a truncated or foreign file: say which
        raise WarehouseError(f"{path}: not a readable GGUF file ({e})") from None
    n = sum(int(t.n_elements) for t in reader.tensors)
    meta: dict[str, Any] = {}
    for key in (
        "general.architecture",
        "general.basename",
        "general.name",
        "general.finetune",
        "general.size_label",
    ):
        fld = reader.fields.get(key)
        if fld is not None:
            try:
                meta[key.split(".", 1)[1]] = fld.contents()
            except Exception:  # an odd value type is not worth failing a registration
                pass
    return n, meta


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


def hub_files_cached(repo: str, revision: str | None, gguf_file: str | None) -> bool:
    """Whether the config and weights of a hub id are in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    if not gguf_file and not isinstance(
        try_to_load_from_cache(repo, "config.json", revision=revision), str
    ):
        return False
    names = [gguf_file] if gguf_file else ["model.safetensors.index.json", "model.safetensors"]
    return any(isinstance(try_to_load_from_cache(repo, n, revision=revision), str) for n in names)


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(whether the hub's host answers a TCP connection within ``timeout`` s, why not)."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return False, f"{host}: {e.strerror or e}"
    return True, ""


def require_hub_files(model: dict, repo: str, gguf_file: str | None = None) -> None:
    """Fail at once, in one line, when a hub id's files are neither cached nor reachable.

    Without this, transformers retries an unreachable hub for about a minute
    before saying the same thing.
    """
    if hub_files_cached(repo, model.get("revision"), gguf_file):
        return
    name = model.get("name")
    if _hub_offline():
        why = "the hub is switched off (HF_HUB_OFFLINE)"
    else:
        ok, why = hub_reachable()
        if ok:
            return  # the hub answers: transformers downloads (or says the id is wrong)
        why = f"the hub cannot be reached ({why})"
    raise WarehouseError(
        f"model {name!r}: the files of {repo} are not in the local Hugging Face cache and "
        f"{why}: download them where there is a network (`huggingface-cli download {repo}`) "
        "and copy the cache (HF_HOME) here, or register a local folder or .gguf file"
    )


def require_model_files(model: dict) -> None:
    """:func:`require_hub_files` for a models row whose source is a hub id (else nothing).

    Called before the scorer imports torch, so a hub id that cannot be
    fetched fails in a second or two.
    """
    from .loader import _looks_like_path, locate

    if not model.get("source"):
        return  # an external scorer: the loader says it cannot be run
    folder, gguf = locate(model)
    if not _looks_like_path(folder):
        require_hub_files(model, folder, gguf)


def _hub_facts(
    repo: str, revision: str | None, gguf_file: str | None
) -> tuple[dict, int | None, str]:
    """(config, parameter count, how) for a hub id, without downloading weights.

    The local cache is used first.  Over the network only the safetensors
    headers' summary and config.json are fetched; the first failed request
    stops further ones, so an offline machine answers at once.
    """
    from huggingface_hub import get_safetensors_metadata, hf_hub_download, try_to_load_from_cache

    config: dict = {}
    cached = try_to_load_from_cache(repo, "config.json", revision=revision)
    if isinstance(cached, str):
        config = _read_config(Path(cached).parent)
        folder = Path(cached).parent
        if gguf_file and (folder / gguf_file).is_file():
            n, _ = read_gguf(folder / gguf_file)
            return config, n, "GGUF tensor shapes (Hugging Face cache)"
        try:
            n, how = count_safetensors_params(folder, config)
            return config, n, how + " in the Hugging Face cache"
        except WarehouseError:
            pass  # weights not (all) cached: ask the hub below
    if gguf_file:
        return config, None, "not counted: GGUF on the hub is not downloaded; set n_params"
    if _hub_offline():
        return config, None, "not counted: hub offline (HF_HUB_OFFLINE); set n_params"
    try:
        meta = get_safetensors_metadata(repo, revision=revision)
    except Exception as e:  # no network, no such repo, gated, no safetensors...
        return (
            config,
            None,
            f"not counted: hub safetensors metadata unavailable ({type(e).__name__}); set n_params",
        )
    n = int(sum(meta.parameter_count.values()))
    if not config:
        try:
            config = _read_config(
                Path(hf_hub_download(repo, "config.json", revision=revision)).parent
            )
        except Exception:
            pass  # the parameter count is what matters; the name rules still apply
    return config, n, "hub safetensors headers (huggingface_hub.get_safetensors_metadata)"


# --------------------------------------------------------------------------- inference


def describe(
    source: str | None,
    *,
    name: str | None = None,
    gguf_file: str | None = None,
    revision: str | None = None,
) -> dict:
    """Everything the registry can infer about a model, without touching the warehouse.

    Returns the column values (``inferred`` as a dict, plus the private keys
    ``_base_candidate`` and ``_size_label`` used to link a base model).
    """
    inferred: dict[str, Any] = {}
    config: dict = {}
    gguf_meta: dict = {}
    n_params: int | None = None
    n_how = "not counted: external scorer (no weights)"
    default_name: str | None
    if source is None:
        if not name:
            raise WarehouseError("a model without a source (an external scorer) needs a name")
        kind = "external"
    else:
        kind, source, gguf_file = _classify(source, gguf_file)
    # _classify gives a source for every kind but "external", and a file for "gguf".
    if kind == "gguf" and source is not None and gguf_file is not None and Path(source).is_dir():
        n_params, gguf_meta = read_gguf(Path(source) / gguf_file)
        n_how = "GGUF tensor shapes"
        default_name = Path(gguf_file).stem
    elif kind == "folder":
        assert source is not None
        folder = Path(source)
        config = _read_config(folder)
        if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
            n_params, n_how = count_safetensors_params(folder, config)
        else:
            ggufs = sorted(p.name for p in folder.glob("*.gguf"))
            if len(ggufs) == 1:
                return describe(str(folder / ggufs[0]), name=name, revision=revision)
            if ggufs:
                raise WarehouseError(
                    f"{folder}: several GGUF files ({', '.join(ggufs)}); "
                    f"choose one with --gguf-file"
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
        default_name = folder.name
    elif kind == "hub":
        assert source is not None
        config, n_params, n_how = _hub_facts(source, revision, gguf_file)
        default_name = source
    else:
        default_name = name
    name = name or default_name

    # The name speaks first (it says "Instruct", "2.5"), then config / GGUF metadata.
    # Read the name the weights came with (hub id, folder, GGUF file), then
    # the user's --name, then config's _name_or_path: the first naming a family.
    candidates = [
        naming.strip_quant(Path(gguf_file).stem) if kind == "gguf" and gguf_file else default_name,
        name,
        config.get("_name_or_path"),
    ]
    readable = [r for r in candidates if isinstance(r, str) and r]
    by_name = naming.infer_from_name(readable[0])
    for r in readable[1:]:
        if by_name.family is None:
            by_name = naming.infer_from_name(r)
    family, generation = by_name.family, by_name.generation
    arch = config.get("model_type") or gguf_meta.get("architecture")
    arch_from = (
        "config.json model_type" if config.get("model_type") else "GGUF general.architecture"
    )
    if gguf_meta.get("basename") and (family is None or generation is None):
        by_meta = naming.infer_from_name(str(gguf_meta["basename"]))
        if family is None and by_meta.family:
            family = (by_meta.family[0], f"GGUF general.basename {gguf_meta['basename']!r}")
        if (
            generation is None
            and by_meta.generation
            and by_meta.family  # always set with a generation
            and by_meta.family[0] == (family or ("",))[0]
        ):
            generation = (by_meta.generation[0], f"GGUF general.basename {gguf_meta['basename']!r}")
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
    post = by_name.post_training
    assert post is not None  # infer_from_name always decides one
    if kind == "external" and family[0] == "other" and post[1].startswith("no post-training"):
        post = ("other", "external scorer of no known model family")
    if post[0] == "base" and post[1].startswith("no post-training") and generation:
        # The generation may have come from the config (e.g. a local "my-qwen3" folder).
        key = (family[0], generation[0])
        if key in naming.UNSUFFIXED_POST_TRAINED:
            post = (
                naming.UNSUFFIXED_POST_TRAINED[key],
                f"no suffix: un-suffixed {key[0]} {key[1]} models are post-trained",
            )

    if arch in naming.VISION_ARCHITECTURES and post[0] != "vision":
        post = (
            "vision",
            f"{arch_from} {arch!r}: a vision-language extension of a text model "
            f"(the name said {post[0]!r}: {post[1]})",
        )
    quant = _quantization(config, gguf_meta, gguf_file if kind == "gguf" else None, by_name)

    inferred["family"] = {"value": family[0], "from": family[1]}
    inferred["generation"] = {
        "value": generation[0] if generation else None,
        "from": generation[1] if generation else "not found in name or config",
    }
    order = naming.generation_order(generation[0] if generation else None)
    inferred["generation_order"] = {"value": order, "from": "generation"}
    inferred["post_training"] = {"value": post[0], "from": post[1]}
    inferred["n_params"] = {"value": n_params, "from": n_how}
    inferred["base_model"] = {
        "value": None,
        "candidate": by_name.base_candidate,
        "from": "no registered base yet",
    }
    if by_name.size_label:
        inferred["size_label"] = by_name.size_label
    if arch:
        inferred["architecture"] = arch
    if config.get("auto_map"):
        inferred["needs_remote_code"] = True
    inferred["source_kind"] = kind
    inferred["quantization"] = {"value": quant[0], "from": quant[1]}
    released = _release_date(readable[0] if readable else name, family[0], generation)
    inferred["release_date"] = {
        "value": released[0].isoformat() if released[0] else None,
        "from": released[1],
    }
    return {
        "release_date": released[0],
        "quantization": quant[0],
        "name": name,
        "source": source if kind != "external" else None,
        "revision": revision,
        "gguf_file": gguf_file,
        "tokenizer_source": None,
        "family": family[0],
        "generation": generation[0] if generation else None,
        "generation_order": order,
        "n_params": n_params,
        "post_training": post[0],
        "base_model": None,
        "inferred": inferred,
    }


NO_RELEASE_DATE = (
    "not in the registry's table of release dates (scoring/release_dates.py); "
    "set it with `psystats models set NAME release_date=YYYY-MM-DD`"
)


def _release_date(
    name: str | None, family: str | None, generation: tuple[str, str] | str | None
) -> tuple[date | None, str]:
    """(release date or None, why) from the registry's table of public release dates."""
    gen = generation[0] if isinstance(generation, tuple) else generation
    known = known_release_date(name, family, gen)
    return known if known else (None, NO_RELEASE_DATE)


def _weights_name(row: dict) -> str:
    """The name the weights came with (GGUF file, hub id or folder), else the model's name."""
    return str(row.get("gguf_file") or row.get("source") or row["name"])


def _quantization(
    config: dict, gguf_meta: dict, gguf_file: str | None, by_name: naming.Inference
) -> tuple[str | None, str]:
    """(label or None, why): the checkpoint's quantisation, from its config, GGUF file or name."""
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
    if gguf_file:
        q = naming.quantization_from_name(Path(gguf_file).stem)
        return (q[0], f"GGUF file name: {q[1]}") if q else ("gguf", "GGUF file")
    if by_name.quantization:
        return by_name.quantization
    return None, "no quantization_config, not GGUF, none in name (full precision)"


def _coerce(field: str, value: Any, where: str = "") -> Any:
    """A user-given field value in the column's type, or a WarehouseError naming field and value."""
    field = ALIASES.get(field, field)
    prefix = f"{where}: " if where else ""
    if field not in EDITABLE:
        raise WarehouseError(
            f"{prefix}unknown field {field!r}; editable fields: "
            f"{', '.join(EDITABLE)} (aliases: {', '.join(ALIASES)})"
        )
    kind = EDITABLE[field]
    given = value
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "null", "none"}):
        if field in ("post_training", "trust_remote_code"):
            raise WarehouseError(f"{prefix}{field} cannot be empty")
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError
            return text in {"true", "1", "yes"}
        if kind is int:
            if isinstance(value, str):  # "134515008", "1.5e9", "7_615_616_512"
                text = value.strip().replace("_", "")
                value = float(text) if re.search(r"[.eE]", text) else int(text)
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            n = int(value)
            if n < 0:
                raise ValueError
            return n
        if kind is float:
            return float(value)
        if kind is date:
            return parse_date(value)
    except (TypeError, ValueError):
        if kind is date:
            raise WarehouseError(
                f"{prefix}{field}: {str(given)!r} is not a date (YYYY-MM-DD, or YYYY-MM)"
            ) from None
        raise WarehouseError(f"{prefix}{field}: {given!r} is not a valid {kind.__name__}") from None
    value = str(value).strip()
    if field == "post_training" and value not in POST_TRAINING_TYPES:
        raise WarehouseError(
            f"{prefix}post_training: {value!r} is not one of {', '.join(POST_TRAINING_TYPES)}"
        )
    return value


# --------------------------------------------------------------------------- writing


def _insert(con: duckdb.DuckDBPyConnection, row: dict, trust_remote_code: bool) -> None:
    con.execute(
        "INSERT INTO models (model_id, name, source, revision, gguf_file, tokenizer_source, family, "
        "generation, generation_order, n_params, post_training, base_model, trust_remote_code, "
        "inferred, adapter, adapter_revision, adapter_sha256, quantization, pipeline_check, "
        "release_date) VALUES (nextval('model_id_seq'), "
        "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            row["name"],
            row["source"],
            row["revision"],
            row["gguf_file"],
            row["tokenizer_source"],
            row["family"],
            row["generation"],
            row["generation_order"],
            row["n_params"],
            row["post_training"],
            row["base_model"],
            trust_remote_code,
            json.dumps(row["inferred"], default=str),
            row.get("adapter"),
            row.get("adapter_revision"),
            row.get("adapter_sha256"),
            row.get("quantization"),
            row.get("pipeline_check"),
            row.get("release_date"),
        ],
    )


def _update(con: duckdb.DuckDBPyConnection, name: str, values: dict, inferred: dict) -> None:
    cols = list(values)
    con.execute(
        f"UPDATE models SET {', '.join(f'{c} = ?' for c in cols)}, inferred = ? WHERE name = ?",
        [values[c] for c in cols] + [json.dumps(inferred, default=str), name],
    )


def _apply(
    con: duckdb.DuckDBPyConnection, name: str, fields: dict[str, Any], how: str, where: str = ""
) -> dict:
    """Set user-given fields on a registered model (inside the caller's transaction)."""
    row = get_model(con, name)
    values: dict[str, Any] = {}
    for key, raw in fields.items():
        field = ALIASES.get(key, key)
        values[field] = _coerce(field, raw, where)
    if "base_model" in values and values["base_model"] is not None:
        values["base_model"] = _resolve_base(con, values["base_model"])
        if values["base_model"] == name:
            raise WarehouseError(f"{where + ': ' if where else ''}a model cannot be its own base")
    if "generation" in values and "generation_order" not in values:
        values["generation_order"] = naming.generation_order(values["generation"])
    table_why = None
    if (
        ("generation" in values or "family" in values)
        and "release_date" not in values
        and row["inferred"].get("release_date", {}).get("from") != USER
    ):
        # The table's date followed the old family/generation; a user's date stays.
        values["release_date"], table_why = _release_date(
            _weights_name(row),
            values.get("family", row["family"]),
            values.get("generation", row["generation"]),
        )
    inferred = row["inferred"]
    for field, value in values.items():
        inferred[field] = {"value": value, "from": how}
        if field == "base_model":
            inferred[field]["candidate"] = row["inferred"].get("base_model", {}).get("candidate")
    if "generation" in values and "generation_order" not in fields:
        inferred["generation_order"]["from"] = "generation"
    if table_why is not None:
        inferred["release_date"]["from"] = table_why
    _update(con, name, values, inferred)
    return get_model(con, name)


def _resolve_base(con: duckdb.DuckDBPyConnection, base: str) -> str:
    """A --base value as a models.name: a registered name, the name of the model with that source, or as given."""
    if scalar(con, "SELECT count(*) FROM models WHERE name = ?", [base]):
        return base
    try:
        _, source, gguf_file = _classify(base, None)
    except WarehouseError:
        return base
    rows = con.execute(
        "SELECT name FROM models WHERE source = ? AND coalesce(gguf_file, '') = ? "
        "AND adapter IS NULL ORDER BY model_id",
        [source, gguf_file or ""],
    ).fetchall()
    return rows[0][0] if rows else base


def fill_release_dates(con: duckdb.DuckDBPyConnection) -> int:
    """Fill ``release_date`` from the registry's table where it is NULL; returns how many.

    Models registered before the column existed (or before the table knew
    their generation) get their date on the next registry write.  A date the
    user cleared (``release_date=null``) stays NULL.
    """
    rows = con.execute(
        "SELECT name, source, gguf_file, family, generation, inferred FROM models "
        "WHERE release_date IS NULL AND family IS NOT NULL"
    ).fetchall()
    changed = 0
    for name, source, gguf_file, family, generation, inferred_json in rows:
        inferred = json.loads(inferred_json) if inferred_json else {}
        if inferred.get("release_date", {}).get("from") == USER:
            continue
        day, why = _release_date(
            _weights_name({"name": name, "source": source, "gguf_file": gguf_file}),
            family,
            generation,
        )
        if day is None:
            continue
        inferred["release_date"] = {"value": day, "from": why}
        _update(con, name, {"release_date": day}, inferred)
        changed += 1
    return changed


def link_bases(con: duckdb.DuckDBPyConnection) -> int:
    """Fill ``base_model`` for post-trained models whose base is now registered.

    The base is the model named by the family rule (``inferred.base_model.candidate``),
    else the one registered base model of the same family, generation and size
    label.  A base set by a user is never changed.  Returns how many rows changed.
    """
    rows = con.execute(
        "SELECT name, family, generation, inferred FROM models "
        "WHERE base_model IS NULL AND post_training <> 'base'"
    ).fetchall()
    bases = con.execute(
        "SELECT name, family, generation, inferred FROM models WHERE post_training = 'base'"
    ).fetchall()
    registered = {b[0] for b in bases}
    changed = 0
    for name, family, generation, inferred_json in rows:
        inferred = json.loads(inferred_json) if inferred_json else {}
        info = inferred.get("base_model", {})
        if info.get("from") == USER:
            continue  # the user said "no base"
        candidate = info.get("candidate")
        base, why = None, None
        if candidate in registered:
            base, why = candidate, f"family naming rule -> {candidate}"
        else:
            size = inferred.get("size_label")
            same = [
                b
                for b, fam, gen, inf in bases
                if size
                and generation
                and fam == family
                and gen == generation
                and json.loads(inf or "{}").get("size_label") == size
            ]
            if len(same) == 1:
                base, why = same[0], f"the only registered {family} {generation} {size} base model"
        if base and base != name:
            inferred["base_model"] = {"value": base, "candidate": candidate, "from": why}
            _update(con, name, {"base_model": base}, inferred)
            changed += 1
    return changed


def _add(
    con: duckdb.DuckDBPyConnection,
    source: str | None,
    *,
    name: str | None,
    base: str | None,
    post_training: str | None,
    gguf_file: str | None,
    revision: str | None,
    trust_remote_code: bool,
    overrides: dict | None,
    how: str = USER,
) -> dict:
    """add_model without its transaction (``models load`` and the importer batch several)."""
    explicit: dict[str, Any] = dict(overrides or {})
    if base is not None:
        explicit["base_model"] = base
    if post_training is not None:
        explicit["post_training"] = post_training
    if name is None and source is not None:
        # Registered before under its default name: don't read the weights again.
        _, src, gg = _classify(source, gguf_file)
        rows = con.execute(
            "SELECT name FROM models WHERE source = ? AND coalesce(gguf_file, '') = ? "
            "AND coalesce(revision, '') = ? AND adapter IS NULL ORDER BY model_id",
            [src, gg or "", revision or ""],
        ).fetchall()
        if rows:
            name = rows[0][0]
    if name is not None:
        existing = _row(con, "name = ?", [name])
        if existing is not None:
            if source is not None:
                _, src, gg = _classify(source, gguf_file)
                if (src, gg or None) != (existing["source"], existing["gguf_file"]) or (
                    revision is not None and revision != existing["revision"]
                ):
                    raise WarehouseError(
                        f"model {name!r} is already registered with source {existing['source']!r}"
                        f"{' (' + existing['gguf_file'] + ')' if existing['gguf_file'] else ''}"
                        f"{' at revision ' + existing['revision'] if existing['revision'] else ''}; "
                        f"choose another --name or `psystats models remove {name}` first"
                    )
            if trust_remote_code and not existing["trust_remote_code"]:
                explicit["trust_remote_code"] = True
            changed = {
                k: v
                for k, v in explicit.items()
                if existing.get(ALIASES.get(k, k)) != _coerce(k, v)
            }
            row = _apply(con, name, changed, how) if changed else existing
            link_bases(con)
            return get_model(con, name)
    row = describe(source, name=name, gguf_file=gguf_file, revision=revision)
    if _row(con, "name = ?", [row["name"]]) is not None:
        # Same default name (e.g. the hub id) registered before: idempotent.
        return _add(
            con,
            source,
            name=row["name"],
            base=base,
            post_training=post_training,
            gguf_file=gguf_file,
            revision=revision,
            trust_remote_code=trust_remote_code,
            overrides=overrides,
            how=how,
        )
    for key, raw in explicit.items():
        field = ALIASES.get(key, key)
        value = _coerce(field, raw)
        if field == "base_model" and value is not None:
            value = _resolve_base(con, value)
        row[field] = value
        row["inferred"][field] = {"value": value, "from": how}
        if field == "generation" and "generation_order" not in explicit:
            row["generation_order"] = naming.generation_order(value)
            row["inferred"]["generation_order"] = {
                "value": row["generation_order"],
                "from": "generation",
            }
    given = {ALIASES.get(k, k) for k in explicit}
    if given & {"family", "generation"} and "release_date" not in given:
        # The user's family/generation, not the name's, decides the table's date.
        day, why = _release_date(_weights_name(row), row["family"], row["generation"])
        row["release_date"] = day
        row["inferred"]["release_date"] = {"value": day, "from": why}
    if row["base_model"] is not None and row["base_model"] == row["name"]:
        raise WarehouseError("a model cannot be its own base")
    _insert(con, row, bool(explicit.get("trust_remote_code", trust_remote_code)))
    link_bases(con)
    return get_model(con, row["name"])


def add_model(
    con: duckdb.DuckDBPyConnection,
    source: str | None,
    *,
    name: str | None = None,
    base: str | None = None,
    post_training: str | None = None,
    gguf_file: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    overrides: dict | None = None,
    adapter: str | None = None,
    adapter_revision: str | None = None,
) -> dict:
    """Register a model (idempotently) and return its row.

    ``source`` is a hub id, a local safetensors folder, a local ``.gguf`` file
    (stored as ``source`` = folder, ``gguf_file`` = file name) or None for an
    external scorer (then ``name`` is required).  Family, generation,
    post-training type and parameter count are inferred; ``base``,
    ``post_training`` and ``overrides`` (any editable field) win over
    inference.  Registering the same name and source again changes only the
    fields given explicitly; the same name with another source is an error.

    With ``adapter`` (a PEFT adapter folder or hub id) the model registered is
    the adapter on the base ``source`` (a registered name, folder, GGUF or hub
    id; registered first when new): see :func:`_add_adapter`.
    """
    with transaction(con):
        fill_release_dates(con)  # rows registered before the table knew their date
        if adapter is not None:
            return _add_adapter(
                con,
                source,
                adapter,
                name=name,
                adapter_revision=adapter_revision,
                post_training=post_training,
                gguf_file=gguf_file,
                revision=revision,
                trust_remote_code=trust_remote_code,
                overrides=overrides,
            )
        return _add(
            con,
            source,
            name=name,
            base=base,
            post_training=post_training,
            gguf_file=gguf_file,
            revision=revision,
            trust_remote_code=trust_remote_code,
            overrides=overrides,
        )


def _add_adapter(
    con: duckdb.DuckDBPyConnection,
    base_source: str | None,
    adapter: str,
    *,
    name: str | None,
    adapter_revision: str | None,
    post_training: str | None,
    gguf_file: str | None,
    revision: str | None,
    trust_remote_code: bool,
    overrides: dict | None,
) -> dict:
    """Register ``adapter`` on ``base_source`` (inside the caller's transaction).

    The row has the base's source, family, generation, size and quantisation,
    ``base_model`` = the base, ``adapter`` (absolute folder or hub id),
    ``adapter_revision`` and ``adapter_sha256`` (weights + config).  The type
    comes from the adapter's name ("...-Instruct-lora": instruct); a name
    with no type marker is "other" (a fine-tune of unknown kind), never "base".
    """
    from . import adapters

    if not base_source:
        raise WarehouseError(
            "--adapter needs the base model: psystats models add BASE --adapter PATH"
        )
    info = adapters.describe(adapter, adapter_revision)
    adapter_loc = info["folder"] if adapters._is_path(adapter) else adapter
    base = _row(con, "name = ?", [base_source])
    if base is None:
        base = _add(
            con,
            base_source,
            name=None,
            base=None,
            post_training=None,
            gguf_file=gguf_file,
            revision=revision,
            trust_remote_code=trust_remote_code,
            overrides=None,
        )
    if base.get("adapter"):
        raise WarehouseError(
            f"{base['name']!r} is itself an adapter model; give its base ({base['base_model']!r})"
        )
    default_name = Path(adapter_loc).name if adapters._is_path(adapter) else adapter
    name = name or default_name
    existing = _row(con, "name = ?", [name])
    if existing is not None:
        if (existing.get("adapter"), existing["source"]) != (adapter_loc, base["source"]):
            raise WarehouseError(
                f"model {name!r} is already registered "
                + (
                    f"with adapter {existing['adapter']!r}"
                    if existing.get("adapter")
                    else f"with source {existing['source']!r}"
                )
                + f"; choose another --name or `psystats models remove {name}` first"
            )
        if existing.get("adapter_sha256") != info["sha256"]:
            _update(con, name, {"adapter_sha256": info["sha256"]}, existing["inferred"])
        explicit: dict[str, Any] = dict(overrides or {})
        if post_training is not None:
            explicit["post_training"] = post_training
        if explicit:
            _apply(con, name, explicit, USER)
        return get_model(con, name)
    by_name = naming.infer_from_name(default_name)
    post = by_name.post_training
    assert post is not None  # infer_from_name always decides one
    if post[0] == "base":
        post = ("other", f"an adapter whose name names no post-training type ({post[1]})")
    inferred = {
        k: dict(v) if isinstance(v, dict) else v
        for k, v in base["inferred"].items()
        if k in ("family", "generation", "generation_order", "n_params", "size_label")
    }
    inferred["post_training"] = {"value": post[0], "from": f"adapter name: {post[1]}"}
    inferred["base_model"] = {
        "value": base["name"],
        "candidate": by_name.base_candidate,
        "from": f"the adapter is applied on {base['name']!r}",
    }
    inferred["n_params"] = {
        "value": base["n_params"],
        "from": "the base's: an adapter adds low-rank deltas to the same weights",
    }
    inferred["adapter"] = {k: v for k, v in info.items() if k != "folder"}
    inferred["quantization"] = {"value": base.get("quantization"), "from": "the base's"}
    inferred["release_date"] = {"value": base.get("release_date"), "from": "the base's"}
    inferred["source_kind"] = "adapter"
    row = {
        "name": name,
        "source": base["source"],
        "revision": base["revision"],
        "gguf_file": base["gguf_file"],
        "tokenizer_source": base["tokenizer_source"],
        "family": base["family"],
        "generation": base["generation"],
        "generation_order": base["generation_order"],
        "n_params": base["n_params"],
        "post_training": post[0],
        "base_model": base["name"],
        "inferred": inferred,
        "adapter": adapter_loc,
        "adapter_revision": adapter_revision,
        "adapter_sha256": info["sha256"],
        "quantization": base.get("quantization"),
        # An adapter belongs to its base's generation: it carries the base's date.
        "release_date": base.get("release_date"),
    }
    explicit = dict(overrides or {})
    if post_training is not None:
        explicit["post_training"] = post_training
    for key, raw in explicit.items():
        field = ALIASES.get(key, key)
        row[field] = _coerce(field, raw)
        row["inferred"][field] = {"value": row[field], "from": USER}
    if row["base_model"] == row["name"]:
        raise WarehouseError("a model cannot be its own base")
    _insert(con, row, bool(base["trust_remote_code"]))
    return get_model(con, name)


def set_fields(con: duckdb.DuckDBPyConnection, name: str, fields: dict[str, Any]) -> dict:
    """Override fields of a registered model (``psystats models set``); returns the new row."""
    if not fields:
        raise WarehouseError("nothing to set: give field=value pairs")
    with transaction(con):
        fill_release_dates(con)
        row = _apply(con, name, fields, USER)
        link_bases(con)
    return get_model(con, row["name"])


def remove_model(
    con: duckdb.DuckDBPyConnection, name: str, *, force: bool = False
) -> dict[str, int]:
    """Delete a model; with ``force`` also its score runs and scores.  Returns what was deleted."""
    get_model(con, name)
    runs = [
        r
        for (r,) in con.execute("SELECT run_id FROM score_runs WHERE model = ?", [name]).fetchall()
    ]
    n_scores = int(
        scalar(
            con,
            "SELECT count(*) FROM scores WHERE run_id IN "
            "(SELECT run_id FROM score_runs WHERE model = ?)",
            [name],
        )
        or 0
    )
    if runs and not force:
        raise WarehouseError(
            f"model {name!r} has {len(runs)} score run(s) with {n_scores} scores; "
            f"`psystats models remove {name} --force` deletes them too"
        )
    with transaction(con):
        # Both scores layouts (under Parquet: the runs' partition folders go at commit).
        from psystats.warehouse.parquet_layout import delete_runs

        delete_runs(con, runs)
        con.execute("DELETE FROM score_runs WHERE model = ?", [name])
        con.execute("DELETE FROM models WHERE name = ?", [name])
        # Inferred links to the removed base are undone (re-adding it relinks);
        # a base the user gave stays, as given.
        for other, inferred_json in con.execute(
            "SELECT name, inferred FROM models WHERE base_model = ?", [name]
        ).fetchall():
            inferred = json.loads(inferred_json or "{}")
            info = inferred.get("base_model", {})
            if info.get("from") != USER:
                inferred["base_model"] = {
                    "value": None,
                    "candidate": info.get("candidate"),
                    "from": f"unlinked: base {name!r} removed",
                }
                _update(con, other, {"base_model": None}, inferred)
    return {"runs": len(runs), "scores": n_scores}


def load_file(con: duckdb.DuckDBPyConnection, path: str | Path) -> list[dict]:
    """Register or update every model listed in a TOML or YAML file, in one transaction.

    TOML: ``[[models]]`` tables.  YAML: a list, or a mapping with a ``models``
    list.  Each entry has ``name`` and/or ``source`` plus any editable field;
    an entry whose name is registered updates it, any other is added.  An
    entry with ``adapter`` (and ``adapter_revision``) registers that adapter
    on ``source``, its base.
    """
    path = Path(path)
    entries = _read_entries(path)
    rows = []
    with transaction(con):
        fill_release_dates(con)
        for i, entry in enumerate(entries, 1):
            where = f"{path}: models[{i}]"
            if not isinstance(entry, dict):
                raise WarehouseError(
                    f"{where}: expected a table of fields, got {type(entry).__name__}"
                )
            entry = dict(entry)
            name, source = entry.pop("name", None), entry.pop("source", None)
            adapter = entry.pop("adapter", None)
            adapter_revision = entry.pop("adapter_revision", None)
            if name:
                where += f" ({name})"
            for key in entry:  # report bad fields before any inference
                _coerce(key, entry[key], where)
            try:
                if adapter is not None:
                    # An adapter entry's source is its base (a registered name, folder,
                    # GGUF or hub id), as for `models add BASE --adapter PATH`.
                    rows.append(
                        _add_adapter(
                            con,
                            source,
                            str(adapter),
                            name=name,
                            adapter_revision=adapter_revision,
                            post_training=None,
                            gguf_file=entry.pop("gguf_file", None),
                            revision=entry.pop("revision", None),
                            trust_remote_code=False,
                            overrides=entry,
                        )
                    )
                elif (
                    name
                    and _row(con, "name = ?", [name]) is not None
                    and (source is None or _same_source(con, name, source, entry.get("gguf_file")))
                ):
                    rows.append(_apply(con, name, entry, USER, where))
                    link_bases(con)
                elif source is None and not name:
                    raise WarehouseError("needs a name or a source")
                else:
                    gguf_file = entry.pop("gguf_file", None)
                    revision = entry.pop("revision", None)
                    trc = bool(_coerce("trust_remote_code", entry.pop("trust_remote_code", False)))
                    rows.append(
                        _add(
                            con,
                            source,
                            name=name,
                            base=None,
                            post_training=None,
                            gguf_file=gguf_file,
                            revision=revision,
                            trust_remote_code=trc,
                            overrides=entry,
                        )
                    )
            except WarehouseError as e:
                msg = str(e)
                raise WarehouseError(
                    msg if msg.startswith(str(path)) else f"{where}: {msg}"
                ) from None
    return rows


def _same_source(
    con: duckdb.DuckDBPyConnection, name: str, source: str, gguf_file: str | None
) -> bool:
    row = get_model(con, name)
    try:
        _, src, gg = _classify(source, gguf_file or row["gguf_file"])
    except WarehouseError:
        return source == row["source"]
    return src == row["source"] and (gg or None) == row["gguf_file"]


def _read_entries(path: Path) -> list:
    if not path.is_file():
        raise WarehouseError(f"{path}: no such file")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    data: Any
    if suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise WarehouseError(f"{path}: invalid TOML ({e})") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise WarehouseError(f"{path}: invalid YAML ({e})") from None
    else:
        raise WarehouseError(f"{path}: expected a .toml, .yaml or .yml file")
    if isinstance(data, dict):
        data = data.get("models")
    if not isinstance(data, list):
        raise WarehouseError(
            f"{path}: expected a list of models ([[models]] in TOML, "
            f"a list or models: [...] in YAML)"
        )
    return data
