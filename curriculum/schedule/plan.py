"""The run plan: record counts per group and source, invalid records, and what the sampler will draw."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from rich.console import Console
from rich.table import Table

from curriculum.atomic import write_json, write_text
from curriculum.config import COMPONENTS
from curriculum.data.sources import DataBundle
from curriculum.data.template import IGNORE_INDEX
from curriculum.schedule.stream import CurriculumStream


def stage_entries(stream: CurriculumStream, run_steps: int, group_sizes: dict[str, int]) -> list[dict]:
    """Per stage (clipped to the run's steps): exact samples per group the sampler draws, fractions, passes."""
    G = stream.global_batch
    out = []
    for st in stream.schedule.stages:
        end = min(st.end_step, run_steps)
        if end <= st.start_step:
            break
        drawn = stream.draws_before(end * G) - stream.draws_before(st.start_step * G)
        total = int(drawn.sum())
        samples = {g: int(n) for g, n in zip(stream.schedule.groups, drawn)}
        out.append(
            {
                "name": st.name,
                "start_step": st.start_step,
                "steps": end - st.start_step,
                "samples": samples,
                "fraction": {g: n / total for g, n in samples.items()},
                # The stage's target mix once any ramp is done, and the ramp's length in steps.
                "mix": stream.schedule.mix_at(st.end_step - 1),
                "ramp_steps": st.ramp_steps,
                "passes": {g: (n / group_sizes[g] if group_sizes.get(g) else 0.0) for g, n in samples.items()},
                "trainable": {c: getattr(st.trainable, c).value for c in COMPONENTS},
                "lr": {"peak": st.lr.peak, "warmup_steps": st.lr.warmup_steps, "scheduler": st.lr.scheduler, "min_lr_ratio": st.lr.min_lr_ratio,
                       "end": st.lr.at(st.steps - 1, st.steps)},
            }
        )
    return out


def build_plan(bundle: DataBundle, stream: CurriculumStream | None = None, run_steps: int = 0) -> dict:
    """The plan.json contract: groups, sources, invalid, stages (plus the global batch and fingerprint)."""
    sources = {**bundle.train_report.sources, **bundle.val_report.sources}
    plan = {
        "groups": dict(bundle.train_report.groups),
        "val_groups": dict(bundle.val_report.groups),
        "sources": sources,
        "val_sources": sorted(bundle.val_report.sources),
        "invalid": bundle.invalid,
        "stages": [],
        "record_tables": {
            role: {"build_seconds": report.build_seconds, "reused": report.reused}
            for role, report in (("train", bundle.train_report), ("val", bundle.val_report))
            if report.build_seconds is not None
        },
    }
    if stream is not None:
        plan["stages"] = stage_entries(stream, run_steps, bundle.train_report.groups)
        plan["global_batch"] = stream.global_batch
        plan["steps"] = run_steps
        plan["batching"] = stream.schedule.batching
        plan["fingerprint"] = stream.schedule.fingerprint()
    return plan


def plot_plan(stream: CurriculumStream, run_steps: int, path: str) -> str:
    """plan.png: target mix per group over optimizer steps, with stage boundaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedule = stream.schedule
    steps = np.arange(run_steps + 1)
    mix = np.array([[schedule.mix_at(min(int(s), run_steps - 1))[g] for g in schedule.groups] for s in steps])
    fig, (ax, lr_ax) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, height_ratios=[3, 2])
    ax.stackplot(steps, mix.T, labels=schedule.groups, alpha=0.8, step="post")
    for st in schedule.stages:
        if st.start_step < run_steps:
            for a in (ax, lr_ax):
                a.axvline(st.start_step, color="black", lw=1, ls="--")
            ax.text(st.start_step + 0.5, 1.02, st.name, fontsize=9, va="bottom")
    ax.set_xlim(0, max(1, run_steps))
    ax.set_ylim(0, 1)
    ax.set_ylabel("target fraction of samples")
    ax.legend(loc="lower left", fontsize=8)
    # Each stage's LR schedule per component (0 where the stage freezes it), as the optimizer steps will use it.
    for k, comp in enumerate(("vision", "projector", "language")):
        lrs = []
        for s in steps[:-1]:
            st = schedule.stage_at(int(s))
            frozen = getattr(st.trainable, comp).value == "frozen"
            lrs.append(0.0 if frozen else st.lr.at(int(s) - st.start_step, st.steps))
        if any(lrs):
            lr_ax.step(steps[:-1], lrs, where="post", label=comp, lw=1.5, ls=("-", "--", ":")[k])
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step")
    lr_ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plan(plan: dict, run_dir: str) -> str:
    """Write plan.json into the run folder and return its path."""
    return write_json(os.path.join(run_dir, "plan.json"), plan, indent=2)


def print_plan(plan: dict, console: Console | None = None) -> None:
    """Summary tables: records per group and per source, stages, invalid records."""
    # Piped output gets no terminal width: tables then keep whole file names and reasons.
    console = console or Console(width=None if sys.stdout.isatty() else 400)
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
    val_sources = set(plan.get("val_sources", []))
    val_invalid = sum(n for src, n in invalid_by_source.items() if src in val_sources)
    t.add_row("[b]train total[/b]", *(str(plan["groups"].get(g, 0)) for g in groups), str(len(plan["invalid"]) - val_invalid))
    if val_sources:
        t.add_row("[b]val total[/b]", *(str(plan["val_groups"].get(g, 0)) for g in groups), str(val_invalid))
    console.print(t)
    for role, table in plan.get("record_tables", {}).items():
        how = "reused from the cache (built in" if table["reused"] else "built in"
        console.print(f"{role} record table {how} {table['build_seconds']:.1f} s{')' if table['reused'] else ''}")
    if plan["stages"]:
        s = Table(title=f"Stages (global batch {plan['global_batch']}, {plan['batching']} batching)")
        # `mix` is the stage's target after its ramp; `fraction` is what the stage draws, ramp included.
        for col in ("stage", "start step", "steps", "peak lr (warmup, decay)", "group", "mix", "samples", "fraction", "passes"):
            s.add_column(col, justify="left" if col in ("stage", "group", "peak lr (warmup, decay)") else "right")
        for st in plan["stages"]:
            lr = st["lr"]
            schedule = f"{lr['peak']:g} ({lr['warmup_steps']} warmup, {lr['scheduler']} to {lr['end']:.3g})"
            for i, (g, n) in enumerate(st["samples"].items()):
                head = (st["name"], str(st["start_step"]), str(st["steps"]), schedule) if i == 0 else ("", "", "", "")
                s.add_row(*head, g, f"{st['mix'][g]:g}", str(n), f"{st['fraction'][g]:.4f}", f"{st['passes'][g]:.2f}")
        console.print(s)
    if plan["invalid"]:
        v = Table(title=f"Invalid records ({len(plan['invalid'])})")
        for col in ("source", "index", "line", "id", "reason"):
            v.add_column(col)
        for e in plan["invalid"]:
            v.add_row(e["source"], str(e["index"]), str(e["line"] or ""), str(e["id"] or ""), e["reason"])
        console.print(v)


def inspect_samples(table, collator, per_group: int) -> list[dict]:
    """The first `per_group` records of each group as training sees them: the inspect.jsonl contract.

    `prompt_text` is the conversation as the chat template renders it (images unexpanded);
    `supervised_text` decodes the tokens whose label is kept, one line per supervised span.
    """
    out = []
    tokenizer = collator.tokenizer
    for group, rows in table.group_indices().items():
        for row in rows[:per_group]:
            record = table[int(row)]
            seen = collator.inspect(record)
            ids, labels = seen["input_ids"], seen["labels"]
            spans, current = [], []
            for token, label in zip(ids, labels):
                if label != IGNORE_INDEX:
                    current.append(token)
                elif current:
                    spans.append(current)
                    current = []
            if current:
                spans.append(current)
            out.append({
                "id": record["id"],
                "group": group,
                "source": record["source"],
                "tokens": len(ids),
                "image_tokens": sum(1 for t in ids if t in collator.image_token_ids),
                "supervised_tokens": sum(len(s) for s in spans),
                "over_max_length": len(ids) > collator.max_length,
                "prompt_text": seen["text"],
                "supervised_text": "\n".join(tokenizer.decode(s) for s in spans),
                "skip_reason": seen["reason"],
            })
    return out


def print_inspected(samples: list[dict], max_length: int, console: Console | None = None) -> None:
    """Each inspected sample: counts, the rendered conversation and the supervised text (newlines shown as \\n)."""
    console = console or Console(width=None if sys.stdout.isatty() else 400)
    for s in samples:
        head = f"[b]{s['group']}[/b] {s['id']}: {s['tokens']} tokens ({s['image_tokens']} image, {s['supervised_tokens']} supervised)"
        console.print(head + (f" [red]skipped: {s['skip_reason']}[/red]" if s["skip_reason"] else ""), highlight=False)
        console.print(f"  rendered:   {json.dumps(s['prompt_text'], ensure_ascii=False)}", highlight=False, markup=False)
        console.print(f"  supervised: {json.dumps(s['supervised_text'], ensure_ascii=False)}", highlight=False, markup=False)
    over = sum(s["over_max_length"] for s in samples)
    console.print(f"{over} of {len(samples)} inspected sample(s) exceed data.max_length={max_length}", highlight=False)


def write_inspected(samples: list[dict], run_dir: str) -> str:
    """inspect.jsonl in the run folder, one JSON object per sample; returns its path."""
    return write_text(os.path.join(run_dir, "inspect.jsonl"), "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
