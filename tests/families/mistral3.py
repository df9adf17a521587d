"""Mistral 3 (Mistral Small 3.1 with a Pixtral tower): plain 4-D pixel_values padded to the batch's largest image +
`image_sizes`; an image becomes rows of `[IMG]` separated by `[IMG_BREAK]` and closed by `[IMG_END]` (4x4 merged
patches for a 40 px image, resized to 32 px); the template writes BOS and a default `[SYSTEM_PROMPT]`, user turns as
`[INST]...[/INST]` and assistant turns as the bare answer + `</s>`: add_generation_prompt adds nothing."""

from __future__ import annotations

from families.common import reloaded

END_OF_TURN = "</s>"
# add_generation_prompt appends nothing (the answer follows `[/INST]` directly); `[/INST]` is the marker that precedes
# every assistant turn, so it stands in for the generation prompt.
ASSISTANT_PROMPT = "[/INST]"
DEFAULT_SYSTEM = "You are a helpful assistant."  # the real one is a long Mistral Small 3.1 prompt; the date is added as there

# Shaped like Mistral Small 3.1's template, shortened: a default system prompt that carries the date of the day it is
# rendered (strftime_now), so renders differ by day while the labels must not.
TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] if messages[0]['content'] is string else messages[0]['content'][0]['text'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = '" + DEFAULT_SYSTEM + " The current date is ' ~ strftime_now('%Y-%m-%d') ~ '.' %}"
    "{% set turns = messages %}{% endif %}"
    "[SYSTEM_PROMPT]{{ system }}[/SYSTEM_PROMPT]"
    "{% for m in turns %}"
    "{% if m['role'] == 'user' %}[INST]{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% elif c['type'] in ['image', 'image_url'] %}[IMG]{% endif %}{% endfor %}{% endif %}[/INST]"
    "{% elif m['role'] == 'assistant' %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ eos_token }}"
    "{% elif m['role'] == 'system' %}[SYSTEM_PROMPT]{{ m['content'] if m['content'] is string else m['content'][0]['text'] }}[/SYSTEM_PROMPT]"
    "{% else %}{{ raise_exception('Only user, system and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
MARKERS = ["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]


def build(tokenizer):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralProcessor, PixtralVisionConfig
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    tokenizer.add_special_tokens({"additional_special_tokens": MARKERS})
    tokenizer.eos_token = END_OF_TURN  # as Mistral's tokenizer: BOS <s>, EOS </s>
    tokenizer = reloaded(tokenizer, image_token="[IMG]")
    patch, merge, longest = 4, 2, 32
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                head_dim=16, sliding_window=None, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN))
    config = Mistral3Config(
        vision_config=PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=longest,
                                          patch_size=patch),
        text_config=MistralConfig(**text),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=merge,
        vision_feature_layer=-1,
        multimodal_projector_bias=False,
        tie_word_embeddings=False,
    )
    image_processor = PixtralImageProcessorPil(size={"longest_edge": longest}, patch_size={"height": patch, "width": patch})
    processor = PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch, spatial_merge_size=merge,
                                 chat_template=TEMPLATE)
    return Mistral3ForConditionalGeneration(config), processor
