"""MiniCPM-V 4.6: Qwen3.5 ChatML whose template gives every assistant turn after the last user message an empty
<think>\\n\\n</think>\\n\\n block (earlier turns none); an image becomes <image_id>N</image_id><image>...</image> plus
<slice>...</slice> rows, all images/slices packed into pixel_values (1, 3, patch, L) with one target_sizes row each;
no BOS; the processor pads left; the LM mixes gated-deltanet (linear) and full attention."""

from __future__ import annotations

from families.common import reloaded

END_OF_TURN = "<|im_end|>"
ASSISTANT_PROMPT = "<|im_start|>assistant"
# After the generation prompt (`<think>\n`), the model writes the rest of the empty thinking block, then the answer.
LAST_ANSWER_PREFIX = "\n</think>\n\n"

# Shaped as Qwen3.5's template (which MiniCPM-V 4.6 uses, with <|image_pad|> as the image item and items joined by
# "\n"): no BOS and no default system prompt; raises without a user message; an assistant turn AFTER the last user
# message renders "<think>\n{reasoning}\n</think>\n\n{answer}" -- with no reasoning an empty block -- and enable_thinking
# does not change that; earlier assistant turns render the bare answer. The generation prompt is
# "<|im_start|>assistant\n" + "<think>\n\n</think>\n\n" if enable_thinking is False else "<think>\n".
MINICPMV_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- set ns = namespace(parts=[]) -%}"
    "{%- for c in content -%}"
    "{%- if c['type'] == 'image' -%}{%- set ns.parts = ns.parts + ['<|image_pad|>'] -%}"
    "{%- elif c['type'] == 'video' -%}{%- set ns.parts = ns.parts + ['<|video_pad|>'] -%}"
    "{%- elif c['type'] == 'text' -%}{%- set ns.parts = ns.parts + [c['text']] -%}{%- endif -%}"
    "{%- endfor -%}{{- ns.parts | join('\n') -}}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set q = namespace(last=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set q.last = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- if q.last < 0 -%}{{- raise_exception('No user query found in messages.') -}}{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- set content = render(m['content']) | trim -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{%- if loop.index0 > q.last -%}{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + content -}}"
    "{%- else -%}{{- '<|im_start|>assistant\n' + content -}}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + m['role'] + '\n' + content + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\n\n</think>\n\n' -}}"
    "{%- else -%}{{- '<think>\n' -}}{%- endif -%}{%- endif -%}"
)

NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "image_start_token": "<image>",
         "image_end_token": "</image>", "slice_start_token": "<slice>", "slice_end_token": "</slice>",
         "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>"}


def tokenizer_for_minicpmv(tokenizer):
    """The base tokenizer with MiniCPM-V's markers; `<image>` (already special in the base) is the image START."""
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in NAMED.values() if t != "<image>"] + ["<|endoftext|>"]})
    tokenizer.add_tokens(["<think>", "</think>"])  # plain added tokens in Qwen3.5 (kept when decoding)
    tokenizer = reloaded(tokenizer, **NAMED)
    tokenizer.bos_token = None
    # No padding side saved with the tokenizer, so the processor's own default (pad LEFT) applies, as with the real one.
    tokenizer.init_kwargs.pop("padding_side", None)
    return tokenizer


def minicpm_text_config(tokenizer) -> dict:
    # Qwen3.5: one gated-deltanet (linear attention) layer and one full-attention layer, as its hybrid stack; head_dim 32
    # with a quarter of it rotating, split over the (t, h, w) mRoPE sections [2, 1, 1].
    return dict(
        model_type="qwen3_5_text", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"], num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        linear_conv_kernel_dim=2, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=2,
        max_position_embeddings=1024, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
    )


VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=4)
# 4 px patches; images fit scale_resolution 32 px (sides multiples of 16 = patch * 4, the 16x merge); slicing on, at
# most 2 slices: a 40x40 image = a 32x32 overview (8x8 patches / 16 = 4 tokens) + 2 slices of 16x48 (3 tokens each).
IMAGE_SIZES = dict(patch_size=4, scale_resolution=32, max_slice_nums=2, slice_mode=True, downsample_mode="16x", use_image_id=True)


def build(tokenizer):
    from transformers import MiniCPMV4_6Config, MiniCPMV4_6ForConditionalGeneration, MiniCPMV4_6Processor
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil
    from transformers.models.minicpmv4_6.video_processing_minicpmv4_6 import MiniCPMV4_6VideoProcessor

    tokenizer = tokenizer_for_minicpmv(tokenizer)
    config = MiniCPMV4_6Config(
        text_config=minicpm_text_config(tokenizer), vision_config=VISION, insert_layer_id=0, image_size=32, downsample_mode="16x",
        image_token_id=tokenizer.image_token_id, video_token_id=tokenizer.video_token_id,
    )
    processor = MiniCPMV4_6Processor(
        image_processor=MiniCPMV4_6ImageProcessorPil(**IMAGE_SIZES),
        video_processor=MiniCPMV4_6VideoProcessor(**{**IMAGE_SIZES, "max_slice_nums": 1}),
        tokenizer=tokenizer, chat_template=MINICPMV_TEMPLATE,
    )
    return MiniCPMV4_6ForConditionalGeneration(config), processor
