"""Stages do what their config says: frozen is frozen, the update does not depend on how the global
batch is split, steps without images leave the vision path alone, skipped samples are replaced."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from conftest import png
from curriculum.config import (
    CheckpointConfig, DataConfig, ExportConfig, Mode, OnInvalid, PathsConfig, RunConfig, ScheduleConfig, StageConfig, StageTrainable, TrainerConfig,
)
from curriculum.run.datamodule import _RankSlices, stratified_order
from curriculum.model.components import component_of
from curriculum.run.recipe import build_parts, build_trainer, train

FROZEN, FULL = StageTrainable(language=Mode.frozen), StageTrainable(language=Mode.full)
HALF = {"image_text": 0.5, "text_only": 0.5}


def skewed_data(tmp_path, n: int = 16, broken: int = 0) -> str:
    """LLaVA JSONL: image-text answers of one word, text-only answers of 10-40 words; `broken` unreadable images."""
    img = png(tmp_path / "ok.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    lines = []
    for k in range(n):
        image = str(bad) if k < broken else img
        lines.append({"id": f"img{k}", "image": image, "conversations": [{"from": "human", "value": f"<image>\nColour {k}?"}, {"from": "gpt", "value": "Red."}]})
        words = " ".join(["word"] * (10 + 2 * k))
        lines.append({"id": f"txt{k}", "conversations": [{"from": "human", "value": f"Say {k}."}, {"from": "gpt", "value": words}]})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def config(data: str, cache_dir: str, stages: dict, **kw) -> RunConfig:
    trainer = kw.pop("trainer", {})
    cfg = RunConfig(
        # Images are only checked for existence when read, so broken ones reach training.
        data=DataConfig(train_files=[data], micro_batch_size=kw.pop("micro", 8), num_workers=0, on_invalid=OnInvalid(kw.pop("on_invalid", "error")),
                        check_images="exists"),
        schedule=ScheduleConfig(stages=stages, batching=kw.pop("batching", "mixed")),
        trainer=TrainerConfig(val_every_n_steps=0, enable_progress_bar=False, **trainer),
        checkpoint=CheckpointConfig(every_n_steps=0),
        export=ExportConfig(enabled=False),
        paths=PathsConfig(cache_dir=cache_dir),
        **kw,
    )
    cfg.check()
    return cfg


def fit(cfg: RunConfig, run_dir, *callbacks):
    pl.seed_everything(cfg.seed)
    parts = build_parts(cfg, str(run_dir))
    trainer = build_trainer(cfg, str(run_dir), parts)
    trainer.callbacks.extend(callbacks)
    trainer.fit(parts.module, datamodule=parts.datamodule)
    return parts


def params_of(module, component: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if component_of(n) == component}


class Probe(pl.Callback):
    """Per optimizer step: the stage, which trained tensors have a gradient, and which components are in train mode."""

    def __init__(self):
        self.steps: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = {c: [] for c in ("vision", "projector", "language")}
        for n, p in pl_module.model.named_parameters():
            grads[component_of(n)].append(p.grad is not None)
        modes = {n: m.training for n, m in pl_module.model.named_modules() if n.endswith(("vision_tower", "language_model", "multi_modal_projector"))}
        self.steps.append({"stage": pl_module.schedule.stage_at(trainer.global_step).name, "grads": grads, "modes": modes})


def language_state(ckpt_path: str) -> dict[int, dict]:
    ckpt = torch.load(ckpt_path, weights_only=False)
    opt = ckpt["optimizer_states"][0]
    ids = [i for g in opt["param_groups"] if g["component"] == "language" for i in g["params"]]
    return {i: opt["state"][i] for i in ids if i in opt["state"]}


def test_a_frozen_stage_computes_no_gradient_and_keeps_optimizer_state(tmp_path, cache_dir, shapes):
    stages = {
        "a": StageConfig(steps=2, mix=HALF, trainable=FROZEN),
        "b": StageConfig(steps=2, mix=HALF, trainable=FULL),
        "c": StageConfig(steps=2, mix=HALF, trainable=FROZEN),
    }
    probe = Probe()
    cfg = config(skewed_data(tmp_path), cache_dir, stages)
    before = {}

    class Weights(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before[trainer.global_step] = params_of(pl_module, "language")

    parts = fit(cfg, tmp_path / "run", probe, Weights())
    assert [s["stage"] for s in probe.steps] == ["a", "a", "b", "b", "c", "c"]
    for s in probe.steps:
        assert not any(s["grads"]["vision"])  # never trained
        assert all(s["grads"]["projector"])
        assert all(s["grads"]["language"]) == (s["stage"] == "b")
        assert not any(s["grads"]["language"]) == (s["stage"] != "b")
        assert s["modes"]["model.vision_tower"] is False
        assert s["modes"]["model.language_model"] == (s["stage"] == "b")
        assert s["modes"]["model.multi_modal_projector"] is True
    ckpts = tmp_path / "run" / "checkpoints"
    # AdamW has no state for the language model after `a`, and `c` leaves the state `b` built byte-identical.
    assert language_state(ckpts / "stage-a.ckpt") == {}
    b, c = language_state(ckpts / "stage-b.ckpt"), language_state(ckpts / "stage-c.ckpt")
    assert b and b.keys() == c.keys()
    for i in b:
        assert int(b[i]["step"]) == int(c[i]["step"]) == 2
        assert torch.equal(b[i]["exp_avg"], c[i]["exp_avg"]) and torch.equal(b[i]["exp_avg_sq"], c[i]["exp_avg_sq"])
    end = params_of(parts.module, "language")
    assert all(torch.equal(before[0][n], before[2][n]) for n in end)  # `a` leaves the weights alone
    assert all(torch.equal(before[4][n], end[n]) for n in end)  # and so does `c`
    assert any(not torch.equal(before[2][n], before[4][n]) for n in end)  # `b` trains them


def test_the_update_does_not_depend_on_how_the_global_batch_is_split(tmp_path, cache_dir, shapes):
    data = skewed_data(tmp_path)
    stages = {"a": StageConfig(steps=1, mix=HALF, trainable=FROZEN), "b": StageConfig(steps=2, mix=HALF)}
    trained = []
    for micro, accumulate in ((8, 1), (4, 2), (2, 4)):
        cfg = config(data, cache_dir, stages, micro=micro, trainer={"accumulate_grad_batches": accumulate})
        parts = fit(cfg, tmp_path / f"run{micro}", )
        trained.append({n: p.detach().clone() for n, p in parts.module.model.named_parameters()})
    for other in trained[1:]:
        for n, p in trained[0].items():
            torch.testing.assert_close(other[n], p, rtol=1e-4, atol=1e-6, msg=n)


def test_a_step_without_images_leaves_the_vision_path_untouched(tmp_path, cache_dir, shapes):
    # Grouped batching: every optimizer step is one group, so half the steps hold no image.
    stages = {"a": StageConfig(steps=6, mix=HALF)}
    cfg = config(skewed_data(tmp_path), cache_dir, stages, batching="grouped")
    seen = []

    class Steps(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(("pixel_values" in batch, params_of(pl_module, "projector"), params_of(pl_module, "language")))

    parts = fit(cfg, tmp_path / "run", Steps())
    seen.append((None, params_of(parts.module, "projector"), params_of(parts.module, "language")))
    kinds = [has_image for has_image, *_ in seen[:-1]]
    assert set(kinds) == {True, False}  # some steps hold images, some do not
    for (has_image, proj, lang), (_, proj_next, lang_next) in zip(seen, seen[1:]):
        assert all(torch.equal(proj[n], proj_next[n]) for n in proj) == (not has_image)
        assert any(not torch.equal(lang[n], lang_next[n]) for n in lang)


def test_skipped_samples_are_replaced_so_every_step_trains_its_plan(tmp_path, cache_dir, shapes):
    stages = {"a": StageConfig(steps=6, mix={"image_text": 0.75, "text_only": 0.25})}
    cfg = config(skewed_data(tmp_path, broken=3), cache_dir, stages, on_invalid="skip")
    run = tmp_path / "run"
    train(cfg, str(run))
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r["train/loss"]]
    plan = json.load(open(run / "plan.json"))["stages"][0]["samples"]
    last = rows[-1]
    assert float(last["train/skipped"]) > 0
    for g, n in plan.items():
        assert float(last[f"samples/{g}"]) == float(last[f"trained/{g}"]) == n
    for r in rows:  # every step trains its full batch
        assert float(r["train/tokens_image_text"]) > 0
    skipped = [json.loads(line) for line in open(run / "skipped.jsonl")]
    assert skipped and all(s["id"] in ("img0", "img1", "img2") and s["replaced_by"] == "img3" for s in skipped)


def test_a_group_without_usable_samples_is_said_and_counted(tmp_path, cache_dir, shapes, caplog):
    stages = {"a": StageConfig(steps=2, mix=HALF)}
    cfg = config(skewed_data(tmp_path, n=4, broken=4), cache_dir, stages, on_invalid="skip")
    run = tmp_path / "run"
    train(cfg, str(run))
    last = [r for r in csv.DictReader(open(run / "metrics.csv")) if r["train/loss"]][-1]
    assert float(last["trained/image_text"]) == 0 and float(last["samples/image_text"]) == 8
    assert float(last["trained/text_only"]) == 8
    assert any("group image_text has no usable sample left" in r.getMessage() for r in caplog.records)


def test_validation_order_holds_every_group_in_proportion():
    groups = np.array(["image_text"] * 96 + ["text_only"] * 32)
    order = stratified_order(groups)
    assert sorted(order.tolist()) == list(range(128))
    for k in range(1, 129):
        share = (groups[order[:k]] == "text_only").sum()
        assert abs(share - k * 32 / 128) <= 1
    # limit_val_batches=1 on each of 2 ranks: both groups appear, 3:1.
    first = [b for r in (0, 1) for b in _RankSlices(order, 8, r, 2).batches[:1]]
    picked = groups[np.concatenate(first)]
    assert (picked == "image_text").sum() == 12 and (picked == "text_only").sum() == 4


def test_llava_style_schedule_warms_up_each_stage_and_partial_validation_sees_every_group(tmp_path, cache_dir, shapes):
    from hydra import compose, initialize_config_dir

    from curriculum.config import validate

    with initialize_config_dir(config_dir=os.path.join(os.path.dirname(__file__), "..", "conf"), version_base=None):
        raw = compose("config", overrides=["schedule=llava", "schedule.stages.pretrain.steps=4", "schedule.stages.finetune.steps=4",
                                         "schedule.stages.pretrain.warmup_fraction=0.5", "schedule.stages.finetune.warmup_fraction=0.5"])
    cfg = validate(raw)
    cfg.data.num_workers = 0
    cfg.trainer.val_every_n_steps = 0  # validates once, at the end
    cfg.trainer.limit_val_batches = 1  # one batch of 16 out of 64 + 64 validation records
    cfg.trainer.enable_progress_bar = False
    cfg.export.enabled = False
    cfg.paths.cache_dir = cache_dir
    run = tmp_path / "run"
    train(cfg, str(run))
    every = list(csv.DictReader(open(run / "metrics.csv")))
    val = [r for r in every if r["val/loss"]]
    assert len(val) == 1 and val[0]["val/loss_image_text"] and val[0]["val/loss_text_only"]
    rows = [r for r in every if r["train/loss"]]
    projector = [float(r["lr/projector"]) for r in rows]
    language = [float(r["lr/language"]) for r in rows]
    assert language[:4] == [0.0] * 4 and projector[0] < projector[1] and projector[1] == pytest.approx(1e-3)
    assert projector[4] == language[4] and language[4] < language[5] and language[5] == pytest.approx(2e-5)
