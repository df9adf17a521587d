"""2-process CPU DDP runs, started by tests/test_ddp.py; Lightning relaunches the script for rank 1.

`python tests/ddp_worker.py OUT_DIR DATA_FILE CASE [MODEL]` with CASE:
- `full` / `frozen`: rank 0's micro-batches have images, rank 1's are text-only; the vision tower
  trains (full vision dummy) or not (projector-only dummy); the language model is frozen in the
  first stage and trains in the second (a new DDP reducer at the boundary).
- `fsdp`: as `frozen`, with the parameters sharded (trainer.strategy=fsdp, FSDP2 over gloo).
- `grouped`: every optimizer step is one group across both ranks (2 x 4 samples), so some steps
  hold no image at all.
MODEL is a model folder (default: the built-in tiny LLaVA). Each rank saves its trained parameters
per step and the sample ids it consumed into OUT_DIR.
"""

from __future__ import annotations

import json
import os
import sys

import pytorch_lightning as pl
import torch

from curriculum.config import (
    CheckpointConfig, DataConfig, ExportConfig, Mode, ModelConfig, PathsConfig, RunConfig, ScheduleConfig, StageConfig, StageTrainable,
    TrainableConfig, TrainerConfig,
)
from curriculum.run.recipe import build_parts, build_trainer

HALF = {"image_text": 0.5, "text_only": 0.5}


def config(out_dir: str, data_file: str, case: str, model: str | None = None) -> RunConfig:
    """The run config of a case (also used by the test for its one-process reference)."""
    if case == "grouped":
        schedule = ScheduleConfig(batching="grouped", stages={"a": StageConfig(steps=6, mix=HALF)})
        micro = 4
    else:
        # Length grouping orders each global batch of 4 by group: rank 0 gets the 2 image-text
        # samples, rank 1 the 2 text-only ones.
        schedule = ScheduleConfig(
            length_grouping=True,
            stages={
                "align": StageConfig(steps=1, mix=HALF, trainable=StageTrainable(language=Mode.frozen)),
                "blend": StageConfig(steps=2, mix=HALF),
            },
        )
        micro = 2
    vision = Mode.full if case in ("full", "packed") else Mode.frozen
    strategy = "fsdp" if case == "fsdp" else "ddp"
    return RunConfig(
        data=DataConfig(train_files=[data_file], micro_batch_size=micro, num_workers=0, packing=case == "packed"),
        model=ModelConfig(name_or_path=model or ModelConfig.name_or_path, trainable=TrainableConfig(vision=vision, projector=Mode.full, language=Mode.full)),
        schedule=schedule,
        trainer=TrainerConfig(accelerator="cpu", devices=2, strategy=strategy, val_every_n_steps=0, enable_progress_bar=False),
        checkpoint=CheckpointConfig(every_n_steps=0),
        export=ExportConfig(enabled=False),
        paths=PathsConfig(output_root=out_dir, cache_dir=os.environ["CURRICULUM_CACHE"]),
    )


class Record(pl.Callback):
    """Trained parameters before every optimizer step and at the end, and the sample ids each rank saw."""

    def __init__(self, names: set[str]):
        self.names = names
        self.steps: list[dict] = []
        self.seen: list[str] = []

    def _params(self, pl_module) -> dict:
        # Sharded parameters are gathered whole (a collective: every rank records).
        return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in pl_module.model.named_parameters() if n in self.names}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.extend(batch["sample_ids"])
        if batch_idx % trainer.accumulate_grad_batches == 0:
            self.steps.append({"params": self._params(pl_module), "ids": list(batch["sample_ids"])})

    def on_train_end(self, trainer, pl_module):
        self.steps.append({"params": self._params(pl_module), "ids": []})


def main(out_dir: str, data_file: str, case: str, model: str | None = None) -> None:
    cfg = config(out_dir, data_file, case, model)
    cfg.check()
    pl.seed_everything(cfg.seed)
    parts = build_parts(cfg, out_dir)
    record = Record({n for n, p in parts.module.model.named_parameters() if p.requires_grad})
    trainer = build_trainer(cfg, out_dir, parts)
    trainer.callbacks.append(record)
    trainer.fit(parts.module, datamodule=parts.datamodule)
    rank = trainer.global_rank
    torch.save(record.steps, os.path.join(out_dir, f"rank{rank}.pt"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record.seen, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
