"""curriculum-search: the space from sweep syntax, the objective a run reports, a seeded study that continues after
an interruption with the same trials, and a real 4-trial search killed and continued, then reported."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import REPO, read_json, run_cli
from curriculum.cli.search import search_args
from curriculum.config import ConfigError, SearchConfig
from curriculum.report.searches import write_search_report
from curriculum.run.objective import final_objective, objective_terms
from curriculum.search.space import parse_space
from curriculum.search.study import Outcome, run_search

D = optuna.distributions


def test_sweep_syntax_becomes_optuna_distributions_and_other_overrides_are_shared():
    space = parse_space([
        "schedule.stages.blend.mix.text_only=interval(0,0.6)", "optim.lr=tag(log,interval(1e-4,1e-2))",
        "schedule.stages.align.steps=range(0,80,20)", "trainer.accumulate_grad_batches=tag(int,interval(1,4))",
        "experiment=curriculum/mixed,curriculum/align_blend", "seed=3", "data.micro_batch_size=4",
    ])
    assert space.params == {
        "schedule.stages.blend.mix.text_only": D.FloatDistribution(0.0, 0.6),
        "optim.lr": D.FloatDistribution(1e-4, 1e-2, log=True),
        "schedule.stages.align.steps": D.IntDistribution(0, 60, step=20),
        "trainer.accumulate_grad_batches": D.IntDistribution(1, 4),
        "experiment": D.CategoricalDistribution(["curriculum/mixed", "curriculum/align_blend"]),
    }
    assert space.fixed == ["seed=3", "data.micro_batch_size=4"]
    assert space.overrides({"optim.lr": 0.001, "schedule.stages.align.steps": 20}) == [
        "seed=3", "data.micro_batch_size=4", "optim.lr=0.001", "schedule.stages.align.steps=20"]
    with pytest.raises(ConfigError, match="at least one searched key"):
        parse_space(["seed=1"])
    with pytest.raises(ConfigError, match=r"search\.\* keys set the search itself"):
        parse_space(["search.seed=1,2"])


def test_the_objective_is_the_weighted_sum_of_the_last_per_group_values():
    rows = [
        {"step": "4", "val/loss_image_text": "2.0", "val/loss_text_only": "1.0", "val/loss": "1.5"},
        {"step": "9", "val/loss_image_text": "1.5", "val/loss_text_only": "", "train/loss": "1.0"},
        {"step": "10", "val/loss_image_text": "", "val/loss_text_only": "0.5"},
    ]
    assert final_objective(rows, SearchConfig()) == {"objective": "val/loss", "value": 2.0, "step": 10,
                                                     "terms": {"image_text": 1.5, "text_only": 0.5}}
    weighted = SearchConfig(weights={"image_text": 0.0, "text_only": 2.0})
    assert final_objective(rows, weighted)["value"] == 1.0
    # A validation row lacking a weighted group reports nothing (e.g. a stage without text-only validation samples).
    assert objective_terms({"val/loss_image_text": 1.0}, SearchConfig(weights={"text_only": 1.0})) is None
    assert final_objective(rows, SearchConfig(objective="eval/exact_match")) is None
    assert SearchConfig(objective="eval/exact_match").minimize() is False and SearchConfig().minimize() is True


def fake_trials(calls: list, stop_at: int | None = None):
    """A trial runner without training: objective (text_only - 0.3)^2 + steps / 100; KeyboardInterrupt at call `stop_at`."""

    def run(number, trial_id, overrides):
        calls.append(overrides)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        values = dict(o.split("=", 1) for o in overrides)
        return Outcome("completed", (float(values["schedule.stages.blend.mix.text_only"]) - 0.3) ** 2
                       + int(values["schedule.stages.align.steps"]) / 100)

    return run


def ended_params(folder) -> list[dict]:
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{folder}/search.db")
    return [t.params for t in study.trials if t.state.name == "COMPLETE"]


def test_a_seeded_search_stopped_mid_trial_and_continued_asks_for_the_trials_an_uninterrupted_one_asks_for(tmp_path):
    args = ["schedule.stages.blend.mix.text_only=interval(0,0.6)", "schedule.stages.align.steps=range(0,80,20)", "seed=1"]
    search = SearchConfig(n_trials=7, startup_trials=2, seed=5)
    space = parse_space(args)
    straight = []
    run_search(str(tmp_path / "a"), search, space, fake_trials(straight), args)
    cut = []
    with pytest.raises(KeyboardInterrupt):
        run_search(str(tmp_path / "b"), search, space, fake_trials(cut, stop_at=4), args)
    run_search(str(tmp_path / "b"), search, space, fake_trials(cut), args)
    assert ended_params(tmp_path / "b") == ended_params(tmp_path / "a") and len(ended_params(tmp_path / "a")) == 7
    assert cut[3] == cut[4] == straight[3]  # the interrupted trial ran again with its values
    # TPE took over after the 2 random trials: its trials differ from a random sampler's.
    rand = []
    run_search(str(tmp_path / "c"), SearchConfig(n_trials=7, startup_trials=2, seed=5, sampler="random"), space, fake_trials(rand), args)
    assert rand[:2] == straight[:2] and rand[2:] != straight[2:]
    # A search folder continues only the search it holds.
    with pytest.raises(ConfigError, match="holds a search with other overrides"):
        run_search(str(tmp_path / "a"), search, parse_space(args[:2] + ["seed=2"]), fake_trials([]), args[:2] + ["seed=2"])


def test_a_search_folder_alone_continues_its_search_with_new_settings(tmp_path):
    folder = tmp_path / "s"
    args = ["schedule.stages.blend.mix.text_only=interval(0,0.6)", "schedule.stages.align.steps=range(0,80,20)"]
    run_search(str(folder), SearchConfig(n_trials=2), parse_space(args), fake_trials([]), args)
    assert search_args([f"search.dir={folder}", "search.n_trials=3"]) == [*args, f"search.dir={folder}", "search.n_trials=3"]
    with pytest.raises(ConfigError, match="curriculum-search sets search.trial itself"):
        search_args(["search.trial=3"])


def start_search(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "curriculum.cli.search", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_four_trial_search_killed_mid_trial_continues_and_reports(tmp_path, cache_dir):
    folder = tmp_path / "search"
    args = ["schedule.stages.blend.mix.text_only=interval(0,0.6)", "schedule.stages.align.steps=range(2,6,2)",
            "schedule.stages.blend.steps=4", "trainer.val_every_n_steps=2", "data.micro_batch_size=4", "data.num_workers=0",
            "export.enabled=false", "trainer.enable_progress_bar=false", "search.n_trials=4", "search.startup_trials=2",
            f"search.dir={folder}", f"paths.output_root={tmp_path / 'outputs'}"]
    proc = start_search(*args)
    end = time.time() + 300
    while not (folder / "1" / "metrics.csv").exists():  # trial 1 has trained a step
        assert proc.poll() is None and time.time() < end, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The trial's process died with the search (no orphan keeps training in the folder).
    deadline = time.time() + 30
    from curriculum.run import lock as run_lock
    while run_lock.holder(str(folder / "1")) and time.time() < deadline:
        time.sleep(0.1)
    assert run_lock.holder(str(folder / "1")) is None

    done = run_cli("search", f"search.dir={folder}")
    assert "search folder" in done.stdout and "best: trial" in done.stdout
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{folder}/search.db")
    trials = study.trials
    assert trials[1].user_attrs.get("interrupted") and trials[2].user_attrs["retry_of"] == 1
    assert trials[2].params == trials[1].params
    ended = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(ended) == 4
    for t in ended:
        run = folder / str(t.number)
        status = read_json(run / "status.json")["status"]
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if t.state.name == "COMPLETE":
            # The value the run wrote and returned is its metrics' final per-group validation losses, summed.
            assert status == "completed" and t.value == read_json(run / "objective.json")["value"]
            assert t.value == pytest.approx(float(rows[-1]["val/loss_image_text"]) + float(rows[-1]["val/loss_text_only"]))
        else:
            assert status == "pruned" and "worse than the median" in read_json(run / "status.json")["reason"]
    report = run_cli("report", str(folder))
    assert "best: trial" in report.stdout
    with open(folder / "trials.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and [r["state"] == "interrupted" for r in table] == [False, True, False, False, False]
    assert (folder / "search.png").stat().st_size > 10_000
    assert json.loads((folder / "search.json").read_text())["space"]["schedule.stages.align.steps"] == "int [2, 4, step 2]"
    assert write_search_report(str(folder))[0].startswith("best: trial")


def test_a_search_whose_trials_keep_failing_stops_after_three_naming_the_reason(tmp_path):
    args = ["schedule.stages.blend.mix.text_only=interval(0,0.6)"]
    calls = []

    def broken(number, trial_id, overrides):
        calls.append(number)
        return Outcome("failed", reason="DataFileError: data.json: no such file")

    with pytest.raises(ConfigError, match=r"search stopped: trials 0, 1, 2 failed in a row, the last with: DataFileError: data.json"):
        run_search(str(tmp_path / "s"), SearchConfig(n_trials=10), parse_space(args), broken, args)
    assert calls == [0, 1, 2]
