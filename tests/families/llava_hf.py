"""LLaVA-1.5 with a template shaped like the one its Hugging Face checkpoints publish: `USER: ... ASSISTANT: ...`
turns separated by spaces, nothing after an answer (no end-of-turn token), and `ASSISTANT:` as the generation prompt
(the answer's first space belongs to it). The collator appends the tokenizer's EOS to the last answer, supervised."""

from __future__ import annotations

END_OF_TURN = "<|im_end|>"  # the built-in tokenizer's EOS, which the collator appends
END_ONLY_LAST = True
ASSISTANT_PROMPT = "ASSISTANT:"
ANSWER_PREFIX = " "

# Same layout as llava-1.5-hf's template: an image part becomes `<image>` and the model's own newline, text parts
# follow; a user turn ends with a space, an assistant answer with a space too (no EOS); generation adds `ASSISTANT:`.
LLAVA_HF_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: {% elif m['role'] == 'assistant' %}ASSISTANT: {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ ' ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build(tokenizer):
    from curriculum.model.builtin import _tiny_llava

    model, processor = _tiny_llava(tokenizer)  # the built-in tiny LLaVA, with the published template's layout
    processor.chat_template = LLAVA_HF_TEMPLATE
    return model, processor
