"""Qwen3.5: hybrid linear/full-attention LM via Qwen3VLProcessor, mm_token_type_ids required with pixels; the template
writes an (empty) thinking block in answers after the last user turn only, so earlier answers render differently once
more turns follow, and raises without a user turn."""

from __future__ import annotations

from families.common import reloaded
from families.qwen2_vl import VISION_TOKENS

END_OF_TURN = "<|im_end|>"
ASSISTANT_PROMPT = "<|im_start|>assistant"
# After the generation prompt (`<think>\n`), the model writes the rest of the empty thinking block, then the answer.
LAST_ANSWER_PREFIX = "\n</think>\n\n"

_CONTENT = (
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)
# Shaped like the real Qwen3.5 template: no default system prompt, no BOS, contents trimmed; the last user turn is
# located first (raising when there is none); assistant turns after it render `<think>\n{reasoning}\n</think>\n\n`
# before the answer (reasoning from `reasoning_content` or a `<think>...</think>` prefix of the content), earlier
# assistant turns render the answer only; the generation prompt is `<|im_start|>assistant\n<think>\n`, or
# `<|im_start|>assistant\n<think>\n\n</think>\n\n` with enable_thinking=False.
QWEN3_5_TEMPLATE = (
    "{% set ns = namespace(last_query=-1) %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last_query = loop.index0 %}{% endif %}{% endfor %}"
    "{% if ns.last_query < 0 %}{{ raise_exception('No user query found in messages.') }}{% endif %}"
    "{% for m in messages %}"
    "{% set content %}" + _CONTENT + "{% endset %}{% set content = content | trim %}"
    "{% if m['role'] == 'assistant' %}"
    "{% set reasoning = '' %}"
    "{% if m['reasoning_content'] is string %}{% set reasoning = m['reasoning_content'] %}"
    "{% elif '</think>' in content %}{% set reasoning = content.split('</think>')[0].split('<think>')[-1] %}"
    "{% set content = content.split('</think>')[-1].lstrip('\n') %}{% endif %}"
    "{% if loop.index0 > ns.last_query %}<|im_start|>assistant\n<think>\n{{ reasoning | trim }}\n</think>\n\n{{ content }}"
    "{% else %}<|im_start|>assistant\n{{ content }}{% endif %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ content }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}"
    "{% endif %}"
)

def _qwen_tokenizer(tokenizer):
    """Add <|endoftext|> and the vision markers (special) and <think>/</think> (added, not special, as in the real
    vocabulary), and name the vision markers so the processor reads `<|image_pad|>` (not the base `<image>`).

    A saved qwen3_5 checkpoint always reloads its tokenizer as `Qwen3_5Tokenizer` (transformers overrides the saved
    class for this model type): Qwen's digit-splitting regex pre-tokenizer, NFC, and unk `<|endoftext|>` (appended
    as a new token when missing). It is loaded as that class here too, so the built and the reloaded processor
    tokenise alike and the vocabulary size already counts `<|endoftext|>`."""
    from transformers import Qwen3_5Tokenizer

    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", *VISION_TOKENS.values()]})
    tokenizer.add_tokens(["<think>", "</think>"])
    return reloaded(tokenizer, cls=Qwen3_5Tokenizer, **VISION_TOKENS)


def build(tokenizer):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tokenizer = _qwen_tokenizer(tokenizer)
    tokenizer.chat_template = QWEN3_5_TEMPLATE
    ids = {k.replace("_token", "_token_id"): tokenizer.convert_tokens_to_ids(v) for k, v in VISION_TOKENS.items()}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
        # Two layers: one gated-delta-net (linear attention) and one full-attention layer, the family's two kinds.
        num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
        linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=1,
        linear_num_value_heads=2,
        # head_dim 32 with partial rotary 0.25 -> 8 rotary dims = 4 frequencies, interleaved over (t, h, w)
        head_dim=32,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                         "mrope_section": [2, 1, 1], "mrope_interleaved": True},
    )
    # 16 learned position embeddings (a 4x4 grid, interpolated to each image's patch grid).
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16)
    config = Qwen3_5Config(text_config=text, vision_config=vision, **ids)
    # factor = patch 8 * merge 2 = 16 px; pixels in [16*16, 32*32]: a 40x40 image -> 32x32 -> 4x4 patches -> 4 tokens.
    common = dict(patch_size=8, temporal_patch_size=2, merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32}, **common)
    video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": 16 * 16, "longest_edge": 2 * 32 * 32}, **common)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                 chat_template=QWEN3_5_TEMPLATE)
    return Qwen3_5ForConditionalGeneration(config), processor
