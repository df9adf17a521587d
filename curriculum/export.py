"""Write the trained model (full or merged) or its PEFT adapter, plus the processor, for from_pretrained."""

from __future__ import annotations

import os
import shutil


_LOAD_MODEL = """```python
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained("<this folder>")
processor = AutoProcessor.from_pretrained("<this folder>")
```
"""
_README = {
    "model": "# Fine-tuned with curriculum\n\nThe full model and its processor.\n\n" + _LOAD_MODEL,
    "merged": "# Fine-tuned with curriculum\n\nThe model with its LoRA adapter merged in, and its processor.\n\n" + _LOAD_MODEL,
    "adapter": """# Fine-tuned with curriculum

A LoRA adapter (and any fully trained modules) for the base model named in `adapter_config.json`,
with the processor.

```python
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor
base = AutoModelForImageTextToText.from_pretrained("<base model>")
model = PeftModel.from_pretrained(base, "<this folder>")
processor = AutoProcessor.from_pretrained("<this folder>")
```
""",
}


def export_model(model, processor, out_dir: str, mode: str = "auto", state_dict: dict | None = None) -> str:
    """Save to `out_dir` atomically; returns what was written: 'model', 'merged' or 'adapter'.

    `state_dict` is the model's full state when its own parameters are sharded (not with 'merged').
    """
    is_peft = hasattr(model, "peft_config")
    kind = "adapter" if is_peft and mode in ("auto", "adapter") else ("merged" if is_peft else "model")
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if kind == "merged":
        model = model.merge_and_unload()
    model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
    processor.save_pretrained(tmp)
    # In place of PEFT's model-card template: what this folder is and how to load it.
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
        f.write(_README[kind])
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return kind
