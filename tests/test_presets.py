"""The GPU presets' numerics, checked on CPU (bf16 runs there): fine-tuning updates are not lost to bf16 rounding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import run_cli
from curriculum.config import ModelConfig, TrainableConfig
from curriculum.model.load import load_model

ONE_STEP = [
    "trainer.accelerator=cpu", "model.gradient_checkpointing=false", "schedule=single", "schedule.stages.train.steps=1",
    "optim.lr=2e-5", "optim.warmup_steps=0", "optim.scheduler=constant", "data.num_workers=0", "export.enabled=false",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def fine_tuning_base(tmp_path_factory, llava_path) -> str:
    """The built-in tiny LLaVA with weights ~N(0, 0.02), as a pretrained checkpoint's (norms and biases as they were)."""
    model = AutoModelForImageTextToText.from_pretrained(llava_path)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.02)
    folder = tmp_path_factory.mktemp("base")
    model.save_pretrained(folder)
    AutoProcessor.from_pretrained(llava_path).save_pretrained(folder)
    return str(folder)


def trained_after_one_step(base: str, run, *overrides: str) -> dict[str, torch.Tensor]:
    run_cli("train", *ONE_STEP, f"model.name_or_path={base}", *overrides, f"hydra.run.dir={run}")
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("model."): v.float() for k, v in state.items()}


@pytest.mark.slow
def test_the_gpu_preset_keeps_fine_tuning_updates_that_pure_bf16_loses(fine_tuning_base, tmp_path):
    """One AdamW step at lr 2e-5 moves every weight with a gradient by ~2e-5: in fp32 (the reference) it lands; the
    preset (bf16 autocast over fp32 trained weights) keeps over 99% of those updates, pure bf16 (bf16-true) loses most."""
    base = AutoModelForImageTextToText.from_pretrained(fine_tuning_base).state_dict()
    fp32 = trained_after_one_step(fine_tuning_base, tmp_path / "fp32")
    moved = {k: v != base[k] for k, v in fp32.items()}  # the elements this step updates (a nonzero gradient)
    total = sum(int(m.sum()) for m in moved.values())
    assert total > 100_000

    def unchanged(state, loaded_as=torch.float32):
        """Share of the updated elements still at the base value (as loaded: rounded to bf16 for a bf16 model)."""
        return sum(int((state[k][m] == base[k][m].to(loaded_as).float()).sum()) for k, m in moved.items()) / total

    preset = trained_after_one_step(fine_tuning_base, tmp_path / "gpu", "trainer=gpu")
    pure = trained_after_one_step(fine_tuning_base, tmp_path / "bf16", "trainer=gpu", "trainer.precision=bf16-true",
                                  "model.dtype=bfloat16", "model.frozen_dtype=null")
    assert unchanged(preset) < 0.01
    assert unchanged(pure, torch.bfloat16) > 0.5


def test_frozen_weights_are_stored_in_bf16_and_trained_ones_in_fp32(llava_path):
    model = load_model(ModelConfig(name_or_path=llava_path, dtype="float32", frozen_dtype="bfloat16",
                                   trainable=TrainableConfig()), llava_path)
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
