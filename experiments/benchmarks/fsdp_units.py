"""Benchmark: what the FSDP2 root unit keeps gathered on every rank, before and after the embeddings and the
LM head became units of their own, measured on 2 gloo processes with torch's fully_shard.

A random LLaVA-shaped model with a Qwen2-sized vocabulary (151,936; built from configs, never
downloaded) is sharded both ways over 2 CPU ranks:
- before: each decoder layer and vision block a unit, everything else the root unit;
- after (`curriculum.model.sharding.shard_model`): the same, plus the input embeddings and the LM head.
Per rank it reports the parameter bytes held as shards (float32), the bytes the root unit gathers
for the whole forward and backward (its parameters at full size), and the most gathered at once
(the root plus the largest other unit), then times one forward + backward.

    python experiments/benchmarks/fsdp_units.py [--vocab 151936] [--hidden 512] [--layers 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import machine_line, markdown_table  # noqa: E402

MB = 2**20


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    return p.parse_args()


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """A random LLaVA with a Qwen2 language model and a small CLIP tower (untied embeddings, as Qwen2-VL-7B)."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config

    torch.manual_seed(0)
    text = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 3, num_hidden_layers=args.layers,
                       num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14)
    return LlavaForConditionalGeneration(LlavaConfig(text_config=text, vision_config=vision, image_token_index=args.vocab - 1))


def shard_blocks_only(model: torch.nn.Module, mesh) -> None:
    """The policy before: blocks as units, the rest (embeddings and head included) the root unit."""
    from torch.distributed.fsdp import fully_shard

    from curriculum.model.sharding import block_modules

    for block in block_modules(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def unit_sizes(model: torch.nn.Module) -> tuple[int, list[int]]:
    """Full-size parameter counts of the root unit and of every other unit."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule) and m is not model]
    owned = {id(p) for u in units for p in u.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in owned)
    return root, [sum(p.numel() for p in u.parameters()) for u in units]


def measure(rank: int, args: argparse.Namespace, init: str, out: str) -> None:
    """One rank: shard both ways, count bytes, time a forward + backward."""
    from torch.distributed.device_mesh import init_device_mesh

    from curriculum.model.sharding import shard_model

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    rows = []
    for name, shard in (("before: blocks only", shard_blocks_only), ("after: + embeddings, LM head", shard_model)):
        model = build_model(args)
        shard(model, mesh)
        local = sum(p.to_local().numel() for p in model.parameters()) * 4
        root, others = unit_sizes(model)
        ids = torch.randint(0, args.vocab - 2, (1, 256))
        start = time.perf_counter()
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        logits.float().mean().backward()
        seconds = time.perf_counter() - start
        rows.append([name, f"{local / MB:.1f}", f"{root * 4 / MB:.1f}", f"{(root + max(others)) * 4 / MB:.1f}", f"{seconds:.2f}"])
    if rank == 0:
        with open(out, "w") as f:
            f.write(repr(rows))
    dist.destroy_process_group()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows")
        mp.spawn(measure, args=(args, f"file://{os.path.join(tmp, 'store')}", out), nprocs=2)
        rows = eval(open(out).read())  # noqa: S307 - our own repr of a list of strings
    total = sum(p.numel() for p in build_model(args).parameters())
    print(machine_line())
    print(f"model: {total / 1e6:.1f}M parameters, vocabulary {args.vocab}, hidden {args.hidden}, {args.layers} layers; 2 gloo ranks, float32\n")
    print(markdown_table(["policy", "shards per rank (MB)", "root unit gathered all step (MB)", "most gathered at once (MB)", "fwd+bwd (s)"], rows))
    before, after = float(rows[0][2]), float(rows[1][2])
    print(f"\nroot unit: {after / before:.3f}x of before")


if __name__ == "__main__":
    main()
