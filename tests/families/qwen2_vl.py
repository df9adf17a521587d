"""Qwen2-VL: flattened patches (N, 3*2*8*8) concatenated over the batch + image_grid_thw; mm_token_type_ids required by forward whenever pixels are passed (3-D mRoPE); ChatML template that injects a default system prompt."""

from __future__ import annotations

from families.common import reloaded, text_config

END_OF_TURN = "<|im_end|>"
ASSISTANT_PROMPT = "<|im_start|>assistant"

# Shaped like the real Qwen2-VL template: a default system turn unless the conversation starts with one, an image
# rendered as <|vision_start|><|image_pad|><|vision_end|> (the processor expands <|image_pad|>), no BOS.
QWEN2_VL_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VISION_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}


def qwen_tokenizer(tokenizer):
    """Add <|endoftext|> (as in the real vocabulary) and the vision markers, naming the markers so the processor
    reads `<|image_pad|>` (not the base `<image>`)."""
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", *VISION_TOKENS.values()]})
    return reloaded(tokenizer, **VISION_TOKENS)


def qwen_parts(tokenizer, template: str, video_processor_class, **text):
    """(tokenizer, vision token ids, text config, image and video processor) shared by the Qwen-VL builders."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = qwen_tokenizer(tokenizer)
    tokenizer.chat_template = template
    ids = {k.replace("_token", "_token_id"): tokenizer.convert_tokens_to_ids(v) for k, v in VISION_TOKENS.items()}
    text = {**text_config(tokenizer, END_OF_TURN), "max_position_embeddings": 2048, **text}
    # factor = patch 8 * merge 2 = 16 px; pixels in [16*16, 32*32]: a 40x40 image -> 32x32 -> 4x4 patches -> 4 tokens.
    common = dict(patch_size=8, temporal_patch_size=2, merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32}, **common)
    video_processor = video_processor_class(size={"shortest_edge": 16 * 16, "longest_edge": 2 * 32 * 32}, **common)
    return tokenizer, ids, text, image_processor, video_processor


def build(tokenizer):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    # head_dim 16 -> 8 rotary frequencies split over (t, h, w)
    tokenizer, ids, text, images, videos = qwen_parts(
        tokenizer, QWEN2_VL_TEMPLATE, Qwen2VLVideoProcessor, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    # embed_dim is the ViT width, hidden_size the merger's output (= the LM width); mlp_ratio 2 -> 64.
    vision = dict(depth=1, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos, chat_template=QWEN2_VL_TEMPLATE)
    return Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **ids)), processor
