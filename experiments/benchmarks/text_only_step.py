"""Benchmark: one training step (forward + backward + AdamW) on a text-only micro-batch, three ways.

- ours: the Collator's batch has no pixel_values and VLMModule.group_losses handles it, with the
  vision dummy exactly as the recipe builds it (curriculum.model.vision_dummy.build_vision_dummy: none on one
  process, one under DDP): module, collator and optimizer come from curriculum.run.recipe.build_parts
  on the project's default config;
- LLaVA way: the same samples with "<image>\\n" prepended to the first user turn and one black
  full-size image each, so the vision tower and the projector run on every sample;
- language model alone: the model's decoder + lm_head on the text-only batch with the same loss,
  the floor no VLM step on text can beat.

Variants run round-robin on one model per case, so drift hits all of them alike. The table gives
median wall and process-CPU time per step, and the median over rounds of each variant's CPU time
divided by the language model's in the same round (CPU time, because other processes may share
the cores).

    python experiments/benchmarks/text_only_step.py [--model builtin:tiny-llava] [--batch 8] [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Callable

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image

from benchlib import machine_line, markdown_table
from curriculum.conf_path import conf_dir
from curriculum.config import RunConfig, validate
from curriculum.data.template import IGNORE_INDEX
from curriculum.data.records import RecordTable
from curriculum.model.components import component_of
from curriculum.model.module import VLMModule
from curriculum.run.recipe import Parts, build_parts

# Overrides of the project's default config (conf/config.yaml) per case.
# Two DDP processes (the layout is only read, nothing is launched) make the recipe build its vision dummy.
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
CASES = {
    "one process (default)": [],
    "DDP, vision frozen": DDP,
    "DDP, vision trained": [*DDP, "model.trainable.vision=full"],
}
LM_ALONE = "language model alone"


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:tiny-llava", choices=["builtin:tiny-llava", "builtin:tiny-idefics3"])
    p.add_argument("--batch", type=int, default=8, help="samples per micro-batch")
    p.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads, fixed for stable timings")
    return p.parse_args()


def run_config(model: str, overrides: list[str]) -> RunConfig:
    """The project's default config with overrides, composed and validated as curriculum-train does."""
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return validate(compose("config", overrides=[f"model.name_or_path={model}", *overrides]))


def text_records(table: RecordTable, n: int) -> list[dict]:
    """The first n text-only records of the (built-in) training table."""
    rows = table.group_indices()["text_only"][:n]
    if len(rows) < n:
        raise ValueError(f"the training data has only {len(rows)} text-only records, fewer than --batch {n}")
    return [table[int(i)] for i in rows]


def with_zero_image(record: dict, image: str) -> dict:
    """The LLaVA way: the record plus one black image, its placeholder before the first user turn."""
    messages = [dict(m) for m in record["messages"]]
    first_user = next(m for m in messages if m["role"] == "user")
    first_user["content"] = "<image>\n" + first_user["content"]
    return {**record, "messages": messages, "images": [image]}


def black_image(folder: str, size: int) -> str:
    """Path of a black size x size PNG: a full-size image for the model, all zeros before normalisation."""
    path = os.path.join(folder, "black.png")
    Image.new("RGB", (size, size)).save(path)
    return path


def lm_alone_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The decoder and lm_head alone on the text batch, with group_losses' summed token cross-entropy."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    logits = model.get_output_embeddings()(hidden)[:, :-1]
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def without_vision_dummy(module: VLMModule, batch: dict) -> torch.Tensor:
    """group_losses with the vision dummy switched off, to show what the dummy costs (diagnostic only)."""
    dummy, module.vision_dummy = module.vision_dummy, None
    try:
        return module.group_losses(batch)[0]
    finally:
        module.vision_dummy = dummy


def variants(parts: Parts, n: int, image: str) -> dict[str, tuple[Callable[[], torch.Tensor], dict]]:
    """name -> (loss function, its batch), on the module and collator exactly as the recipe built them."""
    module, collate = parts.module, parts.datamodule.collator
    records = text_records(parts.bundle.train, n)
    text = collate(records)
    zero_images = collate([with_zero_image(r, image) for r in records])
    dummy = _dummy_kind(parts)
    out = {
        f"ours (vision dummy {dummy}, as the recipe)": (lambda: module.group_losses(text)[0], text),
        "LLaVA way (zero image per sample)": (lambda: module.group_losses(zero_images)[0], zero_images),
        LM_ALONE: (lambda: lm_alone_loss(module.model, text), text),
    }
    if module.vision_dummy is not None:
        out["ours without vision dummy (diagnostic)"] = (lambda: without_vision_dummy(module, text), text)
    return out


