"""Plot pieces the run and sweep reports share: figures, stage marks, smoothing, group colours."""

from __future__ import annotations

import numpy as np


# ---- plotting helpers -----------------------------------------------------------------------


def smooth(x: np.ndarray, y: np.ndarray, starts: list[int]) -> np.ndarray:
    """Centred moving average within each stage (no blur across a boundary); short runs unsmoothed."""
    out = y.copy()
    edges = sorted({s for s in starts if s > 0})
    seg = np.searchsorted(edges, x, side="right")
    for k in np.unique(seg):
        idx = np.flatnonzero(seg == k)
        w = 2 * (len(idx) // 40) + 1
        if w > 1:
            kern = np.ones(w)
            out[idx] = np.convolve(y[idx], kern, "same") / np.convolve(np.ones(len(idx)), kern, "same")
    return out


def group_colors(groups: list[str]) -> dict[str, str]:
    """A fixed colour per group, shared by every panel."""
    return {g: f"C{i % 10}" for i, g in enumerate(groups)}


def mark_stages(ax, starts: list[tuple[int, str]], label: bool = True) -> None:
    """Dashed vertical lines at stage starts, labelled with the stage name at the top of the axes."""
    for step, name in starts:
        ax.axvline(step, color="0.3", lw=1, ls="--", zorder=1)
        if label:
            ax.text(step, 0.98, f" {name}", transform=ax.get_xaxis_transform(), fontsize=9, va="top",
                    ha="left", color="0.2", bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.7))


def finish_axes(ax, last: int) -> None:
    """Integer step ticks over [0, last], a grid, and headroom at the top for the stage labels."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, last)
    ax.grid(alpha=0.3)
    if ax.has_data():
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.1 * (hi - lo))


def empty_axes(ax, text: str) -> None:
    """A centred note in an axes that has nothing to plot."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.4")


def figure(**kw):
    """A matplotlib Figure without pyplot's global state (saved through the Agg canvas)."""
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kw)
