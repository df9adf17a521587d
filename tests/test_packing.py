"""data.packing: the micro-batch's samples end to end, positions restarting per sample; the same step as the padded one."""

from __future__ import annotations

import csv
import os

import pytest
import torch

from conftest import compiled, png, record, run_cli
from families import FAMILIES
from curriculum.config import ConfigError, Mode, ModelConfig, OptimConfig, TrainableConfig
from curriculum.data.collate import Collator
from curriculum.data.packing import bins, pack
from curriculum.data.template import IGNORE_INDEX
from curriculum.model.load import load_model, load_processor
from curriculum.model.module import VLMModule
from curriculum.run.recipe import refuse_packing

GROUPS = ["image_text", "text_only"]
# Families that cannot isolate samples in a packed row (the README's family table says why); every other one packs.
REFUSED = {f.name for f in FAMILIES if not f.packs}
FULL = TrainableConfig(vision=Mode.full, projector=Mode.full, language=Mode.full)


def padded(lengths: list[int], width: int) -> dict:
    """A right-padded batch: sample i's tokens are 100*i + position, every token supervised."""
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = 100 * i + torch.arange(n)
        mask[i, :n] = 1
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, IGNORE_INDEX))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "group_ids": torch.tensor([0, 1, 0][: len(lengths)])}


