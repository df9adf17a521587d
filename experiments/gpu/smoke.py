"""GPU smoke test: bf16 weights + gradient checkpointing + LoRA, a 2-stage curriculum, on a random ~1B VLM.

One command on a machine with a GPU (nothing is downloaded; the model is random, built from the
built-in tiny LLaVA's config with a ~1B-parameter Llama language model, and saved like a checkpoint):

    .venv/bin/python experiments/gpu/smoke.py                # trainer=gpu: LoRA, full fine-tuning, full fine-tuning packed
    .venv/bin/python experiments/gpu/smoke.py --cpu-check    # the same path on CPU with a small model (no figures)

It prints, per run and stage, the median step time, tokens/s (all real tokens and supervised ones),
the padding fraction and the peak GPU memory, read from each run's metrics.csv. The packed run uses
FlashAttention-2's varlen kernel when flash_attn is installed, else SDPA with transformers' packed mask.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_model(folder: str, cache: str, hidden: int, layers: int) -> str:
    """A random LLaVA with a Llama language model of the given size, saved with the built-in tiny LLaVA's processor."""
    import torch
    from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

    from curriculum.model.load import resolve_model_path

    tiny = resolve_model_path("builtin:tiny-llava", cache)
    config = LlavaConfig.from_pretrained(tiny)
    text = config.text_config
    text.hidden_size, text.num_hidden_layers, text.intermediate_size = hidden, layers, hidden * 11 // 4
    text.num_attention_heads, text.num_key_value_heads = hidden // 128, max(1, hidden // 512)
    config.projector_hidden_act = "gelu"
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(folder)
    AutoProcessor.from_pretrained(tiny).save_pretrained(folder)
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:,.0f}M parameters"


def run(name: str, folder: str, out: str, cpu: bool, *extra: str) -> str:
    """One curriculum-train run; returns its folder."""
    run_dir = os.path.join(out, name)
    device = ["trainer.accelerator=cpu", "trainer.precision=32-true", "model.dtype=float32", "model.frozen_dtype=null"] if cpu else []
    cmd = [
        sys.executable, "-m", "curriculum.cli.train", "trainer=gpu", *device, f"model.name_or_path={folder}",
        "schedule.stages.align.steps=10", "schedule.stages.blend.steps=20", "data.micro_batch_size=8",
        "trainer.val_every_n_steps=0", "checkpoint.every_n_steps=0", "trainer.enable_progress_bar=false", *extra, f"hydra.run.dir={run_dir}",
    ]
    subprocess.run(cmd, check=True, cwd=REPO)
    return run_dir


def summary(run_dir: str) -> list[list[str]]:
    """Median step time, throughput and peak memory per stage (the first step of each stage excluded: warmup)."""
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage][1:]

        def med(key: str) -> str:
            values = [float(r[key]) for r in mine if r.get(key)]
            return f"{statistics.median(values):.3g}" if values else "-"

        out.append([stage, med("perf/step_s"), med("perf/tokens_per_s"), med("perf/supervised_tokens_per_s"), med("perf/padding_fraction"),
                    med("perf/peak_mem_gb")])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-check", action="store_true", help="run the same path on CPU with a small model")
    p.add_argument("--out", default=None, help="folder for the model and runs (default: a temporary one)")
    args = p.parse_args()
    hidden, layers = (256, 2) if args.cpu_check else (2048, 16)
    out = args.out or tempfile.mkdtemp(prefix="gpu-smoke-")
    cache = os.environ.setdefault("CURRICULUM_CACHE", os.path.join(out, "cache"))
    folder = os.path.join(out, "model")
    size = build_model(folder, cache, hidden, layers)
    flash = not args.cpu_check and importlib.util.find_spec("flash_attn") is not None
    runs = {
        "LoRA (language), bf16, checkpointing": run("lora", folder, out, args.cpu_check, "model/peft=lora", "model.trainable.language=lora"),
        "full (projector + language), bf16, checkpointing": run("full", folder, out, args.cpu_check),
        f"full, packed ({'flash_attention_2' if flash else 'sdpa'})": run("packed", folder, out, args.cpu_check, "data.packing=true",
                                                                         *(["model.attn_implementation=flash_attention_2"] if flash else [])),
    }
    from benchlib import markdown_table

    print(f"\nrandom LLaVA, {size}, micro batch 8, built-in shapes data")
    for name, run_dir in runs.items():
        print(f"\n{name} ({run_dir})\n")
        print(markdown_table(["stage", "step s", "tokens/s", "supervised tokens/s", "padding", "peak GPU GB"], summary(run_dir)))


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(REPO, "experiments", "benchmarks"))
    main()
