"""LightningModule around any transformers image-text-to-text model, with per-group losses."""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image

from curriculum.config import COMPONENTS, Mode, OptimConfig
from curriculum.data.collate import IGNORE_INDEX
from curriculum.model.components import component_of, component_prefixes
from curriculum.schedule.stages import Schedule

log = logging.getLogger("curriculum")
_NOT_MODEL_INPUTS = ("labels", "group_ids", "sample_ids", "skipped", "drawn_group_ids")


def vision_dummy_inputs(processor, model) -> dict:
    """Smallest valid image input for `model.get_image_features`, built by the model's own processor."""
    size = getattr(getattr(model.config, "vision_config", None), "image_size", 32)
    size = size if isinstance(size, int) else 32
    pixels = dict(processor.image_processor(images=[Image.new("RGB", (size, size))], return_tensors="pt"))
    accepted = inspect.signature(model.get_image_features).parameters
    return {k: v for k, v in pixels.items() if k in accepted and isinstance(v, torch.Tensor)}


class VisionDummy:
    """Zero-weight pass over the vision path for a micro-batch without images.

    Every trained vision/projector parameter then gets a (zero) gradient on every rank. With the
    tower frozen and parameters not sharded, only the projector runs, on the tower's output for the
    dummy image captured once: the frozen tower has no gradient to give and no collective to join.
    """

    def __init__(self, inputs: dict, tower_frozen: bool):
        self.inputs = inputs
        self.tower_frozen = tower_frozen
        self._projector_calls: list | None = None
        self._placed: tuple | None = None

    def term(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A zero scalar that depends on every trained parameter the vision path reaches."""
        if self.tower_frozen:
            if self._placed != (device, dtype):
                self._projector_calls = _projector_calls(model, self._inputs_on(device, dtype))
                self._placed = (device, dtype)
            if self._projector_calls:
                return _zero_sum([m(*args, **kwargs) for m, args, kwargs in self._projector_calls])
        return _zero_sum(model.get_image_features(**self._inputs_on(device, dtype)))

    def _inputs_on(self, device: torch.device, dtype: torch.dtype) -> dict:
        return {k: v.to(device, dtype) if torch.is_floating_point(v) else v.to(device) for k, v in self.inputs.items()}


def _projector_calls(model: torch.nn.Module, inputs: dict) -> list:
    """(module, args, kwargs) of each projector call while the vision path runs on `inputs`, detached."""
    calls = []

    def capture(module, args, kwargs):
        calls.append((module, tuple(map(_detached, args)), {k: _detached(v) for k, v in kwargs.items()}))

    hooks = [model.get_submodule(name).register_forward_pre_hook(capture, with_kwargs=True) for name in component_prefixes(model)["projector"]]
    device = next(iter(inputs.values())).device
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        # The RNG is left untouched (a tower with dropout would draw), so a resumed run, which
        # captures again, stays on the uninterrupted run's random stream.
        # Plain tensors even when first called under inference mode: training steps replay them.
        with torch.inference_mode(False), torch.no_grad(), torch.random.fork_rng(devices=cuda):
            model.get_image_features(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _detached(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


def _zero_sum(out) -> torch.Tensor:
    return sum(t.float().sum() for t in _tensors(out) if t.requires_grad) * 0.0


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict) or hasattr(x, "values") and not isinstance(x, str):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


class VLMModule(pl.LightningModule):
    """Trains `model` on collated batches and logs loss per mixing group every optimizer step."""

    def __init__(
        self,
        model: torch.nn.Module,
        schedule: Schedule,
        optim: OptimConfig,
        max_steps: int,
        vision_dummy: VisionDummy | None = None,
        skipped_log: str | None = None,
        sample_id_dir: str | None = None,
    ):
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.group_names = list(schedule.groups)
        self.optim = optim
        self.max_steps = max_steps
        # Run the vision path on a tiny input when a micro-batch has no image, so every rank calls the same modules.
        self.vision_dummy = vision_dummy
        self.skipped_log = skipped_log
        self.sample_id_dir = sample_id_dir
        self._train_sums = torch.zeros(len(self.group_names), 2, dtype=torch.float64)
        self._val_sums = torch.zeros(len(self.group_names), 2, dtype=torch.float64)
        self._drawn = torch.zeros(len(self.group_names), dtype=torch.float64)
        # Cumulative samples drawn per group over all ranks, and samples skipped; saved in checkpoints.
        self.drawn_total = torch.zeros(len(self.group_names), dtype=torch.float64)
        self.skipped_total = 0.0
        self._skipped = 0.0
        self._val_skipped = 0.0
        # Supervised tokens trained on over all ranks: zero at the end means nothing was learnt.
        self.trained_tokens = 0.0

    # ---- forward and loss -------------------------------------------------------------------

    def group_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token loss of the batch and a [groups, 2] tensor of (loss sum, token count)."""
        sums = torch.zeros(len(self.group_names), 2, dtype=torch.float64, device=self.device)
        if batch["input_ids"].numel() == 0:
            # Every sample was skipped: still touch every trained parameter so collectives match.
            zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            return zero + self._dummy_vision_term(), sums
        inputs = {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}
        dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        inputs = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in inputs.items()}
        logits = self.model(**inputs).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        token_loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        ).view(labels.shape)
        row_loss = token_loss.sum(1)
        row_tokens = (labels != IGNORE_INDEX).sum(1)
        sums[:, 0].index_add_(0, batch["group_ids"], row_loss.detach().double())
        sums[:, 1].index_add_(0, batch["group_ids"], row_tokens.double())
        loss = row_loss.sum() / row_tokens.sum().clamp(min=1)
        if "pixel_values" not in batch:
            loss = loss + self._dummy_vision_term()
        return loss, sums

    def _dummy_vision_term(self) -> torch.Tensor:
        if self.vision_dummy is None:
            return torch.zeros((), device=self.device)
        dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        return self.vision_dummy.term(self.model, self.device, dtype)

    # ---- training ---------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, sums = self.group_losses(batch)
        self._train_sums = self._train_sums.to(self.device) + sums
        drawn = torch.bincount(batch["drawn_group_ids"], minlength=len(self.group_names)).double()
        self._drawn = self._drawn.to(self.device) + drawn
        self._skipped += self._record_skipped(batch.get("skipped", []), "train")
        if self.sample_id_dir:
            with open(os.path.join(self.sample_id_dir, f"rank{self.global_rank}.jsonl"), "a", encoding="utf-8") as f:
                entry = {"step": self.global_step, "micro_step": batch_idx % self.trainer.accumulate_grad_batches, "ids": batch["sample_ids"]}
                f.write(json.dumps(entry) + "\n")
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            # Written before checkpoint callbacks run, so a checkpoint never precedes its step's row.
            self._log_step(self.global_step)
        return loss

    def _log_step(self, step: int) -> None:
        sums = self._reduce(self._train_sums)
        self._train_sums = torch.zeros_like(self._train_sums)
        self.drawn_total = self.drawn_total.to(self.device) + self._reduce(self._drawn)
        self._drawn = torch.zeros_like(self._drawn)
        self.skipped_total += float(self._reduce(torch.tensor([self._skipped], dtype=torch.float64))[0])
        self._skipped = 0.0
        self.trained_tokens += float(sums[:, 1].sum())
        metrics = {"train/loss": _ratio(sums[:, 0].sum(), sums[:, 1].sum()), "stage": float(self.schedule.stage_at(step).index)}
        for name, frac in self.schedule.mix_at(step).items():
            metrics[f"mix/{name}"] = frac
        for g, name in enumerate(self.group_names):
            metrics[f"samples/{name}"] = float(self.drawn_total[g])
            if sums[g, 1] > 0:  # a group absent from this step leaves its loss cell empty
                metrics[f"train/loss_{name}"] = _ratio(sums[g, 0], sums[g, 1])
            metrics[f"train/tokens_{name}"] = float(sums[g, 1])
        metrics["train/skipped"] = self.skipped_total
        for comp in {g["component"] for g in self.trainer.optimizers[0].param_groups}:
            metrics[f"lr/{comp}"] = self.optim.lr * self.lr_factor(step, comp)
        self._write(metrics, step, shown=[k for k in metrics if k.startswith("train/loss_")])

    def _write(self, metrics: dict, step: int, shown: list[str]) -> None:
        """One row per step straight to the loggers (and the progress bar), flushed at once."""
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=step)
                logger.save()
        for k in shown:
            self.log(k, metrics[k], prog_bar=True, logger=False, rank_zero_only=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["curriculum"] = {
            "drawn_total": self.drawn_total.tolist(),
            "skipped_total": self.skipped_total,
            "trained_tokens": self.trained_tokens,
            # Plain containers and tensors only, so Lightning's weights_only loading accepts them.
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_state(),
                "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["curriculum"]
        self.drawn_total = torch.tensor(state["drawn_total"], dtype=torch.float64)
        self.skipped_total = state["skipped_total"]
        # NaN for checkpoints that predate the count: unknown, so the "nothing trained" check stays quiet.
        self.trained_tokens = state.get("trained_tokens", math.nan)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        kind, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _record_skipped(self, skipped: list[dict], split: str) -> int:
        """List skipped samples in skipped.jsonl (warning on the first one) and return how many there were."""
        if not skipped:
            return 0
        if self.skipped_log:
            if not os.path.exists(self.skipped_log):
                first = skipped[0]
                log.warning(
                    "skipped %s sample %s (%s): %s; every skip is counted in metrics.csv (%s/skipped) and listed in %s",
                    split, first["id"], first["source"], first["reason"], split, self.skipped_log,
                )
            with open(self.skipped_log, "a", encoding="utf-8") as f:
                # Validation belongs to the step it follows, as its metrics row does (and so survives a resume).
                step = self.global_step - 1 if split == "val" else self.global_step
                for s in skipped:
                    f.write(json.dumps({"step": step, "rank": self.global_rank, "split": split, **s}) + "\n")
        return len(skipped)

    # ---- validation -------------------------------------------------------------------------

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, sums = self.group_losses(batch)
        self._val_sums = self._val_sums.to(self.device) + sums
        self._val_skipped += self._record_skipped(batch.get("skipped", []), "val")

    def on_validation_epoch_end(self) -> None:
        sums = self._reduce(self._val_sums)
        self._val_sums = torch.zeros_like(self._val_sums)
        skipped = float(self._reduce(torch.tensor([self._val_skipped], dtype=torch.float64))[0])
        self._val_skipped = 0.0
        if self.trainer.sanity_checking:
            return
        metrics = {"val/loss": _ratio(sums[:, 0].sum(), sums[:, 1].sum()), "val/skipped": skipped}
        for g, name in enumerate(self.group_names):
            if sums[g, 1] > 0:
                metrics[f"val/loss_{name}"] = _ratio(sums[g, 0], sums[g, 1])
        # Logged at the step whose training preceded this validation, before any checkpoint of it.
        self._write(metrics, self.global_step - 1, shown=[])

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device)
        if self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        return t

    # ---- optimizer --------------------------------------------------------------------------

    def configure_optimizers(self):
        groups = []
        for comp in COMPONENTS:
            decay, no_decay = [], []
            for name, p in self.model.named_parameters():
                if p.requires_grad and component_of(name) == comp:
                    (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
            groups += [
                {"params": decay, "weight_decay": self.optim.weight_decay, "component": comp},
                {"params": no_decay, "weight_decay": 0.0, "component": comp},
            ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, betas=tuple(self.optim.betas))
        # One multiplier per parameter group: the stage's trainability and LR scale switch at stage
        # boundaries without rebuilding the optimizer (a frozen stage sets lr, hence decay, to 0).
        lambdas = [lambda step, c=g["component"]: self.lr_factor(step, c) for g in groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_factor(self, step: int, component: str | None = None) -> float:
        """LR multiplier at optimizer step `step`: warmup then cosine/constant, x stage scale, 0 if frozen."""
        stage = self.schedule.stage_at(step)
        if component is not None and getattr(stage.trainable, component) is Mode.frozen:
            return 0.0
        warm = self.optim.warmup_steps
        if step < warm:
            base = (step + 1) / warm
        elif self.optim.scheduler == "constant":
            base = 1.0
        else:
            progress = min(1.0, (step - warm) / max(1, self.max_steps - warm))
            floor = self.optim.min_lr_ratio
            base = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return base * stage.lr_scale


def freeze_unused_parameters(module: VLMModule, probe_batch: dict) -> list[str]:
    """Freeze trained parameters that get no gradient from a real batch (e.g. an unused pooler).

    DDP without find_unused_parameters needs every trained parameter to take part in every step.
    """
    loss, _ = module.group_losses(probe_batch)
    loss.backward()
    unused = [n for n, p in module.model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in module.model.named_parameters():
        if n in unused:
            p.requires_grad_(False)
        p.grad = None
    return unused


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num / den) if float(den) > 0 else float("nan")
