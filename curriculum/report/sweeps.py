"""Sweep reports: per multirun, runs.csv / runs.png (one row and one line per run) and
summary.csv / summary.md / summary.png (runs that differ only in `seed` aggregated: mean,
standard deviation and 95% confidence interval over seeds).

A multirun folder holds numbered job folders 0/, 1/, ... that are run folders (see runs.py).
"""

from __future__ import annotations

import csv
import math
import os
import re
import textwrap

import numpy as np

from curriculum.report.plots import empty_axes, figure, finish_axes, mark_stages
from curriculum.report.runs import Rows, groups_of, read_json, read_metrics, read_overrides, read_status, series, stage_starts, steps_done
from curriculum.report.stats import mean_interval


def job_dirs(multirun_dir: str) -> list[str]:
    """The numbered job folders of a multirun, by job number."""
    names = [n for n in os.listdir(multirun_dir) if n.isdigit() and os.path.isdir(os.path.join(multirun_dir, n))]
    return [os.path.join(multirun_dir, n) for n in sorted(names, key=int)]


def _val_stats(rows: Rows, group: str) -> tuple[float | None, float | None]:
    """(value at the last validation row, minimum) of val/loss_<group>; None when never logged."""
    _, y = series(rows, f"val/loss_{group}")
    if not len(y):
        return None, None
    finite = y[~np.isnan(y)]
    return float(y[-1]), float(finite.min()) if len(finite) else None


def summarize(multirun_dir: str) -> list[dict]:
    """One row per job: run, overrides, status, reason, steps_done, final and best val/loss per group, final eval/* scores."""
    jobs = [(d, read_metrics(d), read_json(os.path.join(d, "plan.json"))) for d in job_dirs(multirun_dir)]
    groups: list[str] = []
    for _, rows, plan in jobs:
        groups += [g for g in groups_of(rows, plan) if g not in groups]
    # Generation scores (eval.generate) aggregate like losses: every eval/<metric>_<group> column.
    eval_columns = sorted({k for _, rows, _ in jobs for r in rows for k in r if k.startswith("eval/")})
    out = []
    for d, rows, _ in jobs:
        status = read_status(d)
        row = {"run": os.path.basename(d), "overrides": " ".join(read_overrides(d)), "status": status["status"],
               "reason": status["reason"], "steps_done": steps_done(rows)}
        for g in groups:
            row[f"final val/loss_{g}"], row[f"best val/loss_{g}"] = _val_stats(rows, g)
        for column in eval_columns:
            _, y = series(rows, column)
            row[f"final {column}"] = float(y[-1]) if len(y) else None
        out.append(row)
    return out


def _columns(rows: list[dict]) -> list[str]:
    """Union of the rows' keys in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols or ["run", "overrides", "status", "reason", "steps_done"]


def format_cell(value, digits: int = 4) -> str:
    """A table cell: floats with `digits` decimals, None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a GitHub markdown table (floats with 4 decimals)."""
    cols = _columns(rows)
    cell = lambda v: format_cell(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def differing_overrides(overrides: list[list[str]]) -> tuple[list[str], list[str]]:
    """Per run, its overrides that not every run shares (joined by a space); and the shared ones."""
    common = [o for o in overrides[0] if all(o in ov for ov in overrides)] if overrides else []
    return [" ".join(o for o in ov if o not in common) for ov in overrides], common


def plot_runs(multirun_dir: str, rows: list[dict], path: str) -> str:
    """runs.png: validation loss per group over steps, one line per run, stage boundaries of a completed run."""
    dirs = [os.path.join(multirun_dir, r["run"]) for r in rows]
    metrics = [read_metrics(d) for d in dirs]
    groups = [c[len("final val/loss_"):] for c in _columns(rows) if c.startswith("final val/loss_")]
    groups = [g for g in groups if any(len(series(m, f"val/loss_{g}")[0]) for m in metrics)]
    differ, common = differing_overrides([read_overrides(d) for d in dirs])
    labels = [f"{r['run']}: {d or '(no differing overrides)'}" for r, d in zip(rows, differ)]
    ref = next((d for d, r in zip(dirs, rows) if r["status"] == "completed"), dirs[0] if dirs else None)
    plan = read_json(os.path.join(ref, "plan.json")) if ref else {}
    starts = stage_starts(plan, read_metrics(ref)) if ref else []
    last = max([int(plan.get("steps") or 0), 1] + [int(r["step"]) + 1 for m in metrics for r in m])

    n = max(1, len(groups))
    fig = figure(figsize=(min(6.5 * n, 20), 5.2 + 0.28 * len(rows)))
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)[0])
    if not groups:
        empty_axes(axes[0], "no validation rows in any run")
    for ax, g in zip(axes, groups):
        for i, (m, r) in enumerate(zip(metrics, rows)):
            x, y = series(m, f"val/loss_{g}")
            if len(x):
                ax.plot(x, y, marker="o", ms=4, color=f"C{i % 10}", ls="-" if r["status"] == "completed" else "--")
        mark_stages(ax, starts)
        ax.set_title(f"val/loss_{g}", fontsize=11)
        ax.set_xlabel("optimizer step")
        finish_axes(ax, last)
    axes[0].set_ylabel("validation loss (per token)")

    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{i % 10}", marker="o", ms=4, ls="-" if r["status"] == "completed" else "--")
               for i, r in enumerate(rows)]
    notes = [[] if r["status"] == "completed" else [r["status"]] for r in rows]
    for note, m in zip(notes, metrics):
        note += [] if any(len(series(m, f"val/loss_{g}")[0]) for g in groups) else ["no validation rows"]
    names = [lab + (f" ({', '.join(n)})" if n else "") for lab, n in zip(labels, notes)]
    if rows:
        fig.legend(handles, [textwrap.shorten(s, 150) for s in names], loc="outside lower center", ncols=1, fontsize=9,
                   title="run: overrides that differ", title_fontsize=9)
    title = f"Validation loss per group: {os.path.basename(os.path.abspath(multirun_dir))} ({len(rows)} runs)"
    if common:
        title += "\n" + textwrap.fill("common overrides: " + " ".join(common), 140)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    return path


# ---- seeds ----------------------------------------------------------------------------------

_SEED = re.compile(r"^[+~]?seed=")
MIN_SEEDS = 3


def config_key(overrides: list[str]) -> tuple[str, ...]:
    """A run's overrides without its seed: runs with the same key differ only in seed."""
    return tuple(o for o in overrides if not _SEED.match(o))


