"""Per-group losses, trainability (unused parameters, LoRA), the LR schedule per stage, supervised positions only at the head."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import compiled, grads_of, module_for, one_stage, png, record
from curriculum.config import LoraConfig, Mode, OptimConfig, ScheduleConfig, StageConfig, StageTrainable, TrainableConfig
from curriculum.model.components import component_of
from curriculum.model.module import VLMModule
from curriculum.model.trainability import freeze_unused_parameters


def test_group_loss_sums_match_the_token_mean(llava_path, tmp_path):
    module, collate = module_for(llava_path)
    batch = collate([record("i", "<image>\nQ?", "Red.", [png(tmp_path / "a.png")]), record("t", "Q?", "Four sides.")])
    loss, sums = module.group_losses(batch)
    assert sums[:, 1].tolist() == [float((batch["labels"][r, 1:] != -100).sum()) for r in range(2)]
    # The loss is the token sum; the optimizer step divides by the global batch's tokens.
    assert loss.item() == pytest.approx(sums[:, 0].sum().item(), rel=1e-5)
    hf = module.model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}, labels=batch["labels"])
    assert (loss / sums[:, 1].sum()).item() == pytest.approx(hf.loss.item(), rel=1e-4)


def test_freeze_unused_parameters_keeps_only_reachable_ones(llava_path, tmp_path):
    module, collate = module_for(llava_path, TrainableConfig(vision=Mode.full, projector=Mode.full, language=Mode.full))
    unused = freeze_unused_parameters(module, collate([record("i", "<image>\nQ?", "A.", [png(tmp_path / "a.png")])]))
    # LLaVA reads the vision tower's last hidden state, so CLIP's final layer norm never gets a gradient.
    assert unused and all("post_layernorm" in n for n in unused)
    assert all(p.grad is None for p in module.model.parameters())


def test_lora_trains_only_adapters_in_lora_components(llava_path):
    module, _ = module_for(
        llava_path, TrainableConfig(vision=Mode.frozen, projector=Mode.full, language=Mode.lora), LoraConfig(r=4, alpha=8)
    )
    trained = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert any("lora_" in n and component_of(n) == "language" for n in trained)
    assert not any(component_of(n) == "vision" for n in trained)
    assert all("lora_" in n for n in trained if component_of(n) == "language")
    assert any(component_of(n) == "projector" for n in trained)


def test_lr_factor_warms_up_then_decays_to_the_floor():
    optim = OptimConfig(warmup_steps=4, min_lr_ratio=0.1)
    module = VLMModule(torch.nn.Linear(2, 2), compiled(one_stage(20), optim=optim), optim)
    assert [module.lr_factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert module.lr_factor(4) == pytest.approx(1.0)
    assert module.lr_factor(20) == pytest.approx(0.1)
    assert 0.1 < module.lr_factor(12) < 1.0 and not math.isnan(module.lr_factor(100))


def test_a_stage_shorter_than_its_warmup_warms_up_over_half_of_it_and_decays():
    """experiment=quick's align has 8 steps and optim's warmup 10: all warmup would end it at its peak LR."""
    optim = OptimConfig(warmup_steps=10, min_lr_ratio=0.1)
    module = VLMModule(torch.nn.Linear(2, 2), compiled(one_stage(8), optim=optim), optim)
    assert [module.lr_factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert 0.1 < module.lr_factor(7) < module.lr_factor(5) < 1.0


def test_each_stage_runs_its_own_lr_schedule():
    stages = {
        # LLaVA-style: the projector alone at 1e-3, then everything at 2e-5, each with its own warmup.
        "align": StageConfig(steps=10, mix={"image_text": 1.0}, lr=1e-3, warmup_fraction=0.2, trainable=StageTrainable(language=Mode.frozen)),
        "tune": StageConfig(steps=8, mix={"image_text": 1.0}, lr=2e-5, warmup_steps=2, scheduler="linear", min_lr_ratio=0.0),
        "polish": StageConfig(steps=4, mix={"image_text": 1.0, "text_only": 0}, scheduler="constant", lr_scale=0.5),
    }
    optim = OptimConfig(lr=1e-4, warmup_steps=1)
    module = VLMModule(torch.nn.Linear(2, 2), compiled(ScheduleConfig(stages=stages), optim=optim), optim)
    lr = lambda step, comp=None: optim.lr * module.lr_factor(step, comp)  # noqa: E731
    assert [lr(s) for s in (0, 1)] == pytest.approx([5e-4, 1e-3])  # 2 warmup steps (20% of 10)
    assert lr(9) < lr(2) and lr(9) > 0.1 * 1e-3
    assert lr(0, "language") == 0.0 and lr(10, "language") == pytest.approx(1e-5)  # frozen in align, warms up in tune
    assert [lr(s) for s in (10, 11, 12)] == pytest.approx([1e-5, 2e-5, 2e-5])
    assert lr(17) == pytest.approx(2e-5 * 1 / 6)  # linear to 0 at the stage's end
    assert [lr(s) for s in (18, 19, 21)] == pytest.approx([1e-4 * 0.5] * 3)  # optim's warmup of 1 step, then constant x lr_scale


def test_only_supervised_positions_reach_the_lm_head(arch, tmp_path):
    import torch.nn.functional as F

    from curriculum.model.loss import supervised_token_losses

    module, collate = module_for(arch)
    batch = collate([record("i", "<image>\nQ?", "Red and some more words.", [png(tmp_path / "a.png")]), record("t", "Q?", "Four sides.")])
    seen = []
    handle = module.model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(out.shape))
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "group_ids", "sample_ids", "skipped", "drawn_group_ids")}
    token_loss, rows = supervised_token_losses(module.model, inputs, batch["labels"], chunk=3)
    handle.remove()
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [torch.Size([supervised, module.model.get_output_embeddings().out_features])]
    # The same per-token losses as cross-entropy over the full logits.
    logits = module.model(**inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    full = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none").view(labels.shape)
    torch.testing.assert_close(token_loss, full[labels != -100])
    assert rows.tolist() == (labels != -100).nonzero()[:, 0].tolist()
    token_loss.sum().backward()
    assert all(g is not None for g in grads_of(module, "language"))
