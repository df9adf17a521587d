"""The LightningModule: Lightning's hooks around any transformers image-text-to-text model.

It wires the rooms beside it: trainability.py (what each stage trains), vision_dummy.py (the
zero-weight vision pass for text-only ranks), loss.py (supervised-token losses), step_metrics.py
(one row per optimizer step) and checkpoint_state.py (lean checkpoints, RNG). The objective is the
summed token loss of the whole global batch divided by its supervised tokens, so how the batch is
split over micro-batches and ranks does not change the update.

May import config, data, schedule and the model package's own modules.
"""

from __future__ import annotations

import json
import logging
import os

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

from curriculum.config import COMPONENTS, OptimConfig
from curriculum.data.packing import token_owners
from curriculum.model.checkpoint_state import drop_untrained, realign_batch_progress, require_same_base, restore_rng, rng_state, weights_identity
from curriculum.model.packing import mrope_positions, rope_index_model
from curriculum.model.loss import NOT_MODEL_INPUTS, group_sums, supervised_token_losses, unsupervised_batch
from curriculum.model.step_metrics import SkipLog, StepMetrics
from curriculum.model.trainability import Trainability, freeze_unused_parameters, never_trained
from curriculum.model.vision_dummy import VisionDummy
from curriculum.schedule.stages import Schedule, Stage

log = logging.getLogger("curriculum")


