"""The number a run reports to a schedule search (search.objective), at each validation and at its end.

A run started by `curriculum-search` (search.trial set) reports every validation's objective to its Optuna
trial, stops when the pruner says the trial is clearly worse than earlier ones, and writes objective.json.
"""

from __future__ import annotations

import logging
import os

import pytorch_lightning as pl

from curriculum.atomic import write_json
from curriculum.config import SearchConfig

log = logging.getLogger("curriculum")

OBJECTIVE = "objective.json"
STUDY = "search"
STORAGE = "search.db"


def objective_terms(metrics: dict, search: SearchConfig) -> dict[str, float] | None:
    """{group: value} of the objective's per-group metric in one row, or None when the row lacks a weighted group."""
    prefix = f"{search.objective}_"
    found = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix) and v not in ("", None)}
    groups = [g for g, w in search.weights.items() if w] if search.weights else sorted(found)
    if not groups or any(g not in found for g in groups):
        return None
    return {g: float(found[g]) for g in groups}


def objective_value(terms: dict[str, float], search: SearchConfig) -> float:
    """The weighted sum of the per-group terms."""
    weights = search.weights or {}
    return sum(weights.get(g, 1.0) * v for g, v in terms.items())


def final_objective(rows: list[dict], search: SearchConfig) -> dict | None:
    """{value, step, terms} from each weighted group's last value in metrics.csv rows, or None when one never appears."""
    last: dict[str, tuple[int, str]] = {}
    prefix = f"{search.objective}_"
    for row in rows:
        for k, v in row.items():
            if k.startswith(prefix) and v not in ("", None):
                last[k] = (int(row["step"]), v)
    terms = objective_terms({k: v for k, (_, v) in last.items()}, search)
    if terms is None:
        return None
    step = max(last[f"{prefix}{g}"][0] for g in terms)
    return {"objective": search.objective, "value": objective_value(terms, search), "step": step, "terms": terms}


def storage_url(search_dir: str) -> str:
    """The search's Optuna storage: a SQLite file in its folder (what lets an interrupted search continue)."""
    return f"sqlite:///{os.path.abspath(os.path.join(search_dir, STORAGE))}"


def make_pruner(search: SearchConfig, first_step: int = 0):
    """The configured Optuna pruner: median (none before `startup_trials` trials completed, nor before `first_step`) or none."""
    import optuna

    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials, n_warmup_steps=first_step)


class TrialReport(pl.Callback):
    """Reports each validation's objective to the run's Optuna trial and stops the run when the trial is pruned."""

    def __init__(self, search: SearchConfig):
        self.search = search
        self.trial = None
        self.pruned: str | None = None  # why, once pruned

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            first = pl_module.schedule.stages[-1].start_step if self.search.prune_from == "last_stage" else 0
            study = optuna.load_study(study_name=STUDY, storage=storage_url(self.search.dir), pruner=make_pruner(self.search, first),
                                      sampler=optuna.samplers.RandomSampler())
            self.trial = optuna.trial.Trial(study, self.search.trial)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        reason = None
        if trainer.is_global_zero and pl_module.last_validation is not None:
            step, metrics = pl_module.last_validation
            terms = objective_terms(metrics, self.search)
            if terms is not None:
                value = objective_value(terms, self.search)
                self.trial.report(value, step)
                if self.trial.should_prune():
                    reason = f"pruned at step {step}: {self.search.objective} objective {value:.4f} is worse than the median of earlier trials"
        # Every rank stops together.
        reason = trainer.strategy.broadcast(reason, src=0)
        if reason:
            self.pruned = reason
            log.info("%s", reason)
            trainer.should_stop = True


def write_objective(run_dir: str, rows: list[dict], search: SearchConfig) -> dict | None:
    """objective.json in the run folder (what curriculum-search reads back); None when the run has no value to report."""
    result = final_objective(rows, search)
    if result is not None:
        write_json(os.path.join(run_dir, OBJECTIVE), result)
    return result
