"""Write the trained model (full or merged) or its PEFT adapter, plus the processor, for from_pretrained."""

from __future__ import annotations

import os
import shutil

import torch


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


def export_dir(cfg, run_dir: str) -> str:
    """Where a run's export goes: export.dir, else <run>/export."""
    return os.path.abspath(os.path.expanduser(cfg.export.dir)) if cfg.export.dir else os.path.join(run_dir, "export")


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: str) -> None:
    """Load a run checkpoint's trained weights (a file, or a sharded folder read on one process) into `model`.

    Checkpoints hold the weights some stage trains; the rest come from the base model, which must be
    the one the run was trained on (the checkpoint's identity of those weights says).
    """
    from curriculum.config import ConfigError
    from curriculum.model.checkpoint_state import weights_identity
    from curriculum.run.checkpoints import checkpoint_meta, is_sharded_checkpoint

    # The LightningModule holds the model as `model`: its checkpoint keys carry that prefix.
    current = {f"model.{k}": v for k, v in model.state_dict(keep_vars=True).items()}
    meta = torch.load(checkpoint_meta(checkpoint), map_location="cpu", weights_only=False)
    if is_sharded_checkpoint(checkpoint):
        import torch.distributed.checkpoint as dcp

        saved = dcp.FileSystemReader(checkpoint).read_metadata().state_dict_metadata
        state = {k: v.detach().clone() for k, v in current.items() if f"state_dict.{k}" in saved}
        dcp.load({"state_dict": state}, checkpoint_id=checkpoint, planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    else:
        state = meta["state_dict"]
    unknown = sorted(k for k in state if k not in current)
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise ConfigError(
            f"{checkpoint}: holds {len(unknown)} weight(s) this model does not have ({shown}); were the model's keys renamed "
            "(another transformers version)? Export with the versions it was trained with."
        )
    absent = [k for k, v in current.items() if isinstance(v, torch.nn.Parameter) and k not in state]
    expected = meta.get("curriculum", {}).get("base_weights")
    if expected is not None and weights_identity(current, absent) != expected:
        raise ConfigError(
            f"{checkpoint}: the base model's weights that the run does not train differ from the ones it was trained with; "
            "export with the run's own model.name_or_path files."
        )
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=False)
