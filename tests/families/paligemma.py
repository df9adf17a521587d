"""PaliGemma: prefix-LM. The processor refuses text-only input, writes BOS itself after the last `<image>` and appends
"\\n" to the text; `suffix=` appends EOS and marks the suffix with token_type_ids 1 (and returns its own `labels`).
token_type_ids 0 = bidirectional prefix, 1 = causal; all 0 (no suffix) makes the answer visible to itself. There is no
upstream chat template: this one writes every image first, user text, and each answer as "\\n" + answer + EOS, so a
one-turn render becomes PaliGemma's `<image>*N<bos>prefix\\nanswer<eos>` after the processor (plus a trailing "\\n").
The processor adds 1152 <locNNNN>/<segNNN> tokens: the vocabulary is sized after building it."""

from __future__ import annotations

END_OF_TURN = "<eos>"
# add_generation_prompt appends nothing: the processor's trailing "\n" is the separator before the answer.
ASSISTANT_PROMPT = ""
# The template writes the separator before the answer; the processor appends it to a generation prompt instead, so the
# model also learns to write it (harmless: at inference it is already there).
ANSWER_PREFIX = "\n"

# Images first (the processor puts BOS after the last `<image>`), no BOS in the template (the processor writes it).
# The newline is an expression: chat templates render with trim_blocks, which eats a literal newline after a tag.
TEMPLATE = (
    "{% for m in messages %}{% if m['content'] is not string %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '\\n' }}{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)


def build(tokenizer):
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipVisionConfig
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer.add_special_tokens({"additional_special_tokens": ["<bos>", "<eos>"]})
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.add_bos_token = "<bos>", "<eos>", True  # as Gemma's tokenizer
    size, patch = 32, 8
    image_processor = SiglipImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor.image_seq_length = (size // patch) ** 2  # read by PaliGemmaProcessor (16 tokens per image)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=TEMPLATE)
    tokenizer = processor.tokenizer  # now with the loc/seg tokens
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                head_dim=16, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=size,
                                         patch_size=patch, vision_use_head=False),
        text_config=GemmaConfig(**text),
        image_token_index=processor.image_token_id,
        projection_dim=32,
        hidden_size=32,
        vocab_size=len(tokenizer),
    )
    return PaliGemmaForConditionalGeneration(config), processor
