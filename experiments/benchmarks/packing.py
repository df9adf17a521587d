"""Benchmark: padding and real tokens/s of one training step layout against another, on CPU.

A long-tailed mix shaped like LLaVA-665k (94% of samples one image and 1-10 turns, most of them
short; 6% text-only with 1-5 turns) is drawn by our stream in four layouts, each over the same
samples (8 steps, so a megabatch of 8 steps holds them all):

- draw order: micro-batches as drawn, padded to their longest sample;
- length grouping, 1-step megabatch: each step's samples sorted by length into micro-batches;
- length grouping, 8-step megabatch: samples of 8 steps sorted by length and dealt to steps;
- packing (data.packing=true): each micro-batch's samples end to end, no padding but a row's tail.

Each layout trains a random model built from a family's config (never downloaded; saved with
save_pretrained and loaded through the same path a checkpoint takes): a LLaVA-1.5 shape (CLIP
tower at 336 px / patch 14: 576 image tokens) and a Qwen2-VL shape (256x256 images: 256 image
tokens, 3-D mRoPE positions). A step is the module's group losses, backward and AdamW over the
collated micro-batches; real tokens/s counts sample tokens only. Ratios are against draw order in
the same run. "attention scores" counts the query-key pairs SDPA computes with a mask (rows x width²).

    python experiments/benchmarks/packing.py [--hidden 768 --layers 12]   # ~100M parameters per model
    python experiments/benchmarks/packing.py --hidden 256 --layers 4       # what the README table ran
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))

from benchlib import machine_line, markdown_table  # noqa: E402
from curriculum.config import Mode, ModelConfig, OptimConfig, RunConfig, ScheduleConfig, StageConfig, TrainableConfig  # noqa: E402
from curriculum.data.collate import Collator  # noqa: E402
from curriculum.model.load import load_model, load_processor, resolve_model_path  # noqa: E402
from curriculum.model.module import VLMModule  # noqa: E402
from curriculum.model.step_metrics import real_tokens  # noqa: E402
from curriculum.schedule.stages import compile_schedule  # noqa: E402
from curriculum.schedule.stream import CurriculumStream  # noqa: E402

GROUPS = ["image_text", "text_only"]
MIX = {"image_text": 0.94, "text_only": 0.06}
WORDS = ("the red square sits left of a blue circle and the green triangle is above it while a small yellow star points at "
         "the large shape near the corner of the picture").split()
LAYOUTS = {
    "draw order": dict(length_grouping=False, megabatch=None, packing=False),
    "length grouping, 1-step megabatch": dict(length_grouping=True, megabatch=None, packing=False),
    "length grouping, 8-step megabatch": dict(length_grouping=True, megabatch=8, packing=False),
    "packing": dict(length_grouping=False, megabatch=None, packing=True),
}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=768, help="language model width")
    p.add_argument("--layers", type=int, default=12, help="language model layers")
    p.add_argument("--micro", type=int, default=4, help="samples per micro-batch")
    p.add_argument("--accumulate", type=int, default=2, help="micro-batches per step")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per layout (the 8-step megabatch needs 8)")
    p.add_argument("--records", type=int, default=512)
    p.add_argument("--families", default="llava,qwen2-vl")
    p.add_argument("--cache", default=os.environ.get("CURRICULUM_CACHE", os.path.join(tempfile.gettempdir(), "curriculum-bench")))
    return p.parse_args()


def sentence(rng: random.Random, low: int, high: int) -> str:
    """`low`..`high` words from the shapes vocabulary."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def records(n: int, image: str, seed: int = 0) -> list[dict]:
    """Canonical records with LLaVA-665k's shape: turns per sample long-tailed in 1-10 (text-only: 1-5), answers 3-60 words."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        text_only = rng.random() < MIX["text_only"]
        turns = min(10 if not text_only else 5, 1 + int(rng.expovariate(0.45)))
        messages = []
        for t in range(turns):
            question = sentence(rng, 4, 14)
            messages.append({"role": "user", "content": ("<image>\n" if t == 0 and not text_only else "") + question})
            messages.append({"role": "assistant", "content": sentence(rng, 3, 60 if rng.random() < 0.3 else 12)})
        out.append({"id": f"r{k}", "messages": messages, "images": [] if text_only else [image],
                    "group": "text_only" if text_only else "image_text", "source": "bench"})
    return out


def llava_shaped(cache: str, hidden: int, layers: int) -> str:
    """A random LLaVA-1.5-shaped checkpoint: the built-in tiny LLaVA's tokenizer and template, a CLIP tower at 336 px / 14."""
    from transformers import AutoConfig, LlavaForConditionalGeneration

    base = resolve_model_path("builtin:tiny-llava", cache)
    folder = os.path.join(cache, "bench", f"llava-{hidden}x{layers}")
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    config = AutoConfig.from_pretrained(base)
    _resize_text(config.text_config, hidden, layers)
    v = config.vision_config
    v.image_size, v.patch_size, v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads = 336, 14, 256, 1024, 2, 4
    processor = load_processor(base)
    processor.patch_size = 14
    processor.image_processor.size = {"shortest_edge": 336}
    processor.image_processor.crop_size = {"height": 336, "width": 336}
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def qwen2_vl_shaped(cache: str, hidden: int, layers: int) -> str:
    """A random Qwen2-VL-shaped checkpoint: the test matrix's tiny Qwen2-VL processor, 256x256 images (256 merged tokens)."""
    from families import ensure_family
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    base = ensure_family("tiny-qwen2-vl", cache, resolve_model_path("builtin:tiny-llava", cache))
    folder = os.path.join(cache, "bench", f"qwen2-vl-{hidden}x{layers}")
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    config = AutoConfig.from_pretrained(base)
    _resize_text(config.text_config, hidden, layers)
    quarter = hidden // config.text_config.num_attention_heads // 2 // 4
    config.text_config.rope_parameters["mrope_section"] = [2 * quarter, quarter, quarter]
    v = config.vision_config
    v.embed_dim, v.hidden_size, v.depth, v.num_heads = 256, hidden, 2, 4
    processor = load_processor(base)
    processor.image_processor.size = {"shortest_edge": 256 * 256, "longest_edge": 256 * 256}
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _resize_text(text, hidden: int, layers: int) -> None:
    heads = max(1, hidden // 64)
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = hidden, hidden * 3, layers
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = heads, heads, hidden // heads
    if getattr(text, "layer_types", None):
        text.layer_types = ["full_attention"] * layers


def draws(table: list[dict], lengths: np.ndarray, layout: dict, args) -> list[list[dict]]:
    """The micro-batches our stream deals for `args.steps` steps of the layout."""
    batch = args.micro * args.accumulate
    rows = {g: np.array([i for i, r in enumerate(table) if r["group"] == g]) for g in GROUPS}
    megabatch = layout["megabatch"] * batch if layout["megabatch"] else None
    run = RunConfig(schedule=ScheduleConfig(length_grouping=layout["length_grouping"], megabatch=megabatch,
                                            stages={"train": StageConfig(steps=args.steps, mix=dict(MIX))}))
    run.check()
    schedule = compile_schedule(run, GROUPS, {g: len(r) for g, r in rows.items()})
    order = CurriculumStream(schedule, rows, batch, 0, lengths)(np.arange(args.steps * batch))
    return [[table[i] for i in order[k : k + args.micro]] for k in range(0, len(order), args.micro)]


def sample_lengths(processor, table: list[dict]) -> np.ndarray:
    """Each record's tokens as training sees them (images expanded)."""
    padded = Collator(processor, GROUPS, 4096, "error")
    return np.array([int(padded([r])["attention_mask"].sum()) for r in table])


def measure(path: str, table: list[dict], lengths: np.ndarray, args) -> list[list]:
    """Per layout: padding fraction, real tokens/s and the ratio to draw order, for one model."""
    processor = load_processor(path)
    out, base = [], None
    for name, layout in LAYOUTS.items():
        torch.manual_seed(0)
        model = load_model(ModelConfig(name_or_path=path, trainable=TrainableConfig(vision=Mode.frozen)), path)
        module = VLMModule(model, _schedule(args), OptimConfig())
        module.enter_stage(module.schedule.stage_at(0))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        collate = Collator(processor, GROUPS, 4096, "error", packing=layout["packing"])
        real = computed = pairs = 0
        micro_batches = [collate(mb) for mb in draws(table, lengths, layout, args)]
        start = time.perf_counter()
        for k, batch in enumerate(micro_batches):
            loss, _ = module.group_losses(batch)
            loss.backward()
            if (k + 1) % args.accumulate == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            real += int(real_tokens(batch))
            computed += batch["input_ids"].numel()
            # SDPA with a mask scores every query against every key of its row, masked or not.
            pairs += batch["input_ids"].shape[0] * batch["input_ids"].shape[1] ** 2
        seconds = time.perf_counter() - start
        rate = real / seconds
        base = base or rate
        out.append([name, f"{1 - real / computed:.1%}", f"{real}", f"{computed}", f"{pairs / 1e6:,.0f}M", f"{rate:,.0f}", f"{rate / base:.2f}x"])
        print(f"  {name}: {out[-1][1:]}", flush=True)
    return out


def varlen_pairs(table: list[dict], lengths: np.ndarray, args) -> int:
    """Query-key pairs of the drawn samples each attending to itself only (FlashAttention-2's varlen kernel)."""
    drawn = [r for mb in draws(table, lengths, LAYOUTS["draw order"], args) for r in mb]
    return int(sum(lengths[int(r["id"][1:])] ** 2 for r in drawn))


def _schedule(args):
    run = RunConfig(schedule=ScheduleConfig(stages={"train": StageConfig(steps=args.steps, mix=dict(MIX))}))
    run.check()
    return compile_schedule(run, GROUPS, {g: 1 for g in GROUPS})


def main() -> None:
    """Build the models and data, measure every layout, print the tables."""
    args = parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    os.makedirs(os.path.join(args.cache, "bench"), exist_ok=True)
    image = os.path.join(args.cache, "bench", "image.png")
    Image.new("RGB", (336, 336), (200, 40, 40)).save(image)
    table = records(args.records, image)
    builders = {"llava": llava_shaped, "qwen2-vl": qwen2_vl_shaped}
    print(machine_line())
    print(f"samples: {args.records} drawn {MIX}; {args.steps} steps of {args.accumulate} x {args.micro} samples per layout")
    for family in args.families.split(","):
        path = builders[family](args.cache, args.hidden, args.layers)
        params = sum(p.numel() for p in load_model(ModelConfig(name_or_path=path), path).parameters()) / 1e6
        print(f"\n{family}-shaped, {params:.0f}M parameters ({json.dumps({'hidden': args.hidden, 'layers': args.layers})})")
        lengths = sample_lengths(load_processor(path), table)
        rows = measure(path, table, lengths, args)
        print(f"attention a varlen kernel computes (the sum over samples of their length squared): {varlen_pairs(table, lengths, args) / 1e6:,.0f}M")
        print(markdown_table(["layout", "padding", "real tokens", "computed tokens", "attention scores", "real tokens/s", "vs draw order"], rows))


if __name__ == "__main__":
    main()
