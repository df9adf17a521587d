"""Qwen3-VL: flattened patches + image_grid_thw, interleaved mRoPE, DeepStack features; ChatML template with no
default system prompt."""

from __future__ import annotations

from families.qwen2_vl import ASSISTANT_PROMPT, END_OF_TURN, qwen_parts

__all__ = ["ASSISTANT_PROMPT", "END_OF_TURN", "QWEN3_VL_TEMPLATE", "build"]

# Shaped like the real Qwen3-VL-Instruct template: a system turn only when given, an image as
# <|vision_start|><|image_pad|><|vision_end|> (user/system turns; assistant list content renders its text only), no BOS.
QWEN3_VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' and m['role'] != 'assistant' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' and m['role'] != 'assistant' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build(tokenizer, config_class: str = "Qwen3VLConfig", model_class: str = "Qwen3VLForConditionalGeneration", **text_extra):
    """The tiny model and processor; the MoE variant passes its classes and expert settings (families/qwen3_vl_moe.py)."""
    import transformers
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    # head_dim 16 -> 8 rotary frequencies, interleaved over (t, h, w) as in the real [24, 20, 20]
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    tokenizer, ids, text, images, videos = qwen_parts(tokenizer, QWEN3_VL_TEMPLATE, Qwen3VLVideoProcessor, head_dim=16, rope_parameters=rope,
                                                      **text_extra)
    # 16 learned position embeddings (a 4x4 grid, interpolated to each image's patch grid); DeepStack taps layer 0.
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0])
    processor = Qwen3VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos, chat_template=QWEN3_VL_TEMPLATE)
    config = getattr(transformers, config_class)(text_config=text, vision_config=vision, **ids)
    return getattr(transformers, model_class)(config), processor
