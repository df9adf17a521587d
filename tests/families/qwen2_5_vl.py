"""Qwen2.5-VL: as Qwen2-VL (flattened patches + image_grid_thw, default system prompt) with a windowed-attention ViT;
a forward without mm_token_type_ids silently falls back to 1-D positions."""

from __future__ import annotations

from families.qwen2_vl import ASSISTANT_PROMPT, END_OF_TURN, QWEN2_VL_TEMPLATE, qwen_parts

__all__ = ["ASSISTANT_PROMPT", "END_OF_TURN", "build"]


def build(tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer, ids, text, images, videos = qwen_parts(
        tokenizer, QWEN2_VL_TEMPLATE, Qwen2VLVideoProcessor, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    # window_size 16 px = one merged 2x2 patch group per window; with no full-attention block the layer runs windowed attention.
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=16, fullatt_block_indexes=[])
    processor = Qwen2_5_VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos, chat_template=QWEN2_VL_TEMPLATE)
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)), processor
