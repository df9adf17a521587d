"""Config validation: a wrong value is one sentence naming the key, the value and what is allowed."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from curriculum.config import ConfigError, Mode, validate


BASE = {"schedule": {"stages": {"train": {"steps": 5, "mix": {"image_text": 1.0}}}}}


def check(**overrides):
    return validate(OmegaConf.merge(OmegaConf.create(BASE), OmegaConf.create(overrides)))


def test_defaults_are_valid():
    cfg = check()
    assert cfg.model.trainable.vision is Mode.frozen and cfg.data.on_invalid.value == "error"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data": {"max_lenght": 5}}, "`data.max_lenght` is not allowed"),
        ({"trainer": {"max_steps": "abc"}}, "`trainer.max_steps` has a wrong value"),
        ({"data": {"on_invalid": "ignore"}}, "expected one of [error, skip]"),
        ({"trainer": {"max_steps": 0}}, "trainer.max_steps=0 is not allowed: use a positive value."),
        ({"model": {"trainable": {"language": "lora"}}}, "model.trainable.language=lora needs a LoRA config: add model/peft=lora."),
        ({"model": {"peft": {"r": 4}, "trainable": {"language": "full"}}}, "no component is `lora` in model.trainable or any stage"),
        ({"model": {"trainable": {"vision": "frozen", "projector": "frozen", "language": "frozen"}}}, "freeze vision, projector and language in every stage"),
        ({"model": {"dtype": "int8"}}, "model.dtype=int8 is not allowed"),
        ({"optim": {"scheduler": "step"}}, "optim.scheduler=step is not allowed: use one of cosine, linear, constant."),
        ({"schedule": {"stages": {"b": {"steps": 5, "mix": {"image_text": 1.0}, "scheduler": "step"}}}}, "schedule.stages.b.scheduler=step is not allowed"),
        ({"schedule": {"stages": {"b": {"steps": 5, "mix": {"image_text": 1.0}, "lr": 0}}}}, "schedule.stages.b.lr=0.0 is not allowed: use a positive value."),
        (
            {"schedule": {"stages": {"b": {"steps": 5, "mix": {"image_text": 1.0}, "warmup_steps": 2, "warmup_fraction": 0.1}}}},
            "schedule.stages.b has both warmup_steps=2 and warmup_fraction=0.1: give at most one",
        ),
        ({"schedule": {"stages": {"b": {"steps": 5, "mix": {"image_text": 1.0}, "warmup_fraction": 2.0}}}}, "schedule.stages.b.warmup_fraction=2.0 is not allowed"),
        ({"export": {"mode": "merged"}}, "export.mode=merged needs model/peft=lora"),
        ({"data": {"val_files": ["v.json"]}}, "data.val_files is set but data.train_files is empty"),
        ({"trainer": {"max_steps": 9}}, "trainer.max_steps=9 is not allowed: the schedule has 5 steps"),
        ({"schedule": {"batching": "random"}}, "schedule.batching=random is not allowed: use mixed or grouped."),
        ({"optim": {"weight_decay": -1.0}}, "optim.weight_decay=-1.0 is not allowed: use 0 or more."),
        ({"optim": {"betas": [2.0, 3.0]}}, "optim.betas=[2.0, 3.0] is not allowed: use two values in [0, 1)"),
        ({"optim": {"min_lr_ratio": -1.0}}, "optim.min_lr_ratio=-1.0 is not allowed: use a value in [0, 1]."),
        ({"trainer": {"precision": "foo"}}, "trainer.precision=foo is not allowed: use one of 32-true, bf16-mixed"),
        ({"trainer": {"gradient_clip_val": -1.0}}, "trainer.gradient_clip_val=-1.0 is not allowed"),
        # A summed-token loss overflows fp16 loss scaling: skipped steps would still advance the LR and the stream.
        ({"trainer": {"precision": "16-mixed"}}, "trainer.precision=16-mixed is not supported: fp16 needs loss scaling"),
        ({"trainer": {"precision": 16}}, "trainer.precision=16 is not supported: fp16 needs loss scaling"),
        ({"model": {"frozen_dtype": "bfloat16"}}, "model.frozen_dtype=bfloat16 differs from model.dtype=float32 and needs trainer.precision=bf16-mixed"),
        ({"model": {"frozen_dtype": "float16"}}, "model.frozen_dtype=float16 is not allowed: use null, float32 or bfloat16."),
        ({"trainer": {"limit_val_batches": -1}}, "trainer.limit_val_batches=-1 is not allowed: use a positive value."),
        ({"trainer": {"devices": "auto"}}, "trainer.devices='auto' is not allowed: give the number of processes per node"),
        ({"trainer": {"devices": -1}}, "trainer.devices=-1 is not allowed"),
        ({"trainer": {"strategy": "deepspeed_stage_3"}}, "trainer.strategy=deepspeed_stage_3 is not supported: DeepSpeed keeps gradients"),
        ({"trainer": {"strategy": "fsdp_cpu_offload"}}, "trainer.strategy=fsdp_cpu_offload is not supported: use fsdp"),
        ({"trainer": {"strategy": "fsdp"}, "export": {"mode": "merged"}, "model": {"peft": {}, "trainable": {"language": "lora"}}},
         "export.mode=merged is not supported with trainer.strategy=fsdp"),
        ({"data": {"train_files": ["a.json"], "file_groups": {"b.json": "x"}}}, "data.file_groups names b.json, which is not in data.train_files or data.val_files"),
        (
            {"schedule": {"stages": {"b": {"steps": 5, "mix": {"image_text": 1.0}, "ramp": {"steps": 2, "fraction": 0.5}}}}},
            "schedule.stages.b.ramp has both steps=2 and fraction=0.5: give exactly one, e.g. add schedule.stages.b.ramp.fraction=null",
        ),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        check(**overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_tensorboard_logger_without_the_package_is_refused(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"logger.tensorboard=true needs the tensorboard package"):
        check(logger={"tensorboard": True})


@pytest.mark.parametrize("devices, processes", [(2, 2), ([0, 1, 3], 3), ("0,1", 2), ("4", 4)])
def test_world_size_counts_the_processes_devices_asks_for(devices, processes):
    cfg = check(trainer={"devices": devices, "num_nodes": 2, "accumulate_grad_batches": 2}, data={"micro_batch_size": 3})
    assert cfg.world_size() == 2 * processes and cfg.global_batch() == 3 * 2 * processes * 2


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "32", "bf16", "bf16-true"])
def test_lightning_precision_names_and_aliases_are_accepted(precision):
    assert check(trainer={"precision": precision}).trainer.precision == str(precision)


@pytest.mark.parametrize("model", ["tiny_llava", "tiny_idefics3"])
def test_processor_kwargs_and_components_take_new_keys_on_the_command_line(model):
    """As the README writes them: a dict override, not `+model.processor_kwargs...`."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base=None):
        cfg = validate(compose("config", overrides=[
            f"model={model}", "model.processor_kwargs={size: {shortest_edge: 200704, longest_edge: 1003520}}",
            "model.components={projector: adapter}"]))
    assert cfg.model.processor_kwargs == {"size": {"shortest_edge": 200704, "longest_edge": 1003520}}
    assert cfg.model.components == {"projector": "adapter"}
