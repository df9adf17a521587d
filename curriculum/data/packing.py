"""Padding-free batches: a collated micro-batch's samples laid end to end in as few rows as fit
`data.max_length`, in the order the sampler drew them, with positions restarting at every sample.

transformers builds the attention from those positions when no attention mask is given (a
block-diagonal causal mask on SDPA / eager, the varlen kernel on FlashAttention-2), so no token
attends across samples and no padding is computed beyond the last row's tail. Which samples a
step holds does not change, so the mix, the losses per group and the plan are those of the
padded layout.

May import data.template.
"""

from __future__ import annotations

import torch

from curriculum.data.template import IGNORE_INDEX

# Per-token inputs a packed row cannot keep per sample: cross-attention masks and positions of their own.
UNPACKABLE = ("cross_attention_mask", "position_ids")
# Per-token inputs laid end to end like the ids (token types: what the model does with them decides whether it can pack).
PER_TOKEN = ("token_type_ids", "mm_token_type_ids")


def pack(batch: dict, width: int, pad_id: int) -> dict:
    """`batch` (rows padded to one width) as packed rows of at most `width` tokens; `sample_index` names each token's sample (-1: padding)."""
    present = [k for k in UNPACKABLE if k in batch]
    if present:
        raise ValueError(f"cannot pack a batch with {', '.join(present)}: they set attention or positions per padded row")
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(1).tolist()
    rows = bins(lengths, width)
    row_len = max((sum(lengths[i] for i in r) for r in rows), default=0)
    shape = (len(rows), row_len)
    ids = torch.full(shape, pad_id, dtype=batch["input_ids"].dtype)
    labels = torch.full(shape, IGNORE_INDEX, dtype=batch["labels"].dtype)
    positions = torch.zeros(shape, dtype=torch.long)
    owner = torch.full(shape, -1, dtype=torch.long)
    types = {k: torch.zeros(shape, dtype=batch[k].dtype) for k in PER_TOKEN if k in batch}
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            n = lengths[i]
            ids[r, at : at + n] = batch["input_ids"][i][mask[i]]
            labels[r, at : at + n] = batch["labels"][i][mask[i]]
            # A sample's first token is predicted by nothing of its own (in a padded row neither).
            labels[r, at] = IGNORE_INDEX
            positions[r, at : at + n] = torch.arange(n)
            owner[r, at : at + n] = i
            for k, t in types.items():
                t[r, at : at + n] = batch[k][i][mask[i]]
            at += n
        # The tail is a sequence of its own: it attends to no sample and no sample to it.
        positions[r, at:] = torch.arange(row_len - at)
    out = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels")}
    out.update(input_ids=ids, labels=labels, position_ids=positions, sample_index=owner, **types)
    return out


def bins(lengths: list[int], width: int) -> list[list[int]]:
    """Consecutive samples per row, a new row where the next one would pass `width` (sample order is kept)."""
    rows: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if not rows or used + n > width:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def token_owners(batch: dict) -> torch.Tensor:
    """The sample of every supervised target in row-major order (the order the loss lists them)."""
    targets = batch["labels"][:, 1:]
    return batch["sample_index"][:, 1:][targets != IGNORE_INDEX]
