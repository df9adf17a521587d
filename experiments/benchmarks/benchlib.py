"""Shared output helpers for the benchmark scripts: markdown tables and a one-line machine description."""

from __future__ import annotations

import os
import platform

import torch


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """Render rows as a GitHub markdown table (pasteable into the README as is)."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[k]) for row in cells) for k in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])


def machine_line() -> str:
    """CPU count, platform and library versions, so a pasted table says where it was measured."""
    return (
        f"machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )
