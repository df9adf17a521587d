"""Benchmark: what the memory levers and the framework cost, on CPU, each variant in a fresh process.

1. Memory and time of one training step (forward, backward, AdamW) of a random Qwen2-VL-shaped
   model built from a config (vocab 151,936 like Qwen2-VL; never downloaded) on one long sequence
   with one image, for: the old loss (full-vocabulary logits of every position, cast to fp32),
   our loss (only supervised positions reach the LM head, chunked fp32 cross-entropy), our loss
   with gradient checkpointing, and our loss with the language model frozen (the `align` stage:
   only the projector trains). Peak memory is the process's peak RSS above its RSS once the model
   and batch exist.
2. Checkpoint size of a full, a default (vision frozen) and a LoRA run of the built-in tiny model.
3. Framework overhead: `curriculum-train`'s Trainer.fit against a hand-written loop over the same
   module, batches, optimizer and LR schedule, in the same run (validation, periodic checkpoints
   and export off; the stage-end checkpoint stays), as a ratio of wall time.
4. Startup of a ~1B-parameter random LLaVA-shaped model (built from a config and saved with
   save_pretrained; never downloaded): time and peak host memory of `build_parts` (data, model,
   module), now and with the pre-fit CPU probe (a forward and backward of the whole model that
   `build_parts` ran before training until the probe moved to the device, DDP only).

    python experiments/benchmarks/scale.py [--sections memory,checkpoints,overhead,startup] [--seq 2048] [--layers 4] [--hidden 512]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from benchlib import machine_line, markdown_table

VARIANTS = {
    "old loss (full fp32 logits)": {"loss": "old"},
    "our loss (supervised positions only)": {"loss": "new"},
    "our loss + gradient checkpointing": {"loss": "new", "checkpointing": True},
    "our loss, language model frozen (align)": {"loss": "new", "freeze_language": True},
}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, default=2048, help="tokens in the sequence")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--supervised", type=float, default=0.25, help="fraction of positions with a label (the answer)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant (after one warmup step)")
    p.add_argument("--overhead-steps", type=int, default=60, help="optimizer steps of the overhead comparison")
    p.add_argument("--overhead-rounds", type=int, default=5)
    p.add_argument("--sections", default="memory,checkpoints,overhead,startup")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--startup", nargs=2, metavar=("MODEL", "PROBE"), help=argparse.SUPPRESS)
    return p.parse_args()


def qwen2_vl(args):
    """A random Qwen2-VL-shaped model and one batch: a 4x4-patch image (4 merged tokens) and `--seq` tokens."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    heads = max(1, args.hidden // 64)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 3, num_hidden_layers=args.layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
            rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]},
        ),
        vision_config=dict(depth=2, embed_dim=128, hidden_size=args.hidden, num_heads=4),
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.train()
    grid = torch.tensor([[1, 4, 4]])
    pixels = torch.randn(16, 3 * 2 * 14 * 14)
    ids = torch.randint(0, 1000, (1, args.seq))
    ids[0, 1] = config.vision_start_token_id
    ids[0, 2:6] = config.image_token_id
    ids[0, 6] = config.vision_end_token_id
    labels = torch.full_like(ids, -100)
    first = int(args.seq * (1 - args.supervised))
    labels[0, first:] = ids[0, first:]
    # What Qwen2-VL's processor returns beside input_ids: which tokens are image tokens (for M-RoPE).
    mm_types = (ids == config.image_token_id).long()
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": mm_types, "pixel_values": pixels,
             "image_grid_thw": grid, "labels": labels}
    return model, batch


def old_loss(model, batch) -> torch.Tensor:
    """The loss before: full logits of every position, cast to fp32."""
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")


def new_loss(model, batch) -> torch.Tensor:
    """Ours: curriculum.model.loss.supervised_token_losses."""
    from curriculum.model.loss import supervised_token_losses

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    token_loss, _ = supervised_token_losses(model, inputs, batch["labels"])
    return token_loss.sum()


