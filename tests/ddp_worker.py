"""2-process CPU DDP run where rank 0's micro-batches have images and rank 1's are text-only.

Run as `python tests/ddp_worker.py OUT_DIR DATA_FILE VISION_MODE`; Lightning relaunches it for rank 1.
VISION_MODE (full or frozen) picks the full vision dummy or the projector-only one.
Each rank saves its trained parameters and the sample ids it consumed into OUT_DIR.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from curriculum.config import DataConfig, Mode, ModelConfig, PathsConfig, RunConfig, ScheduleConfig, StageConfig, StageTrainable, TrainableConfig, TrainerConfig
from curriculum.recipe import build_parts, build_trainer


def main(out_dir: str, data_file: str, vision: str) -> None:
    cfg = RunConfig(
        data=DataConfig(train_files=[data_file], micro_batch_size=2, num_workers=0),
        model=ModelConfig(trainable=TrainableConfig(vision=Mode(vision), projector=Mode.full, language=Mode.full)),
        # The stage switch changes what trains without rebuilding the optimizer or the DDP reducer.
        # Length grouping orders each global batch of 4 by group: rank 0 gets the 2 image-text
        # samples, rank 1 the 2 text-only ones.
        schedule=ScheduleConfig(
            length_grouping=True,
            stages={
                "align": StageConfig(steps=1, mix={"image_text": 0.5, "text_only": 0.5}, trainable=StageTrainable(language=Mode.frozen)),
                "blend": StageConfig(steps=2, mix={"image_text": 0.5, "text_only": 0.5}),
            },
        ),
        trainer=TrainerConfig(accelerator="cpu", devices=2, strategy="ddp", val_every_n_steps=0, enable_progress_bar=False),
        paths=PathsConfig(output_root=out_dir, cache_dir=os.environ["CURRICULUM_CACHE"]),
    )
    cfg.check()
    parts = build_parts(cfg, out_dir)
    seen: list[str] = []
    parts.module.on_train_batch_start = lambda batch, idx: seen.extend(batch["sample_ids"])
    initial = {n: p.detach().clone() for n, p in parts.module.model.named_parameters() if p.requires_grad}
    trainer = build_trainer(cfg, out_dir, parts)
    trainer.fit(parts.module, datamodule=parts.datamodule)
    rank = trainer.global_rank
    trained = {n: p.detach().clone() for n, p in parts.module.model.named_parameters() if n in initial}
    torch.save({"initial": initial, "trained": trained}, os.path.join(out_dir, f"rank{rank}.pt"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
