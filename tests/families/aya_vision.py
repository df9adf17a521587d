"""Aya Vision: crops + a global view on dim 0 with TILE_n text markers; template BOS."""

from __future__ import annotations

from families.common import text_config

END_OF_TURN = "<|END_OF_TURN_TOKEN|>"
ASSISTANT_PROMPT = "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"


AYA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|START_OF_TURN_TOKEN|>"
    "{% if m['role'] == 'user' %}<|USER_TOKEN|>{% else %}<|CHATBOT_TOKEN|>{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


def build(tokenizer):
    """Aya Vision: the template writes BOS; an image becomes tiles on dim 0 (crops + a global view) whose text is
    `<|START_OF_IMG|>TILE_1<|IMG_PATCH|>...TILE_GLOBAL...<|END_OF_IMG|>`, plain-text markers that change how the text
    around them tokenises (labels via processed prefixes)."""
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor, Cohere2Config, SiglipVisionConfig
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    markers = ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>",
               "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    text = {**text_config(tokenizer), "head_dim": 16, "eos_token_id": tokenizer.convert_tokens_to_ids("<|END_OF_TURN_TOKEN|>")}
    config = AyaVisionConfig(
        text_config=Cohere2Config(**text),
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        downsample_factor=2,
        image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
    )
    # Up to 2 crops of 32 px plus the global view; patch_size is the vision patch times the downsample factor.
    image_processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=2)
    processor = AyaVisionProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=16, img_size=32, chat_template=AYA_TEMPLATE)
    return AyaVisionForConditionalGeneration(config), processor
