"""Labels from the chat template: placeholders as image parts, exact assistant spans, alignment, string-content roles."""

from __future__ import annotations

import pytest

from conftest import record
from families import family_of
from curriculum.data.template import align, assistant_spans, to_hf_messages
from curriculum.model.load import load_processor


def test_placeholders_become_image_parts():
    msgs = to_hf_messages([{"role": "user", "content": "<image>\nA<image>B"}])
    assert msgs[0]["content"] == [{"type": "image"}, {"type": "text", "text": "A"}, {"type": "image"}, {"type": "text", "text": "B"}]
    # One newline beside a placeholder belongs to it (LLaVA's `<image>\n`); a second one is text.
    msgs = to_hf_messages([{"role": "user", "content": "Look:\n<image>\n\nWhat?"}])
    assert msgs[0]["content"] == [{"type": "text", "text": "Look:"}, {"type": "image"}, {"type": "text", "text": "\nWhat?"}]


def test_assistant_spans_are_exact(processor):
    text, spans = assistant_spans(processor, to_hf_messages(record("r", "Q?", "Yes.")["messages"]))
    assert [text[a:b] for a, b in spans] == ["Yes.<|im_end|>"]


def test_align_marks_inserted_tokens():
    assert align([1, 9, 9, 9, 2, 3], [1, 9, 2, 3]) == [0, 1, -1, -1, 2, 3]
    with pytest.raises(ValueError):
        align([1, 2], [1, 3])


def test_a_template_that_writes_assistant_content_as_a_string_is_given_strings(arch):
    """GLM-4.1V's template loops over content parts for user turns only: assistant and system turns are written as
    `{{ content }}`, so parts would be trained as their Python repr. Such roles get strings; the others keep parts."""
    from curriculum.data.template import render_chat, string_content_roles

    processor = load_processor(arch)
    text = render_chat(processor, to_hf_messages([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "The answer."}]))
    assert "The answer." in text and "'type'" not in text and '"type"' not in text
    assert ("assistant" in string_content_roles(processor)) == (family_of(arch).module in ("glm4v", "glm4v_moe"))
