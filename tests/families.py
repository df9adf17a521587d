"""Tiny random checkpoints of VLM families beyond the built-in two, for the test matrix.

Each is built from the family's transformers config (hidden size 32, one layer) with the built-in
tokenizer and chat template, saved with save_pretrained and loaded like a hub checkpoint.
"""

from __future__ import annotations

import os
import tempfile

from transformers import AutoTokenizer

from curriculum.model.builtin import _CHAT_TEMPLATE, _tiny_idefics3


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


GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if m['content'] is string %}{{ m['content'] | trim }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<start_of_image>{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def gemma3(tokenizer):
    """Gemma 3: the template writes BOS, images expand to `\\n\\n<start_of_image>` + soft tokens + `<end_of_image>\\n\\n`
    (newlines that tokenise differently next to the text), and token_type_ids switch on bidirectional image attention."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>", *named.values()]})
    # Gemma's vocabulary has tokens for runs of newlines, so the text around an expanded image tokenises differently.
    tokenizer.add_tokens(["\n\n", "\n\n\n"])
    with tempfile.TemporaryDirectory() as tmp:  # named special tokens (tokenizer.boi_token, ...) are set when a tokenizer loads
        tokenizer.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp, extra_special_tokens=named)
    text = {**_text(tokenizer), "head_dim": 16, "eos_token_id": tokenizer.convert_tokens_to_ids("<end_of_turn>")}
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**text),
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        mm_tokens_per_image=4,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer, chat_template=GEMMA3_TEMPLATE,
        image_seq_length=4,
    )
    return Gemma3ForConditionalGeneration(config), processor


def idefics3_split(tokenizer):
    """Idefics3 with image splitting on: an image becomes 2x2 tiles plus the whole image (a variable number of
    images per sample, 5-D pixel_values + pixel_attention_mask) and the text gains <row_r_col_c> markers."""
    tokenizer.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]})
    model, processor = _tiny_idefics3(tokenizer)
    processor.image_processor.do_image_splitting = True
    processor.image_processor.size = {"longest_edge": 64}  # tiles of max_image_size (32): a 32 px image splits into 2x2
    return model, processor


AYA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|START_OF_TURN_TOKEN|>"
    "{% if m['role'] == 'user' %}<|USER_TOKEN|>{% else %}<|CHATBOT_TOKEN|>{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


def aya_vision(tokenizer):
    """Aya Vision: the template writes BOS; an image becomes tiles on dim 0 (crops + a global view) whose text is
    `<|START_OF_IMG|>TILE_1<|IMG_PATCH|>...TILE_GLOBAL...<|END_OF_IMG|>`, plain-text markers that change how the text
    around them tokenises (labels via processed prefixes)."""
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor, Cohere2Config, SiglipVisionConfig
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    markers = ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>",
               "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    text = {**_text(tokenizer), "head_dim": 16, "eos_token_id": tokenizer.convert_tokens_to_ids("<|END_OF_TURN_TOKEN|>")}
    config = AyaVisionConfig(
        text_config=Cohere2Config(**text),
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        downsample_factor=2,
        image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
    )
    # Up to 2 crops of 32 px plus the global view; patch_size is the vision patch times the downsample factor.
    image_processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=2)
    processor = AyaVisionProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=16, img_size=32, chat_template=AYA_TEMPLATE)
    return AyaVisionForConditionalGeneration(config), processor


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|image|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def mllama(tokenizer):
    """Llama 3.2 Vision (Mllama): images reach the language model through cross-attention layers (no
    get_image_features), 6-D pixel_values + aspect_ratio_ids/mask + cross_attention_mask, and the <|image|> id lies
    past the LM head's rows, as in the real checkpoints."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]})
    with tempfile.TemporaryDirectory() as tmp:  # the processor reads tokenizer.image_token, set when a tokenizer loads
        tokenizer.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp, extra_special_tokens={"image_token": "<|image|>"})
    image = tokenizer.convert_tokens_to_ids("<|image|>")
    text = {**_text(tokenizer), "vocab_size": image, "num_hidden_layers": 2, "cross_attention_layers": [1],
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|eot_id|>")}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_global_layers=1, attention_heads=2, image_size=32, patch_size=8,
                  max_num_tiles=2, intermediate_layers_indices=[0], vision_output_dim=64, supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=image)
    image_processor = MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=2)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=LLAMA3_TEMPLATE)
    return MllamaForConditionalGeneration(config), processor


BUILDERS = {"tiny-llava-next": llava_next, "tiny-gemma3": gemma3, "tiny-idefics3-split": idefics3_split, "tiny-aya-vision": aya_vision,
            "tiny-mllama": mllama}
# The test matrix (the `arch` fixture): the two built-in models, then the families above.
MATRIX = ["tiny-llava", "tiny-idefics3", *BUILDERS]


def chat_markers(path: str) -> tuple[str, str]:
    """(end-of-turn token, assistant generation prompt) of a tiny model's chat template."""
    if os.path.basename(path) == "tiny-gemma3":
        return "<end_of_turn>", "<start_of_turn>model"
    if os.path.basename(path) == "tiny-mllama":
        return "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>"
    if os.path.basename(path) == "tiny-aya-vision":
        return "<|END_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    return "<|im_end|>", "<|im_start|>assistant"


def image_token_id(path: str) -> int:
    """The id of the tokens an image expands to, from the model's config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return next(v for v in (getattr(config, "image_token_id", None), getattr(config, "image_token_index", None)) if isinstance(v, int))


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
