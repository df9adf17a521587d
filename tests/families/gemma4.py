"""Gemma 4 (large-variant template): BOS written by the template and added again by the tokenizer by default; turns
<|turn>user|model ... <turn|>; an image becomes <|image> + soft tokens + <image|> with (n, max_patches, 3*p*p)
pixel_values + image_position_ids (-1 = padding); mm_token_type_ids switch on bidirectional attention inside an image
(dropping them silently makes it causal); the generation prompt adds an empty thought channel, so it is NOT a prefix of
the training render; the processor also holds an audio feature extractor."""

from __future__ import annotations

from families.common import reloaded

END_OF_TURN = "<turn|>"
ASSISTANT_PROMPT = "<|turn>model"
# The generation prompt adds an empty, closed thought channel that rendered answers never carry.
GENERATION_SUFFIX = "<|channel>thought\n<channel|>"

# The real Gemma 4 (12B/26B/31B) template, without tools: {{bos_token}}; a system turn only for a system/developer
# message or enable_thinking (then <|think|>\n opens it); `assistant` renders as `model`; text items trimmed, images as
# <|image|> with no separator; every turn ends <turn|>\n; the generation prompt is <|turn>model\n plus, unless
# enable_thinking, an already-closed empty thought channel <|channel>thought\n<channel|>. (The real template also
# strips <|channel>...<channel|> thinking out of earlier model turns; answers here carry none.)
GEMMA4_TEMPLATE = (
    "{{ bos_token }}"
    "{% set loop_messages = messages %}"
    "{% if enable_thinking or messages[0]['role'] in ['system', 'developer'] %}<|turn>system\n"
    "{% if enable_thinking %}<|think|>\n{% endif %}"
    "{% if messages[0]['role'] in ['system', 'developer'] %}"
    "{% if messages[0]['content'] is string %}{{ messages[0]['content'] | trim }}"
    "{% else %}{% for c in messages[0]['content'] %}{% if c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{% set loop_messages = messages[1:] %}{% endif %}"
    "<turn|>\n{% endif %}"
    "{% for m in loop_messages %}"
    "<|turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] | trim }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] | trim }}"
    "{% elif c['type'] == 'image' %}<|image|>"
    "{% elif c['type'] == 'audio' %}<|audio|>"
    "{% elif c['type'] == 'video' %}<|video|>{% endif %}"
    "{% endfor %}{% endif %}<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% if not enable_thinking %}<|channel>thought\n<channel|>{% endif %}{% endif %}"
)

NAMED = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>", "video_token": "<|video|>",
         "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}


def build(tokenizer):
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4Processor, Gemma4TextConfig, Gemma4VisionConfig
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
    from transformers.models.gemma4.video_processing_gemma4 import Gemma4VideoProcessor

    markers = ["<bos>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>", *NAMED.values()]
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    # Like Gemma's tokenizer: <bos> is added by default, so the template's BOS doubles unless add_special_tokens=False.
    tokenizer = reloaded(tokenizer, **NAMED)
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.add_bos_token = "<bos>", END_OF_TURN, True
    ids = tokenizer.convert_tokens_to_ids
    # Two layers, because Gemma 4 applies the bidirectional image attention (use_bidirectional_attention="vision", as
    # the large variants) only in sliding-window layers and forces the last layer to full attention: one sliding + one
    # full layer is the smallest model where mm_token_type_ids change anything. No per-layer input embeddings
    # (hidden_size_per_layer_input=0, as the large variants).
    text = Gemma4TextConfig(
        vocab_size=len(tokenizer), vocab_size_per_layer_input=len(tokenizer), hidden_size_per_layer_input=0,
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16, max_position_embeddings=1024,
        sliding_window=512,
        use_bidirectional_attention="vision", pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=ids(END_OF_TURN),
    )
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=16, patch_size=4, pooling_kernel_size=3, position_embedding_size=64)
    config = Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None,
        image_token_id=ids("<|image|>"), boi_token_id=ids("<|image>"), eoi_token_id=ids("<image|>"), video_token_id=ids("<|video|>"),
        audio_token_id=ids("<|audio|>"), boa_token_id=ids("<|audio>"), eoa_token_index=ids("<audio|>"),
    )
    # max_soft_tokens must be one of 70/140/280/560/1120 (checked when the image processor loads), so every image is
    # resized to fill 70 * 3 * 3 patches of 4 px: a square image becomes 96x96 = 24x24 patches = 64 soft tokens.
    vision_sizes = dict(patch_size=4, max_soft_tokens=70, pooling_kernel_size=3)
    processor = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessorPil(**vision_sizes),
        tokenizer=tokenizer,
        video_processor=Gemma4VideoProcessor(num_frames=2, **vision_sizes),
        chat_template=GEMMA4_TEMPLATE,
        image_seq_length=70,
    )
    assert len(tokenizer) == text.vocab_size  # the processor adds <|video|> if missing; it is already there
    return Gemma4ForConditionalGeneration(config), processor
