"""The whole recipe on two architectures, and exports that load with from_pretrained and generate."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from curriculum.config import DataConfig, EvalConfig, LoraConfig, Mode, ModelConfig, PathsConfig, RunConfig, TrainableConfig, TrainerConfig
from conftest import one_stage
from curriculum.cli.evaluate import run as evaluate_folder
from curriculum.data.collate import takes_text_only
from curriculum.model.load import resolve_model_path
from curriculum.run.recipe import train


def quick_config(cache_dir, model: ModelConfig) -> RunConfig:
    cfg = RunConfig(
        data=DataConfig(micro_batch_size=4, val_micro_batch_size=32, num_workers=0),
        model=model,
        trainer=TrainerConfig(val_every_n_steps=2, enable_progress_bar=False),
        schedule=one_stage(4),
        paths=PathsConfig(cache_dir=cache_dir),
    )
    cfg.check()
    return cfg


def generate(model, processor, with_image: bool) -> tuple[int, int]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": "What colour is the circle?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    images = [[Image.new("RGB", (32, 32), (255, 0, 0))]] if with_image else None
    if with_image or takes_text_only(processor):
        inputs = processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False)
    else:  # PaliGemma's processor refuses text-only prompts: its tokenizer encodes them
        inputs = processor.tokenizer([text], return_tensors="pt")
    # As a user would: floating inputs in the model's dtype (Llama 4's processor returns bfloat16 pixels).
    inputs = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return inputs["input_ids"].shape[1], out.shape[1]


def test_train_and_export_full_model(arch, cache_dir, shapes, tmp_path):
    base_path = arch
    cfg = quick_config(cache_dir, ModelConfig(name_or_path=base_path))
    cfg.eval = EvalConfig(generate=True, max_new_tokens=4, max_samples_per_group=3)
    train(cfg, str(tmp_path))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len([r for r in rows if r["train/loss"]]) == 4
    assert {"val/loss_image_text", "val/loss_text_only"} <= set(rows[0])
    # eval.generate: the last step's generation scores, and every answer in eval.json.
    scored = [r for r in rows if r["eval/token_f1_image_text"]]
    assert [int(r["step"]) for r in scored] == [3] and scored[0]["eval/exact_match_text_only"] and scored[0]["eval/loss_text_only"]
    result = json.load(open(tmp_path / "eval.json"))
    assert [(s["group"], isinstance(s["prediction"], str)) for s in result["samples"]] == [("image_text", True)] * 3 + [("text_only", True)] * 3
    # curriculum-eval on the run folder: its saved config and its export give the same answers.
    again = json.load(open(evaluate_folder(str(tmp_path), [])))
    assert [s["prediction"] for s in again["samples"]] == [s["prediction"] for s in result["samples"]]
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "export")
    processor = AutoProcessor.from_pretrained(tmp_path / "export")
    for with_image in (True, False):
        n_in, n_out = generate(model, processor, with_image)
        assert n_out > n_in
    # The export holds the trained weights, not the initial ones.
    base = AutoModelForImageTextToText.from_pretrained(base_path)
    assert not torch.equal(model.get_output_embeddings().weight, base.get_output_embeddings().weight)


def test_lora_exports_an_adapter_that_loads_on_the_base(cache_dir, shapes, tmp_path):
    from peft import PeftModel

    trainable = TrainableConfig(vision=Mode.frozen, projector=Mode.full, language=Mode.lora)
    cfg = quick_config(cache_dir, ModelConfig(trainable=trainable, peft=LoraConfig(r=4, alpha=8)))
    cfg.eval = EvalConfig(generate=True, max_new_tokens=3, max_samples_per_group=2)
    train(cfg, str(tmp_path))
    in_training = json.load(open(tmp_path / "eval.json"))
    assert os.path.isfile(tmp_path / "export" / "adapter_model.safetensors")
    base = AutoModelForImageTextToText.from_pretrained(resolve_model_path("builtin:tiny-llava", cache_dir))
    model = PeftModel.from_pretrained(base, tmp_path / "export")
    processor = AutoProcessor.from_pretrained(tmp_path / "export")
    for with_image in (True, False):
        n_in, n_out = generate(model, processor, with_image)
        assert n_out > n_in
    # curriculum-eval on the adapter export, with the run's own validation data.
    path = evaluate_folder(str(tmp_path / "export"), [f"paths.cache_dir={cache_dir}", "eval.max_samples_per_group=2", "eval.max_new_tokens=3"])
    result = json.load(open(path))
    # Into a new folder of the run the export belongs to: never into the model folder, never over the run's eval.json.
    assert path.startswith(str(tmp_path / "evals")) and not (tmp_path / "export" / "eval.json").exists()
    assert set(result["groups"]) == {"image_text", "text_only"}
    assert all(g["samples"] == 2 and g["loss"] > 0 for g in result["groups"].values())
    # The adapter on its base answers as the PEFT model did at the end of training (eval.generate).
    assert [s["prediction"] for s in result["samples"]] == [s["prediction"] for s in in_training["samples"]]


def test_export_keeps_the_base_tokenizers_padding_side(cache_dir, shapes, tmp_path):
    import json
    import shutil

    # A base model whose tokenizer pads on the left (as many chat models do for batched generation).
    base = tmp_path / "base"
    shutil.copytree(resolve_model_path("builtin:tiny-llava", cache_dir), base)
    config_path = base / "tokenizer_config.json"
    settings = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**settings, "padding_side": "left"}))
    assert AutoProcessor.from_pretrained(base).tokenizer.padding_side == "left"
    cfg = quick_config(cache_dir, ModelConfig(name_or_path=str(base)))
    train(cfg, str(tmp_path / "run"))
    assert AutoProcessor.from_pretrained(tmp_path / "run" / "export").tokenizer.padding_side == "left"


@pytest.mark.parametrize(
    "cores, devices, workers, threads, expected",
    [(8, 1, 0, None, 8), (8, 2, 2, None, 2), (2, 1, 2, None, 1), (16, 8, 4, None, 1), (2, 1, 0, 3, 3)],
)
def test_cpu_threads_share_the_usable_cores_among_processes_and_workers(monkeypatch, cores, devices, workers, threads, expected):
    from curriculum.run.recipe import cpu_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    cfg = RunConfig(trainer=TrainerConfig(devices=devices, threads=threads), data=DataConfig(num_workers=workers))
    n, why = cpu_threads(cfg)
    assert n == expected and ("trainer.threads" in why)
