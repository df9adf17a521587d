"""LLaVA-1.5 with a template shaped like the one its Hugging Face checkpoints publish: `USER: ... ASSISTANT: ...`
turns separated by spaces, nothing after an answer (no end-of-turn token), and `ASSISTANT:` as the generation prompt
(the answer's first space belongs to it). The collator appends the tokenizer's EOS to the last answer, supervised."""

from __future__ import annotations

from families.common import text_config

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
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(**text_config(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_HF_TEMPLATE)
    return LlavaForConditionalGeneration(config), processor
