"""Built-in tiny vision-language models, made from transformers configs and saved like real checkpoints.

Nothing is downloaded: a byte-level BPE tokenizer is trained on the built-in data's text, the
weights are seeded random inits, and the result is written with `save_pretrained` so it is
loaded back through the same `from_pretrained` path a hub checkpoint uses.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from typing import Callable, Iterable

import torch

from curriculum.config import ConfigError

BUILTIN_PREFIX = "builtin:"
BUILDER_VERSION = "1"
# builtin:<name>-pretrained: the same model whose language model was first trained on text (the
# built-in text tasks), so fine-tuning on image-text can make it forget and blending can protect.
PRETRAINED = "-pretrained"
PRETRAIN_RECORDS = 20000
PRETRAIN_STEPS = 600
PRETRAIN_BATCH = 32
PRETRAIN_LR = 3e-3
PRETRAIN_WARMUP = 30

log = logging.getLogger("curriculum")

# A ChatML-style template that renders structured content ({"type": "image"|"text"}) with the
# model's own image token, and marks nothing by hand: labels come from rendering prefixes.
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{IMAGE}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIALS = ["<pad>", "<s>", "</s>", "<image>", "<|im_start|>", "<|im_end|>"]


def builtin_names() -> list[str]:
    """Names accepted after `builtin:` in model.name_or_path."""
    return sorted([*_BUILDERS, *(name + PRETRAINED for name in _BUILDERS)])


def ensure_builtin(name: str, cache_dir: str, corpus: Callable[[], Iterable[str]], pretraining: Callable[[], list[dict]]) -> str:
    """Return the folder of built-in model `name`, building and saving it on first use.

    `corpus` gives the tokenizer's training text; `pretraining` the text-only records a
    `-pretrained` variant's language model is trained on.
    """
    if name not in builtin_names():
        raise ConfigError(f"model.name_or_path=builtin:{name} is unknown: use one of {', '.join('builtin:' + n for n in builtin_names())}.")
    target = os.path.join(os.path.expanduser(cache_dir), "models", f"{name}-v{BUILDER_VERSION}")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(target))
    base = name.removesuffix(PRETRAINED)
    try:
        tokenizer = _train_tokenizer(corpus(), extra=_EXTRA_TOKENS[base])
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model, processor = _BUILDERS[base](tokenizer)
            if name != base:
                log.info("pre-training the language model of builtin:%s on text (once; cached in %s)", name, target)
                pretrain_language(model, processor, pretraining(), steps=PRETRAIN_STEPS)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def pretrain_language(model, processor, records: list[dict], steps: int, batch: int = PRETRAIN_BATCH) -> list[float]:
    """Train the model on text-only records (assistant tokens supervised, as fine-tuning does); returns the losses.

    Only the language model gets gradients (there are no images); AdamW without weight decay
    leaves the vision tower and projector exactly as initialised.
    """
    from curriculum.data.collate import Collator
    from curriculum.model.loss import NOT_MODEL_INPUTS
    from curriculum.progress_lines import CountedLines

    collator = Collator(processor, ["text_only"], max_length=256, on_invalid="error")
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
    # Linear warmup, then cosine decay to a tenth of the peak.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / PRETRAIN_WARMUP) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))
    )
    order = torch.Generator().manual_seed(0)
    losses = []
    progress = CountedLines("pre-training", "steps", total=steps)
    model.train()
    for _ in range(steps):
        picked = torch.randint(len(records), (batch,), generator=order).tolist()
        data = collator([records[i] for i in picked])
        loss = model(**{k: v for k, v in data.items() if k not in NOT_MODEL_INPUTS}, labels=data["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        progress.update(len(losses), f"loss {losses[-1]:.3f}")
    progress.finish(f"loss {losses[-1]:.3f}")
    model.eval()
    return losses


def _train_tokenizer(texts: Iterable[str], extra: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=_SPECIALS + extra,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="right",
    )


def _text_config(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _tiny_llava(tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=64,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_text_config(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_CHAT_TEMPLATE.replace("{IMAGE}", "<image>"),
    )
    return LlavaForConditionalGeneration(config), processor


def _tiny_idefics3(tokenizer):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    config = Idefics3Config(
        text_config=dict(model_type="llama", **_text_config(tokenizer)),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=4,
        chat_template=_CHAT_TEMPLATE.replace("{IMAGE}", "<image>"),
    )
    return Idefics3ForConditionalGeneration(config), processor


_BUILDERS = {"tiny-llava": _tiny_llava, "tiny-idefics3": _tiny_idefics3}
_EXTRA_TOKENS = {
    "tiny-llava": [],
    "tiny-idefics3": ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"],
}
