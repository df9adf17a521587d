"""The console scripts end to end: plan over three formats with broken records, train, export, errors."""

from __future__ import annotations

import csv
import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import png, read_json, run_cli, write_hf_datasets


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory):
    """LLaVA JSON, MiniCPM-V JSONL and messages Parquet files with image-text, text-only and broken records."""
    d = tmp_path_factory.mktemp("data")
    for name in ("a.png", "b.png", "c.png"):
        png(d / name)
    llava = [
        {"id": "l-img", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "l-txt", "conversations": [{"from": "human", "value": "Sides of a square?"}, {"from": "gpt", "value": "Four."}]},
        {"id": "l-noanswer", "conversations": [{"from": "human", "value": "Hello?"}]},
        {"id": "l-img2", "image": "b.png", "conversations": [{"from": "human", "value": "What is shown?"}, {"from": "gpt", "value": "A square."}]},
    ]
    (d / "llava.json").write_text(json.dumps(llava))
    minicpm = [
        json.dumps({"id": "m-multi", "image": {"<image_00>": "a.png", "<image_01>": "c.png"}, "conversations": [{"role": "user", "content": "<image_01> vs <image_00>?"}, {"role": "assistant", "content": "Same."}]}),
        json.dumps({"id": "m-txt", "conversations": [{"role": "user", "content": "Red plus blue?"}, {"role": "assistant", "content": "Purple."}]}),
        '{"id": "m-broken", "conversations": [',
        json.dumps({"id": "m-missing", "image": "nope.png", "conversations": [{"role": "user", "content": "<image>\nQ?"}, {"role": "assistant", "content": "A."}]}),
        json.dumps({"id": "m-role", "conversations": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "A."}]}),
    ]
    (d / "minicpm.jsonl").write_text("\n".join(minicpm) + "\n")
    rows = [
        {"id": "s-img", "messages": [{"role": "user", "content": "<image>How many?"}, {"role": "assistant", "content": "One."}], "images": [str(d / "b.png")]},
        {"id": "s-txt", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."}], "images": []},
        {"id": "s-count", "messages": [{"role": "user", "content": "<image><image>Q?"}, {"role": "assistant", "content": "A."}], "images": [str(d / "a.png")]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), d / "swift.parquet")
    val = [{"id": "v-img", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]},
           {"id": "v-txt", "conversations": [{"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "2."}]}]
    (d / "val.json").write_text(json.dumps(val))
    files = [str(d / "llava.json"), str(d / "minicpm.jsonl"), str(d / "swift.parquet")]
    return d, files, str(d / "val.json")


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    """Hub repo copy, LLaVA-column Parquet and save_to_disk folder written by `datasets` (see conftest)."""
    return write_hf_datasets(str(tmp_path_factory.mktemp("hf")))


def data_overrides(files, val):
    return [f"data.train_files=[{','.join(files)}]", f"data.val_files=[{val}]"]


def test_plan_counts_every_group_and_names_every_broken_record(mixed_files, cache_dir, tmp_path):
    d, files, val = mixed_files
    proc = run_cli("plan", *data_overrides(files, val), f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 1
    err = proc.stderr
    assert "5 invalid record(s)" in err
    assert "llava.json record 2 (id l-noanswer): no assistant turn" in err
    assert "minicpm.jsonl record 2 (line 3)" in err and "invalid JSON" in err
    assert f"image file not found: {d / 'nope.png'}" in err
    assert "unknown role 'robot'" in err
    assert "swift.parquet record 2 (id s-count): 2 <image> placeholder(s) in the text but 1 image(s)" in err
    plan = read_json(tmp_path / "plan.json")
    assert plan["groups"] == {"image_text": 4, "text_only": 3}
    assert plan["sources"][files[0]] == {"image_text": 2, "text_only": 1}
    assert plan["sources"][files[1]] == {"image_text": 1, "text_only": 1}
    assert plan["sources"][files[2]] == {"image_text": 1, "text_only": 1}
    assert sorted((e["source"], e["index"], e["line"]) for e in plan["invalid"]) == sorted(
        [(files[0], 2, None), (files[1], 2, 3), (files[1], 3, 4), (files[1], 4, 5), (files[2], 2, None)]
    )
    assert all(e["reason"] for e in plan["invalid"])


def test_plan_with_skip_exits_zero_and_lists_them_all(mixed_files, tmp_path):
    _, files, val = mixed_files
    # A per-file group given on the command line, as the README shows it.
    proc = run_cli("plan", *data_overrides(files, val), "data.on_invalid=skip", f"data.file_groups={{{files[2]}: swift}}",
                   "+schedule.stages.blend.mix.swift=0.2", f"hydra.run.dir={tmp_path}")
    assert "Invalid records (5)" in proc.stdout
    for ident in ("l-noanswer", "m-missing", "m-role", "s-count"):
        assert ident in proc.stdout
    # Piped output: tables keep whole file names and reasons, one table row per line.
    lines = proc.stdout.splitlines()
    for f in files:
        assert any(f in line for line in lines), f
    assert any("m-role" in line and "unknown role 'robot'" in line for line in lines)
    plan = read_json(tmp_path / "plan.json")
    assert len(plan["invalid"]) == 5
    assert plan["sources"][files[2]] == {"swift": 2} and plan["groups"]["swift"] == 2


def test_wrong_config_value_is_one_sentence_naming_the_key(tmp_path):
    proc = run_cli("plan", "trainer.max_steps=abc", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Config key `trainer.max_steps` has a wrong value")
    proc = run_cli("plan", "+data.max_lenght=5", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 1 and "`data.max_lenght` is not allowed" in proc.stderr
    proc = run_cli("plan", "data.on_invalid=ignore", f"hydra.run.dir={tmp_path / 'plan'}", check=False)
    assert proc.returncode == 1 and "data.on_invalid" in proc.stderr and "error" in proc.stderr and "skip" in proc.stderr
    assert not (tmp_path / "plan").exists()  # no folder for a plan that never ran


def test_unreadable_data_file_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "table.csv").write_text("a,b\n")
    proc = run_cli("plan", f"data.train_files=[{tmp_path / 'table.csv'}]", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'table.csv'}: unsupported data file extension '.csv'; use .json, .jsonl, .parquet, .arrow"
    (tmp_path / "cut.json").write_text('[{"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "val')
    proc = run_cli("plan", f"data.train_files=[{tmp_path / 'cut.json'}]", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'cut.json'}: invalid JSON at line 1 column 82: Unterminated string starting at (the file ends early: truncated?)"
    )


def test_plan_reads_hugging_face_layouts_with_exact_counts(hf_data, tmp_path):
    train = [hf_data["saved"], hf_data["llava"], hf_data["hub"]]
    val = os.path.join(hf_data["hub"], "data", "validation-*.parquet")
    # A group for every file a folder (or glob) entry names, given by the entry as written.
    proc = run_cli("plan", f"data.train_files=[{','.join(train)}]", f"data.val_files=[{val}]",
                   f"data.file_groups={{{hf_data['hub']}: hub}}", "+schedule.stages.blend.mix.hub=0.2", "inspect=1", f"hydra.run.dir={tmp_path}")
    plan = read_json(tmp_path / "plan.json")
    assert plan["groups"] == {"image_text": 7, "text_only": 4, "hub": 6} and plan["val_groups"] == {"image_text": 1, "text_only": 1}
    shard = os.path.join(hf_data["hub"], "data", "train-{}-of-00002.parquet")
    assert plan["sources"] == {
        os.path.join(hf_data["saved"], "train", "data-00000-of-00001.arrow"): {"image_text": 4, "text_only": 2},
        hf_data["llava"]: {"image_text": 3, "text_only": 2},
        shard.format("00000"): {"hub": 3},
        shard.format("00001"): {"hub": 3},
        os.path.join(hf_data["hub"], "data", "validation-00000-of-00001.parquet"): {"image_text": 1, "text_only": 1},
    }
    assert plan["invalid"] == [] and "train record table built in" in proc.stdout
    # inspect=1: one sample per group as training sees it, embedded images expanded into image tokens.
    inspected = [json.loads(line) for line in (tmp_path / "inspect.jsonl").read_text().splitlines()]
    assert [(s["group"], s["image_tokens"] > 0) for s in inspected] == [("image_text", True), ("text_only", False), ("hub", True)]
    assert inspected[0]["supervised_text"] == "Red.<|im_end|>" and inspected[2]["supervised_text"] == "Red.<|im_end|>"
    assert {"id", "group", "tokens", "image_tokens", "prompt_text", "supervised_text"} <= set(inspected[0])
    assert "0 of 3 inspected sample(s) exceed data.max_length=2048" in proc.stdout


@pytest.mark.slow
def test_train_on_mixed_files_logs_group_losses_and_exports(mixed_files, hf_data, tmp_path):
    _, files, val = mixed_files
    run = tmp_path / "run"
    # With Hugging Face layouts: a Hub repo copy (content-part messages, images embedded in its
    # Parquet shards), a save_to_disk folder and LLaVA columns with an embedded or null image.
    proc = run_cli(
        "train", *data_overrides(files + [hf_data["hub"], hf_data["saved"], hf_data["llava"]], val), "data.on_invalid=skip", "schedule=single", "trainer.max_steps=6", "trainer.val_every_n_steps=3",
        "data.micro_batch_size=2", "data.num_workers=0", f"hydra.run.dir={run}",
    )
    assert f"run folder: {run}" in proc.stdout
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    train = [r for r in rows if r["train/loss"]]
    assert [int(r["step"]) for r in train] == list(range(6))
    assert all(r["train/tokens_image_text"] and r["train/tokens_text_only"] for r in train)
    assert any(r["train/loss_image_text"] for r in train) and any(r["train/loss_text_only"] for r in train)
    vals = [r for r in rows if r["val/loss_image_text"]]
    assert len(vals) == 2 and all(not math.isnan(float(r["val/loss_text_only"])) for r in vals)
    assert len(read_json(run / "plan.json")["invalid"]) == 5
    assert os.path.isfile(run / "export" / "model.safetensors")
    assert os.path.isfile(run / "checkpoints" / "last.ckpt")


def test_train_with_error_policy_stops_before_loading_the_model(mixed_files, tmp_path):
    _, files, val = mixed_files
    proc = run_cli("train", *data_overrides(files, val), f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 1
    assert "error: 5 invalid record(s)" in proc.stderr and "Traceback" not in proc.stderr


def test_slurm_launcher_config_composes(tmp_path):
    proc = run_cli("train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra")
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in proc.stdout
    assert "partition: gpu" in proc.stdout and "tasks_per_node: 1" in proc.stdout


@pytest.mark.slow
def test_sweep_with_a_failing_job_goes_on_and_is_reported(cache_dir, shapes, tmp_path):
    # The middle job's config is valid; its data is not (every sample is longer than data.max_length): it fails running.
    sweep = run_cli(
        "train", "-m", "data.max_length=2048,8,2048", "schedule.stages.blend.mix.text_only=0.4", "schedule.stages.align.steps=2",
        "schedule.stages.blend.steps=4", "data.num_workers=0", "trainer.val_every_n_steps=2", "export.enabled=false",
        f"hydra.sweep.dir={tmp_path}", check=False,
    )
    assert sweep.returncode == 1 and "error: 1 job(s) of the sweep failed:" in sweep.stderr
    proc = run_cli("report", str(tmp_path))
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]
    assert rows[1]["reason"].startswith("SampleError: record ") and "over data.max_length=8" in rows[1]["reason"]
    assert [r["steps_done"] for r in rows] == ["6", "0", "6"]
    for r in (rows[0], rows[2]):
        assert float(r["final val/loss_text_only"]) >= float(r["best val/loss_text_only"]) > 0
    assert "schedule.stages.blend.mix.text_only=0.4" in rows[2]["overrides"]
    for name in ("summary.csv", "summary.md", "summary.png", "0/report.png", "2/report.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "failed" in proc.stdout


def test_run_where_every_sample_is_skipped_fails_and_lists_train_and_val_skips(tmp_path):
    lines = [{"id": f"t{k}", "conversations": [{"from": "human", "value": "word " * 40}, {"from": "gpt", "value": "ok"}]} for k in range(6)]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    run = tmp_path / "run"
    proc = run_cli("train", f"data.train_files=[{data}]", f"data.val_files=[{data}]", "data.on_invalid=skip", "data.max_length=16",
                   "schedule=single", "~schedule.stages.train.mix.image_text", "schedule.stages.train.mix.text_only=1.0",
                   "schedule.stages.train.steps=3", "data.micro_batch_size=2", "data.num_workers=0", "trainer.enable_progress_bar=false",
                   f"hydra.run.dir={run}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no training sample was usable: all 6 drawn samples were skipped")
    assert "WARNING] - skipped train sample t0" in proc.stdout  # Hydra logs to stdout
    assert read_json(run / "status.json")["status"] == "failed" and not (run / "export").exists()
    skipped = [json.loads(line) for line in (run / "skipped.jsonl").read_text().splitlines()]
    assert sum(s["split"] == "train" for s in skipped) == 6 and sum(s["split"] == "val" for s in skipped) == 6
    with open(run / "metrics.csv", newline="") as f:
        last = [r for r in csv.DictReader(f) if r["val/skipped"]][-1]
    assert float(last["val/skipped"]) == 6 and last["val/loss"] == ""


def test_a_mistyped_key_is_one_line_with_the_closest_keys(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", "trainer.max_step=3", f"hydra.run.dir={run}", check=False)
    assert proc.returncode == 1 and not run.exists()
    assert proc.stderr.strip().splitlines() == [
        "error: unknown config key `trainer.max_step`: did you mean trainer.max_steps or trainer.strategy or trainer.val_every_n_steps? "
        "(a new key of an open mapping such as schedule.stages takes a leading +)"
    ]


def test_an_invalid_value_in_any_sweep_job_stops_the_sweep_before_the_first_job(tmp_path):
    proc = run_cli("train", "-m", "schedule.stages.blend.mix.text_only=0.1,0.3,1.2", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   check=False)
    assert proc.returncode == 1 and not (tmp_path / "sweep").exists()
    assert proc.stderr.strip().splitlines() == [
        "error: sweep job 4 (schedule.stages.blend.mix.text_only=1.2 seed=0): schedule.stages.blend.mix fractions other than `rest` "
        "sum to 1.2: they must sum to at most 1."
    ]


def test_a_mistyped_command_leaves_no_run_folder(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", "data.on_invalid=ignore", f"hydra.run.dir={run}", check=False)
    assert proc.returncode == 1 and "data.on_invalid" in proc.stderr
    assert not run.exists()


def test_one_group_or_three_groups_with_the_default_schedule(mixed_files, tmp_path):
    d, _, _ = mixed_files
    images = [{"id": f"i{k}", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]} for k in range(4)]
    only = d / "images_only.json"
    only.write_text(json.dumps(images))
    proc = run_cli("plan", f"data.train_files=[{only}]", f"hydra.run.dir={tmp_path / 'one'}")
    assert proc.stdout.count("schedule.stages.blend.mix names text_only, which the data lacks") == 1
    blend = read_json(tmp_path / "one" / "plan.json")["stages"][1]
    assert blend["samples"] == {"image_text": 80 * 8}
    texts = [{"id": f"t{k}", "conversations": [{"from": "human", "value": f"{k}?"}, {"from": "gpt", "value": "Yes."}]} for k in range(4)]
    extra = d / "extra.json"
    extra.write_text(json.dumps(texts))
    three = [f"data.train_files=[{only},{extra},{d / 'llava.json'}]", "data.on_invalid=skip", f"data.file_groups={{{extra}: extra}}"]
    # Without `+schedule.stages.blend.mix.extra=...` it is refused in one sentence (tests/test_schedule.py).
    run_cli("plan", *three, "+schedule.stages.blend.mix.extra=0.1", f"hydra.run.dir={tmp_path / 'three'}")
    stages = read_json(tmp_path / "three" / "plan.json")["stages"]
    assert stages[0]["samples"]["extra"] == 0 and stages[0]["samples"]["text_only"] == 0
    assert stages[1]["samples"]["extra"] > 0 and stages[1]["samples"]["text_only"] > 0


def test_a_model_path_that_does_not_exist_is_one_line(tmp_path):
    proc = run_cli("train", f"model.name_or_path={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: model.name_or_path={tmp_path / 'nope'}: no such folder")
    assert not (tmp_path / "run").exists()


def test_a_relative_model_path_that_is_neither_a_folder_nor_a_cached_hub_model_is_one_line(tmp_path):
    """Without the check, from_pretrained retried the Hub for minutes (133 lines) before failing offline."""
    proc = run_cli("train", "model.name_or_path=models/nope", f"hydra.run.dir={tmp_path / 'run'}", check=False, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and not (tmp_path / "run").exists()
    assert proc.stderr.strip().splitlines() == [
        "error: model.name_or_path=models/nope: no such folder, and not in the Hugging Face cache (HF_HUB_OFFLINE is set): give an "
        "existing model folder."
    ]


def test_slurm_launcher_without_its_plugin_is_one_sentence(monkeypatch):
    import importlib.util

    from curriculum.cli.train import check_launcher
    from curriculum.config import ConfigError

    check_launcher(["hydra/launcher=slurm"])  # installed here (test extra)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "submitit" in name else real(name, *a))
    with pytest.raises(ConfigError, match=r"^hydra/launcher=slurm needs Hydra's submitit launcher plugin: pip install hydra-submitit-launcher\.$"):
        check_launcher(["-m", "hydra/launcher=slurm", "seed=1,2"])
    check_launcher(["seed=1"])


@pytest.mark.slow
def test_a_run_shows_our_lines_only_and_quick_trains_both_stages(cache_dir, shapes, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", "experiment=quick", "model/peft=lora", "model.trainable.language=lora", f"hydra.run.dir={run}")
    out = proc.stdout + proc.stderr
    for noise in ("Tip:", "litlogger", "GPU available", "Epoch 0", "FLOPs", "LeafSpec", "Loading weights", "Writing model shards",
                  "is deprecated", "FutureWarning", "never receive a gradient", "Seed set"):
        assert noise not in out, noise
    assert out.index(f"run folder: {run}") < out.index("stage align starts") and out.rstrip().endswith(f"run folder: {run}")
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r["train/loss"]]
    assert [r["stage"] for r in rows] == ["align"] * 8 + ["blend"] * 12  # experiment=quick trains both stages
    assert float(rows[-1]["samples/text_only"]) > 0
    readme = (run / "export" / "README.md").read_text()
    assert readme.startswith("# Fine-tuned with curriculum") and "PeftModel.from_pretrained" in readme

