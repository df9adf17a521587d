"""MiniCPM-V 4.7: as 4.6 (same template, packed pixel_values + target_sizes), and the processor returns
mm_token_type_ids, which the forward needs with images."""

from __future__ import annotations

from families.minicpmv4_6 import (ASSISTANT_PROMPT, END_OF_TURN, IMAGE_SIZES, LAST_ANSWER_PREFIX, MINICPMV_TEMPLATE, VISION,
                                  minicpm_text_config, tokenizer_for_minicpmv)

__all__ = ["ASSISTANT_PROMPT", "END_OF_TURN", "LAST_ANSWER_PREFIX", "build"]


def build(tokenizer):
    from transformers import MiniCPMV4_7Config, MiniCPMV4_7ForConditionalGeneration, MiniCPMV4_7Processor
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil
    from transformers.models.minicpmv4_6.video_processing_minicpmv4_6 import MiniCPMV4_6VideoProcessor

    tokenizer = tokenizer_for_minicpmv(tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    assert len(newline) == 1, newline
    config = MiniCPMV4_7Config(
        text_config=minicpm_text_config(tokenizer), vision_config=VISION, insert_layer_id=0, image_size=32, downsample_mode="16x",
        image_token_id=tokenizer.image_token_id, video_token_id=tokenizer.video_token_id,
        image_start_id=ids("<image>"), image_end_id=ids("</image>"), slice_start_id=ids("<slice>"), slice_end_id=ids("</slice>"),
        newline_id=newline[0],
    )
    processor = MiniCPMV4_7Processor(
        image_processor=MiniCPMV4_6ImageProcessorPil(**IMAGE_SIZES),
        video_processor=MiniCPMV4_6VideoProcessor(**{**IMAGE_SIZES, "max_slice_nums": 1}),
        tokenizer=tokenizer, chat_template=MINICPMV_TEMPLATE,
    )
    return MiniCPMV4_7ForConditionalGeneration(config), processor
