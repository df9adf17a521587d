"""Resuming a run in its own folder: find it, rebuild its config, refuse changes to its past.

`preflight` is the one place every resume check runs (config changes, checkpoint kind, nothing
left to train, changed records), once per process: the command runs it before Hydra writes
anything, and the training it starts takes the result, records included, without checking again.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass
from enum import Enum

from omegaconf import OmegaConf

from curriculum.config import ConfigError, RampConfig, RunConfig, validate
from curriculum.data.sources import DataBundle, changed_files, data_fingerprint, file_states, load_checked_data
from curriculum.run.checkpoints import checkpoint_position, is_sharded_checkpoint, last_checkpoint
from curriculum.schedule.stages import ramp_steps, warmup_steps

RUN_CONFIG = "run_config.yaml"
CONFIG_GROUPS = {"data", "model", "model/peft", "optim", "trainer", "logger", "schedule", "hydra", "experiment"}
# Keys that never change what the run has already done.
# (data.check_images may change: the data digest check refuses a resume whose records it changes.)
FREE = ("logger.", "checkpoint.", "export.", "eval.", "paths.", "search.", "data.num_workers", "data.val_micro_batch_size", "data.check_images",
        "trainer.enable_progress_bar", "trainer.val_every_n_steps", "trainer.limit_val_batches", "trainer.max_steps",
        "trainer.deterministic", "trainer.threads", "model.gradient_checkpointing")
# Keys that may change as long as the global batch (micro batch x ranks x accumulation) stays the same.
LAYOUT = ("data.micro_batch_size", "data.packing", "trainer.accumulate_grad_batches", "trainer.devices", "trainer.num_nodes",
          "trainer.strategy", "trainer.accelerator", "trainer.find_unused_parameters")


@dataclass
class Resume:
    run_dir: str
    cfg: RunConfig
    step: int
    # None: the run stopped before its first checkpoint and starts again from step 0 in its folder.
    checkpoint: str | None
    changes: list[str]
    # The data fingerprint saved with the checkpoint (None for checkpoints that predate it), and its data files' states.
    data_fingerprint: str | None = None
    data_files: dict | None = None
    # The run's records and their fingerprint, checked against the checkpoint's (set by preflight).
    data: tuple[DataBundle, str] | None = None


class Complete(Exception):
    """A resume of a run that has nothing left to train."""


# Pre-flights the command ran before Hydra started, by run folder: the training it starts takes them.
_CHECKED: dict[str, Resume] = {}


def is_training_run(path: str) -> bool:
    """A curriculum-train folder: it wrote status.json, or was killed before that (Hydra's job name says train)."""
    if os.path.isfile(os.path.join(path, "status.json")):
        return True
    try:
        return OmegaConf.load(os.path.join(path, ".hydra", "hydra.yaml")).hydra.job.name == "train"
    except Exception:  # noqa: BLE001 - no or unreadable hydra.yaml: not a run this command made
        return False


def run_status(path: str) -> str | None:
    """What status.json says (running, completed, failed), or None when it was never written."""
    try:
        with open(os.path.join(path, "status.json"), encoding="utf-8") as f:
            return json.load(f).get("status")
    except (OSError, ValueError):
        return None


def find_run(spec: str, output_root: str) -> str:
    """The run folder `spec` names, or for `latest` the newest training run under `output_root` that can continue.

    A run can continue from its checkpoint, or, killed before its first one (status `running`, or
    none written yet), from step 0 in its folder.
    """
    if spec != "latest":
        path = os.path.abspath(os.path.expanduser(spec))
        if not os.path.isfile(os.path.join(path, ".hydra", "config.yaml")):
            raise ConfigError(f"resume={spec} is not a run folder: {path}/.hydra/config.yaml does not exist.")
        hydra_files = [os.path.join(path, ".hydra", f) for f in ("config.yaml", "hydra.yaml", "overrides.yaml")]
        if not os.path.isfile(os.path.join(path, "status.json")) and not all(os.path.isfile(f) and os.path.getsize(f) for f in hydra_files):
            raise ConfigError(
                f"resume={spec}: {path}/.hydra is incomplete (the run was killed while it started, before it trained anything), so "
                "its config is unknown: start it again with its own command."
            )
        if not is_training_run(path):
            raise ConfigError(f"resume={spec} is not a training run: {path} was not made by curriculum-train (curriculum-plan folders train nothing).")
        return path
    found = glob.glob(os.path.join(output_root, "*", "*", ".hydra", "config.yaml"))
    found += glob.glob(os.path.join(output_root, "multirun", "*", "*", "*", ".hydra", "config.yaml"))
    runs = [os.path.dirname(os.path.dirname(f)) for f in found]
    runs = [r for r in runs if is_training_run(r) and (last_checkpoint(r) or run_status(r) in (None, "running"))]
    if not runs:
        raise ConfigError(f"resume=latest found no training run to continue under {os.path.abspath(output_root)}.")
    return os.path.abspath(max(runs, key=lambda r: os.path.getmtime(os.path.join(r, ".hydra", "config.yaml"))))


def saved_config(run_dir: str):
    """The run's effective config: the last accepted resume's, else the one it started with."""
    path = os.path.join(run_dir, RUN_CONFIG)
    return OmegaConf.load(path if os.path.isfile(path) else os.path.join(run_dir, ".hydra", "config.yaml"))


def apply_overrides(base, overrides: list[str], command: str = "resume"):
    """Command-line overrides applied to a saved config (group choices cannot change: they are resolved)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=True))
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key == "resume" or key.startswith("hydra"):
            continue
        if key in CONFIG_GROUPS or o.is_sweep_override() or o.is_delete():
            raise ConfigError(f"{command}: `{o.input_line}` is not allowed on a saved run's config: override single keys, e.g. trainer.max_steps=200.")
        OmegaConf.update(cfg, key, o.value(), merge=True, force_add=True)
    return cfg


def flatten(d, prefix: str = "") -> dict:
    """{'a.b': value} for every leaf of a nested dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v.value if isinstance(v, Enum) else v  # messages show `error`, not an enum's repr
    return out


def _stage_starts(cfg: RunConfig) -> dict[str, int]:
    starts, at = {}, 0
    for name, st in cfg.schedule.stages.items():
        starts[name] = at
        at += st.steps
    return starts


def refused_change(old: RunConfig, new: RunConfig, key: str, done: int) -> bool:
    """True when changing `key` would change steps the run has already trained."""
    if key.startswith(FREE) or key.startswith(LAYOUT) or key == "resume":
        return False
    if key == "data.on_invalid" and old.data.on_invalid.value == "error":
        # Under `error` nothing can have been skipped: the run stopped at its first invalid sample
        # (the fix its error message suggests); the data digest still refuses changed records.
        return False
    if not key.startswith("schedule.stages."):
        return True
    name = key.split(".")[2]
    old_starts, new_starts = _stage_starts(old), _stage_starts(new)
    started = name in old_starts and old_starts[name] < done
    if not started:
        return name in new_starts and new_starts[name] < done
    prefix = f"schedule.stages.{name}"
    pinned = (f"{prefix}.steps", f"{prefix}.ramp.steps", f"{prefix}.ramp.fraction", f"{prefix}.warmup_steps", f"{prefix}.warmup_fraction")
    if key not in pinned or old_starts.get(name) != new_starts.get(name):
        return True
    # The current stage may grow or shrink its future, but not its past: the steps already done,
    # the ramp's length and the warmup's length must stay.
    o, n = old.schedule.stages[name], new.schedule.stages[name]
    # A stage that has ended decayed its LR over its old length: a new length would restart the decay part-way.
    finished_before = old_starts[name] + o.steps <= done
    return (
        finished_before
        or n.steps < done - old_starts[name]
        or ramp_steps(o) != ramp_steps(n)
        or warmup_steps(o, old.optim) != warmup_steps(n, new.optim)
        or _moves_started_megabatch(old, o.steps, n.steps, done - old_starts[name])
    )


def _moves_started_megabatch(cfg: RunConfig, old_steps: int, new_steps: int, done_in_stage: int) -> bool:
    """A megabatch of several steps is clipped to its stage: a new stage length must not move the end of one under way."""
    s, batch = cfg.schedule, cfg.global_batch()
    if not s.length_grouping or not s.megabatch or s.megabatch <= batch:
        return False
    k = s.megabatch // batch
    first = done_in_stage // k * k
    return done_in_stage > first and min(first + k, old_steps) != min(first + k, new_steps)


def pin_started_ramps(old: RunConfig, new: RunConfig, done: int) -> None:
    """Keep the ramp and warmup lengths of a started stage whose `steps` change (a fraction would rescale its past)."""
    for name, start in _stage_starts(old).items():
        o, n = old.schedule.stages[name], new.schedule.stages.get(name)
        if not (start < done <= start + o.steps and n is not None and n.steps != o.steps):
            continue
        if n.ramp is not None and o.ramp is not None and n.ramp == o.ramp and ramp_steps(n) != ramp_steps(o):  # left as it was
            n.ramp = RampConfig(steps=ramp_steps(o), fraction=None, shape=o.ramp.shape)
        # A warmup given as a fraction, or clipped to the old length, keeps the steps it had.
        same_keys = (n.warmup_steps, n.warmup_fraction) == (o.warmup_steps, o.warmup_fraction)
        if same_keys and warmup_steps(n, new.optim) != warmup_steps(o, old.optim):
            n.warmup_steps, n.warmup_fraction = warmup_steps(o, old.optim), None


def prepare(cfg: RunConfig, run_dir: str, overrides: list[str]) -> Resume:
    """The config to continue with, the checkpoint and step to continue from, and the accepted changes."""
    ckpt = last_checkpoint(run_dir)
    base_raw = saved_config(run_dir)
    if ckpt is None:
        # Nothing was trained that a change could contradict: the run starts again in its folder.
        new = validate(apply_overrides(base_raw, overrides))
        new.resume = None
        return Resume(run_dir, new, 0, None, ["started again from step 0: the run stopped before its first checkpoint"])
    # The saved config ran; rules added since must not lock its run out (the new config is checked).
    old = validate(base_raw, check=False)
    new_raw = apply_overrides(base_raw, overrides)
    new = validate(new_raw)
    sharded = new.trainer.shards_parameters()
    if sharded != is_sharded_checkpoint(ckpt):
        kind = "a folder of per-rank shards (trainer.strategy=fsdp)" if not sharded else "one file (a run without trainer.strategy=fsdp)"
        raise ConfigError(
            f"resume={cfg.resume}: trainer.strategy={new.trainer.strategy} cannot continue from {ckpt}, which is {kind}; "
            f"resume with the run's own trainer.strategy={old.trainer.strategy}."
        )
    done, saved_data, saved_files = checkpoint_position(ckpt)
    pin_started_ramps(old, new, done)
    a, b = flatten(OmegaConf.to_container(OmegaConf.structured(old))), flatten(OmegaConf.to_container(OmegaConf.structured(new)))
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    for name, start in _stage_starts(old).items():
        o, n = old.schedule.stages[name], new.schedule.stages.get(name)
        if n is not None and n.steps != o.steps and start + o.steps <= done:
            raise ConfigError(
                f"resume: `schedule.stages.{name}.steps` cannot change: the stage ended at step {start + o.steps} with its LR "
                f"schedule run over its {o.steps} steps, and a new length would jump the LR back up part-way through the decay; add a "
                "stage instead, e.g. +schedule.stages.more.steps=50 +schedule.stages.more.mix={text_only: 1.0}"
            )
    for key in changed:
        if refused_change(old, new, key, done):
            raise ConfigError(
                f"resume: `{key}` cannot change when resuming at step {done} (was {a.get(key)!r}, now {b.get(key)!r}) because it "
                "changes what the run already trained; start a new run for that."
            )
    if old.global_batch() != new.global_batch():
        raise ConfigError(
            f"resume: the global batch would change from {old.global_batch()} to {new.global_batch()} samples; keep "
            "data.micro_batch_size x trainer.devices x trainer.num_nodes x trainer.accumulate_grad_batches equal."
        )
    total = new.trainer.max_steps or new.schedule_steps()
    if total < done:
        raise ConfigError(f"resume: the run already trained {done} steps; the new config stops at step {total}, before that.")
    new.resume = None
    return Resume(run_dir, new, done, ckpt, [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed if k != "resume"], saved_data,
                  saved_files)


def record(resume: Resume) -> None:
    """Write the effective config and append what changed to resumes.jsonl in the run folder."""
    OmegaConf.save(OmegaConf.structured(resume.cfg), os.path.join(resume.run_dir, RUN_CONFIG))
    with open(os.path.join(resume.run_dir, "resumes.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": resume.step, "changes": resume.changes}) + "\n")


