"""Trainer callbacks: per-step metrics rows, the stage progress bar and periodic generation scores
(checkpoint callbacks live in checkpoints.py)."""

from __future__ import annotations

import logging
from typing import Callable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from curriculum.schedule.stages import Schedule

log = logging.getLogger("curriculum")


class StepRows(pl.Callback):
    """Writes each optimizer step's metrics row once the step is done; listed before RunCheckpoints,
    so a checkpoint never precedes its step's row."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            pl_module.write_step_row()


class StageProgressBar(RichProgressBar):
    """Lightning's progress bar labelled with the current stage instead of its epoch counter."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule = schedule

    def _get_train_description(self, current_epoch: int) -> str:
        return f"stage {self.schedule.stage_at(self.trainer.global_step).name}"

    def configure_columns(self, trainer: pl.Trainer) -> list:
        # Tokens/s (in the metrics) is the speed that matters: without Lightning's it/s the bar fits 80 columns.
        columns = [c for c in super().configure_columns(trainer) if type(c).__name__ != "ProcessingSpeedColumn"]
        for c in columns:
            if hasattr(c, "bar_width"):
                c.bar_width = 12
        return columns

    def get_metrics(self, trainer: pl.Trainer, pl_module) -> dict:
        """One short entry, so the bar fits an 80-column terminal: the step's group losses (group order), then tokens/s."""
        metrics = super().get_metrics(trainer, pl_module)
        parts = ["/".join(f"{float(v):.2f}" for k, v in metrics.items() if k.startswith("train/loss_"))]
        if "tok/s" in metrics:
            parts.append(f"{float(metrics['tok/s']):.0f} tok/s")
        return {"loss": ", ".join(p for p in parts if p)} if any(parts) else {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            description = self._get_train_description(trainer.current_epoch)
            styled = f"[{self.theme.description}]{description}" if self.theme.description else description
            self.progress.update(self.train_progress_bar_id, description=styled)


class GenerationEval(pl.Callback):
    """Generation scores every `every_n` validation rounds before the end (the end is scored by the recipe).

    A round is known by its step, so the cadence survives a resume.
    """

    def __init__(self, score: Callable[[], dict[str, float]], val_every_n_steps: int, every_n: int, run_steps: int):
        self.score = score
        self.val_every_n_steps = val_every_n_steps
        self.every_n = every_n
        self.run_steps = run_steps

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        step = trainer.global_step
        # Every rank scores its share (write_metrics writes on rank 0 only).
        if trainer.sanity_checking or step >= self.run_steps:
            return
        if (step // self.val_every_n_steps) % self.every_n == 0:
            pl_module.write_metrics(self.score(), step - 1)
