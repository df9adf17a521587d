"""Idefics3 with image splitting on: tiles + the whole image, <row_r_col_c> markers."""

from __future__ import annotations

from curriculum.model.builtin import _tiny_idefics3

END_OF_TURN = "<|im_end|>"
ASSISTANT_PROMPT = "<|im_start|>assistant"


def build(tokenizer):
    """Idefics3 with image splitting on: an image becomes 2x2 tiles plus the whole image (a variable number of
    images per sample, 5-D pixel_values + pixel_attention_mask) and the text gains <row_r_col_c> markers."""
    tokenizer.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]})
    model, processor = _tiny_idefics3(tokenizer)
    processor.image_processor.do_image_splitting = True
    processor.image_processor.size = {"longest_edge": 64}  # tiles of max_image_size (32): a 32 px image splits into 2x2
    return model, processor
