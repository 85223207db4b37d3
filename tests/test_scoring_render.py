"""Renderings (plain / chat / persona) and the segment boundary rule, on the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest

from psystats.scoring.inputs import ParticipantInput
from psystats.scoring.render import Segment, Skip, render
from psystats.scoring.tokenize import leading_special_ids, tokenize

SMOL_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n"
)


def participant(text: str, metadata: dict | None = None) -> ParticipantInput:
    from psystats.warehouse.transcript import find_spans

    spans = tuple(find_spans(text))
    return ParticipantInput(
        participant_key=7,
        experiment="e",
        text=text,
        response_ids=tuple(range(100, 100 + len(spans))),
        spans=spans,
        metadata=metadata or {},
    )


@pytest.fixture(scope="module")
def smol_tok(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))


TEXT = "Pick a box.\nYou press <<J>>. You win 3.\nAgain: you press <<K>>.\nThe end."


def test_plain_keeps_markers_as_context():
    r = render(participant(TEXT), "plain")
    assert r.text == TEXT
    assert [s for s in r.segments if s.response >= 0] == [Segment("J", 0), Segment("K", 1)]
    assert r.segments[0] == Segment("Pick a box.\nYou press <<")
    assert r.segments[2] == Segment(">>. You win 3.\nAgain: you press <<")


def test_chat_matches_real_smollm2_template(smol_tok):
    r = render(participant(TEXT), "chat", smol_tok)
    # Written out by hand from the SmolLM2 template (default system prompt).
    expected = (
        SMOL_SYSTEM
        + "<|im_start|>user\nPick a box.\nYou press <|im_end|>\n"
        + "<|im_start|>assistant\nJ<|im_end|>\n"
        + "<|im_start|>user\n. You win 3.\nAgain: you press <|im_end|>\n"
        + "<|im_start|>assistant\nK<|im_end|>\n"
        + "<|im_start|>user\n.\nThe end.<|im_end|>\n"
    )
    assert r.text == expected
    assert [s.text for s in r.segments if s.response >= 0] == ["J", "K"]
    assert r.add_special_tokens is False
    # The template's own rendering agrees.
    msgs = [
        {"role": "user", "content": "Pick a box.\nYou press "},
        {"role": "assistant", "content": "J"},
        {"role": "user", "content": ". You win 3.\nAgain: you press "},
        {"role": "assistant", "content": "K"},
        {"role": "user", "content": ".\nThe end."},
    ]
    assert smol_tok.apply_chat_template(msgs, tokenize=False) == expected
    # Special tokens in the context are single tokens, responses are their own tokens.
    tok = tokenize(smol_tok, r, 2, "segments", leading_special_ids(smol_tok))
    assert tok.input_ids[0] == smol_tok.convert_tokens_to_ids("<|im_start|>")
    for i, resp in enumerate(["J", "K"]):
        assert smol_tok.decode(tok.input_ids[tok.starts[i] : tok.ends[i]]) == resp
        before = smol_tok.convert_ids_to_tokens(int(tok.input_ids[tok.starts[i] - 1]))
        assert before.endswith("\n") or before == "Ċ"


def test_chat_with_system_prompt_and_response_first(smol_tok):
    r = render(
        participant("<<yes>> was your answer."), "chat", smol_tok, system_prompt="Be a human."
    )
    assert r.text == (
        "<|im_start|>system\nBe a human.<|im_end|>\n<|im_start|>user\n<|im_end|>\n"
        "<|im_start|>assistant\nyes<|im_end|>\n<|im_start|>user\n was your answer.<|im_end|>\n"
    )


def test_chat_refuses_template_that_rewrites_responses(smol_tok):
    import copy

    tok = copy.deepcopy(smol_tok)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
    )
    with pytest.raises(Skip) as e:
        render(participant("Say <<  padded >>."), "chat", tok)
    assert e.value.reason == "chat-template-alters-response"


def test_persona_interview():
    p = participant(
        TEXT, {"age": 32.0, "gender": "female", "FACSIMILE SW": 11, "condition": "B", "notes": None}
    )
    r = render(p, "persona")
    assert r.text == (
        "Before the experiment, the participant answered some questions about themselves.\n"
        "Q: How old are you?\nA: 32\n"
        "Q: What is your gender?\nA: female\n"
        "Q: What is your FACSIMILE SW?\nA: 11\n\n" + TEXT
    )
    assert [s.text for s in r.segments if s.response >= 0] == ["J", "K"]
    with pytest.raises(Skip) as e:
        render(participant(TEXT), "persona")
    assert e.value.reason == "persona-no-metadata"


def test_segments_never_merge_across_a_boundary(smol_tok):
    # Whole-text tokenisation of "<<B>>" could merge marker and answer; segments cannot.
    p = participant("Choose <<B>>.")
    r = render(p, "plain")
    tok = tokenize(smol_tok, r, 1, "segments", [])
    assert smol_tok.decode(tok.input_ids[tok.starts[0] : tok.ends[0]]) == "B"
    assert smol_tok.decode(tok.input_ids) == p.text
    whole = tokenize(smol_tok, r, 1, "whole", [])
    assert smol_tok.decode(whole.input_ids) == p.text
    span = smol_tok.decode(whole.input_ids[whole.starts[0] : whole.ends[0]])
    assert "B" in span
    assert whole.straddling == sum(1 for x in (span.startswith("<"), span.endswith(">")) if x)


def test_empty_response_has_no_tokens(smol_tok):
    p = participant("Type: <<>> then <<x>>.")
    tok = tokenize(smol_tok, render(p, "plain"), 2, "segments", [])
    assert tok.ends[0] == tok.starts[0]
    assert smol_tok.decode(tok.input_ids[tok.starts[1] : tok.ends[1]]) == "x"
