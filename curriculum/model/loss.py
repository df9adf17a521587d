"""The supervised-token loss: cross-entropy of the tokens the labels keep, computed without ever
holding the whole sequence's logits. Used by training, validation, generation scoring and the
benchmarks against other trainers.

May import data (the labels' ignore index).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from curriculum.data.template import IGNORE_INDEX

# Batch entries the collator adds for bookkeeping; everything else is a model input.
NOT_MODEL_INPUTS = ("labels", "group_ids", "sample_ids", "skipped", "drawn_group_ids", "sample_index")


def supervised_token_losses(model: torch.nn.Module, inputs: dict, labels: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every supervised token (row-major order) and the batch row it belongs to.

    Only the hidden states of positions that predict a supervised token reach the LM head (a
    pre-hook selects them), so logits exist for those tokens only, never for the whole sequence;
    the fp32 cross-entropy runs in chunks that are recomputed in backward, so no fp32 copy of the
    logits is kept. The model's own processing after its head (e.g. logit soft-capping) still applies.
    """
    targets_all = labels[:, 1:]
    wanted = targets_all != IGNORE_INDEX
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = wanted
    targets = targets_all[wanted]
    rows = wanted.nonzero()[:, 0]

    def select(module, args):
        hidden = args[0]
        if hidden.dim() == 3 and hidden.shape[:2] == keep.shape:
            return (hidden[keep],) + tuple(args[1:])
        return None

    handle = model.get_output_embeddings().register_forward_pre_hook(select)
    try:
        # No KV cache in training: it would hold every layer's keys and values past the forward.
        logits = model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    if logits.dim() == 3:  # the model fed its head something else: take the positions from the full logits
        logits = logits[keep]
    pieces = []
    for start in range(0, len(targets), chunk):
        part, want = logits[start : start + chunk], targets[start : start + chunk]
        pieces.append(checkpoint(_cross_entropy, part, want, use_reentrant=False) if part.requires_grad else _cross_entropy(part, want))
    token_loss = torch.cat(pieces) if pieces else logits.float().sum(-1)[:0]
    return token_loss, rows


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="none")


def group_sums(token_loss: torch.Tensor, rows: torch.Tensor, group_ids: torch.Tensor, n_rows: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's summed token loss and a [groups, 2] float64 tensor of (loss sum, supervised tokens) per mixing group."""
    row_loss = torch.zeros(n_rows, dtype=token_loss.dtype, device=token_loss.device).index_add(0, rows, token_loss)
    row_tokens = torch.bincount(rows, minlength=n_rows)
    sums = torch.zeros(groups, 2, dtype=torch.float64, device=token_loss.device)
    sums[:, 0].index_add_(0, group_ids, row_loss.detach().double())
    sums[:, 1].index_add_(0, group_ids, row_tokens.double())
    return row_loss.sum(), sums


def unsupervised_batch(model: torch.nn.Module, device: torch.device) -> dict:
    """One text token without a label (the text model's BOS or pad token), in group 0: a forward nothing learns from."""
    text = getattr(model.config, "text_config", model.config)
    token = next((t for t in (text.bos_token_id, text.pad_token_id) if isinstance(t, int)), 0)
    ids = torch.full((1, 1), token, dtype=torch.long, device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, IGNORE_INDEX),
            "group_ids": torch.zeros(1, dtype=torch.long, device=device)}
