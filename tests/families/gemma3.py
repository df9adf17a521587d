"""Gemma 3: template BOS, images inside newline runs, token_type_ids for bidirectional image attention."""

from __future__ import annotations

from families.common import reloaded, text_config

END_OF_TURN = "<end_of_turn>"
ASSISTANT_PROMPT = "<start_of_turn>model"


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


def build(tokenizer):
    """Gemma 3: the template writes BOS, images expand to `\\n\\n<start_of_image>` + soft tokens + `<end_of_image>\\n\\n`
    (newlines that tokenise differently next to the text), and token_type_ids switch on bidirectional image attention."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>", *named.values()]})
    # Gemma's vocabulary has tokens for runs of newlines, so the text around an expanded image tokenises differently.
    tokenizer.add_tokens(["\n\n", "\n\n\n"])
    tokenizer = reloaded(tokenizer, **named)
    text = {**text_config(tokenizer), "head_dim": 16, "eos_token_id": tokenizer.convert_tokens_to_ids("<end_of_turn>")}
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
