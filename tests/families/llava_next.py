"""LLaVA-NeXT: any-resolution crops (5-D pixel_values + image_sizes) and a learned image_newline."""

from __future__ import annotations

from curriculum.model.builtin import _CHAT_TEMPLATE

from families.common import text_config

END_OF_TURN = "<|im_end|>"
ASSISTANT_PROMPT = "<|im_start|>assistant"


def build(tokenizer):
    """LLaVA-NeXT: any-resolution crops (5-D pixel_values + image_sizes) and a learned image_newline."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    grid = [[32, 32], [32, 64], [64, 32]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(**text_config(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=grid)
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=_CHAT_TEMPLATE.replace("{IMAGE}", "<image>"),
    )
    return LlavaNextForConditionalGeneration(config), processor