def train_step(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, module: VLMModule, batch: dict) -> tuple[float, float]:
    """One forward + backward + optimizer step; returns its (wall, process CPU) time in seconds.

    Between backward and step the recipe's gradient handling runs as it would for a global batch
    of just `batch` (token-mean scaling; without images the vision path's gradients are dropped).
    """
    wall, cpu = time.perf_counter(), time.process_time()
    optimizer.zero_grad(set_to_none=True)
    loss_fn().backward()
    module.trainability.finish_gradients(tokens=float((batch["labels"] != IGNORE_INDEX).sum()), image_batches=float("pixel_values" in batch), splits=1)
    optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_case(named: dict, optimizer: torch.optim.Optimizer, module: VLMModule, steps: int, warmup: int) -> dict[str, list[tuple[float, float]]]:
    """Per-variant (wall, CPU) step times; each round runs every variant back to back, so load hits them alike."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in named}
    for rep in range(warmup + steps):
        for name, (loss_fn, batch) in named.items():
            elapsed = train_step(loss_fn, optimizer, module, batch)
            if rep >= warmup:
                times[name].append(elapsed)
    return times


def rows_for(case: str, named: dict, times: dict[str, list[tuple[float, float]]]) -> list[list]:
    """Table rows of one case: batch shape, median wall and CPU time, ratio to the LM alone."""
    base = [cpu for _, cpu in times[LM_ALONE]]
    rows = []
    for name, (_, batch) in named.items():
        wall = sorted(w for w, _ in times[name])
        cpu = [c for _, c in times[name]]
        # Ratio within each round, then the median: robust to other processes sharing the 2 cores.
        ratio = statistics.median(c / b for c, b in zip(cpu, base))
        pixels = "x".join(map(str, batch["pixel_values"].shape)) if "pixel_values" in batch else "-"
        rows.append([
            case, name, "x".join(map(str, batch["input_ids"].shape)), pixels,
            f"{statistics.median(wall) * 1e3:.1f} ({wall[len(wall) // 10] * 1e3:.0f}-{wall[len(wall) * 9 // 10] * 1e3:.0f})",
            f"{statistics.median(cpu) * 1e3:.1f}", f"{ratio:.2f}x",
        ])
    return rows


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="text-step-bench-") as tmp:
        for case, overrides in CASES.items():
            cfg = run_config(args.model, overrides)
            parts = build_parts(cfg, tmp)
            image = black_image(tmp, parts.module.model.config.vision_config.image_size)
            named = variants(parts, args.batch, image)
            optimizer = parts.module.configure_optimizers()["optimizer"]
            rows += rows_for(case, named, time_case(named, optimizer, parts.module, args.steps, args.warmup))
            notes.append(f"{case}: trained modes {_modes(cfg)}, recipe vision dummy: {_dummy_kind(parts)}")
    print(f"{machine_line()}, torch threads {args.threads}")
    print(
        f"model {args.model}, {args.batch} text-only samples per micro-batch, "
        f"median of {args.steps} steps after {args.warmup} warmup"
    )
    print("\n".join(notes) + "\n")
    headers = ["case", "variant", "input_ids", "pixel_values", "wall ms, median (p10-p90)", "CPU ms, median", "vs LM alone (CPU)"]
    print(markdown_table(headers, rows))


def _dummy_kind(parts: Parts) -> str:
    dummy = parts.module.vision_dummy
    if dummy is None:
        return "off"
    tower_trains = any(p.requires_grad for n, p in parts.module.model.named_parameters() if component_of(n) == "vision")
    return "tower + projector" if tower_trains or dummy.full_tower else "projector only"


def _modes(cfg: RunConfig) -> str:
    modes = cfg.trained_modes()
    return ", ".join(f"{c} {getattr(modes, c).value}" for c in ("vision", "projector", "language"))


if __name__ == "__main__":
    main()
