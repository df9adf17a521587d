"""Fully sharded data parallel (torch FSDP2): the units a model is sharded into (its repeated blocks,
embeddings and LM head, then the rest) and the gathered state for an export.

Sharded checkpoints (written and loaded through Lightning's strategy) live in run/checkpoints.py."""

from __future__ import annotations

import warnings

import torch


def block_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a model: the parameterised entries of each ModuleList, outermost lists only.

    Decoder layers and vision encoder blocks are such lists in every transformers family (of two
    classes in Mllama, whose cross-attention layers sit between its self-attention ones), so this
    finds them without a per-family class list (transformers' `_no_split_modules` names
    attention or embedding classes in some families, which are not the units to shard).
    """
    blocks: list[torch.nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside or not isinstance(module, torch.nn.ModuleList):
            continue
        entries = [m for m in module if any(True for _ in m.parameters())]
        if not entries:
            continue
        blocks += entries
        inside.update(id(m) for e in entries for m in e.modules())
    return blocks


def vocabulary_units(model: torch.nn.Module) -> list[list[torch.nn.Module]]:
    """The input embeddings and the LM head as units of their own: one unit when they share a weight, else two.

    At 7B with a 150k vocabulary they hold ~1.1B parameters; inside the root unit they would stay
    gathered (with their gradients) for the whole step on every rank.
    """
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head is embed:
        return [[embed]]
    if getattr(head, "weight", None) is getattr(embed, "weight", False):  # tied: one unit keeps the shared parameter whole
        return [[embed, head]]
    return [[embed], [head]]


def shard_model(model: torch.nn.Module, mesh, param_dtype: torch.dtype | None = None) -> int:
    """Shard each block, the embeddings and the head, then the rest as the root unit, over `mesh`; returns the units before the root.

    The root keeps norms and projector: they are gathered for the whole forward, so a zero-weight
    vision pass run inside it reaches them like a real image does. With `param_dtype` (bf16-mixed)
    the float32 shards are gathered in that dtype and gradients reduced in float32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Multimodal models return image features as a list (views of one tensor); nothing edits them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype is not None else MixedPrecisionPolicy()
    units = [[b] for b in block_modules(model)] + vocabulary_units(model)
    for unit in units:
        fully_shard(unit if len(unit) > 1 else unit[0], mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return len(units)


def full_state_dict(model: torch.nn.Module) -> dict:
    """The whole model's state on rank 0's CPU (empty on other ranks); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