def run_variant(args) -> dict:
    """One variant in this process: peak RSS above the post-build baseline, and median step time."""
    spec = VARIANTS[args.variant]
    torch.set_num_threads(os.cpu_count() or 1)
    model, batch = qwen2_vl(args)
    if spec.get("checkpointing"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if spec.get("freeze_language"):
        for name, p in model.named_parameters():
            p.requires_grad_("merger" in name)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = old_loss if spec["loss"] == "old" else new_loss
    base = _rss_gb()
    times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"peak_gb": peak - base, "step_s": statistics.median(times), "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def memory_table(args) -> tuple[str, float]:
    """Each variant in a fresh interpreter, so one variant's peak never hides another's."""
    rows, params = [], 0.0
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", name, *_passthrough(args)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        params = r["params_m"]
        rows.append([name, f"{r['peak_gb']:.2f}", f"{r['step_s']:.1f}"])
    return markdown_table(["variant", "peak memory above model + batch, GB", "step s (median)"], rows), params


def _passthrough(args) -> list[str]:
    return ["--seq", str(args.seq), "--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab),
            "--supervised", str(args.supervised), "--steps", str(args.steps)]


def tiny_config(tmp: str, *overrides: str):
    """The project's default config on the built-in tiny model, with everything but training off."""
    from hydra import compose, initialize_config_dir

    from curriculum.conf_path import conf_dir
    from curriculum.config import validate

    base = ["data.num_workers=0", "trainer.val_every_n_steps=0", "export.enabled=false", "trainer.enable_progress_bar=false",
            f"paths.output_root={tmp}"]
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return validate(compose("config", overrides=[*base, *overrides]))


def checkpoint_table(tmp: str) -> str:
    """Size of last.ckpt after 2 steps for a full, a default and a LoRA run of the tiny model."""
    from curriculum.run.recipe import train

    cases = {
        "full (every component trained)": ["model.trainable.vision=full"],
        "default (vision frozen)": [],
        "LoRA on the language model": ["model/peft=lora", "model.trainable.language=lora"],
    }
    rows, sizes = [], {}
    for name, overrides in cases.items():
        run = os.path.join(tmp, name.split()[0])
        train(tiny_config(tmp, "schedule.stages.align.steps=1", "schedule.stages.blend.steps=1", *overrides), run)
        sizes[name] = os.path.getsize(os.path.join(run, "checkpoints", "last.ckpt"))
    full = sizes["full (every component trained)"]
    for name, size in sizes.items():
        rows.append([name, f"{size / 2**20:.2f}", f"{size / full:.2f}"])
    return markdown_table(["run", "last.ckpt MiB", "vs full"], rows)


def overhead_table(tmp: str, steps: int, n_rounds: int) -> str:
    """Trainer.fit vs a hand-written loop over the same module, batches, optimizer and schedule."""
    import pytorch_lightning as pl

    from curriculum.run.datamodule import NextInGroup, RecordDataset
    from curriculum.run.recipe import build_parts, build_trainer

    def fresh():
        cfg = tiny_config(tmp, f"trainer.max_steps={steps}", "checkpoint.every_n_steps=0", "logger.csv=false")
        pl.seed_everything(cfg.seed)
        return cfg, build_parts(cfg, tmp)

    def hand(parts) -> float:
        module, dm = parts.module, parts.datamodule
        module.enter_stage(module.schedule.stage_at(0))
        opt = module.configure_optimizers()
        optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
        # The same batches Trainer.fit gets: the datamodule's sampler and training collator.
        loader = torch.utils.data.DataLoader(
            RecordDataset(dm.train), batch_sampler=dm.train_sampler(0), collate_fn=dm.collator.with_replacements(NextInGroup(dm.train))
        )
        batches = iter(loader)
        start = time.perf_counter()
        for step in range(steps):
            stage = module.schedule.stage_at(step)
            if stage is not module.trainability.stage:
                module.enter_stage(stage)
            batch = next(batches)
            optimizer.zero_grad(set_to_none=True)
            loss, sums = module.group_losses(batch)
            loss.backward()
            module.trainability.finish_gradients(float(sums[:, 1].sum()), float("pixel_values" in batch), 1)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
            scheduler.step()
        return time.perf_counter() - start

    def ours(cfg, parts) -> float:
        trainer = build_trainer(cfg, tmp, parts)
        trainer.limit_val_batches = 0  # the run's final validation: the hand-written loop does not validate
        start = time.perf_counter()
        trainer.fit(parts.module, datamodule=parts.datamodule)
        return time.perf_counter() - start

    rounds = []
    for _ in range(n_rounds):
        cfg, parts = fresh()
        t_ours = ours(cfg, parts)
        _, parts = fresh()
        t_hand = hand(parts)
        rounds.append((t_ours, t_hand))
    rows = [[f"round {k + 1}", f"{o:.2f}", f"{h:.2f}", f"{o / h:.2f}x"] for k, (o, h) in enumerate(rounds)]
    ratio = statistics.median(o / h for o, h in rounds)
    rows.append(["median", "", "", f"{ratio:.2f}x"])
    return markdown_table([f"{steps} steps, tiny LLaVA", "curriculum-train (Trainer.fit) s", "hand-written loop s", "ratio"], rows)


def llava_1b(folder: str) -> float:
    """Save a random ~1B LLaVA-shaped model (Llama LM: hidden 2048, 8 layers, vocab 151,936) with the tiny model's
    processor and vision tower; returns its parameter count in billions."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from curriculum.data.sources import cache_dir
    from curriculum.model.load import load_processor, resolve_model_path

    tiny = resolve_model_path("builtin:tiny-llava", cache_dir(tiny_config(folder)))
    config = AutoConfig.from_pretrained(tiny)
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size = 2048, 5632, 8, 151936
    text.num_attention_heads = text.num_key_value_heads = 16
    text.head_dim = 128
    config.projector_hidden_act = "gelu"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config)
    model.save_pretrained(folder)
    load_processor(tiny).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters()) / 1e9


def run_startup(model: str, probe: bool) -> dict:
    """build_parts for a 1-process run of `model` (and, with `probe`, the former pre-fit CPU probe): seconds, peak RSS."""
    from curriculum.model.trainability import freeze_unused_parameters
    from curriculum.run.recipe import _probe_records, build_parts

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        cfg = tiny_config(tmp, f"model.name_or_path={model}", "data.micro_batch_size=2")
        start = time.perf_counter()
        parts = build_parts(cfg, tmp)
        if probe:
            freeze_unused_parameters(parts.module, parts.datamodule.collator(_probe_records(parts.bundle)))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def startup_table() -> str:
    """build_parts of a ~1B model now and with the former pre-fit probe, each in a fresh interpreter, alternating."""
    with tempfile.TemporaryDirectory(prefix="startup-model-") as folder:
        billions = llava_1b(folder)
        results: dict[str, list[dict]] = {"now: no model compute before fit": [], "before: pre-fit CPU probe (forward + backward)": []}
        for _ in range(2):
            for name, probe in zip(results, ("0", "1")):
                out = subprocess.run([sys.executable, __file__, "--startup", folder, probe], capture_output=True, text=True, check=True)
                results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = [[name, f"{statistics.median(r['seconds'] for r in runs):.1f}", f"{max(r['peak_gb'] for r in runs):.1f}"] for name, runs in results.items()]
    title = f"build_parts, random LLaVA-shaped model of {billions:.2f}B parameters (fp32, CPU), 1 process"
    return markdown_table([title, "seconds (median of 2)", "peak RSS GB"], rows)


def main() -> None:
    args = parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    if args.startup:
        print(json.dumps(run_startup(args.startup[0], args.startup[1] == "1")))
        return
    sections = set(args.sections.split(","))
    print(machine_line())
    if "memory" in sections:
        memory, params = memory_table(args)
        print(f"\nQwen2-VL-shaped random model, {params:.0f}M parameters (vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers), "
              f"1 sequence of {args.seq} tokens with one image, {args.supervised:.0%} of positions supervised, fp32 on CPU\n")
        print(memory)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        if "checkpoints" in sections:
            print("\n" + checkpoint_table(tmp))
        if "overhead" in sections:
            print("\n" + overhead_table(tmp, args.overhead_steps, args.overhead_rounds))
    if "startup" in sections:
        print("\n" + startup_table())


if __name__ == "__main__":
    main()
