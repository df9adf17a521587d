"""The run plan: record counts per group and source, invalid records, and what the sampler will draw."""

from __future__ import annotations

import json
import os

import numpy as np
from rich.console import Console
from rich.table import Table

from curriculum.config import RunConfig
from curriculum.data.sources import DataBundle


def samples_per_group(stream, table, total: int, chunk: int = 1 << 20) -> dict[str, int]:
    """Exact number of samples of each group among the first `total` stream positions."""
    groups = table.group_names()
    codes = np.empty(len(table), dtype=np.int32)
    for g, rows in table.group_indices().items():
        codes[rows] = groups.index(g)
    counts = np.zeros(len(groups), dtype=np.int64)
    for start in range(0, total, chunk):
        idx = stream(np.arange(start, min(total, start + chunk), dtype=np.int64))
        counts += np.bincount(codes[idx], minlength=len(groups))
    return {g: int(c) for g, c in zip(groups, counts)}


def build_plan(cfg: RunConfig, bundle: DataBundle, stream=None, world_size: int = 1) -> dict:
    """The plan.json contract: groups, sources, invalid, stages."""
    sources = {**bundle.train_report.sources, **bundle.val_report.sources}
    plan = {
        "groups": dict(bundle.train_report.groups),
        "val_groups": dict(bundle.val_report.groups),
        "sources": sources,
        "invalid": bundle.invalid,
        "stages": [],
    }
    if stream is not None and bundle.train is not None:
        global_batch = cfg.data.micro_batch_size * world_size * cfg.trainer.accumulate_grad_batches
        steps = cfg.trainer.max_steps
        samples = samples_per_group(stream, bundle.train, steps * global_batch)
        total = sum(samples.values())
        plan["stages"].append(
            {
                "name": "train",
                "start_step": 0,
                "steps": steps,
                "samples": samples,
                "fraction": {g: n / total for g, n in samples.items()},
            }
        )
    return plan


def write_plan(plan: dict, run_dir: str) -> str:
    """Write plan.json into the run folder and return its path."""
    path = os.path.join(run_dir, "plan.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(plan, f, indent=2)
    os.replace(path + ".tmp", path)
    return path


def print_plan(plan: dict, console: Console | None = None) -> None:
    """Summary tables: records per group and per source, stages, invalid records."""
    console = console or Console()
    groups = sorted({g for per in plan["sources"].values() for g in per} | set(plan["groups"]))
    t = Table(title="Records")
    t.add_column("source", overflow="fold")
    for g in groups:
        t.add_column(g, justify="right")
    t.add_column("invalid", justify="right")
    invalid_by_source: dict[str, int] = {}
    for e in plan["invalid"]:
        invalid_by_source[e["source"]] = invalid_by_source.get(e["source"], 0) + 1
    for src in sorted(set(plan["sources"]) | set(invalid_by_source)):
        per = plan["sources"].get(src, {})
        t.add_row(src, *(str(per.get(g, 0)) for g in groups), str(invalid_by_source.get(src, 0)))
    t.add_row("[b]train total[/b]", *(str(plan["groups"].get(g, 0)) for g in groups), str(len(plan["invalid"])))
    console.print(t)
    if plan["stages"]:
        s = Table(title="Stages")
        for col in ("stage", "start step", "steps", "group", "samples", "fraction"):
            s.add_column(col, justify="left" if col in ("stage", "group") else "right")
        for st in plan["stages"]:
            for g, n in st["samples"].items():
                s.add_row(st["name"], str(st["start_step"]), str(st["steps"]), g, str(n), f"{st['fraction'][g]:.4f}")
        console.print(s)
    if plan["invalid"]:
        v = Table(title=f"Invalid records ({len(plan['invalid'])})")
        for col in ("source", "index", "line", "id", "reason"):
            v.add_column(col)
        for e in plan["invalid"]:
            v.add_row(e["source"], str(e["index"]), str(e["line"] or ""), str(e["id"] or ""), e["reason"])
        console.print(v)
