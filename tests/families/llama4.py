"""Llama 4 (Scout / Maverick): an image becomes `<|image_start|>` [tiles of `<|patch|>` rows] `<|image|>` global
`<|patch|>`s `<|image_end|>` (the model scatters features into the `<|patch|>` positions: its image_token_index is
the patch token), the vision tower's features pixel-shuffled by 0.5; mixture-of-experts language layers (top-1 routed
plus a shared expert) with chunked attention and QK norm; template writes BOS, turns end with `<|eot|>`."""

from __future__ import annotations

from families.common import reloaded

END_OF_TURN = "<|eot|>"
ASSISTANT_PROMPT = "<|header_start|>assistant<|header_end|>\n\n"

# Shaped like Llama 4's template: BOS, `<|header_start|>role<|header_end|>\n\n` headers, content parts in order
# (an image as `<|image|>`, which the processor expands), every turn closed by `<|eot|>`; no default system prompt.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|header_start|>{{ m['role'] }}<|header_end|>\n\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|image|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>\n\n{% endif %}"
)
MARKERS = ["<|header_start|>", "<|header_end|>", "<|eot|>", "<|image|>", "<|image_start|>", "<|image_end|>", "<|patch|>",
           "<|tile_x_separator|>", "<|tile_y_separator|>"]


def build(tokenizer):
    from transformers import Llama4Config, Llama4ForConditionalGeneration, Llama4Processor
    from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor

    tokenizer.add_special_tokens({"additional_special_tokens": MARKERS})
    tokenizer = reloaded(tokenizer, image_token="<|image|>")
    tokenizer.eos_token = END_OF_TURN
    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, intermediate_size_mlp=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_local_experts=4, num_experts_per_tok=1,
                interleave_moe_layer_step=1, attention_chunk_size=2048, max_position_embeddings=4096,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=ids(END_OF_TURN))
    # One 56 px tile of 4x4 patches of 14 px, pixel-shuffled by 0.5 to 2x2 = 4 image features; the shuffle's MLP reads
    # hidden / ratio² = 128 wide inputs, which the real config ties to the vision intermediate size.
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, image_size=56, patch_size=14,
                  pixel_shuffle_ratio=0.5, vision_output_dim=32, projector_input_dim=32, projector_output_dim=32)
    config = Llama4Config(vision_config=vision, text_config=text, boi_token_index=ids("<|image_start|>"),
                          eoi_token_index=ids("<|image_end|>"), image_token_index=ids("<|patch|>"))
    image_processor = Llama4ImageProcessor(size={"height": 56, "width": 56}, max_patches=1)
    processor = Llama4Processor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14, pixel_shuffle_ratio=0.5,
                                chat_template=TEMPLATE)
    return Llama4ForConditionalGeneration(config), processor
