"""Tiny random checkpoints of VLM families beyond the built-in two, for the test matrix.

Each is built from the family's transformers config (hidden size 32, one layer) with the built-in
tokenizer and chat template, saved with save_pretrained and loaded like a hub checkpoint.
"""

from __future__ import annotations

import os

from transformers import AutoTokenizer

from curriculum.model.builtin import _CHAT_TEMPLATE


def _text(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)


def llava_next(tokenizer):
    """LLaVA-NeXT: any-resolution crops (5-D pixel_values + image_sizes) and a learned image_newline."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    grid = [[32, 32], [32, 64], [64, 32]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(**_text(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=grid)
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=_CHAT_TEMPLATE.replace("{IMAGE}", "<image>"),
    )
    return LlavaNextForConditionalGeneration(config), processor


BUILDERS = {"tiny-llava-next": llava_next}


def ensure_family(name: str, cache_dir: str, tokenizer_from: str) -> str:
    """Folder of the tiny `name` checkpoint (built once per cache), with the tokenizer of `tokenizer_from`."""
    import torch

    folder = os.path.join(cache_dir, "families", name)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        torch.manual_seed(0)
        model, processor = BUILDERS[name](AutoTokenizer.from_pretrained(tokenizer_from))
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return folder
