"""Run reports: reading a run folder (metrics.csv, plan.json, .hydra/overrides.yaml, status.json)
and its report.png. Sweep reports over many runs are in sweeps.py.

Everything here only reads those files and writes the report files next to them.
"""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import yaml

from curriculum.run import lock as run_lock
from curriculum.run.metrics_file import FILE, read_rows
from curriculum.report.plots import empty_axes, figure, finish_axes, group_colors, mark_stages, smooth

GROUP_PREFIXES = ("train/loss_", "val/loss_", "train/tokens_", "mix/", "samples/")
Rows = list[dict[str, float]]


# ---- reading a run folder -------------------------------------------------------------------


def _float(text: str | None) -> float | None:
    """A CSV cell as a float; None when empty or unreadable (a partially written row)."""
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_metrics(run_dir: str) -> Rows:
    """metrics.csv rows as {column: float}, empty cells left out; a torn row (killed mid-write) is dropped."""
    whole = read_rows(os.path.join(run_dir, FILE))
    return [{k: v for k, c in r.items() if (v := _float(c)) is not None} for r in whole]


def read_json(path: str) -> dict:
    """A JSON object file; {} when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def read_status(run_dir: str) -> dict:
    """status.json as {status, reason, step}; a run without one is failed (no metrics) or running.

    A run that says `running` while no process holds its lock was killed: it is `stopped`.
    """
    data = read_json(os.path.join(run_dir, "status.json"))
    if data.get("status") == "running" and os.path.isfile(os.path.join(run_dir, run_lock.LOCK)) and run_lock.holder(run_dir) is None:
        return {"status": "stopped", "reason": "its process ended without a word (killed?); resume=<run> continues it", "step": data.get("step")}
    if data.get("status"):
        return {"status": data["status"], "reason": data.get("reason"), "step": data.get("step")}
    if not os.path.isfile(os.path.join(run_dir, "metrics.csv")):
        return {"status": "failed", "reason": "no status.json", "step": None}
    return {"status": "running", "reason": None, "step": None}


def read_overrides(run_dir: str) -> list[str]:
    """The job's command-line overrides (.hydra/overrides.yaml) without hydra.* ones."""
    try:
        with open(os.path.join(run_dir, ".hydra", "overrides.yaml"), encoding="utf-8") as f:
            items = yaml.safe_load(f) or []
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in items if not str(o).lstrip("+~").startswith("hydra.")]


def groups_of(rows: Rows, plan: dict | None = None) -> list[str]:
    """Group names: plan.json's order first, then as found in per-group column names."""
    found = list((plan or {}).get("groups", {}))
    for r in rows:
        for key in r:
            for prefix in GROUP_PREFIXES:
                if key.startswith(prefix) and key[len(prefix):] and key[len(prefix):] not in found:
                    found.append(key[len(prefix):])
    return found


def series(rows: Rows, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows where `column` is set."""
    pts = [(r["step"], r[column]) for r in rows if column in r]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def steps_done(rows: Rows) -> int:
    """Optimizer steps logged: max training step + 1, 0 if none."""
    steps = [r["step"] for r in rows if "train/loss" in r]
    return int(max(steps)) + 1 if steps else 0


def stage_starts(plan: dict, rows: Rows) -> list[tuple[int, str]]:
    """(start step, name) per stage from plan.json; else from changes of a numeric `stage` column (runs that logged an index)."""
    stages = [(int(s["start_step"]), str(s.get("name", f"stage {i}"))) for i, s in enumerate(plan.get("stages", []))]
    if stages:
        return stages
    out, last = [], None
    for r in rows:
        if "stage" in r and r["stage"] != last:
            last = r["stage"]
            out.append((int(r["step"]), f"stage {int(last)}"))
    return out


# ---- one run --------------------------------------------------------------------------------


def write_run_report(run_dir: str) -> str:
    """Write <run>/report.png: per-group train/val loss and the target mix over steps, with stage boundaries."""
    if not os.path.isfile(os.path.join(run_dir, "metrics.csv")):
        raise FileNotFoundError(f"{run_dir} has no metrics.csv")
    rows, plan, status = read_metrics(run_dir), read_json(os.path.join(run_dir, "plan.json")), read_status(run_dir)
    groups, starts = groups_of(rows, plan), stage_starts(plan, rows)
    colors, done = group_colors(groups), steps_done(rows)
    last = max([done, int(plan.get("steps") or 0), 1] + [int(r["step"]) + 1 for r in rows])

    fig = figure(figsize=(11, 7.5))
    ax_loss, ax_mix = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    title = f"{os.path.basename(os.path.abspath(run_dir))}: {status['status']}, {done}/{plan.get('steps') or '?'} steps"
    if status.get("reason"):
        title += "\n" + textwrap.shorten(str(status["reason"]), 110)
    fig.suptitle(title, fontsize=12)

    plotted = smoothed = False
    for g in groups:
        x, y = series(rows, f"train/loss_{g}")
        if len(x):
            ax_loss.plot(x, y, color=colors[g], lw=0.8, alpha=0.35, marker="." if len(x) < 60 else None)
            ys = smooth(x, y, [s for s, _ in starts])
            smoothed |= not np.array_equal(ys, y)
            ax_loss.plot(x, ys, color=colors[g], lw=2, label=f"{g} train")
            plotted = True
        vx, vy = series(rows, f"val/loss_{g}")
        if len(vx):
            ax_loss.plot(vx, vy, color=colors[g], ls=":", lw=1.2, marker="o", ms=7, mec="black", mew=0.8,
                         label=f"{g} validation")
            plotted = True
    if not plotted:
        empty_axes(ax_loss, "no loss logged yet")
    mark_stages(ax_loss, starts)
    how = "thin: every step, thick: moving average within a stage" if smoothed else "lines: every step"
    ax_loss.set_title(f"Loss per group ({how}; dots: validation)", fontsize=10)
    ax_loss.set_ylabel("loss (per token)")
    finish_axes(ax_loss, last)
    if plotted:
        ax_loss.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)

    mix = [(g, *series(rows, f"mix/{g}")) for g in groups]
    mix = [(g, x, y) for g, x, y in mix if len(x)]
    if mix:
        # Align every group on the union of logged steps; a step runs from x to x + 1.
        xs = np.unique(np.concatenate([x for _, x, _ in mix]))
        ys = [np.interp(xs, x, y) for _, x, y in mix]
        xs = np.append(xs, xs[-1] + 1)
        ys = [np.append(y, y[-1]) for y in ys]
        ax_mix.stackplot(xs, ys, labels=[g for g, _, _ in mix], colors=[colors[g] for g, _, _ in mix],
                         alpha=0.75, step="post")
        ax_mix.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
    else:
        empty_axes(ax_mix, "no mix logged")
    mark_stages(ax_mix, starts, label=False)
    ax_mix.set_title("Target mix (fraction of each step's samples per group)", fontsize=10)
    ax_mix.set_ylabel("fraction")
    ax_mix.set_xlabel("optimizer step")
    finish_axes(ax_mix, last)
    ax_mix.set_ylim(0, 1)

    path = os.path.join(run_dir, "report.png")
    fig.savefig(path, dpi=110)
    return path
