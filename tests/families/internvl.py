"""InternVL (3, Qwen2 LM): an image is cropped into 1..6 tiles of 32 px (+ a thumbnail when more than one) that are
concatenated on dim 0 of a 4-D pixel_values with no per-sample dimension (the count varies with the image's aspect
ratio); each image becomes `<img>` + 16 x tiles `<IMG_CONTEXT>` + `</img>`. ChatML template without a default system
prompt, an image written as `<IMG_CONTEXT>\\n` in place. InternVLProcessor declares left padding, but the
tokenizer's own padding_side (right here) takes precedence unless padding_side= is passed."""

from __future__ import annotations

from families.common import reloaded, text_config

END_OF_TURN = "<|im_end|>"
ASSISTANT_PROMPT = "<|im_start|>assistant"

# OpenGVLab/InternVL3-*-hf's template (transformers' InternVL conversion script).
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<IMG_CONTEXT>\n{% elif c['type'] == 'video' %}<video>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NAMED = {"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>", "end_image_token": "</img>", "video_token": "<video>"}



def build(tokenizer):
    from transformers import (InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor, InternVLVideoProcessor,
                              InternVLVisionConfig, Qwen2Config)
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tokenizer.add_special_tokens({"additional_special_tokens": list(NAMED.values())})
    tokenizer = reloaded(tokenizer, **NAMED)
    tile, patch, ratio = 32, 4, 0.5
    seq = int((tile // patch) ** 2 * ratio**2)  # 16 tokens per tile after the pixel shuffle
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                           image_size=[tile, tile], patch_size=[patch, patch]),
        text_config=Qwen2Config(**text_config(tokenizer, END_OF_TURN)),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=seq,
        downsample_ratio=ratio,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image_processor = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1, max_patches=6,
                                               image_mean=mean, image_std=std)
    video_processor = InternVLVideoProcessor(size={"height": tile, "width": tile}, image_mean=mean, image_std=std)
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                  image_seq_length=seq, chat_template=TEMPLATE)
    return InternVLForConditionalGeneration(config), processor
