"""Vision-language descendants scored on text, against a float64 reference through their own forward.

Tiny random-initialised Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Mllama (Llama-3.2-Vision)
and Gemma-3 models are built from transformers' own config classes (nothing is
downloaded), saved as safetensors folders and loaded by psystats through the
architecture's image-text-to-text class.  The reference is the model's own
``model(input_ids).logits`` in float64 (no image): Qwen's multimodal rotary
positions, Mllama's skipped cross-attention layers and Gemma-3's
sliding-window layers are whatever that forward does.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import (
    FRANKE,
    check_batch,
    check_options,
    model_row,
    reference_pieces,
    reference_scores,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "mllama": "MllamaForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
}


@pytest.fixture(scope="module")
def vl_models(tmp_path_factory, smollm2_tokenizer_dir):
    from psystats.scoring.tiny import TINY_VL_ARCHS, build_tiny_vl_model

    root = tmp_path_factory.mktemp("tiny-vl")
    return {
        fam: build_tiny_vl_model(root / f"tiny-{fam}", smollm2_tokenizer_dir, fam, seed=10 + i)
        for i, fam in enumerate(TINY_VL_ARCHS)
    }


def load_vl64(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float64).eval()


def test_tiny_vl_architectures_exist_in_transformers():
    from psystats.scoring.tiny import TINY_VL_ARCHS

    assert set(TINY_VL_ARCHS) == set(VL_CLASSES)


def short_participants():
    """Two short transcripts in the franke format (the full real ones are the slow test's):
    the LM head of a 49k vocabulary in float64 makes long references slow on two cores."""
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
                participant_key=900 + k,
                experiment=FRANKE,
                text=text,
                response_ids=tuple(9000 + 10 * k + j for j in range(len(answers))),
                spans=tuple(spans),
            )
        )
    return out


@pytest.mark.parametrize("family", sorted(VL_CLASSES))
def test_vl_model_matches_float64_reference(vl_models, family):
    """Two short transcripts packed in one forward, with option branches, through the VL
    model's decoder == its own plain float64 forward (no image)."""
    from psystats.scoring.engine import Scorer

    path = vl_models[family]
    franke = short_participants()
    opts = ["A", "B", "green hexagon"]
    sc = Scorer(model_row(path), dtype="float64", packing="packed", option_sets={FRANKE: opts})
    assert type(sc.lm).__name__ == VL_CLASSES[family]
    assert sc.kind == "vision-language"
    assert sc.settings["input"] == "text only (no image)"
    ref_model = load_vl64(path)
    refs = [
        reference_scores(ref_model, sc.tokenizer, reference_pieces(p), len(p.spans), sc.prefix_ids)
        for p in franke
    ]
    batch = sc.score(franke)
    assert batch.counts["tokens_forwarded"] > sum(len(sc._tokenize(p)) for p in franke)  # branches
    assert check_batch(batch, franke, refs, atol=1e-8) < 1e-8
    check_options(batch, franke, sc, ref_model, opts, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(VL_CLASSES))
def test_vl_model_matches_float64_reference_on_whole_transcripts(vl_models, inputs, family):
    """Whole real transcripts (one long free-text one), packed, with option branches."""
    from psystats.scoring.engine import Scorer

    path = vl_models[family]
    franke = [p for p in inputs if p.experiment == FRANKE][:2]
    opts = ["A", "B", "C", "D", "green hexagon"]
    sc = Scorer(model_row(path), dtype="float64", packing="packed", option_sets={FRANKE: opts})
    assert type(sc.lm).__name__ == VL_CLASSES[family]
    assert sc.kind == "vision-language"
    assert sc.settings["input"] == "text only (no image)"
    assert sc.settings["model_class"] == VL_CLASSES[family]
    ref_model = load_vl64(path)
    parts = franke + [p for p in inputs if p.experiment != FRANKE][:1]
    refs = [
        reference_scores(ref_model, sc.tokenizer, reference_pieces(p), len(p.spans), sc.prefix_ids)
        for p in parts
    ]
    batch = sc.score(parts)
    assert sorted(batch.participant_keys) == sorted(p.participant_key for p in parts)
    assert check_batch(batch, parts, refs, atol=1e-8) < 1e-8
    got = check_options(batch, franke, sc, ref_model, opts, atol=1e-8)
    for rid in franke[0].response_ids:
        assert math.isclose(sum(math.exp(got[(rid, o)]) for o in opts), 1.0, abs_tol=1e-9)


def test_gemma3_sliding_window_is_crossed_and_kept(vl_models, inputs):
    """The tiny Gemma-3's window (8 tokens) is far shorter than a transcript: a packed mask
    without the window would attend too far, and the self-check would refuse the model."""
    from psystats.scoring import attention as attn
    from psystats.scoring.engine import Scorer

    sc = Scorer(model_row(vl_models["gemma3"]), dtype="float64", packing="packed")
    assert sc.sliding == (8, True)
    assert sc.settings["sliding_window"] == 8
    assert sc.attention == "dense"  # FlexAttention masks carry no window here
    # Dropping the window from the packed mask changes the numbers: the rule is load-bearing.
    p = inputs[0]
    want = sc.score([p]).scores["nll"].to_pylist()
    sc.sliding = (None, False)
    sc.packing = "packed"
    rows = {r["response_id"]: r["nll"] for r in sc.score([p, inputs[1]]).scores.to_pylist()}
    got = [rows[rid] for rid in p.response_ids]
    assert max(abs(a - b) for a, b in zip(got, want)) > 1e-3
    assert attn.sliding_window_of(sc.lm.config) == (8, True)


def test_vl_chat_condition_uses_text_only_template(vl_models, inputs):
    """chat: the folder's chat template with text-only turns; the response spans are the
    assistant turns, and scores equal a float64 forward over the rendered chat."""
    from psystats.scoring.engine import Scorer
    from psystats.scoring.render import render

    path = vl_models["qwen2_5_vl"]
    sc = Scorer(model_row(path), dtype="float64", condition="chat")
    p = inputs[0]
    rendering = render(p, "chat", sc.tokenizer)
    pieces = [(s.text, s.response) for s in rendering.segments]
    ref = reference_scores(load_vl64(path), sc.tokenizer, pieces, len(p.spans), [])
    batch = sc.score([p])
    check_batch(batch, [p], [ref], atol=1e-8)


def test_processor_chat_template_is_used_when_the_tokenizer_has_none(vl_models, tmp_path):
    """VL repositories often keep the template in chat_template.json (the processor's)."""
    import json
    import shutil

    from psystats.scoring import loader

    src = vl_models["qwen2_vl"]
    dest = tmp_path / "vl-processor-template"
    shutil.copytree(src, dest)
    template = loader.load_tokenizer(model_row(src)).chat_template
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in ("chat_template.jinja",):
        (dest / f).unlink(missing_ok=True)
    (dest / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    tok = loader.load_tokenizer(model_row(dest))
    assert tok.chat_template == template


PARTS_ONLY_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>"
    "{% for c in m.content %}{% if c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}"
    "<|end|>\n{% endfor %}"
)


def test_chat_template_reading_only_typed_parts_gets_text_parts(vl_models):
    """A processor template that iterates content parts renders nothing for string content
    (no response found); the turns are then given as text parts, and the responses are
    located exactly in that rendering."""
    from psystats.scoring import loader
    from psystats.scoring.render import chat_messages, render, text_parts

    tok = loader.load_tokenizer(model_row(vl_models["qwen2_vl"]))
    tok.chat_template = PARTS_ONLY_TEMPLATE
    p = short_participants()[0]
    r = render(p, "chat", tok)
    want = tok.apply_chat_template(text_parts(chat_messages(p)), tokenize=False)
    assert r.text == want
    assert [s.text for s in r.segments if s.response >= 0] == p.responses
    assert "<|assistant|>A<|end|>" in want


@pytest.mark.parametrize("family", ["qwen2_5_vl", "mllama", "gemma3"])
def test_vl_folder_registers_with_its_parameter_count(vl_models, db_path, family):
    """Registered like any folder: the count from the safetensors headers equals torch's
    (vision tower included); the family and, for Qwen VL, the type come out right."""
    from psystats.scoring import registry
    from psystats.warehouse import db as warehouse_db

    con = warehouse_db.open(db_path, "write", create=True)
    try:
        row = registry.add_model(con, str(vl_models[family]))
    finally:
        con.close()
    model = load_vl64(vl_models[family])
    assert row["n_params"] == sum(p.numel() for p in model.parameters())
    assert row["inferred"]["architecture"] == family
    assert row["family"] == {"qwen2_5_vl": "qwen", "mllama": "llama", "gemma3": "gemma"}[family]
    if family != "gemma3":  # Gemma 3 is natively multimodal: its architecture says nothing
        assert row["post_training"] == "vision"