def preflight(spec: str, run_dir: str, overrides: list[str], keep: bool = False) -> Resume:
    """Every check a resume must pass, with the run's checked records; a result kept by an earlier call is taken instead.

    Raises ConfigError for a change the run's past forbids and Complete for a run that has trained
    all it is configured for. With `keep`, the result waits for this process's next call (the
    training the command starts).
    """
    key = os.path.abspath(run_dir)
    if key in _CHECKED:
        return _CHECKED.pop(key)
    resumed = prepare(RunConfig(resume=spec), run_dir, overrides)
    total = resumed.cfg.trainer.max_steps or resumed.cfg.schedule_steps()
    # A run killed after its last checkpoint but before it said "completed" still owes its final
    # validation, export and report: resuming it does just that (training is skipped).
    if resumed.step >= total and resumed.checkpoint and run_status(run_dir) == "completed":
        more = (
            "raise trainer.max_steps (or set it to null)" if resumed.cfg.trainer.max_steps else
            "add a stage, e.g. +schedule.stages.extra.steps=50 +schedule.stages.extra.mix={text_only: 1.0}"
        )
        raise Complete(f"resume: {run_dir} is complete: it trained all {total} steps it is configured for; nothing was changed. To train on, {more}.")
    resumed.data = checked_data(resumed.cfg, resumed.data_fingerprint, resumed.data_files)
    if keep:
        _CHECKED[key] = resumed
    return resumed


def checked_data(cfg: RunConfig, saved: str | None = None, saved_files: dict | None = None) -> tuple[DataBundle, str]:
    """The run's records and their fingerprint; refused, naming the files that changed, when they differ from `saved` (a checkpoint's)."""
    bundle = load_checked_data(cfg)
    fingerprint = data_fingerprint(bundle.train, bundle.val)
    if saved not in (None, fingerprint):
        changed = changed_files(saved_files, file_states(bundle)) if saved_files else []
        which = f"changed since: {', '.join(changed)}" if changed else f"train/val records {saved} -> {fingerprint}"
        raise ConfigError(
            f"resume: the data's records changed since the checkpoint ({which}), so the sample stream would differ; restore the "
            "files or start a new run."
        )
    return bundle, fingerprint
