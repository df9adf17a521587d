"""LFM2-VL: ChatML with BOS written by the template (and added again by the tokenizer unless add_special_tokens=False);
an image becomes <|image_start|>[<|img_row_r_col_c|> tiles][<|img_thumbnail|>]<image>...<|image_end|> with
(tiles, max_patches, 3*p*p) pixel_values + pixel_attention_mask + spatial_shapes; the LM mixes conv and attention layers."""

from __future__ import annotations

from families.common import reloaded

END_OF_TURN = "<|im_end|>"
ASSISTANT_PROMPT = "<|im_start|>assistant"

# As LFM2-VL's template: {{bos_token}}, optional system turn only when given (no default), <image> where an image
# item sits, text items concatenated, <|im_end|>\n after every turn, generation prompt <|im_start|>assistant\n.
LFM2_VL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_TILES = 4


def build(tokenizer):
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration, Lfm2VlProcessor
    from transformers.models.lfm2_vl.image_processing_lfm2_vl import Lfm2VlImageProcessor  # torchvision only (no Pil class)

    tiles = [f"<|img_row_{r}_col_{c}|>" for r in range(1, MAX_TILES + 1) for c in range(1, MAX_TILES + 1)]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|startoftext|>", "<|image_start|>", "<|image_end|>",
                                                                "<|img_thumbnail|>", *tiles]})
    # Like LFM2's tokenizer: BOS <|startoftext|>, added by default when tokenising (so the template's BOS doubles
    # unless add_special_tokens=False; the processor's own default is add_special_tokens=False).
    tokenizer = reloaded(tokenizer, load={"bos_token": "<|startoftext|>", "add_bos_token": True}, image_token="<image>")
    text = dict(
        model_type="lfm2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, block_auto_adjust_ff_dim=False,
        num_hidden_layers=2, layer_types=["conv", "full_attention"],  # one of each: the hybrid (conv-state) cache is LFM2's
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
    )
    # Siglip2 NaFlex tower: 4 px patches, position grid 8x8 (num_patches = max patches per tile = 64).
    vision = dict(model_type="siglip2_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, patch_size=4, num_patches=64, vision_use_head=False)
    config = Lfm2VlConfig(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id,
                          projector_hidden_size=64, downsample_factor=2)
    # A tile is 32 px = 8x8 patches = 16 tokens after the 2x2 pixel unshuffle. An image up to max_image_tokens * 16 *
    # 4 * tolerance 2 = 2048 px stays one tile, resized to <= 16 tokens (40x40 -> 32x32 -> 16 tokens); a larger one is
    # split into 2..4 tiles of 32 px plus a thumbnail, with <|img_row_r_col_c|> markers.
    image_processor = Lfm2VlImageProcessor(
        do_image_splitting=True, min_tiles=2, max_tiles=MAX_TILES, use_thumbnail=True, min_image_tokens=4, max_image_tokens=16,
        encoder_patch_size=4, tile_size=32, downsample_factor=2, max_pixels_tolerance=2.0,
    )
    processor = Lfm2VlProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=LFM2_VL_TEMPLATE)
    return Lfm2VlForConditionalGeneration(config), processor
