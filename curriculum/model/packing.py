"""Which model families can train on packed rows (data.packing), and why the others cannot yet.

Packing relies on transformers building each sample's attention from `position_ids` that restart
per sample; a family whose positions or attention come from elsewhere would let samples see each
other or place them wrongly.

May import data.packing.
"""

from __future__ import annotations

import torch

from curriculum.data.packing import UNPACKABLE


def packing_refusal(model: torch.nn.Module, sample: dict) -> str | None:
    """Why `model` cannot train on packed rows, or None; `sample` is a one-image batch as its processor builds it."""
    name = type(model).__name__
    if any(hasattr(m, "get_rope_index") for m in (model, getattr(model, "model", None))):
        return f"{name} computes its 3-D (mRoPE) positions over whole rows, so a packed row would carry one sample's positions into the next"
    if not hasattr(model, "get_image_features"):
        return f"{name}'s language model reads images through cross-attention layers masked per padded row"
    text = getattr(model.config, "text_config", model.config)
    mixing = sorted({t for t in getattr(text, "layer_types", None) or [] if not t.endswith("attention") or t == "linear_attention"})
    if mixing:
        return f"{name}'s {' and '.join(mixing)} layers carry state from token to token whatever the positions, so samples in a row would see each other"
    keys = [k for k in UNPACKABLE if k in sample]
    if keys:
        return f"{name}'s batches carry {', '.join(keys)}, which set attention per padded row (bidirectional image attention)"
    return None
