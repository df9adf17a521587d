"""Built-in models: a `-pretrained` variant whose language model was trained on text first."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from curriculum.config import ConfigError
from curriculum.data.builtin import iter_texts, text_pretraining_records
from curriculum.data.records import load_or_build
from curriculum.run.evaluate import Evaluator
from curriculum.model import builtin as model_builtin
from curriculum.model.builtin import builtin_names, ensure_builtin
from curriculum.model.components import component_of
from curriculum.model.load import load_processor, resolve_model_path


def test_text_pretraining_records_are_text_only_and_their_own_split():
    records = text_pretraining_records(50)
    assert len(records) == 50 and records == text_pretraining_records(50)
    assert all(r["group"] == "text_only" and r["images"] == [] and r["id"].startswith("shapes-pretrain-txt-") for r in records)
    assert {m["role"] for r in records for m in r["messages"]} == {"user", "assistant"}


def test_names_and_an_unknown_one(tmp_path, shapes):
    assert builtin_names() == ["tiny-idefics3", "tiny-idefics3-pretrained", "tiny-llava", "tiny-llava-pretrained"]
    with pytest.raises(ConfigError, match="builtin:tiny-llava-pretrained"):
        ensure_builtin("tiny-gpt", str(tmp_path), lambda: iter_texts(shapes), lambda: [])


def test_the_pretrained_variant_changes_only_the_language_model_and_learns_the_text_tasks(tmp_path, cache_dir, shapes, monkeypatch):
    monkeypatch.setattr(model_builtin, "PRETRAIN_STEPS", 60)  # the real build runs 600 steps (under two minutes)
    path = ensure_builtin("tiny-llava-pretrained", str(tmp_path), lambda: iter_texts(shapes), lambda: text_pretraining_records(2000))
    assert path.endswith("tiny-llava-pretrained-v1")
    base_path = resolve_model_path("builtin:tiny-llava", cache_dir)
    pretrained, base = (AutoModelForImageTextToText.from_pretrained(p) for p in (path, base_path))
    changed = {component_of(n) for (n, a), b in zip(pretrained.state_dict().items(), base.state_dict().values()) if not torch.equal(a, b)}
    assert changed == {"language"}
    val, _ = load_or_build([shapes.val_file], cache_dir=cache_dir)
    text = [val[i] for i in range(len(val)) if val[i]["group"] == "text_only"][:16]
    loss = {name: Evaluator(m, load_processor(p), ["text_only"], 512).losses(text)["text_only"] for name, m, p in
            (("pretrained", pretrained, path), ("base", base, base_path))}
    per_token = {name: s / n for name, (s, n) in loss.items()}
    assert per_token["pretrained"] < per_token["base"] - 2.0, per_token
