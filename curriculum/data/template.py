"""Labels from the chat template: canonical messages as the processor's template reads them, the
rendered conversation, and the character spans of every assistant turn (what is supervised).

The characters of each assistant turn are found by rendering the conversation's prefixes with the
processor's own template; the collator maps them onto tokens. No token ids or templates are
written per model.

May import data.formats (the image placeholder).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from curriculum.data.formats import IMAGE_TOKEN


# The label of a token nothing learns from (transformers' and torch's cross-entropy default).
IGNORE_INDEX = -100
_PLACEHOLDER = re.compile(re.escape(IMAGE_TOKEN))


def to_hf_messages(messages: list[dict]) -> list[dict]:
    """Canonical messages -> transformers structured content, `<image>` placeholders as image parts.

    One newline beside a placeholder (LLaVA's `<image>\nWhat colour?`) belongs to the image: content
    parts at inference carry none, and a template that writes its own newline after an image would
    otherwise get two.
    """
    out = []
    for m in messages:
        parts: list[dict] = []
        pieces = _PLACEHOLDER.split(m["content"])
        for k, piece in enumerate(pieces):
            if k:
                parts.append({"type": "image"})
                piece = piece[1:] if piece.startswith("\n") else piece
            if k < len(pieces) - 1 and piece.endswith("\n"):
                piece = piece[:-1]
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": m["role"], "content": parts})
    return out


_PROBE = "Pq7zProbe"


def string_content_roles(processor) -> frozenset[str]:
    """Roles whose turns the chat template writes as `{{ content }}`: given content parts, it would print their repr.

    Found once per processor by rendering a probe turn of each role as parts (GLM-4.1V loops over
    parts for user turns only); a role whose template fails on the probe keeps parts.
    """
    cached = getattr(processor, "_string_content_roles", None)
    if cached is not None:
        return cached
    roles = set()
    for role in ("system", "user", "assistant"):
        turns = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": [{"type": "text", "text": "Yes"}]}]
        probe = [{"type": "text", "text": _PROBE}]
        if role == "system":
            turns = [{"role": "system", "content": probe}, *turns]
        else:
            turns[0 if role == "user" else 1]["content"] = probe
        try:
            text = processor.apply_chat_template(turns, tokenize=False)
        except Exception:  # noqa: BLE001 - e.g. a template without system turns
            continue
        if f"'text': '{_PROBE}'" in text or f'"text": "{_PROBE}"' in text:
            roles.add(role)
    cached = frozenset(roles)
    processor._string_content_roles = cached
    return cached


def for_template(processor, messages: list[dict]) -> list[dict]:
    """Structured messages as the processor's chat template reads them: text-only turns as strings where it expects strings."""
    strings = string_content_roles(processor)
    return [
        {"role": m["role"], "content": _text_of(m)} if m["role"] in strings and all(p["type"] == "text" for p in m["content"]) else m
        for m in messages
    ]


def render_chat(processor, messages: list[dict], **kwargs) -> str:
    """The processor's chat template applied to structured messages (see for_template)."""
    return processor.apply_chat_template(for_template(processor, messages), tokenize=False, **kwargs)


def assistant_spans(processor, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return it with the character spans of every assistant turn (start, end).

    A span is what the model writes for the turn after the generation prompt: its content and its
    end-of-turn marker; template whitespace after the marker (the newline after `<|im_end|>`) is
    not part of it, so it is never supervised. Templates that render a turn differently once
    later turns follow (thinking models drop the reasoning block of earlier answers) are located
    by rendering the whole conversation with stand-ins for that turn's content.
    """
    def render(msgs: list[dict], **kwargs) -> str:
        return render_chat(processor, msgs, **kwargs)

    text = render(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], add_generation_prompt=True) if i else ""
        upto = render(messages[: i + 1])
        if text.startswith(upto) and upto.startswith(before):
            start, end = len(before), len(upto)
        else:
            start, end = _span_by_stand_ins(render, messages, i, text, before, upto)
        while end > start and text[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return _closed_turns(processor, messages, text, spans)


def _closed_turns(processor, messages: list[dict], text: str, spans: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
    """Where the template closes no assistant turn (GLM-4V's answer runs into the next `<|user|>` or the end), the
    tokenizer's EOS follows the last answer, supervised, so the model learns to stop. Earlier answers stay as the
    template renders them, as the history of a later generation prompt shows them."""
    eos = processor.tokenizer.eos_token
    answers = [_text_of(m).strip() for m in messages if m["role"] == "assistant"]
    if not (eos and spans) or not all(a and text[:end].endswith(a) for a, (_, end) in zip(answers, spans)):
        return text, spans
    start, end = spans[-1]
    return text[:end] + eos + text[end:], [*spans[:-1], (start, end + len(eos))]


def _text_of(message: dict) -> str:
    return "".join(part.get("text", "") for part in message["content"] if part["type"] == "text")


_STAND_INS = ("Xq", "Zj")  # different first and last characters: one of them always differs from the real content


def _content_span(render: Callable, messages: list[dict], i: int, text: str) -> tuple[int, int]:
    """Character span of message i's content in `text` (the render of `messages`): where renders with stand-ins differ."""
    starts, ends = [], []
    for stand_in in _STAND_INS:
        alt = render([*messages[:i], {"role": messages[i]["role"], "content": [{"type": "text", "text": stand_in}]}, *messages[i + 1 :]])
        lo = common_prefix(text, alt)
        starts.append(lo)
        ends.append(len(text) - common_prefix(text[lo:][::-1], alt[lo:][::-1]))
    return min(starts), max(ends)


def _span_by_stand_ins(render: Callable, messages: list[dict], i: int, text: str, before: str, upto: str) -> tuple[int, int]:
    """(start, end) of assistant turn i in `text` when rendering prefixes does not reproduce the whole render.

    The end marker is what the template writes after the answer when it ends the conversation; the
    start is the end of the generation prompt where that prompt prefixes the render (the model then
    writes whatever the template puts before the content, such as an empty thinking block), else the
    content's own start.
    """
    lo, hi = _content_span(render, messages, i, text)
    marker = upto[_content_span(render, messages[: i + 1], i, upto)[1] :].rstrip()
    if not text.startswith(marker, hi):
        raise ValueError(
            "the processor's chat template closes an assistant turn differently when it ends the conversation and when "
            "more turns follow, so the turn's end cannot be located"
        )
    start = len(before) if text.startswith(before) and len(before) <= lo else lo
    return start, hi + len(marker)


def adds_special_tokens(tokenizer, text: str) -> bool:
    """Whether tokenising the rendered `text` adds the tokenizer's special tokens.

    The same rule as transformers' processor chat path (what generation sees): not when the
    template already wrote the BOS token, so BOS is never doubled and never missing.
    """
    return not (tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token))


def align(expanded: list[int], unexpanded: list[int]) -> list[int]:
    """Index into `unexpanded` for every expanded token, or -1 for tokens the processor inserted."""
    out, j = [], 0
    for tok in expanded:
        if j < len(unexpanded) and tok == unexpanded[j]:
            out.append(j)
            j += 1
        else:
            out.append(-1)
    if j != len(unexpanded):
        raise ValueError("the processor's token ids do not contain the chat text's tokens in order")
    return out


def common_prefix(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix of two sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
