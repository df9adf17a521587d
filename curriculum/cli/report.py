"""`curriculum-report <folder>`: report.png for a run folder; for a multirun, runs.csv/.png and the
seed-aggregated summary.csv/.md/.png (+ each job's report.png)."""

from __future__ import annotations

import argparse
import os
import sys

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from curriculum.report.runs import read_overrides, write_run_report
from curriculum.report.searches import is_search, write_search_report
from curriculum.report.sweeps import MIN_SEEDS, aggregate, differing_overrides, few_seeds, format_cell, job_dirs, summarize, write_summary

STATUS_STYLE = {"completed": "green", "failed": "red", "running": "yellow", "pruned": "blue", "interrupted": "magenta"}


def summary_table(rows: list[dict], overrides: list[list[str]], compact: bool = False) -> Table:
    """The summary rows as a rich table: overrides that differ between runs, floats with 4 decimals.

    compact folds the number columns' headers to the numbers' width (for narrow terminals).
    """
    differ, common = differing_overrides(overrides)
    # A reason column only when some run has one.
    cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "reason" or any(r.get(c) for r in rows)]
    table = Table(title="multirun summary", box=box.SIMPLE_HEAVY, caption=("common overrides: " + " ".join(common)) if common else None)
    columns = []
    for c in cols:
        kind, _, group = c.partition(" val/loss_")
        cells = differ if c == "overrides" else [format_cell(r.get(c)) for r in rows]
        numeric, width = bool(group) or c == "steps_done" or c.startswith("final eval/"), max([len(x) for x in cells] + [1])
        table.add_column(
            f"{group} {kind} val" if group else c.replace("steps_done", "steps"),
            justify="right" if numeric else "left",
            overflow="fold",
            min_width=None if numeric else min(width, 16),
            max_width=max(width, 5) if numeric and compact else None,
        )
        if c == "status":
            cells = [f"[{STATUS_STYLE.get(x, 'white')}]{x}[/]" for x in cells]
        columns.append(cells)
    for cells in zip(*columns):
        table.add_row(*cells)
    return table


def metric_header(column: str) -> str:
    """A short header: `final val/loss_text_only` -> `text_only final val`, `final eval/exact_match_text_only` -> `text_only exact match`."""
    kind, _, group = column.partition(" val/loss_")
    if group:
        return f"{group} {kind} val"
    for metric in ("exact_match", "token_f1", "loss"):
        prefix = f"final eval/{metric}_"
        if column.startswith(prefix):
            return f"{column[len(prefix):]} {metric.replace('_', ' ')}"
    return column


def aggregate_table(configs: list[dict]) -> Table:
    """The seed-aggregated rows as a rich table: per final metric, mean ± 95% half-interval."""
    table = Table(title="configurations (runs that differ only in seed; mean ± 95% interval over seeds)", box=box.SIMPLE_HEAVY)
    metrics = [c[: -len(" mean")] for c in dict.fromkeys(k for r in configs for k in r) if c.endswith(" mean")]
    widest = max([len(c["config"]) for c in configs] + [6])
    for name in ("config", "runs", "seeds", "excluded"):
        table.add_column(name, justify="right" if name in ("seeds", "excluded") else "left", overflow="fold",
                         min_width=min(widest, 48) if name == "config" else None)
    for m in metrics:
        table.add_column(metric_header(m), justify="right")
    for c in configs:
        cells = [c["config"], c["runs"], str(c["seeds"]), str(c["excluded"])]
        for m in metrics:
            mean, high = c.get(f"{m} mean"), c.get(f"{m} ci95_high")
            cells.append("" if mean is None else format_cell(mean) + ("" if high is None else f" ± {format_cell(high - mean)}"))
        table.add_row(*cells)
    return table


def report_multirun(folder: str, console: Console) -> None:
    """Write the summary files and every job's report.png; print the table and the paths."""
    paths = write_summary(folder)
    for job in job_dirs(folder):
        if os.path.isfile(os.path.join(job, "metrics.csv")):
            console.print(f"report: {write_run_report(job)}", highlight=False, soft_wrap=True)
        else:
            console.print(f"report: {job} skipped (no metrics.csv)", highlight=False, soft_wrap=True)
    rows = summarize(folder)
    overrides = [read_overrides(os.path.join(folder, r["run"])) for r in rows]
    table = summary_table(rows, overrides)
    wide = Measurement.get(console, console.options.update(max_width=240), table).maximum
    if not console.is_terminal:  # a log file or pipe: no need to fold the table to 80 columns
        console.width = max(console.width, wide)
    elif wide > console.width:
        table = summary_table(rows, overrides, compact=True)
    console.print(table)
    configs = aggregate(rows, overrides)
    console.print(aggregate_table(configs))
    warn = few_seeds(configs)
    if warn:
        console.print(
            f"warning: {len(warn)} configuration(s) with fewer than {MIN_SEEDS} completed seeds, so their intervals are wide or missing: "
            + "; ".join(f"{c['config']} ({c['seeds']})" for c in warn),
            highlight=False, soft_wrap=True,
        )
    for name, path in paths.items():
        console.print(f"{name}: {path}", highlight=False, soft_wrap=True)


def report_search(folder: str, console: Console) -> None:
    """Write trials.csv/.md and search.png; print the trials table and the best configuration."""
    text, rows, settings = write_search_report(folder)
    table = Table(title=f"search: {len(rows)} trials", box=box.SIMPLE_HEAVY)
    for c in rows[0] if rows else ["trial"]:
        table.add_column(c.split(".")[-1] if c in settings["space"] else c, justify="left" if c in ("state", "reason") else "right",
                         overflow="fold")
    for r in rows:
        table.add_row(*[f"[{STATUS_STYLE.get(v, 'white')}]{v}[/]" if k == "state" else format_cell(v) for k, v in r.items()])
    if not console.is_terminal:  # a log file or pipe: no need to fold the table to 80 columns
        console.width = max(console.width, Measurement.get(console, console.options.update(max_width=240), table).maximum)
    console.print(table)
    console.print(text, highlight=False, soft_wrap=True)
    for name in ("trials.csv", "trials.md", "search.png"):
        console.print(f"{name.split('.')[0] if name != 'trials.md' else 'table'}: {os.path.join(folder, name)}", highlight=False,
                      soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console script entry point."""
    parser = argparse.ArgumentParser(
        prog="curriculum-report",
        description="Plot a run folder (report.png), summarise a Hydra multirun folder (runs.csv/.png, seed-aggregated "
        "summary.csv/.md/.png) or a search folder (trials.csv/.md, search.png, the best configuration).",
    )
    parser.add_argument("folder", help="a run folder (has metrics.csv), a multirun folder (has job folders 0/, 1/, ...) or a search "
                        "folder (has search.db)")
    args = parser.parse_args(argv)
    folder = args.folder
    console = Console()
    if os.path.isfile(os.path.join(folder, "metrics.csv")):
        console.print(f"report: {write_run_report(folder)}", highlight=False, soft_wrap=True)
    elif is_search(folder):
        report_search(folder, console)
    elif os.path.isdir(folder) and job_dirs(folder):
        report_multirun(folder, console)
    else:
        print(
            f"error: {folder} is neither a run folder (with metrics.csv) nor a multirun folder "
            "(with numbered job folders 0/, 1/, ...)",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
