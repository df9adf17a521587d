"""The printed plan: per-source rows and separate train and validation totals."""

from __future__ import annotations

from rich.console import Console

from curriculum.schedule.plan import print_plan
from families import chat_markers, supervised


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


def test_inspect_shows_what_training_sees_on_both_architectures(arch, cache_dir, shapes):
    from curriculum.data.collate import Collator
    from curriculum.data.records import load_or_build
    from curriculum.model.load import load_processor
    from curriculum.schedule.plan import inspect_samples

    table, _ = load_or_build([shapes.train_file], cache_dir=cache_dir)
    collator = Collator(load_processor(arch), ["image_text", "text_only"], 2048, "skip")
    samples = inspect_samples(table, collator, per_group=2)
    assert [s["group"] for s in samples] == ["image_text", "image_text", "text_only", "text_only"]
    for s in samples:
        record = table[[table[i]["id"] for i in range(len(table))].index(s["id"])]
        answers = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        # Exactly the assistant answers, each with the template's end-of-turn token, nothing else.
        _, prompt = chat_markers(arch)
        assert s["supervised_text"] == "\n".join(supervised(arch, *answers))
        assert (s["image_tokens"] > 0) == (s["group"] == "image_text") and s["tokens"] > s["supervised_tokens"] > 0
        assert (not prompt or s["prompt_text"].count(prompt) == len(answers)) and s["skip_reason"] is None
    tight = Collator(load_processor(arch), ["image_text", "text_only"], 10, "skip")
    over = inspect_samples(table, tight, per_group=1)
    assert all(s["over_max_length"] and "over data.max_length=10" in s["skip_reason"] for s in over)


def test_the_plan_states_each_stages_lr_from_peak_to_its_last_step(tmp_path):
    """A short stage (8 steps, optim's warmup 10) warms up over half of it and decays: the table says to what."""
    from conftest import compiled, one_stage
    from curriculum.config import OptimConfig

    schedule = compiled(one_stage(8), optim=OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1))
    (st,) = schedule.stages
    end = st.lr.at(7, 8)
    assert st.lr.warmup_steps == 4 and 1e-4 < end < 3e-4
    plan = {"groups": {}, "val_groups": {}, "sources": {}, "val_sources": [], "invalid": [], "global_batch": 8, "batching": "mixed",
            "stages": [{"name": "train", "start_step": 0, "steps": 8, "samples": {"image_text": 32}, "mix": {"image_text": 1.0},
                        "fraction": {"image_text": 1.0}, "passes": {"image_text": 0.1},
                        "lr": {"peak": 1e-3, "warmup_steps": 4, "scheduler": "cosine", "min_lr_ratio": 0.1, "end": end}}]}
    console = Console(record=True, width=200)
    print_plan(plan, console)
    assert f"0.001 (4 warmup, cosine to {end:.3g})" in console.export_text()
