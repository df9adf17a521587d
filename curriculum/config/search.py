"""The search section: what a run reports as its objective, and how `curriculum-search` looks for the best schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from curriculum.config.common import ConfigError, positive

# Per-group metrics an objective can weigh (<metric>_<group> columns of metrics.csv); eval/* need eval.generate=true.
OBJECTIVES = ("val/loss", "eval/loss", "eval/exact_match", "eval/token_f1")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
PRUNE_FROM = ("last_stage", "start")


@dataclass
class SearchConfig:
    # The number a run returns to a search: sum over groups of weight x the metric's last value.
    objective: str = "val/loss"
    # {group: weight}; null = weight 1 for every group the metric has.
    weights: Optional[dict[str, float]] = None
    # minimize | maximize; null = minimize a loss, maximize a score.
    direction: Optional[str] = None
    # curriculum-search: trials that end (completed, pruned or failed); an interrupted trial runs again.
    n_trials: int = 20
    sampler: str = "tpe"
    # Trials sampled at random before TPE models the others (also the pruner's: it prunes none before that).
    startup_trials: int = 5
    seed: int = 0
    # median: stop a trial whose objective at a validation is worse than the median of earlier trials at that step.
    pruner: str = "median"
    # Validations the pruner judges: those of the last stage (earlier stages may trade one group for another on
    # purpose, e.g. an image-text-only stage that the blend recovers from), or from the start.
    prune_from: str = "last_stage"
    # The search folder (trials 0/, 1/, ... and search.db); null = <paths.output_root>/searches/<date>/<time>.
    # Give an existing one to continue an interrupted search.
    dir: Optional[str] = None
    # Set by curriculum-search on each trial's run: the Optuna trial id it reports its validations to.
    trial: Optional[int] = None

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"search.objective={self.objective} is not allowed: use one of {', '.join(OBJECTIVES)}.")
        if self.direction not in (None, "minimize", "maximize"):
            raise ConfigError(f"search.direction={self.direction} is not allowed: use minimize, maximize or null.")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"search.sampler={self.sampler} is not allowed: use {' or '.join(SAMPLERS)}.")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"search.pruner={self.pruner} is not allowed: use {' or '.join(PRUNERS)}.")
        if self.prune_from not in PRUNE_FROM:
            raise ConfigError(f"search.prune_from={self.prune_from} is not allowed: use {' or '.join(PRUNE_FROM)}.")
        positive("search.n_trials", self.n_trials)
        if self.startup_trials < 0:
            raise ConfigError(f"search.startup_trials={self.startup_trials} is not allowed: use 0 or more.")
        for group, weight in (self.weights or {}).items():
            if not isinstance(weight, (int, float)):
                raise ConfigError(f"search.weights.{group}={weight!r} is not allowed: give a number.")
        if self.weights is not None and not any(self.weights.values()):
            raise ConfigError("search.weights gives every group weight 0: the objective would always be 0.")

    def minimize(self) -> bool:
        """Whether a lower objective is better: as set, else for a loss."""
        return self.direction == "minimize" if self.direction else self.objective.endswith("loss")
