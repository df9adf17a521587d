"""Reading metrics.csv: shared by the run's logger and by reports, without the training stack."""

from __future__ import annotations

import csv
import os

FILE = "metrics.csv"


def read_rows(path: str) -> list[dict]:
    """Rows of a metrics file; a torn last line (a kill mid-write) is dropped."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()) or not _is_int(row.get("step")):
                continue
            rows.append(row)
    return rows


def _is_int(value) -> bool:
    try:
        int(value)
        return True
    except (TypeError, ValueError):
        return False