def aggregate(runs: list[dict], overrides: list[list[str]]) -> list[dict]:
    """One row per configuration (runs that differ only in seed), in first-run order.

    `seeds` counts its completed runs, `excluded` the others (failed, running, stopped early);
    each final metric gets the mean, sample standard deviation and 95% interval of the mean
    (t-distribution) over the completed runs that logged it.
    """
    keys = [config_key(o) for o in overrides]
    labels, _ = differing_overrides([list(k) for k in keys])
    metrics = [c for c in _columns(runs) if c.startswith(("final ", "best "))]
    out = []
    for key in dict.fromkeys(keys):
        members = [i for i, k in enumerate(keys) if k == key]
        done = [runs[i] for i in members if runs[i]["status"] == "completed"]
        row = {"config": labels[members[0]] or "(no differing overrides)", "runs": " ".join(runs[i]["run"] for i in members),
               "seeds": len(done), "excluded": len(members) - len(done)}
        for m in metrics:
            values = [r[m] for r in done if r.get(m) is not None and not math.isnan(r[m])]
            stats = mean_interval(values) if values else (None, None, None, None)
            for name, value in zip(("mean", "std", "ci95_low", "ci95_high"), stats):
                row[f"{m} {name}"] = None if value is None or math.isnan(value) else value
        out.append(row)
    return out


def aggregate_markdown(configs: list[dict]) -> str:
    """The aggregated rows as a markdown table: each metric as `mean ± half-interval (sd std)`."""
    metrics = [c[: -len(" mean")] for c in _columns(configs) if c.endswith(" mean")]
    rows = []
    for c in configs:
        row = {k: c[k] for k in ("config", "runs", "seeds", "excluded")}
        for m in metrics:
            mean, std, low, high = (c.get(f"{m} {x}") for x in ("mean", "std", "ci95_low", "ci95_high"))
            row[m] = "" if mean is None else f"{mean:.4f}" + ("" if high is None else f" ± {high - mean:.4f} (sd {std:.4f})")
        rows.append(row)
    return markdown_table(rows)


def few_seeds(configs: list[dict]) -> list[dict]:
    """Configurations with fewer than MIN_SEEDS completed runs (their intervals are wide or missing)."""
    return [c for c in configs if c["seeds"] < MIN_SEEDS]


def _val_curves(dirs: list[str], group: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validation steps every run logged for `group`, and each run's values at those steps."""
    curves = [dict(zip(*series(read_metrics(d), f"val/loss_{group}"))) for d in dirs]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return np.array(steps, dtype=float), [np.array([c[s] for s in steps]) for c in curves]


def plot_aggregate(multirun_dir: str, runs: list[dict], configs: list[dict], path: str) -> str:
    """summary.png: per group, validation loss over steps (mean of the seeds, 95% band) and the final value (mean, 95% bar)."""
    groups = [c[len("final val/loss_"): -len(" mean")] for c in _columns(configs) if c.startswith("final val/loss_") and c.endswith(" mean")]
    by_name = {r["run"]: r for r in runs}
    n = max(1, len(groups))
    fig = figure(figsize=(min(6.5 * n, 20), 8 + 0.3 * len(configs)))
    axes = fig.subplots(2, n, squeeze=False, height_ratios=[1.6, 1])
    if not groups:
        empty_axes(axes[0][0], "no validation rows in any completed run")
    for k, g in enumerate(groups):
        top, bottom = axes[0][k], axes[1][k]
        for i, c in enumerate(configs):
            color = f"C{i % 10}"
            dirs = [os.path.join(multirun_dir, name) for name in c["runs"].split() if by_name[name]["status"] == "completed"]
            steps, values = _val_curves(dirs, g)
            if len(steps):
                stacked = np.vstack(values)
                mean = stacked.mean(axis=0)
                top.plot(steps, mean, color=color, marker="o", ms=3)
                if len(values) > 1:
                    intervals = [mean_interval(list(stacked[:, j])) for j in range(len(steps))]
                    top.fill_between(steps, [x[2] for x in intervals], [x[3] for x in intervals], color=color, alpha=0.2, lw=0)
            mean, low, high = (c.get(f"final val/loss_{g} {x}") for x in ("mean", "ci95_low", "ci95_high"))
            if mean is not None:
                err = [[mean - low], [high - mean]] if low is not None else None
                bottom.errorbar([mean], [i], xerr=err, fmt="o", color=color, capsize=4)
        top.set_title(f"val/loss_{g}: mean over seeds, 95% band", fontsize=11)
        top.set_xlabel("optimizer step")
        top.grid(alpha=0.3)
        bottom.set_title(f"final val/loss_{g}: mean, 95% interval", fontsize=11)
        bottom.set_yticks(range(len(configs)), [f"{i}" for i in range(len(configs))])
        bottom.set_ylim(len(configs) - 0.5, -0.5)  # configuration 0 on top
        bottom.grid(alpha=0.3, axis="x")
    axes[0][0].set_ylabel("validation loss (per token)")
    axes[1][0].set_ylabel("configuration")

    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{i % 10}", marker="o", ms=4) for i in range(len(configs))]
    names = [textwrap.shorten(f"{i}: {c['config']} ({c['seeds']} seed{'s' if c['seeds'] != 1 else ''}"
                              + (f", {c['excluded']} excluded" if c["excluded"] else "") + ")", 150) for i, c in enumerate(configs)]
    if configs:
        fig.legend(handles, names, loc="outside lower center", ncols=1, fontsize=9, title="configuration (runs differing only in seed)", title_fontsize=9)
    fig.suptitle(f"Seeds aggregated: {os.path.basename(os.path.abspath(multirun_dir))} ({len(runs)} runs, {len(configs)} configurations)", fontsize=11)
    fig.savefig(path, dpi=110)
    return path


def write_summary(multirun_dir: str) -> dict[str, str]:
    """Write runs.csv / runs.png and summary.csv / summary.md / summary.png in the multirun folder; returns {name: path}."""
    runs = summarize(multirun_dir)
    overrides = [read_overrides(os.path.join(multirun_dir, r["run"])) for r in runs]
    configs = aggregate(runs, overrides)
    paths = {name: os.path.join(multirun_dir, name) for name in ("summary.csv", "summary.md", "summary.png", "runs.csv", "runs.png")}
    _write_csv(paths["runs.csv"], runs)
    _write_csv(paths["summary.csv"], configs)
    warn = few_seeds(configs)
    with open(paths["summary.md"], "w", encoding="utf-8") as f:
        f.write("## Configurations (runs that differ only in seed)\n\nEach metric: mean ± half-width of the 95% interval of the mean "
                "(t-distribution over seeds), sd = standard deviation across seeds. Only completed runs count; `excluded` runs did not complete.\n\n")
        f.write(aggregate_markdown(configs))
        if warn:
            f.write(f"\nFewer than {MIN_SEEDS} seeds: " + "; ".join(f"{c['config']} ({c['seeds']})" for c in warn) + ". Their intervals are wide or missing.\n")
        f.write("\n## Runs\n\n" + markdown_table(runs))
    plot_aggregate(multirun_dir, runs, configs, paths["summary.png"])
    plot_runs(multirun_dir, runs, paths["runs.png"])
    return paths


def _write_csv(path: str, rows: list[dict]) -> None:
    cols = _columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows([{c: "" if r.get(c) is None else r[c] for c in cols} for r in rows])
