"""Which model families can train on packed rows (data.packing), why the others cannot, and the 3-D
(mRoPE) positions of packed rows for the families that need them.

Packing relies on transformers building each sample's attention from `position_ids` that restart
per sample; a family whose attention comes from elsewhere would let samples see each other.

May import data.packing.
"""

from __future__ import annotations

import torch

from curriculum.data.packing import PER_TOKEN, UNPACKABLE


def rope_index_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module whose `get_rope_index` computes `model`'s 3-D (mRoPE) positions (inside any PEFT wrapper), or None for 1-D positions."""
    return next((m for m in model.modules() if hasattr(m, "get_rope_index")), None)


def packing_refusal(model: torch.nn.Module, sample: dict) -> str | None:
    """Why `model` cannot train on packed rows, or None; `sample` is a one-image batch as its processor builds it."""
    name = type(model).__name__
    text = getattr(model.config, "text_config", model.config)
    mixing = sorted({t for t in getattr(text, "layer_types", None) or [] if not t.endswith("attention") or t == "linear_attention"})
    if mixing:
        return f"{name}'s {' and '.join(mixing)} layers carry state from token to token whatever the positions, so samples in a row would see each other"
    if not hasattr(model, "get_image_features"):
        return f"{name}'s language model reads images through cross-attention layers masked per padded row"
    # Token types set bidirectional image attention, except where they only place the mRoPE positions.
    keys = [k for k in (*UNPACKABLE, *PER_TOKEN) if k in sample]
    if rope_index_model(model) is not None:
        keys = [k for k in keys if k != "mm_token_type_ids"]
    if keys:
        return f"{name}'s batches carry {', '.join(keys)}, which set attention per padded row (bidirectional image attention)"
    return None


def mrope_positions(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """[4, rows, tokens] positions of packed rows: each sample's restarting text positions, then its 3-D (mRoPE) ones.

    `model` is the module rope_index_model found. The family's own `get_rope_index` walks each row;
    a sample's positions, less those of its first token, are what the sample alone gets (the walk
    only adds), so each starts at 0 as in a padded row. transformers reads the first row as the
    text positions its packed attention is built from.
    """
    text = inputs["position_ids"]
    rope, _ = model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
    )
    # Each token's sample starts where its text position is 0, `text` tokens back.
    first = (torch.arange(text.shape[1], device=text.device) - text).expand(rope.shape[0], -1, -1)
    rope = rope.to(text.device)
    return torch.cat([text[None], rope - rope.gather(2, first)])
