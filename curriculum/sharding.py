"""Fully sharded data parallel (torch FSDP2 through Lightning's ModelParallelStrategy): the wrap
policy, atomic sharded checkpoints that leave out what no stage trains, and the gathered export."""

from __future__ import annotations

import os
import shutil
import warnings

import torch
from pytorch_lightning.strategies import ModelParallelStrategy

from curriculum.resume import META


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


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 over all processes (no tensor parallelism), with checkpoints that fit this project's rules.

    A checkpoint is a folder: each rank writes its shard of the trained weights and optimizer
    state (torch.distributed.checkpoint), rank 0 the run state. It is written under a temporary
    name and swapped in, so a kill leaves the previous one whole. Loading takes what the folder
    holds: weights no stage trains come from the base model (lean checkpoints), and optimizer
    state is restored for exactly the parameters that had some when it was saved.
    """

    def __init__(self, processes: int):
        super().__init__(data_parallel_size=processes, tensor_parallel_size=1, save_distributed_checkpoint=True)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = str(self.broadcast(str(filepath)))
        tmp = path + ".tmp"
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier("checkpoint-tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("checkpoint-written")
        if self.global_rank == 0:
            swap_in(tmp, path)
        self.barrier("checkpoint-swapped")

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        from torch.distributed.checkpoint import DefaultLoadPlanner, load
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict

        path = str(self.broadcast(str(checkpoint_path)))
        module = self.model
        meta = torch.load(os.path.join(path, META), weights_only=False)
        state = {"state_dict": get_model_state_dict(module)}
        refuse_missing_trained(module, state["state_dict"], path)
        # Partial: the checkpoint leaves out the weights no stage trains (they come from the base model).
        load(state, checkpoint_id=path, planner=DefaultLoadPlanner(allow_partial_load=True))
        module.load_state_dict(state["state_dict"], strict=False)
        with_state = set(meta.get("curriculum", {}).get("optimizer_state", []))
        names = {id(p): n for n, p in module.named_parameters()}
        for idx, optimizer in enumerate(self.optimizers):
            optim_state = {f"optimizer_{idx}": get_optimizer_state_dict(module, optimizer)}
            load(optim_state, checkpoint_id=path, planner=DefaultLoadPlanner(allow_partial_load=True))
            set_optimizer_state_dict(module, optimizer, optim_state_dict=optim_state[f"optimizer_{idx}"], options=StateDictOptions(cpu_offload=True))
            # Reading the state initialised every parameter's; keep it only where the saved run had some.
            for p in [p for p in optimizer.state if names.get(id(p)) not in with_state]:
                del optimizer.state[p]
        return meta


def refuse_missing_trained(module, wanted: dict, path: str) -> None:
    """Refuse a sharded checkpoint that lacks weights some stage trains (e.g. renamed by another transformers version).

    A partial load would otherwise leave them at the base model's values and train on from there.
    """
    from torch.distributed.checkpoint import FileSystemReader

    from curriculum.config import ConfigError

    saved = FileSystemReader(path).read_metadata().state_dict_metadata
    frozen = set(module._never_trained())
    params = {n for n, _ in module.named_parameters()}
    missing = sorted(k for k in wanted if k in params and k not in frozen and f"state_dict.{k}" not in saved)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(
            f"resume: {path} holds no saved values for {len(missing)} trained weight(s) ({shown}); were the model's keys renamed "
            "(another transformers version)? Resume with the versions it was trained with, or start a new run."
        )


def swap_in(tmp: str, path: str) -> None:
    """Replace folder `path` by `tmp`; a kill at any point leaves `path` or `path.old` whole."""
    old = path + ".old"
    if os.path.isdir(path):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
