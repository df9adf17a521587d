"""GLM-4.1V: the render starts with `[gMASK]<sop>`, has no end-of-turn token (an answer is followed only by the next
`<|user|>`, or by nothing), images are `<|begin_of_image|><|image|>...<|end_of_image|>` with flattened patches +
image_grid_thw, and the processor returns mm_token_type_ids, which the forward needs for its 3-D mRoPE."""

from __future__ import annotations

from families.common import reloaded

# The real template puts nothing after an assistant answer: the next turn's `<|user|>` follows, or the text ends
# (the real generation_config stops on <|endoftext|>, <|user|> and <|observation|>); the collator appends the
# tokenizer's EOS (<|endoftext|>) to the last answer and supervises it.
END_OF_TURN = "<|endoftext|>"
END_ONLY_LAST = True
ASSISTANT_PROMPT = "<|assistant|>"

# Same markers and layout as GLM-4.1V-9B's chat template (rendered with trim_blocks/lstrip_blocks):
# [gMASK]<sop><|system|>\n{sys}<|user|>\n{image}{text}<|assistant|>\n{answer}<|user|>\n...
# No default system prompt; no BOS token (the tokenizer adds nothing, the template writes [gMASK]<sop>).
# As in the real one, only user turns are read as content parts: system and assistant turns are written as
# `{{ content }}`, which prints a list of parts as its Python repr (the collator passes them as strings).
GLM4V_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif c['type'] == 'video' %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% elif m['role'] == 'system' %}<|system|>\n{{ m['content'] }}"
    "{% else %}<|assistant|>\n{{ m['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_MARKERS = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<|endoftext|>",
            "<|begin_of_image|>", "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>"]


def build(tokenizer, config_class: str = "Glm4vConfig", model_class: str = "Glm4vForConditionalGeneration", **text_extra):
    """The tiny model and processor; GLM-4.5V passes its MoE classes and expert settings (families/glm4v_moe.py)."""
    import transformers
    from transformers import Glm4vProcessor
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor

    tokenizer.add_special_tokens({"additional_special_tokens": _MARKERS})
    named = {"image_token": "<|image|>", "video_token": "<|video|>"}
    tokenizer = reloaded(tokenizer, **named)
    tokenizer.bos_token, tokenizer.eos_token = None, END_OF_TURN  # GLM's tokenizer has no BOS
    ids = tokenizer.convert_tokens_to_ids
    eos = ids(END_OF_TURN)
    text = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
        # head_dim 16; half of it rotates (as GLM-4.1V's 0.5), split over (t, h, w) sections that sum to 16 * 0.5 / 2
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]},
        **text_extra,
    )
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, image_size=32)
    config = getattr(transformers, config_class)(
        text_config=text, vision_config=vision,
        image_token_id=ids("<|image|>"), video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"), image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"), video_end_token_id=ids("<|end_of_video|>"),
    )
    # Sides are rounded to multiples of patch * merge = 8 px, within [8*8, 2*64*64] pixels (the bound counts the 2
    # temporal copies): a 40x40 image stays 40x40 = 10x10 patches = 25 image tokens; a 32x32 one gives 16.
    sizes = dict(patch_size=4, merge_size=2, temporal_patch_size=2)
    image_processor = Glm4vImageProcessorPil(size={"shortest_edge": 8 * 8, "longest_edge": 2 * 64 * 64}, **sizes)
    video_processor = Glm4vVideoProcessor(size={"shortest_edge": 8 * 8, "longest_edge": 2 * 64 * 64}, num_frames=2, **sizes)
    processor = Glm4vProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                               chat_template=GLM4V_TEMPLATE)
    return getattr(transformers, model_class)(config), processor
