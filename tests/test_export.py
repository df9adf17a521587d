"""curriculum-export: exports from a finished run's checkpoints, as often as wanted, that load with transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from conftest import run_cli


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, cache_dir, shapes):
    """A finished LoRA run (language LoRA, projector full) that exported nothing."""
    run = tmp_path_factory.mktemp("lora")
    run_cli("train", "model/peft=lora", "model.trainable.language=lora", "schedule=single", "schedule.stages.train.steps=3",
            "data.micro_batch_size=4", "data.num_workers=0", "trainer.val_every_n_steps=0", "export.enabled=false",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run}")
    return run


@pytest.mark.slow
def test_a_finished_lora_run_exports_an_adapter_and_then_a_merged_model(lora_run, tmp_path, llava_path):
    from peft import PeftModel

    proc = run_cli("export", str(lora_run))
    assert proc.stdout.strip() == f"exported adapter to {lora_run / 'export'}"
    adapter = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(llava_path), str(lora_run / "export"))
    merged_dir = tmp_path / "merged"
    proc = run_cli("export", str(lora_run), "export.mode=merged", f"export.dir={merged_dir}")
    assert proc.stdout.strip() == f"exported merged to {merged_dir}"
    merged = AutoModelForImageTextToText.from_pretrained(str(merged_dir)).state_dict()
    expected = adapter.merge_and_unload().state_dict()
    assert merged.keys() == expected.keys()
    for k in merged:
        torch.testing.assert_close(merged[k], expected[k], msg=k)
    # The trained weights are the checkpoint's: the projector moved away from the base model's.
    base = AutoModelForImageTextToText.from_pretrained(llava_path).state_dict()
    assert any(not torch.equal(base[k], merged[k]) for k in base if "multi_modal_projector" in k)
    # Again, from the stage checkpoint, into its own folder: any number of times.
    run_cli("export", str(lora_run), "--checkpoint", "stage-train.ckpt", "export.mode=merged", f"export.dir={tmp_path / 'again'}")
    again = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "again")).state_dict()
    assert all(torch.equal(again[k], merged[k]) for k in merged)


def test_export_refuses_keys_the_checkpoint_was_trained_with_and_unknown_checkpoints(lora_run):
    proc = run_cli("export", str(lora_run), "model.peft.r=16", check=False)
    assert proc.returncode == 1 and "error: curriculum-export: `model.peft.r=16` is not allowed: only export.mode and export.dir" in proc.stderr
    proc = run_cli("export", str(lora_run), "--checkpoint", "nope.ckpt", check=False)
    assert proc.returncode == 1 and "--checkpoint nope.ckpt: no such checkpoint" in proc.stderr and "last.ckpt" in proc.stderr


def test_a_checkpoint_whose_keys_the_model_lacks_is_refused_not_dropped(lora_run, tmp_path):
    """Keys renamed by another transformers version would load nothing and export the base model: refused, naming them."""
    ckpt = torch.load(lora_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ckpt["state_dict"] = {k.replace("multi_modal_projector", "mm_projector"): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "renamed.ckpt")
    proc = run_cli("export", str(lora_run), "--checkpoint", str(tmp_path / "renamed.ckpt"), f"export.dir={tmp_path / 'out'}", check=False)
    assert proc.returncode == 1 and "holds 4 weight(s) this model does not have (" in proc.stderr and "mm_projector" in proc.stderr
    assert not (tmp_path / "out").exists()
