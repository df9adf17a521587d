"""The schedule's config: stages (length, mix, ramp, learning rate, trainability) and how their mixes are read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from curriculum.config.common import ConfigError, Mode, positive


SCHEDULERS = ("cosine", "linear", "constant")


def check_scheduler(key: str, value: str) -> None:
    if value not in SCHEDULERS:
        raise ConfigError(f"{key}={value} is not allowed: use one of {', '.join(SCHEDULERS)}.")


@dataclass
class RampConfig:
    # Ramp length: `steps` (clipped to the stage) or `fraction` of the stage's steps (scales with it).
    steps: Optional[int] = None
    fraction: Optional[float] = None
    shape: str = "linear"


@dataclass
class StageTrainable:
    # null = the component keeps model.trainable's mode in this stage.
    vision: Optional[Mode] = None
    projector: Optional[Mode] = None
    language: Optional[Mode] = None


@dataclass
class StageConfig:
    steps: int = 100
    # Fraction of the stage's samples per group; one group may be `rest` (1 minus the others).
    mix: dict[str, Any] = field(default_factory=dict)
    ramp: Optional[RampConfig] = None
    trainable: StageTrainable = field(default_factory=StageTrainable)
    lr_scale: float = 1.0
    # The stage's own LR schedule over its steps; null keeps optim's value. Peak = lr x lr_scale.
    lr: Optional[float] = None
    # Warmup in steps or as a fraction of the stage's steps (at most half the stage); give at most one.
    warmup_steps: Optional[int] = None
    warmup_fraction: Optional[float] = None
    scheduler: Optional[str] = None
    min_lr_ratio: Optional[float] = None


@dataclass
class ScheduleConfig:
    # mixed: groups interleave inside batches; grouped: every optimizer step is a single group.
    batching: str = "mixed"
    # Sort samples by length inside each group within a megabatch (samples: a divisor or a multiple
    # of the global batch; null = the global batch). Multiples spread sorted rows over several steps.
    length_grouping: bool = False
    megabatch: Optional[int] = None
    # A stage's mix naming a group the data lacks: renormalise over the groups present (said once), or error.
    missing_groups: str = "renormalise"
    # Empty here so a config file's stages replace, not extend, the defaults (see conf/schedule/).
    stages: dict[str, StageConfig] = field(default_factory=dict)

    def check(self) -> None:
        if self.batching not in ("mixed", "grouped"):
            raise ConfigError(f"schedule.batching={self.batching} is not allowed: use mixed or grouped.")
        if self.missing_groups not in ("renormalise", "error"):
            raise ConfigError(f"schedule.missing_groups={self.missing_groups} is not allowed: use renormalise or error.")
        if not self.stages:
            raise ConfigError("schedule.stages is empty: give at least one stage.")
        if self.megabatch is not None:
            positive("schedule.megabatch", self.megabatch)
        for i, (name, st) in enumerate(self.stages.items()):
            key = f"schedule.stages.{name}"
            positive(f"{key}.steps", st.steps)
            positive(f"{key}.lr_scale", st.lr_scale)
            if st.lr is not None:
                positive(f"{key}.lr", st.lr)
            if st.scheduler is not None:
                check_scheduler(f"{key}.scheduler", st.scheduler)
            if st.min_lr_ratio is not None and not 0 <= st.min_lr_ratio <= 1:
                raise ConfigError(f"{key}.min_lr_ratio={st.min_lr_ratio} is not allowed: use a value in [0, 1].")
            if st.warmup_steps is not None and st.warmup_steps < 0:
                raise ConfigError(f"{key}.warmup_steps={st.warmup_steps} is not allowed: use 0 or more.")
            if st.warmup_fraction is not None and not 0 <= st.warmup_fraction <= 1:
                raise ConfigError(f"{key}.warmup_fraction={st.warmup_fraction} is not allowed: use a value in [0, 1].")
            if st.warmup_steps is not None and st.warmup_fraction is not None:
                raise ConfigError(
                    f"{key} has both warmup_steps={st.warmup_steps} and warmup_fraction={st.warmup_fraction}: give at most one, "
                    f"e.g. add {key}.warmup_steps=null to use the fraction."
                )
            if not st.mix:
                raise ConfigError(f"{key}.mix is empty: give the fraction of each group, e.g. {{image_text: 1.0}}.")
            mix_fractions(key, dict(st.mix))
            if st.ramp is not None:
                r = st.ramp
                if i == 0:
                    raise ConfigError(f"{key}.ramp is not allowed: the first stage has no previous mix to ramp from.")
                if r.steps is None and r.fraction is None:
                    raise ConfigError(f"{key}.ramp needs one of steps or fraction, e.g. {key}.ramp.steps=10.")
                if r.steps is not None and r.fraction is not None:
                    raise ConfigError(
                        f"{key}.ramp has both steps={r.steps} and fraction={r.fraction}: give exactly one, "
                        f"e.g. add {key}.ramp.fraction=null to use steps."
                    )
                if r.steps is not None:
                    positive(f"{key}.ramp.steps", r.steps)
                if r.fraction is not None and not 0 < r.fraction <= 1:
                    raise ConfigError(f"{key}.ramp.fraction={r.fraction} is not allowed: use a value in (0, 1].")
                if r.shape not in ("linear", "cosine"):
                    raise ConfigError(f"{key}.ramp.shape={r.shape} is not allowed: use linear or cosine.")


REST = "rest"


def mix_fractions(key: str, mix: dict) -> dict[str, float]:
    """A stage's mix as fractions per group, at most one `rest` group taking 1 minus the others (checked without the data)."""
    import math

    rest = [g for g, v in mix.items() if v == REST]
    if len(rest) > 1:
        raise ConfigError(f"{key}.mix has several `rest` groups ({', '.join(rest)}): at most one may take the remainder.")
    fixed = {}
    for g, v in mix.items():
        if g in rest:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{key}.mix.{g}={v} is not allowed: use a fraction between 0 and 1, or `rest`.")
        fixed[g] = float(v)
    total = sum(fixed.values())
    if rest:
        if total > 1 + 1e-9:
            raise ConfigError(f"{key}.mix fractions other than `rest` sum to {total:g}: they must sum to at most 1.")
        fixed[rest[0]] = max(0.0, 1.0 - total)
    elif abs(total - 1) > 1e-6:
        raise ConfigError(f"{key}.mix fractions sum to {total:g}: they must sum to 1 (or mark one group `rest`).")
    return fixed
