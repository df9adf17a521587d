"""The default curriculum end to end: align -> blend, stage checkpoints, realised counts, sweeps."""

from __future__ import annotations

import csv
import os

import pytest
import torch

from conftest import REPO, read_json, run_cli
from curriculum.model.components import component_of

SHORT = ["schedule.stages.align.steps=4", "schedule.stages.blend.steps=6", "data.num_workers=0", "trainer.val_every_n_steps=4"]


@pytest.mark.slow
def test_default_curriculum_runs_align_then_blend(cache_dir, shapes, tmp_path):
    run_cli("train", *SHORT, f"hydra.run.dir={tmp_path}")
    every = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    rows = [r for r in every if r["train/loss"]]
    assert [r["stage"] for r in rows] == ["align"] * 4 + ["blend"] * 6
    # Throughput of every optimizer step: all real tokens, supervised ones (a subset), samples.
    for r in rows:
        assert float(r["perf/step_s"]) > 0 and float(r["perf/samples_per_s"]) > 0
        assert float(r["perf/tokens_per_s"]) > float(r["perf/supervised_tokens_per_s"]) > 0
    # Every 4 steps, and once more at the end of the run.
    assert [int(r["step"]) for r in every if r["val/loss"]] == [3, 7, 9]
    assert {float(r["mix/text_only"]) for r in rows[:4]} == {0.0}
    assert float(rows[-1]["mix/text_only"]) == pytest.approx(0.3)
    assert all(float(r["lr/language"]) == 0.0 for r in rows[:4]) and all(float(r["lr/language"]) > 0 for r in rows[4:])
    plan = read_json(tmp_path / "plan.json")
    assert [s["name"] for s in plan["stages"]] == ["align", "blend"]
    totals = {g: sum(s["samples"][g] for s in plan["stages"]) for g in ("image_text", "text_only")}
    assert {g: int(float(rows[-1][f"samples/{g}"])) for g in totals} == totals
    assert int(float(rows[3]["samples/text_only"])) == 0
    assert sum(totals.values()) == 10 * plan["global_batch"]
    assert (tmp_path / "plan.png").stat().st_size > 0

    # align froze the language model: its weights at the align checkpoint are the initial ones.
    initial = torch.load(tmp_path / "checkpoints" / "stage-align.ckpt", weights_only=False)["state_dict"]
    final = torch.load(tmp_path / "checkpoints" / "stage-blend.ckpt", weights_only=False)["state_dict"]
    from curriculum.model.load import resolve_model_path
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(resolve_model_path("builtin:tiny-llava", cache_dir)).state_dict()
    for name, value in base.items():
        key = f"model.{name}"
        comp = component_of(name)
        if comp == "language":
            assert torch.equal(initial[key], value), name
        if comp == "vision":  # trained by no stage: not in the (lean) checkpoints at all
            assert key not in final and key not in initial, name
    assert any(not torch.equal(initial[f"model.{n}"], v) for n, v in base.items() if component_of(n) == "projector")
    assert any(not torch.equal(final[f"model.{n}"], v) for n, v in base.items() if component_of(n) == "language")


@pytest.mark.slow
def test_sweep_of_the_blend_fraction_gives_exact_plans(cache_dir, shapes, tmp_path):
    run_cli(
        "train", "-m", "schedule.stages.blend.mix.text_only=0.1,0.3,0.5", "schedule.stages.align.steps=2",
        "schedule.stages.blend.steps=3", "data.num_workers=0", "trainer.val_every_n_steps=0", "export.enabled=false",
        f"hydra.sweep.dir={tmp_path}",
    )
    for job, value in enumerate((0.1, 0.3, 0.5)):
        blend = read_json(tmp_path / str(job) / "plan.json")["stages"][1]
        assert blend["mix"] == {"image_text": pytest.approx(1 - value, abs=1e-12), "text_only": value}
        rows = [r for r in csv.DictReader(open(tmp_path / str(job) / "metrics.csv")) if r["train/loss"]]
        assert float(rows[-1]["mix/text_only"]) == pytest.approx(value)


@pytest.mark.parametrize(
    "name, stages",
    [
        ("align_blend", {"align": (40, {"image_text": 320, "text_only": 0}), "blend": (80, {"image_text": 471, "text_only": 169})}),
        ("mixed", {"train": (120, {"image_text": 791, "text_only": 169})}),
        ("image_only", {"align": (40, {"image_text": 320, "text_only": 0}), "tune": (80, {"image_text": 640, "text_only": 0})}),
        ("text_first", {"text": (21, {"image_text": 0, "text_only": 168}), "align": (40, {"image_text": 320, "text_only": 0}),
                        "tune": (59, {"image_text": 472, "text_only": 0})}),
    ],
)
def test_the_canonical_schedules_compose_and_plan_their_documented_counts(name, stages, cache_dir, shapes):
    from hydra import compose, initialize_config_dir

    from curriculum.config import validate
    from curriculum.data.sources import load_data
    from curriculum.schedule.plan import build_plan
    from curriculum.schedule.stream import build_stream

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base=None):
        cfg = validate(compose("config", overrides=[f"experiment=curriculum/{name}", "seed=3"]))
    cfg.paths.cache_dir = cache_dir
    bundle = load_data(cfg)
    plan = build_plan(bundle, *build_stream(cfg, bundle))
    assert {s["name"]: (s["steps"], s["samples"]) for s in plan["stages"]} == stages
    assert sum(s["steps"] for s in plan["stages"]) == 120 and cfg.seed == 3
    if name == "text_first":
        assert plan["stages"][0]["trainable"] == {"vision": "frozen", "projector": "frozen", "language": "full"}
