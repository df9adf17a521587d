"""The printed plan: per-source rows and separate train and validation totals."""

from __future__ import annotations

from rich.console import Console

from curriculum.plan import print_plan


def test_totals_keep_train_and_validation_apart():
    plan = {
        "groups": {"image_text": 3, "text_only": 2},
        "val_groups": {"image_text": 1, "text_only": 0},
        "sources": {"a.jsonl": {"image_text": 3}, "b.json": {"text_only": 2}, "v.jsonl": {"image_text": 1}},
        "val_sources": ["v.jsonl"],
        "invalid": [
            {"source": "a.jsonl", "index": 4, "line": 5, "id": "x", "reason": "no assistant turn"},
            {"source": "b.json", "index": 0, "line": None, "id": None, "reason": "unknown role 'bot'"},
            {"source": "v.jsonl", "index": 2, "line": 3, "id": "v2", "reason": "missing image file"},
        ],
        "stages": [],
    }
    console = Console(record=True, width=200)
    print_plan(plan, console)
    text = console.export_text()
    assert row_cells(text, "train total") == ["3", "2", "2"]  # image_text, text_only, invalid
    assert row_cells(text, "val total") == ["1", "0", "1"]


def row_cells(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if label in line)
    return [c.strip() for c in line.split("│")[2:-1]]
