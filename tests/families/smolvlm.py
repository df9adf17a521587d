"""SmolVLM: Idefics3-style 5-D pixel_values + pixel_attention_mask, images split into tiles (2x2 + a global view for
a 40 px image) whose text carries `<fake_token_around_image><row_r_col_c>` markers and newlines; the template writes
`<|im_start|>` once, then `User:`/`Assistant:` turns (a space after the colon unless the turn opens with an image),
each closed by `<end_of_utterance>\\n`; the generation prompt `Assistant:` has no trailing space, the training text
has `Assistant: red`. The processor needs `num2words` and a video processor."""

from __future__ import annotations

from families.common import text_config

END_OF_TURN = "<end_of_utterance>"
ASSISTANT_PROMPT = "Assistant:"
# The generation prompt ends at the colon; the template writes the answer after a space, which the model writes too.
ANSWER_PREFIX = " "

# HuggingFaceTB/SmolVLM*-Instruct's template, plus `content is string` support.
TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}"
    "{% if m['content'] is string %}{{ ': ' + m['content'] }}{% else %}"
    "{% if m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% elif c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'video' %}<video>{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)



def build(tokenizer):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor, SmolVLMVideoProcessor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    rows_cols = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]  # special tokens in the real vocabulary
    tokenizer.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<video>",
                                                                *rows_cols]})
    # As SmolVLM's tokenizer: BOS is <|im_start|> (written once by the template), EOS is <end_of_utterance>.
    tokenizer.bos_token = "<|im_start|>"
    tokenizer.eos_token = END_OF_TURN
    tile, patch, scale = 32, 8, 2
    config = SmolVLMConfig(
        text_config=dict(model_type="llama", **text_config(tokenizer, END_OF_TURN)),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=tile, patch_size=patch),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Images are resized to a longest edge of 64 and split into 32 px tiles (up to 2x2) plus the global view.
    image_processor = SmolVLMImageProcessorPil(do_image_splitting=True, size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile},
                                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    video_processor = SmolVLMVideoProcessor(video_sampling={"fps": 1, "max_frames": 4, "video_size": {"longest_edge": tile}},
                                            max_image_size={"longest_edge": tile}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = SmolVLMProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                 image_seq_len=(tile // patch) ** 2 // scale**2, chat_template=TEMPLATE)
    return SmolVLMForConditionalGeneration(config), processor
