"""LLaVA-OneVision: any-resolution crops (5-D pixel_values + image_sizes + batch_num_images), a learned image_newline
outside the tower and the LM, SigLIP features used in full (no CLS), and a Qwen2 ChatML template that puts every
image of a turn first as `<image>\\n` (no default system prompt)."""

from __future__ import annotations

from families.common import reloaded, text_config

END_OF_TURN = "<|im_end|>"
ASSISTANT_PROMPT = "<|im_start|>assistant"

# The llava-hf OneVision template (transformers' conversion script), without its {% generation %} markers.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'video' %}<video>\n{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)



def build(tokenizer):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor,
                              LlavaOnevisionVideoProcessor, Qwen2Config, SiglipVisionConfig)
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>"]})
    tokenizer = reloaded(tokenizer, image_token="<image>", video_token="<video>")
    # 24 px tiles of 8 px patches: 9 base tokens + the crop grid (unpadded) + one image_newline per feature row.
    size, patch = 24, 8
    grid = [[size, size], [size, 2 * size], [2 * size, size]]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=size,
                                         patch_size=patch, vision_use_head=False),
        text_config=Qwen2Config(**text_config(tokenizer, END_OF_TURN)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=grid,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": size, "width": size}, image_grid_pinpoints=grid,
                                                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    video_processor = LlavaOnevisionVideoProcessor(size={"height": size, "width": size}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, num_image_tokens=(size // patch) ** 2,
        vision_feature_select_strategy="full", chat_template=TEMPLATE,
    )
    return LlavaOnevisionForConditionalGeneration(config), processor
