"""The search loop: an Optuna study in the search folder (search.db), each trial a `curriculum-train` run in <folder>/<n>/.

Seeded and reproducible: the sampler is seeded anew for each trial from search.seed and the number of trials that
ended, so a search interrupted and continued asks for the same trials as one that ran through. A trial that was
running when its search was stopped is marked interrupted and runs again with the same values.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from curriculum.atomic import write_json
from curriculum.config import ConfigError, SearchConfig
from curriculum.run import lock as run_lock
from curriculum.run.objective import OBJECTIVE, STUDY, make_pruner, storage_url
from curriculum.search.space import Space

log = logging.getLogger("curriculum")

SETTINGS = "search.json"
# Failed trials in a row that stop a search.
MAX_FAILED_IN_A_ROW = 3


@dataclass
class Outcome:
    """How a trial's run ended: completed with an objective, pruned, or failed with a reason."""

    state: str  # completed | pruned | failed
    value: float | None = None
    reason: str | None = None


# (trial number, Optuna trial id, overrides) -> how its run ended.
RunTrial = Callable[[int, int, list[str]], Outcome]


def make_sampler(search: SearchConfig, ended: int):
    """The configured sampler, seeded for the trial that follows `ended` ended trials."""
    import optuna

    seed = search.seed * 100_003 + ended
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials)


def open_study(folder: str, search: SearchConfig, space: Space, args: list[str]):
    """The search's study: created in a new folder, continued in one that holds the same search (else refused).

    `args`: the command's overrides, saved so that `curriculum-search search.dir=<folder>` alone continues it.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # What the trials mean; n_trials, the sampler, its seed and the pruner may change when a search continues.
    settings = {"overrides": [a for a in space.fixed if not a.startswith("search.")], "space": space.describe(),
                "objective": search.objective, "weights": search.weights, "minimize": search.minimize()}
    path = os.path.join(folder, SETTINGS)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        changed = [k for k in settings if saved.get(k) != settings[k]]
        if changed:
            raise ConfigError(
                f"search.dir={folder} holds a search with other {', '.join(changed)}: continue it with `curriculum-search "
                "search.dir=<folder>` (search.* settings may change), or give a new search.dir."
            )
    write_json(path, {**settings, "args": args})
    return optuna.create_study(study_name=STUDY, storage=storage_url(folder), load_if_exists=True, pruner=make_pruner(search),
                               direction="minimize" if search.minimize() else "maximize")


def saved_args(folder: str) -> list[str]:
    """The overrides a search folder's search was started (or last continued) with."""
    with open(os.path.join(folder, SETTINGS), encoding="utf-8") as f:
        return json.load(f)["args"]


def ended_trials(study) -> list:
    """Trials that ran to an end (completed, pruned or failed), not those cut off by a stopped search."""
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
            and not t.user_attrs.get("interrupted")]


def requeue_interrupted(study, folder: str) -> list[int]:
    """Trials left running by a search that was stopped: marked interrupted, and their values asked for again."""
    from optuna.trial import TrialState

    numbers = []
    for t in study.get_trials(states=(TrialState.RUNNING,)):
        run_dir = os.path.join(folder, str(t.number))
        who = run_lock.holder(run_dir) if os.path.isdir(run_dir) else None
        if who:
            raise ConfigError(f"trial {t.number} of search {folder} is still running in process {who['pid']} on {who['host']}; "
                              "wait for it to end or stop it first.")
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)  # a finished trial takes no attribute: set first
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        numbers.append(t.number)
    return numbers


def run_search(folder: str, search: SearchConfig, space: Space, run_trial: RunTrial, args: list[str]) -> object:
    """Run trials until search.n_trials have ended; returns the study. `args`: the command's overrides (see open_study)."""
    from optuna.trial import TrialState

    os.makedirs(folder, exist_ok=True)
    who = run_lock.holder(folder)
    if who:
        raise ConfigError(f"search {folder} is running in process {who['pid']} on {who['host']}; wait for it to end or stop it first.")
    run_lock.acquire(folder)
    try:
        study = open_study(folder, search, space, args)
        again = requeue_interrupted(study, folder)
        if again:
            log.info("search %s continues; interrupted trial(s) %s run again", folder, ", ".join(map(str, again)))
        failed: list[int] = []
        while len(ended := ended_trials(study)) < search.n_trials:
            study.sampler = make_sampler(search, len(ended))
            trial = study.ask(space.params)
            values = {k: trial.params[k] for k in space.params}
            log.info("trial %d: %s", trial.number, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))
            start = time.time()
            outcome = run_trial(trial.number, trial._trial_id, space.overrides(values))
            trial.set_user_attr("seconds", round(time.time() - start, 1))
            if outcome.reason:
                trial.set_user_attr("reason", outcome.reason)
            if outcome.state == "completed":
                study.tell(trial, outcome.value)
            else:
                study.tell(trial, state=TrialState.PRUNED if outcome.state == "pruned" else TrialState.FAIL)
            log.info("trial %d %s%s (%.0f s)", trial.number, outcome.state,
                     f": objective {outcome.value:.6g}" if outcome.value is not None else f": {outcome.reason}", time.time() - start)
            failed = failed + [trial.number] if outcome.state == "failed" else []
            if len(failed) == MAX_FAILED_IN_A_ROW:
                # The same broken data or setting would fail every further trial too.
                raise ConfigError(f"search stopped: trials {', '.join(map(str, failed))} failed in a row, the last with: {outcome.reason} "
                                  f"(see {os.path.join(folder, str(trial.number), 'console.log')}); fix it and continue with "
                                  f"curriculum-search search.dir={folder}")
        return study
    finally:
        run_lock.release(folder)


def trial_runner(folder: str) -> RunTrial:
    """Run each trial as its own `curriculum-train` process in <folder>/<n>/ (GPU memory is freed between trials, a crashing
    trial does not end the search, and a trial may use several devices); its output goes to <folder>/<n>/console.log."""

    def run(number: int, trial_id: int, overrides: list[str]) -> Outcome:
        run_dir = os.path.join(folder, str(number))
        os.makedirs(run_dir, exist_ok=True)
        args = [*overrides, f"search.dir={folder}", f"search.trial={trial_id}", f"hydra.run.dir={run_dir}"]
        with open(os.path.join(run_dir, "console.log"), "w", encoding="utf-8") as out:
            code = subprocess.call([sys.executable, "-m", "curriculum.cli.train", *args], stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent)
        return read_outcome(run_dir, code)

    return run


def _die_with_parent() -> None:
    """Linux: the trial gets SIGKILL when the search process dies (a killed search leaves no trial running on)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def read_outcome(run_dir: str, code: int) -> Outcome:
    """A trial run's end from its folder: status.json, objective.json, or the last line of its console output."""
    status = _json(os.path.join(run_dir, "status.json"))
    if status.get("status") == "pruned":
        return Outcome("pruned", reason=status.get("reason"))
    if status.get("status") == "completed":
        result = _json(os.path.join(run_dir, OBJECTIVE))
        if "value" in result:
            return Outcome("completed", float(result["value"]))
        return Outcome("failed", reason="the run logged no value of the objective (see its train.log)")
    reason = status.get("reason") or _last_line(os.path.join(run_dir, "console.log")) or f"exit code {code}"
    return Outcome("failed", reason=reason)


def _json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _last_line(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1][:300] if lines else None
