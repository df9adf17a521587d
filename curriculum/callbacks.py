"""Lightning callbacks for stage boundaries."""

from __future__ import annotations

import logging
import os

import pytorch_lightning as pl

from curriculum.schedule.stages import Schedule

log = logging.getLogger("curriculum")


class StageCheckpoint(pl.Callback):
    """Writes checkpoints/stage-<name>.ckpt when the last optimizer step of a stage finishes."""

    def __init__(self, schedule: Schedule, dirpath: str):
        self.ends = {st.end_step: st.name for st in schedule.stages}
        self.starts = {st.start_step: st for st in schedule.stages}
        self.dirpath = dirpath

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        step = trainer.global_step
        if step in self.ends:
            path = os.path.join(self.dirpath, f"stage-{self.ends[step]}.ckpt")
            trainer.save_checkpoint(path)
            log.info("stage %s ended at step %d: %s", self.ends[step], step, path)
        if step in self.starts and step > 0:
            st = self.starts[step]
            log.info("stage %s starts at step %d (%s)", st.name, step, _modes(st))


def _modes(stage) -> str:
    t = stage.trainable
    return f"vision {t.vision.value}, projector {t.projector.value}, language {t.language.value}, lr x{stage.lr_scale:g}"