class VLMModule(pl.LightningModule):
    """Trains `model` stage by stage on collated batches and logs loss per mixing group every optimizer step."""

    def __init__(
        self,
        model: torch.nn.Module,
        schedule: Schedule,
        optim: OptimConfig,
        vision_dummy: VisionDummy | None = None,
        skipped_log: str | None = None,
        sample_id_dir: str | None = None,
        start_step: int = 0,
        sharded: bool = False,
    ):
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.group_names = list(schedule.groups)
        self.optim = optim
        # Run the vision path on a tiny input when a micro-batch has no image, so every rank calls the same modules.
        self.vision_dummy = vision_dummy
        self.skips = SkipLog(skipped_log)
        self.sample_id_dir = sample_id_dir
        # The step training starts (or resumes) at: its stage's trainability is set before any wrapper is built.
        self.start_step = start_step
        # Parameters sharded by FSDP2 in configure_model: its units fix which parameters have
        # gradients when first gathered, so a frozen stage drops gradients instead of toggling them.
        self.sharded = sharded
        self.trainability = Trainability(model, toggle_requires_grad=not sharded)
        # The module computing 3-D (mRoPE) positions, for packed rows of such families.
        self.rope_index = rope_index_model(model)
        self.metrics = StepMetrics(schedule)
        # (state_dict keys, weights_identity) of the weights no stage trains, taken before sharding.
        self._identity: tuple[list[str], str] | None = None
        # Checkpoints leave out the weights no stage trains (on_save_checkpoint), so they are missing on load.
        self.strict_loading = False
        # A real batch whose backward shows which trained parameters never get a gradient (DDP only).
        self.probe_batch: dict | None = None
        # (supervised tokens, micro-batches with images) of the step over all ranks, read before the optimizer step.
        self._step_totals: tuple[float, float] | None = None
        # (step, metrics) of the last validation, on every rank (a schedule search reports it).
        self.last_validation: tuple[int, dict] | None = None

    @property
    def skipped_total(self) -> float:
        """Samples skipped over the run (all ranks)."""
        return self.metrics.skipped_total

    @property
    def trained_tokens(self) -> float:
        """Supervised tokens trained on over the run (all ranks)."""
        return self.metrics.trained_tokens

    # ---- stages -----------------------------------------------------------------------------

    def enter_stage(self, stage: Stage) -> bool:
        """Make `stage`'s trainability hold; True when the set of parameters with gradients changed."""
        changed = self.trainability.enter(stage)
        if self.vision_dummy is not None:
            self.vision_dummy.reset()
        if self.training:
            self.train()
        return changed

    def train(self, mode: bool = True):
        """Train mode for the components the current stage trains; eval mode for the ones it freezes."""
        super().train(mode)
        if mode:
            self.trainability.set_modes()
        return self

    def never_trained(self) -> list[str]:
        """state_dict keys of parameters no stage trains (every alias of a tied weight)."""
        return never_trained(self, self.trainability.trained_parameters())

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainability.stage is None:
            self.enter_stage(self.schedule.stage_at(self.start_step))

    def configure_model(self) -> None:
        if not self.sharded or self._identity is not None:
            return
        from curriculum.model.sharding import shard_model

        frozen = self.never_trained()
        self._identity = (sorted(frozen), weights_identity(self.state_dict(keep_vars=True), frozen))
        # bf16-mixed: float32 shards (the optimizer's precision), gathered in bf16 for compute.
        param_dtype = torch.bfloat16 if str(self.trainer.precision) in ("bf16-mixed", "bf16") else None
        units = shard_model(self.model, self.device_mesh["data_parallel"], param_dtype)
        log.info("sharded %d units (blocks, embeddings, head) and the rest of the model over %d processes (FSDP2)", units,
                 self.device_mesh["data_parallel"].size())
        self.trainability.forget_parameters()  # sharding replaced them
        self.enter_stage(self.trainability.stage or self.schedule.stage_at(self.start_step))

    def on_fit_start(self) -> None:
        # On the training device, once: no model compute on the CPU before training starts.
        if self.probe_batch is None:
            return
        unused = freeze_unused_parameters(self, move_data_to_device(self.probe_batch, self.device))
        self.probe_batch = None
        if unused:
            log.info("%d parameter tensor(s) never receive a gradient and stay frozen, e.g. %s", len(unused), unused[0])
            self.enter_stage(self.trainability.stage)
            self._rewrap_ddp()

    def on_train_start(self) -> None:
        # A restored LambdaLR keeps the LR its checkpoint saved in each parameter group; the first step
        # after a resume must already use this run's schedule (a stage's lr may have changed).
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if batch_idx % self.trainer.accumulate_grad_batches:
            return
        self.metrics.start_step()
        stage = self.schedule.stage_at(self.global_step)
        if stage is not self.trainability.stage and self.enter_stage(stage):
            self._rewrap_ddp()

    def _rewrap_ddp(self) -> None:
        """A fresh DDP wrapper whose reducer covers exactly the parameters that now have gradients."""
        from pytorch_lightning.strategies import DDPStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and strategy.model is not self:
            strategy.model = self
            strategy.configure_ddp()

    # ---- forward and loss -------------------------------------------------------------------

    def group_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed token loss of the batch and a [groups, 2] tensor of (loss sum, token count)."""
        if batch["input_ids"].numel() == 0:
            if not self.sharded:
                # Every sample was skipped: still touch every trained parameter so collectives match.
                zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
                return zero + self._dummy_vision_term(), torch.zeros(len(self.group_names), 2, dtype=torch.float64, device=self.device)
            # Sharded units gather only inside a forward: run one on a token nothing learns from.
            batch = unsupervised_batch(self.model, self.device)
        inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
        dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        inputs = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in inputs.items()}
        if "sample_index" in batch and self.rope_index is not None:
            inputs["position_ids"] = mrope_positions(self.rope_index, inputs)
        if self.sharded and self.vision_dummy is not None and "pixel_values" not in batch:
            # Sharded units gather in forward order: the dummy runs inside the forward, where images would.
            with self.vision_dummy.inside_forward(self.model, self.device, dtype) as terms:
                token_loss, rows = supervised_token_losses(self.model, inputs, batch["labels"])
            extra = terms[0]
        else:
            token_loss, rows = supervised_token_losses(self.model, inputs, batch["labels"])
            extra = self._dummy_vision_term() if "pixel_values" not in batch else 0.0
        # Packed rows hold several samples: each supervised token belongs to its sample, not its row.
        owners = token_owners(batch).to(rows.device) if "sample_index" in batch else rows
        loss, sums = group_sums(token_loss, owners, batch["group_ids"], len(batch["group_ids"]), len(self.group_names))
        return loss + extra, sums.to(self.device)

    def _dummy_vision_term(self) -> torch.Tensor:
        path, tower = self.trainability.vision_path_now()
        if self.vision_dummy is None or not (path or self.vision_dummy.full_tower):
            return torch.zeros((), device=self.device)
        dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        return self.vision_dummy.term(self.model, self.device, dtype, tower)

    # ---- training ---------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, sums = self.group_losses(batch)
        skipped = self.skips.record(batch.get("skipped", []), "train", self.global_step, self.global_rank)
        self.metrics.add_micro_batch(sums, batch, skipped)
        if self.sample_id_dir:
            with open(os.path.join(self.sample_id_dir, f"rank{self.global_rank}.jsonl"), "a", encoding="utf-8") as f:
                entry = {"step": self.global_step, "micro_step": batch_idx % self.trainer.accumulate_grad_batches, "ids": batch["sample_ids"]}
                f.write(json.dumps(entry) + "\n")
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self._close_step(self.global_step)
        return loss

    def _close_step(self, step: int) -> None:
        # One collective per optimizer step for everything the step's row and update need.
        components = {g["component"] for g in self.trainer.optimizers[0].param_groups}
        lrs = {c: self.optim.lr * self.lr_factor(step, c) for c in components}
        metrics, tokens, image_batches = self.metrics.close_step(step, self._reduce, lrs)
        self._step_totals = (tokens, image_batches)
        for k in metrics:
            if k.startswith("train/loss_"):
                self.log(k, metrics[k], prog_bar=True, logger=False, rank_zero_only=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._step_totals is None:
            return
        tokens, image_batches = self._step_totals
        self._step_totals = None
        self.trainability.finish_gradients(tokens, image_batches, self.trainer.accumulate_grad_batches * self.trainer.world_size)

    def write_step_row(self) -> None:
        """Write the finished optimizer step's row, with its throughput, before anything checkpoints the step."""
        row = self.metrics.finish_row(self.device)
        if row is None:
            return
        metrics, step = row
        self.log("tok/s", metrics["perf/tokens_per_s"], prog_bar=True, logger=False, rank_zero_only=True)
        self.write_metrics(metrics, step)

    def write_metrics(self, metrics: dict, step: int) -> None:
        """One row of metrics at `step` straight to the loggers, flushed at once (also rows computed outside the loops)."""
        if not self.trainer.is_global_zero:
            return
        numeric = {k: v for k, v in metrics.items() if not isinstance(v, str)}
        for logger in self.loggers:
            # metrics.csv keeps the stage name; other loggers take numbers only.
            logger.log_metrics(metrics if getattr(logger, "keeps_text", False) else numeric, step=step)
            logger.save()

    # ---- checkpoints ------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lean checkpoints: weights no stage trains come from the base model again on resume; an
        # identity of them makes sure it is the same base.
        frozen = self.never_trained()
        drop_untrained(checkpoint, frozen)
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        checkpoint["curriculum"] = {
            "base_weights": self._base_identity(frozen),
            # A sharded load initialises every parameter's optimizer state; this says which to keep.
            "optimizer_state": [n for n, p in self.named_parameters() if optimizer is not None and p in optimizer.state],
            **self.metrics.state(),
            "rng": rng_state(),
        }

    def _base_identity(self, keys: list[str]) -> str:
        """weights_identity of the named weights; for sharded parameters, the one taken before sharding."""
        if self._identity is not None and self._identity[0] == sorted(keys):
            return self._identity[1]
        return weights_identity(self.state_dict(keep_vars=True), keys)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None:
            realign_batch_progress(checkpoint, self.trainer.accumulate_grad_batches)
        state = checkpoint["curriculum"]
        if "base_weights" in state:  # a lean checkpoint (older ones hold every weight)
            if "state_dict" in checkpoint:
                current = self.state_dict(keep_vars=True)
                absent = [k for k, v in current.items() if isinstance(v, torch.nn.Parameter) and k not in checkpoint["state_dict"]]
            else:  # a sharded checkpoint's weights are loaded already; it left out what no stage trains
                absent = self.never_trained()
            require_same_base(self._base_identity(absent), state["base_weights"])
        self.metrics.load_state(state)
        restore_rng(state["rng"])

    # ---- validation -------------------------------------------------------------------------

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, sums = self.group_losses(batch)
        # Validation belongs to the step it follows, as its metrics row does (and so survives a resume).
        skipped = self.skips.record(batch.get("skipped", []), "val", self.global_step - 1, self.global_rank)
        self.metrics.add_validation(sums, skipped)

    def on_validation_epoch_end(self) -> None:
        metrics = self.metrics.close_validation(self._reduce)
        if not self.trainer.sanity_checking:
            # Logged at the step whose training preceded this validation, before any checkpoint of it.
            self.write_metrics(metrics, self.global_step - 1)
            self.last_validation = (self.global_step - 1, metrics)

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device)
        if self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        return t

    # ---- optimizer --------------------------------------------------------------------------

    def configure_optimizers(self):
        groups = []
        trained = self.trainability.trained_parameters()
        names = {p: n for n, p in self.model.named_parameters()}
        for comp in COMPONENTS:
            decay, no_decay = [], []
            for p in trained[comp]:
                (no_decay if p.ndim < 2 or "norm" in names[p].lower() else decay).append(p)
            groups += [
                {"params": decay, "weight_decay": self.optim.weight_decay, "component": comp},
                {"params": no_decay, "weight_decay": 0.0, "component": comp},
            ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, betas=tuple(self.optim.betas))
        # Every parameter any stage trains is in the optimizer from the start; a stage that freezes
        # a component leaves its gradients None, so AdamW skips it. LR follows each stage's schedule.
        lambdas = [lambda step, c=g["component"]: self.lr_factor(step, c) for g in groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_factor(self, step: int, component: str | None = None) -> float:
        """LR at optimizer step `step` as a multiple of optim.lr: the stage's own schedule, 0 where it freezes `component`."""
        return self.schedule.lr_at(step, component) / self.optim.lr
