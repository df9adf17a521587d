"""Search reports: trials.csv / trials.md (one row per trial, the best configuration first in the markdown) and
search.png (objective per trial with the best so far; each searched key against the objective), from search.db."""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from curriculum.report.plots import empty_axes, figure
from curriculum.report.sweeps import markdown_table
from curriculum.run.objective import STORAGE, STUDY, storage_url
from curriculum.search.study import SETTINGS

STATE = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def is_search(folder: str) -> bool:
    """Whether `folder` is a search folder (it holds search.db and search.json)."""
    return os.path.isfile(os.path.join(folder, STORAGE)) and os.path.isfile(os.path.join(folder, SETTINGS))


def load(folder: str):
    """(study, settings) of a search folder, read-only in effect."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with open(os.path.join(folder, SETTINGS), encoding="utf-8") as f:
        settings = json.load(f)
    return optuna.load_study(study_name=STUDY, storage=storage_url(folder)), settings


def trial_rows(study, settings: dict) -> list[dict]:
    """One row per trial: number, state, objective (a pruned trial: its last reported value, marked), values, time, reason."""
    rows = []
    for t in study.trials:
        state = "interrupted" if t.user_attrs.get("interrupted") else STATE.get(t.state.name, t.state.name.lower())
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        completed = t.state.name == "COMPLETE"
        row = {"trial": t.number, "state": state, "objective": t.value if completed else None,
               "last reported": None if completed else last, "at step": max(t.intermediate_values) if t.intermediate_values else None}
        row.update({k: t.params.get(k) for k in settings["space"]})
        seconds = t.user_attrs.get("seconds")
        row.update({"seconds": None if seconds is None else round(seconds), "reason": t.user_attrs.get("reason") or (
            f"ran again as trial {_retry(study, t.number)}" if state == "interrupted" else None)})
        rows.append(row)
    return rows


def _retry(study, number: int) -> str:
    again = [t.number for t in study.trials if t.user_attrs.get("retry_of") == number]
    return ", ".join(map(str, again)) or "?"


def best_trial(study):
    """The best completed trial, or None."""
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    return (min if study.direction.name == "MINIMIZE" else max)(done, key=lambda t: t.value) if done else None


def best_text(folder: str, study, settings: dict) -> str:
    """The best configuration as a few lines: trial, objective, values, and the command that trains it alone."""
    best = best_trial(study)
    if best is None:
        return "no trial completed yet"
    values = " ".join(f"{k}={_value(v)}" for k, v in best.params.items())
    return (f"best: trial {best.number}, objective {best.value:.6g} ({settings['objective']}, "
            f"{'lower' if settings['minimize'] else 'higher'} is better) with {values}\n"
            f"train it:  curriculum-train {' '.join(settings['overrides'])} {values}".rstrip() +
            f"\nits run: {os.path.join(folder, str(best.number))}")


def _value(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def plot_search(study, settings: dict, path: str) -> str:
    """search.png: the objective of each trial with the best so far, then each searched key against the objective.

    The y range is the completed trials'; a pruned trial's last reported value above it sits on the top edge (a triangle).
    """
    keys = list(settings["space"])
    trials = [t for t in study.trials if not t.user_attrs.get("interrupted")]
    cols = min(3, 1 + len(keys))
    rows = -(-(1 + len(keys)) // cols)
    fig = figure(figsize=(5.2 * cols, 4.0 * rows + 0.4))
    axes = list(np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel()))
    for ax in axes[1 + len(keys):]:
        ax.set_visible(False)
    better = min if settings["minimize"] else max
    done = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [(t, t.intermediate_values[max(t.intermediate_values)]) for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    values = [t.value for t in done]
    lo, hi = (min(values), max(values)) if values else (None, None)
    pad = 0.15 * ((hi - lo) or abs(hi) or 1.0) if values else 0.0
    top = hi + pad if values and settings["minimize"] else None
    bottom = lo - pad if values and not settings["minimize"] else None

    def clip(v: float) -> tuple[float, str]:
        """A pruned value inside the plotted range, and its marker (a triangle on the edge when outside)."""
        if top is not None and v > top:
            return top, "^"
        if bottom is not None and v < bottom:
            return bottom, "v"
        return v, "x"

    def draw(ax, points_done, points_pruned) -> None:
        if points_done:
            ax.plot(*zip(*points_done), "o", color="C0", label="completed")
        for x, v in points_pruned:
            y, marker = clip(v)
            ax.plot([x], [y], marker, color="0.5", ms=7, label="pruned (last reported)")
        if values:
            ax.set_ylim(bottom if bottom is not None else lo - pad, top if top is not None else hi + pad)
        ax.grid(alpha=0.3)

    ax = axes[0]
    if not done and not pruned:
        empty_axes(ax, "no trial ended yet")
    draw(ax, [(t.number, t.value) for t in done], [(t.number, v) for t, v in pruned])
    if done:
        best, so_far = [], None
        for t in done:
            so_far = t.value if so_far is None else better(so_far, t.value)
            best.append((t.number, so_far))
        ax.step(*zip(*best), where="post", color="C3", label="best so far")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"objective ({settings['objective']})")
    ax.set_title("objective per trial", fontsize=11)
    best_t = best_trial(study)
    for ax, key in zip(axes[1:], keys):
        numeric = all(isinstance(t.params.get(key), (int, float)) for t in trials if key in t.params)
        to_x = (lambda x: x) if numeric else str
        draw(ax, [(to_x(t.params[key]), t.value) for t in done if key in t.params],
             [(to_x(t.params[key]), v) for t, v in pruned if key in t.params])
        if best_t is not None and key in best_t.params:
            ax.plot([to_x(best_t.params[key])], [best_t.value], "*", ms=15, color="C3", zorder=5)
        if "log" in settings["space"][key]:
            ax.set_xscale("log")
        ax.set_xlabel(key, fontsize=8)
        ax.set_title(settings["space"][key] + ("  (star: best)" if best_t is not None else ""), fontsize=9)
    fig.suptitle(f"search: {len(done)} completed, {len(pruned)} pruned; objective {settings['objective']} "
                 f"({'minimised' if settings['minimize'] else 'maximised'})", fontsize=11)
    fig.savefig(path, dpi=110)
    return path


def write_search_report(folder: str) -> tuple[str, list[dict], dict]:
    """Write trials.csv, trials.md and search.png into a search folder; returns the best configuration as text, the
    trial rows and the search's settings."""
    study, settings = load(folder)
    rows = trial_rows(study, settings)
    columns = list(rows[0]) if rows else ["trial", "state", "objective"]
    with open(os.path.join(folder, "trials.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    text = best_text(folder, study, settings)
    space = "\n".join(f"- `{k}`: {d}" for k, d in settings["space"].items())
    with open(os.path.join(folder, "trials.md"), "w", encoding="utf-8") as f:
        f.write(f"# Search {folder}\n\n{text}\n\nSearched:\n{space}\n\nShared overrides: `{' '.join(settings['overrides']) or '(none)'}`\n\n")
        # Searched values with 4 significant digits (a learning rate would lose its digits to 4 decimals).
        shown = [{k: f"{v:.4g}" if k in settings["space"] and isinstance(v, float) else v for k, v in r.items()} for r in rows]
        f.write(markdown_table(shown) if rows else "no trials yet\n")
    plot_search(study, settings, os.path.join(folder, "search.png"))
    return text, rows, settings

