"""Llama 3.2 Vision (Mllama): cross-attention image layers, 6-D pixel_values, image token past the LM head."""

from __future__ import annotations

from families.common import reloaded, text_config

END_OF_TURN = "<|eot_id|>"
ASSISTANT_PROMPT = "<|start_header_id|>assistant<|end_header_id|>"


# As Llama 3.2 Vision's template: a conversation without images opens with a system block that carries the date of
# the day it is rendered (strftime_now), so renders differ by day while the labels must not.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(images=false) %}{% for m in messages %}{% if m['content'] is not string %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{% set ns.images = true %}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if not ns.images %}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: {{ strftime_now('%d %b %Y') }}\n\n<|eot_id|>{% endif %}"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|image|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def build(tokenizer):
    """Llama 3.2 Vision (Mllama): images reach the language model through cross-attention layers (no
    get_image_features), 6-D pixel_values + aspect_ratio_ids/mask + cross_attention_mask, and the <|image|> id lies
    past the LM head's rows, as in the real checkpoints."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]})
    tokenizer = reloaded(tokenizer, image_token="<|image|>")  # the processor reads tokenizer.image_token
    image = tokenizer.convert_tokens_to_ids("<|image|>")
    text = {**text_config(tokenizer), "vocab_size": image, "num_hidden_layers": 2, "cross_attention_layers": [1],
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|eot_id|>")}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_global_layers=1, attention_heads=2, image_size=32, patch_size=8,
                  max_num_tiles=2, intermediate_layers_indices=[0], vision_output_dim=64, supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=image)
    image_processor = MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=2)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=LLAMA3_TEMPLATE)
    return MllamaForConditionalGeneration(config), processor
