"""Compile the schedule config into stages with an exact per-step mix, and per-stage trainability.

Mix weights are quantised to integer units of 1/UNITS per step (largest remainder, so each step's
weights sum to exactly UNITS): every count the blend computes is then integer arithmetic, the
same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass

import numpy as np

from curriculum.config import ConfigError, Mode, OptimConfig, RunConfig, StageConfig, TrainableConfig, mix_fractions

log = logging.getLogger("curriculum")

UNITS = 1_000_000


@dataclass(frozen=True)
class StageLR:
    """A stage's learning-rate schedule over its own steps: linear warmup, then decay to the floor."""

    peak: float
    warmup_steps: int
    scheduler: str
    min_lr_ratio: float

    def at(self, step: int, steps: int) -> float:
        """Learning rate at stage-relative optimizer step `step` of a stage of `steps` steps."""
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        if self.scheduler == "constant":
            return self.peak
        progress = min(1.0, (step - self.warmup_steps) / max(1, steps - self.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.scheduler == "cosine" else 1 - progress
        return self.peak * (self.min_lr_ratio + (1 - self.min_lr_ratio) * shape)


@dataclass(frozen=True)
class Stage:
    """One stage: per-step weights of its ramp (ramp_steps, groups), then `mix` for the other steps.

    Weights are integers in units of 1/UNITS; a stage of any length takes memory for its ramp only.
    """

    name: str
    index: int
    start_step: int
    steps: int
    ramp: np.ndarray
    mix: np.ndarray
    trainable: TrainableConfig
    lr: StageLR

    @property
    def end_step(self) -> int:
        """First step after this stage."""
        return self.start_step + self.steps

    @property
    def ramp_steps(self) -> int:
        """Steps of the ramp at the start of the stage."""
        return len(self.ramp)

    def weights_at(self, step: int) -> np.ndarray:
        """Integer weights at stage-relative step `step`."""
        return self.ramp[step] if step < len(self.ramp) else self.mix


@dataclass(frozen=True)
class Schedule:
    """Ordered stages over a fixed group order."""

    groups: tuple[str, ...]
    stages: tuple[Stage, ...]
    batching: str
    length_grouping: bool
    megabatch: int | None

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole schedule."""
        return self.stages[-1].end_step

    def stage_at(self, step: int) -> Stage:
        """The stage that optimizer step `step` belongs to (the last stage past the end)."""
        for st in self.stages:
            if step < st.end_step:
                return st
        return self.stages[-1]

    def mix_at(self, step: int) -> dict[str, float]:
        """Target fraction per group at optimizer step `step`."""
        st = self.stage_at(step)
        row = st.weights_at(min(step - st.start_step, st.steps - 1))
        return {g: float(w) / UNITS for g, w in zip(self.groups, row)}

    def lr_at(self, step: int, component: str | None = None) -> float:
        """Learning rate at optimizer step `step`: its stage's own schedule, 0 where the stage freezes `component`."""
        stage = self.stage_at(step)
        if component is not None and getattr(stage.trainable, component) is Mode.frozen:
            return 0.0
        return stage.lr.at(step - stage.start_step, stage.steps)

    def fingerprint(self) -> str:
        """Hash of everything that decides the sample order (stages, mixes, batching)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.groups, self.batching, self.length_grouping, self.megabatch]).encode())
        for st in self.stages:
            h.update(json.dumps([st.name, st.start_step, st.steps]).encode())
            h.update(np.ascontiguousarray(st.ramp).tobytes() + np.ascontiguousarray(st.mix).tobytes())
        return h.hexdigest()[:16]


def resolve_mix(key: str, mix: dict, groups: list[str], available: dict[str, int], missing: str = "error") -> dict[str, float]:
    """Fractions per data group from a stage's mix, with at most one `rest` group taking 1 minus the others.

    A group the data lacks is an error with `missing="error"`; with `missing="renormalise"` it is
    left out and the other groups' fractions are scaled to sum to 1 (a fraction of 0 is always fine).
    """
    fixed = mix_fractions(key, mix)
    absent = [g for g, v in fixed.items() if v > 0 and available.get(g, 0) == 0]
    if absent and missing == "error":
        g = absent[0]
        known = f"the data has no {g} records" if g in groups else f"the data has no group {g!r} (it has {', '.join(groups)})"
        raise ConfigError(f"{key}.mix gives group {g!r} the fraction {fixed[g]:g}, but {known} (schedule.missing_groups=error).")
    kept = {g: v for g, v in fixed.items() if g not in absent}
    if not sum(kept.values()):
        raise ConfigError(
            f"{key}.mix draws only from {', '.join(absent)}, which the data lacks (it has {', '.join(groups)}): "
            f"give the stage a group the data has, e.g. {key}.mix={{{groups[0]}: 1.0}}."
        )
    scale = sum(kept.values())
    return {g: kept.get(g, 0.0) / scale for g in groups}


def unmixed_groups(stages: dict[str, StageConfig], available: dict[str, int]) -> list[str]:
    """Groups the data has that no stage's mix names: none of their records would ever be drawn."""
    named = {g for st in stages.values() for g in st.mix}
    return [g for g, n in available.items() if n and g not in named]


def quantise(fractions: np.ndarray) -> np.ndarray:
    """Integer weights per row summing to UNITS exactly (largest remainder, ties by group order)."""
    scaled = np.asarray(fractions, dtype=np.float64) * UNITS
    base = np.floor(scaled + 1e-9).astype(np.int64)
    short = UNITS - base.sum(axis=1)
    order = np.argsort(-(scaled - base), axis=1, kind="stable")
    for row in range(len(base)):
        base[row, order[row, : short[row]]] += 1
    return base


def ramp_steps(cfg: StageConfig) -> int:
    """Steps of a stage's ramp: its `steps` clipped to the stage, or its `fraction` of the stage."""
    if cfg.ramp is None:
        return 0
    if cfg.ramp.steps is not None:
        return min(cfg.ramp.steps, cfg.steps)
    return max(1, min(cfg.steps, round(cfg.ramp.fraction * cfg.steps)))


def ramp_fractions(prev: np.ndarray, target: np.ndarray, cfg: StageConfig) -> np.ndarray:
    """(ramp steps, groups) float mix moving from `prev` to `target` (linear or cosine)."""
    n = ramp_steps(cfg)
    t = np.arange(1, n + 1, dtype=np.float64) / max(n, 1)
    if cfg.ramp is not None and cfg.ramp.shape == "cosine":
        t = (1 - np.cos(np.pi * t)) / 2
    return prev + (target - prev) * t[:, None]


def warmup_steps(cfg: StageConfig, optim: OptimConfig) -> int:
    """Warmup steps of a stage: its `warmup_steps` or `warmup_fraction`, else optim's, at most half the stage.

    A stage no longer than its warmup would be all warmup and end at its peak LR (a short stage
    with the default 10 warmup steps); half leaves it the other half to decay.
    """
    wanted = round(cfg.warmup_fraction * cfg.steps) if cfg.warmup_fraction is not None else (
        cfg.warmup_steps if cfg.warmup_steps is not None else optim.warmup_steps)
    return min(cfg.steps // 2, wanted)


def stage_lr(cfg: StageConfig, optim: OptimConfig) -> StageLR:
    """A stage's LR schedule: its own keys where set, else the run-wide optim ones."""
    return StageLR(
        peak=(cfg.lr if cfg.lr is not None else optim.lr) * cfg.lr_scale,
        warmup_steps=warmup_steps(cfg, optim),
        scheduler=cfg.scheduler or optim.scheduler,
        min_lr_ratio=cfg.min_lr_ratio if cfg.min_lr_ratio is not None else optim.min_lr_ratio,
    )


def compile_schedule(run: RunConfig, groups: list[str], available: dict[str, int]) -> Schedule:
    """Validated stages with exact per-step weights; raises ConfigError naming the stage key."""
    cfg = run.schedule
    stages, start, prev = [], 0, None
    for i, (name, st) in enumerate(cfg.stages.items()):
        key = f"schedule.stages.{name}"
        mix = resolve_mix(key, dict(st.mix), groups, available, cfg.missing_groups)
        absent = sorted(g for g, v in st.mix.items() if v != 0 and not available.get(g))
        if absent:
            log.warning("%s.mix names %s, which the data lacks: the stage draws from %s, renormalised", key, ", ".join(absent),
                        ", ".join(f"{g} {v:g}" for g, v in mix.items() if v))
        target = np.array([mix[g] for g in groups], dtype=np.float64)
        ramp = quantise(ramp_fractions(prev, target, st)) if prev is not None else np.zeros((0, len(groups)), np.int64)
        stages.append(Stage(name, i, start, st.steps, ramp, quantise(target[None])[0], run.stage_modes(st), stage_lr(st, run.optim)))
        start += st.steps
        prev = target
    unmixed = unmixed_groups(cfg.stages, available)
    if unmixed:
        g, last = unmixed[0], list(cfg.stages)[-1]
        raise ConfigError(
            f"data group {g!r} ({available[g]} records) is in no stage's mix, so none of its records would be trained: "
            f"add it to a stage, e.g. +schedule.stages.{last}.mix.{g}=0.1, give it 0 there to leave it out on purpose, "
            "or drop its files."
        )
    return Schedule(tuple(groups), tuple(stages), cfg.batching, cfg.length_grouping, cfg.megabatch)
