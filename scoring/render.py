"""How a transcript becomes model input under each condition.

A rendering is a list of :class:`Segment` s: pieces of text that are either
*context* (``response == -1``) or exactly one human response (``response == i``,
the i-th response of the participant).  Concatenated, the segments are the
text the model reads.  Tokenisation (``scoring.tokenize``) then turns segments
into token ids without ever mixing response and context characters.

Conditions
----------
``plain``
    The transcript as written, markers included as context:
    ``... press <<`` | ``B`` | ``>>. Next ...``.  The seed study scores base
    models this way.
``chat``
    The transcript split at the markers into alternating turns: the text
    before a response (markers removed) is a user turn, the response is the
    assistant turn, the text after the last response (if any) a final user
    turn.  Rendered with the tokenizer's own chat template, thinking disabled
    where the template has that switch (``enable_thinking=False``), with the
    template's default system prompt unless one is given.  The assistant turn
    contents are the scored responses; everything the template adds is context.
``persona``
    A short interview with one question and answer per available metadata
    field, then a blank line, then the ``plain`` transcript.  Participants
    with no metadata are skipped (reason ``persona-no-metadata``).
``history:K`` (K = 0, 1, 2, ...)
    Each response is scored as if every earlier response except the K most
    recent had been removed from the ``plain`` transcript, the whole
    ``<<...>>`` with its markers; every other character stays.  One
    rendering per response: ``scoring.history`` builds them; :func:`render`
    gives the ``plain`` rendering they are cut from.  ``history:all``
    removes nothing: it is ``plain`` (same numbers), stored under its own name.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from .inputs import ParticipantInput

CONDITIONS = ("plain", "chat", "persona")
HISTORY = "history:"  # history:K, history:all
CONDITION_HELP = "plain, chat, persona, history:K (K = 0, 1, 2, ...) or history:all"


def history_window(condition: str) -> int | None:
    """K of ``history:K``; None for every other condition (``history:all`` is ``plain``)."""
    if not condition.startswith(HISTORY) or condition == HISTORY + "all":
        return None
    return int(condition[len(HISTORY) :])


def check_condition(condition: str) -> None:
    """Raise ValueError unless ``condition`` is one psystats renders."""
    if condition in CONDITIONS or condition == HISTORY + "all":
        return
    k = condition[len(HISTORY) :] if condition.startswith(HISTORY) else None
    # One spelling per window: "history:7", never "history:07".
    if k is not None and k.isascii() and k.isdigit() and str(int(k)) == k:
        return
    raise ValueError(f"unknown condition; choose from {CONDITION_HELP}")


# Questions of the persona interview, in order.  Other metadata keys (e.g.
# questionnaire scores) follow, sorted by key, asked with OTHER_QUESTION.
PERSONA_QUESTIONS: dict[str, str] = {
    "age": "How old are you?",
    "gender": "What is your gender?",
    "nationality": "What is your nationality?",
    "education": "What is your highest level of education?",
    "diagnosis": "Have you been diagnosed with any psychiatric or neurological condition?",
}
OTHER_QUESTION = "What is your {key}?"
PERSONA_INTRO = "Before the experiment, the participant answered some questions about themselves.\n"
# Metadata keys that describe the study design rather than the person.
PERSONA_EXCLUDED = frozenset({"condition", "group", "session", "study", "experiment"})


@dataclass(frozen=True)
class Segment:
    text: str
    response: int = -1  # index into the participant's responses, -1 = context


@dataclass(frozen=True)
class Rendering:
    segments: tuple[Segment, ...]
    # True when the tokenizer's own leading special tokens (e.g. BOS) go in
    # front; False when the text already carries them (chat templates do).
    add_special_tokens: bool = True

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)


class Skip(Exception):
    """A participant that cannot be rendered under this condition; ``reason`` is counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def plain_segments(p: ParticipantInput) -> list[Segment]:
    segs: list[Segment] = []
    pos = 0
    for i, (a, b) in enumerate(p.spans):
        if a > pos:
            segs.append(Segment(p.text[pos:a]))
        segs.append(Segment(p.text[a:b], i))
        pos = b
    if pos < len(p.text):
        segs.append(Segment(p.text[pos:]))
    return segs