def test_samples_are_laid_end_to_end_in_draw_order_with_positions_restarting():
    out = pack(padded([3, 2, 4], 5), width=6, pad_id=-1)
    assert bins([3, 2, 4], 6) == [[0, 1], [2]]
    # Rows are as wide as the longest; the shorter one's tail is padding (a sequence of its own).
    assert out["input_ids"].tolist() == [[0, 1, 2, 100, 101], [200, 201, 202, 203, -1]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert out["sample_index"].tolist() == [[0, 0, 0, 1, 1], [2, 2, 2, 2, -1]]
    # A sample's first token is never a target (nothing of its own precedes it); the tail is never one.
    assert out["labels"].tolist() == [[-100, 1, 2, -100, 101], [-100, 201, 202, 203, -100]]
    assert "attention_mask" not in out and out["group_ids"].tolist() == [0, 1, 0]


def test_a_batch_with_attention_of_its_own_is_not_packed():
    batch = {**padded([2, 2], 2), "cross_attention_mask": torch.zeros(2, 2, 1, 1, dtype=torch.long)}
    with pytest.raises(ValueError, match="cannot pack a batch with cross_attention_mask"):
        pack(batch, width=8, pad_id=0)


def module_and_collators(path, attn: str | None = None):
    processor = load_processor(path)
    model = load_model(ModelConfig(name_or_path=path, trainable=FULL, attn_implementation=attn), path)
    module = VLMModule(model, compiled(), OptimConfig())
    module.enter_stage(module.schedule.stage_at(0))
    return module, Collator(processor, GROUPS, 512, "error"), Collator(processor, GROUPS, 512, "error", packing=True)


def step(module, batch) -> tuple[float, torch.Tensor, dict]:
    module.model.zero_grad(set_to_none=True)
    loss, sums = module.group_losses(batch)
    loss.backward()
    return loss.item(), sums, {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}


def assert_same_step(module, want: dict, got: dict) -> None:
    """Loss, per-group sums and every gradient of the packed batch are the padded batch's."""
    loss_a, sums_a, grads_a = step(module, want)
    loss_b, sums_b, grads_b = step(module, got)
    assert sums_b[:, 1].tolist() == sums_a[:, 1].tolist()
    assert loss_b == pytest.approx(loss_a, rel=1e-4) and torch.allclose(sums_b[:, 0], sums_a[:, 0], rtol=1e-4)
    assert grads_a.keys() == grads_b.keys()
    for name, g in grads_a.items():
        assert torch.allclose(grads_b[name], g, rtol=1e-3, atol=1e-5), name


def mixed_records(tmp_path) -> list[dict]:
    return [
        record("i", "<image>\nWhat colour is it?", "Red, and a little darker at the edges.", [png(tmp_path / "a.png")]),
        record("t", "How many sides has a square?", "Four."),
        record("j", "<image>\nShape?", "A circle.", [png(tmp_path / "b.png", (0, 0, 255))]),
    ]


def test_a_packed_step_equals_the_padded_step_or_is_refused_in_one_sentence(arch, tmp_path):
    """Loss, per-group sums and every gradient of a mixed micro-batch agree; families that cannot pack say why."""
    module, padded_collate, packed_collate = module_and_collators(arch)
    if os.path.basename(arch) in REFUSED:
        with pytest.raises(ConfigError) as e:
            refuse_packing(module.model, padded_collate.processor, padded_collate.max_length)
        assert str(e.value).startswith("data.packing=true is not supported for this model: ") and str(e.value).count(". ") == 0
        return
    refuse_packing(module.model, padded_collate.processor, padded_collate.max_length)
    chunk = getattr(module.model.config.get_text_config(), "attention_chunk_size", None)
    if chunk:  # Llama 4: rows longer than the attention chunk would split samples at the row's chunk boundaries
        with pytest.raises(ConfigError, match=f"its attention is chunked every {chunk} tokens of a row, fewer than data.max_length={chunk + 1}"):
            refuse_packing(module.model, padded_collate.processor, chunk + 1)
    records = mixed_records(tmp_path)
    want, got = padded_collate(records), packed_collate(records)
    assert got["input_ids"].shape[0] == 1 and (got["sample_index"] >= 0).all()  # one row, no padding at all
    assert_same_step(module, want, got)


def test_eager_attention_and_rows_split_at_max_length_pack_exactly(llava_path, tmp_path):
    """transformers builds the packed mask for eager attention too; a micro-batch over max_length spreads over rows."""
    module, padded_collate, _ = module_and_collators(llava_path, attn="eager")
    records = mixed_records(tmp_path)
    want = padded_collate(records)
    width = int(want["attention_mask"].sum(1).max()) + 1  # the longest sample fits; two samples do not
    packed = Collator(padded_collate.processor, GROUPS, width, "error", packing=True)
    got = packed(records)
    assert got["input_ids"].shape[0] > 1 and got["input_ids"].shape[1] <= width
    assert_same_step(module, want, got)


def rows(run) -> list[dict]:
    with open(os.path.join(run, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


ARGS = ["schedule.stages.align.steps=2", "schedule.stages.blend.steps=3", "data.micro_batch_size=4", "trainer.accumulate_grad_batches=2",
        "trainer.val_every_n_steps=2", "checkpoint.every_n_steps=2", "data.num_workers=0", "export.enabled=false",
        "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_a_packed_run_trains_the_padded_runs_steps_without_padding_and_resumes_exactly(tmp_path, cache_dir, shapes):
    padded_run, packed_run, resumed = tmp_path / "padded", tmp_path / "packed", tmp_path / "resumed"
    run_cli("train", *ARGS, f"hydra.run.dir={padded_run}")
    run_cli("train", *ARGS, "data.packing=true", f"hydra.run.dir={packed_run}")
    run_cli("train", *ARGS, "data.packing=true", "trainer.max_steps=2", f"hydra.run.dir={resumed}")
    run_cli("train", f"resume={resumed}", "trainer.max_steps=null")
    want, got, again = rows(padded_run), rows(packed_run), rows(resumed)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(want, got):
        for key, value in a.items():
            if key.startswith(("samples/", "trained/", "train/tokens_", "mix/", "stage")):
                assert b[key] == value, key  # the same samples, the same supervised tokens
            elif key.startswith(("train/loss", "val/loss")) and value:
                assert float(b[key]) == pytest.approx(float(value), rel=2e-3), key
    train = [r for r in got if r["perf/padding_fraction"]]
    assert max(float(r["perf/padding_fraction"]) for r in train) < min(float(r["perf/padding_fraction"]) for r in want if r["perf/padding_fraction"])
    keep = [k for k in got[0] if not k.startswith("perf/")]
    assert [{k: r[k] for k in keep} for r in again] == [{k: r[k] for k in keep} for r in got]
