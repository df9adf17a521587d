"""Write the trained model (full or merged) or its PEFT adapter, plus the processor, for from_pretrained."""

from __future__ import annotations

import os
import shutil


def export_model(model, processor, out_dir: str, mode: str = "auto") -> str:
    """Save to `out_dir` atomically; returns what was written: 'model', 'merged' or 'adapter'."""
    is_peft = hasattr(model, "peft_config")
    kind = "adapter" if is_peft and mode in ("auto", "adapter") else ("merged" if is_peft else "model")
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if kind == "merged":
        model = model.merge_and_unload()
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return kind
