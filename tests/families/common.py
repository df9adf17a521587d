"""What the tiny family builders share."""

from __future__ import annotations

import tempfile

from transformers import AutoTokenizer


def text_config(tokenizer, end_of_turn: str | None = None) -> dict:
    """A one-layer language model of hidden size 32 over the tokenizer's vocabulary; EOS is `end_of_turn` when given."""
    eos = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn else tokenizer.eos_token_id
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos)


def reloaded(tokenizer, cls=AutoTokenizer, load: dict | None = None, **named):
    """The tokenizer saved and loaded again (as `cls`, with `load` keywords) with named special tokens
    (tokenizer.image_token, ...), which are set at load."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return cls.from_pretrained(tmp, extra_special_tokens=named, **(load or {}))
