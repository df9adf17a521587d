"""Benchmark: one training step (forward + backward + AdamW) on a text-only micro-batch, three ways.

- ours: the Collator's batch has no pixel_values and VLMModule.group_losses handles it, with the
  vision dummy exactly when the recipe passes one (curriculum.recipe.needs_vision_dummy);
- LLaVA way: the same samples with "<image>\\n" prepended to the first user turn and one black
  full-size image each, so the vision tower and the projector run on every sample;
- language model alone: the model's decoder + lm_head on the text-only batch with the same loss,
  the floor no VLM step on text can beat.

Variants run round-robin on one model per case, so drift hits all of them alike; the table gives
median step times and their ratio to the language model alone.

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
from PIL import Image

from benchlib import machine_line, markdown_table
from curriculum.config import Mode, ModelConfig, OptimConfig, RunConfig, TrainableConfig
from curriculum.data.builtin import ensure_shapes
from curriculum.data.collate import IGNORE_INDEX, Collator
from curriculum.data.formats import iter_records
from curriculum.model.load import load_model, load_processor, resolve_model_path
from curriculum.model.module import VLMModule, vision_dummy_inputs
from curriculum.recipe import needs_vision_dummy

GROUPS = ["image_text", "text_only"]
MAX_LENGTH = 512
CASES = {
    "vision frozen (default)": TrainableConfig(),
    "vision trained": TrainableConfig(vision=Mode.full),
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


def cache_dir() -> str:
    """The project's cache folder: $CURRICULUM_CACHE, else ~/.cache/curriculum (as conf/config.yaml)."""
    return os.path.expanduser(os.environ.get("CURRICULUM_CACHE", "~/.cache/curriculum"))


def text_records(cache: str, n: int) -> list[dict]:
    """The first n text-only records of the built-in shapes training data."""
    records = []
    for _, _, record in iter_records(ensure_shapes(cache).train_file):
        if not record["images"]:
            records.append(record)
        if len(records) == n:
            return records
    raise ValueError(f"the built-in data has fewer than {n} text-only records")


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
    """The decoder and lm_head alone on the text batch, with group_losses' token-mean cross-entropy."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    logits = model.get_output_embeddings()(hidden)[:, :-1]
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / (labels != IGNORE_INDEX).sum().clamp(min=1)


def variants(model, processor, trainable: TrainableConfig, records: list[dict], image: str) -> dict:
    """name -> (loss function, its batch) for one trainability case, built as the recipe builds them."""
    cfg = RunConfig(model=ModelConfig(trainable=trainable))
    dummy = vision_dummy_inputs(processor, model) if needs_vision_dummy(cfg) else None
    module = VLMModule(model, GROUPS, OptimConfig(), max_steps=1, vision_dummy=dummy)
    collator = Collator(processor, GROUPS, MAX_LENGTH, "error")
    text = collator(records)
    zero_images = collator([with_zero_image(r, image) for r in records])
    out = {
        f"ours (vision dummy {'on' if dummy else 'off'}, as the recipe)": (lambda: module.group_losses(text)[0], text),
        "LLaVA way (zero image per sample)": (lambda: module.group_losses(zero_images)[0], zero_images),
        LM_ALONE: (lambda: lm_alone_loss(model, text), text),
    }
    if dummy is not None:
        # Diagnostic: what the vision dummy costs, i.e. ours if DDP safety did not require it.
        bare = VLMModule(model, GROUPS, OptimConfig(), max_steps=1, vision_dummy=None)
        out["ours without vision dummy (diagnostic)"] = (lambda: bare.group_losses(text)[0], text)
    return out, module


def train_step(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> float:
    """One forward + backward + optimizer step; returns its wall time in seconds."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss_fn().backward()
    optimizer.step()
    return time.perf_counter() - start


def time_case(named: dict, optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> dict[str, list[float]]:
    """Per-variant step times, variants interleaved so slow drift hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in named}
    for rep in range(warmup + steps):
        for name, (loss_fn, _) in named.items():
            elapsed = train_step(loss_fn, optimizer)
            if rep >= warmup:
                times[name].append(elapsed)
    return times


def rows_for(case: str, named: dict, times: dict[str, list[float]]) -> list[list]:
    """Table rows of one case: batch shape, median and spread of step time, ratio to the LM alone."""
    base = statistics.median(times[LM_ALONE])
    rows = []
    for name, (_, batch) in named.items():
        ts = sorted(times[name])
        median = statistics.median(ts)
        pixels = "x".join(map(str, batch["pixel_values"].shape)) if "pixel_values" in batch else "-"
        rows.append([
            case, name, "x".join(map(str, batch["input_ids"].shape)), pixels, f"{median * 1e3:.2f}",
            f"{ts[len(ts) // 10] * 1e3:.2f}-{ts[len(ts) * 9 // 10] * 1e3:.2f}", f"{median / base:.2f}x",
        ])
    return rows


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    cache = cache_dir()
    path = resolve_model_path(args.model, cache)
    processor = load_processor(path)
    records = text_records(cache, args.batch)
    rows = []
    with tempfile.TemporaryDirectory(prefix="text-step-bench-") as tmp:
        for case, trainable in CASES.items():
            torch.manual_seed(0)
            model = load_model(ModelConfig(name_or_path=path, trainable=trainable), path)
            image = black_image(tmp, model.config.vision_config.image_size)
            named, module = variants(model, processor, trainable, records, image)
            optimizer = module.configure_optimizers()["optimizer"]
            rows += rows_for(case, named, time_case(named, optimizer, args.steps, args.warmup))
    print(f"{machine_line()}, torch threads {args.threads}")
    print(f"model {args.model}, {args.batch} text-only samples per micro-batch, median of {args.steps} steps after {args.warmup} warmup\n")
    headers = ["case", "variant", "input_ids", "pixel_values", "median ms", "p10-p90 ms", "vs LM alone"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