def _answer(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else f"{value:g}"
    s = str(value).strip()
    return s or None


def persona_interview(metadata: dict[str, Any]) -> str | None:
    """The interview text for ``metadata``, or None when there is nothing to ask about."""
    lines = []
    for key, question in PERSONA_QUESTIONS.items():
        ans = _answer(metadata.get(key))
        if ans is not None:
            lines.append(f"Q: {question}\nA: {ans}\n")
    for key in sorted(k for k in metadata if k not in PERSONA_QUESTIONS):
        if key.lower() in PERSONA_EXCLUDED:
            continue
        ans = _answer(metadata[key])
        if ans is not None:
            lines.append(f"Q: {OTHER_QUESTION.format(key=key.replace('_', ' '))}\nA: {ans}\n")
    if not lines:
        return None
    return PERSONA_INTRO + "".join(lines) + "\n"


def chat_messages(p: ParticipantInput, system_prompt: str | None = None) -> list[dict[str, str]]:
    """Alternating user/assistant messages: the text around responses, markers removed."""
    msgs: list[dict[str, str]] = []
    if system_prompt is not None:
        msgs.append({"role": "system", "content": system_prompt})
    pos = 0
    for a, b in p.spans:
        # a - 2 / b + 2 skip the '<<' and '>>' markers around the response.
        msgs.append({"role": "user", "content": p.text[pos : a - 2]})
        msgs.append({"role": "assistant", "content": p.text[a:b]})
        pos = b + 2
    if pos < len(p.text):
        msgs.append({"role": "user", "content": p.text[pos:]})
    return msgs


def _sentinel(i: int) -> str:
    # Private-use characters: never in Psych-201 text, never touched by templates.
    return f"\ue000{i}\ue001"


def chat_segments(
    p: ParticipantInput,
    tokenizer,
    system_prompt: str | None = None,
    template_kwargs: dict | None = None,
) -> list[Segment]:
    """Render with the tokenizer's chat template and locate each assistant turn.

    The template is rendered twice: once with the real responses and once with
    a unique sentinel in place of each.  The sentinel rendering gives the
    exact place of every response; the real rendering must then equal the
    sentinel rendering with the responses put back.  If a template rewrites
    assistant content (strips it, moves reasoning, ...) that check fails and
    the participant is skipped with reason ``chat-template-alters-response``
    rather than scored on text that is not what the model would see.
    """
    msgs = chat_messages(p, system_prompt)
    kwargs = dict(template_kwargs or {})
    try:
        return _chat_segments(p, tokenizer, msgs, kwargs)
    except Exception as first:  # noqa: BLE001 - retried once, then the first error stands
        # Some vision-language templates read content only as a list of typed parts
        # ([{"type": "text", "text": ...}]); text-only turns in that form, same text.
        try:
            return _chat_segments(p, tokenizer, text_parts(msgs), kwargs)
        except Exception:  # noqa: BLE001
            raise first from None


def text_parts(msgs: list[dict]) -> list[dict]:
    """The messages with each content as a one-element list of text parts (no image)."""
    return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in msgs]


def _chat_segments(p: ParticipantInput, tokenizer, msgs: list[dict], kwargs: dict) -> list[Segment]:
    real = tokenizer.apply_chat_template(msgs, tokenize=False, **kwargs)
    marked = []
    j = 0
    for m in msgs:
        if m["role"] == "assistant":
            text = _sentinel(j)
            content = text if isinstance(m["content"], str) else [{"type": "text", "text": text}]
            marked.append({"role": "assistant", "content": content})
            j += 1
        else:
            marked.append(m)
    with_sentinels = tokenizer.apply_chat_template(marked, tokenize=False, **kwargs)
    segs: list[Segment] = []
    pos = 0
    responses = p.responses
    for i in range(len(responses)):
        s = _sentinel(i)
        at = with_sentinels.find(s, pos)
        if at < 0:
            raise Skip("chat-template-drops-response")
        if at > pos:
            segs.append(Segment(with_sentinels[pos:at]))
        segs.append(Segment(responses[i], i))
        pos = at + len(s)
    if pos < len(with_sentinels):
        segs.append(Segment(with_sentinels[pos:]))
    if "".join(s.text for s in segs) != real:
        raise Skip("chat-template-alters-response")
    return segs


def render(
    p: ParticipantInput, condition: str, tokenizer=None, *, system_prompt: str | None = None
) -> Rendering:
    """The rendering of ``p`` under ``condition``; raises :class:`Skip` when it has none.

    ``history:K`` gives the ``plain`` rendering (its per-response reductions
    are ``scoring.history``'s).
    """
    if condition == "plain" or condition.startswith(HISTORY):
        return Rendering(tuple(plain_segments(p)))
    if condition == "persona":
        interview = persona_interview(p.metadata)
        if interview is None:
            raise Skip("persona-no-metadata")
        return Rendering((Segment(interview),) + tuple(plain_segments(p)))
    if condition == "chat":
        segs = chat_segments(p, tokenizer, system_prompt, chat_template_kwargs())
        # The template writes any BOS itself; adding the tokenizer's would double it.
        return Rendering(tuple(segs), add_special_tokens=False)
    raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")


def chat_template_kwargs() -> dict[str, Any]:
    # enable_thinking is read by templates with a thinking switch (Qwen3,
    # SmolLM3, ...) and ignored by the others.
    return {"enable_thinking": False}


def render_settings(condition: str, tokenizer=None, system_prompt: str | None = None) -> dict:
    """Everything that decides the rendering, for ``score_runs.settings``."""
    s: dict[str, Any] = {"condition": condition}
    if condition == "chat":
        template = getattr(tokenizer, "chat_template", None)
        s["chat_template_sha256"] = (
            hashlib.sha256(template.encode()).hexdigest() if isinstance(template, str) else None
        )
        s["template_kwargs"] = chat_template_kwargs()
        s["system_prompt"] = system_prompt  # None: the template's default
        s["turns"] = "user=text between responses (markers removed), assistant=response"
    k = history_window(condition)
    if condition.startswith(HISTORY):
        s["history"] = {
            "keep": "all" if k is None else k,
            "removed": "every earlier response but the K most recent, <<markers>> included",
            "tokenization": "segments of the reduced transcript, as plain",
        }
    if condition == "persona":
        s["persona"] = {
            "intro": PERSONA_INTRO,
            "questions": PERSONA_QUESTIONS,
            "other_question": OTHER_QUESTION,
            "excluded_keys": sorted(PERSONA_EXCLUDED),
        }
    return json.loads(json.dumps(s))
