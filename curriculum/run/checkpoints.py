"""Checkpoints of a run folder: where they live (checkpoints/last.ckpt, stage-<name>.ckpt), when they
are written (step boundaries, after the step's validation), how (atomic file renames; sharded
folders swapped in whole) and what a sharded load must refuse.

May import config and schedule.
"""

from __future__ import annotations

import logging
import os
import shutil

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.strategies import ModelParallelStrategy

from curriculum.config import ConfigError
from curriculum.schedule.stages import Schedule

log = logging.getLogger("curriculum")


LAST = "last.ckpt"
# Lightning's file of run state (loops, schedulers, callbacks, ours) inside a sharded checkpoint folder.
META = "meta.pt"


def is_sharded_checkpoint(path: str) -> bool:
    """True for a checkpoint folder written by ShardedStrategy (one shard per rank plus META)."""
    return os.path.isfile(os.path.join(path, META))


def checkpoint_meta(path: str) -> str:
    """The file that holds a checkpoint's run state: the checkpoint itself, or META in a sharded one."""
    return os.path.join(path, META) if os.path.isdir(path) else path


def last_checkpoint(run_dir: str) -> str | None:
    """The run's checkpoints/last.ckpt (a file, or a sharded folder), or None when it has none.

    A kill while a sharded checkpoint is swapped in can leave only the previous one, as last.ckpt.old.
    """
    path = os.path.join(run_dir, "checkpoints", LAST)
    for candidate in (path, path + ".old"):
        if os.path.isfile(candidate) or is_sharded_checkpoint(candidate):
            return candidate
    return None


def checkpoint_position(path: str) -> tuple[int, str | None, dict | None]:
    """Optimizer steps done in a checkpoint, the fingerprint of the data it trained on, and its data files' states."""
    ckpt = torch.load(checkpoint_meta(path), map_location="cpu", mmap=True, weights_only=False)
    data = ckpt.get("CurriculumDataModule", {})
    return int(ckpt["global_step"]), data.get("data"), data.get("data_files")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint under a temporary name and renames it, so a kill leaves the old one intact."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = str(path)
        tmp = path + ".tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class RunCheckpoints(pl.Callback):
    """Saves after the step's validation when there is one, so a resumed run neither repeats nor skips it."""

    def __init__(self, schedule: Schedule, dirpath: str, every_n_steps: int, val_every_n_steps: int | None, run_steps: int):
        self.ends = {st.end_step: st.name for st in schedule.stages}
        self.starts = {st.start_step: st for st in schedule.stages}
        self.dirpath = dirpath
        self.every = every_n_steps
        # None when the run has no validation data.
        self.val_every = val_every_n_steps
        self.run_steps = run_steps
        self._pending: int | None = None

    def _due(self, step: int) -> bool:
        return step in self.ends or step == self.run_steps or (self.every > 0 and step % self.every == 0)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if batch_idx % trainer.accumulate_grad_batches == 0 and step in self.starts:
            st = self.starts[step]
            t = st.trainable
            log.info("stage %s starts at step %d (vision %s, projector %s, language %s; lr %g, %d warmup steps, %s)",
                     st.name, step, t.vision.value, t.projector.value, t.language.value, st.lr.peak, st.lr.warmup_steps, st.lr.scheduler)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        step = trainer.global_step
        if not self._due(step):
            return
        if self.val_every and step % self.val_every == 0:
            self._pending = step
        else:
            self._save(trainer, step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self._pending is not None and not trainer.sanity_checking:
            self._save(trainer, self._pending)
            self._pending = None

    def _save(self, trainer: pl.Trainer, step: int) -> None:
        if step in self.ends:
            path = os.path.join(self.dirpath, f"stage-{self.ends[step]}.ckpt")
            trainer.save_checkpoint(path, weights_only=False)
            log.info("stage %s ended at step %d: %s", self.ends[step], step, path)
        # Full checkpoints: optimizer, scheduler and loop state are what exact resume needs.
        trainer.save_checkpoint(os.path.join(self.dirpath, LAST), weights_only=False)


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

    saved = FileSystemReader(path).read_metadata().state_dict_metadata
    frozen = set(module.never_trained())
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
