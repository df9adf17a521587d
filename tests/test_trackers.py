"""MLflow and W&B trackers: config, every metrics.csv column per step, the run's files, sweeps grouped, no step twice.

A kill and resume with MLflow is checked in tests/test_resume.py's kill chain (one tracker run, each step once).
"""

from __future__ import annotations

import csv
import glob
import os

import pytest

from conftest import read_json, run_cli
from curriculum.config import ConfigError, LoggerConfig
from curriculum.run.trackers import LEDGER, Tracker

ARGS = ["schedule.stages.align.steps=2", "schedule.stages.blend.steps=3", "data.micro_batch_size=4", "trainer.val_every_n_steps=3",
        "data.num_workers=0", "export.enabled=false", "trainer.enable_progress_bar=false"]


def csv_rows(run) -> list[dict]:
    with open(os.path.join(run, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def mlflow_client(root):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{os.path.abspath(os.path.join(root, 'mlflow.db'))}")


def mlflow_matches_csv(client, run_id: str, run_dir) -> None:
    """Every numeric metrics.csv column is the run's MLflow history: the same steps, once each, the same values
    (timings aside: after a kill, the tracker keeps those the killed process sent)."""
    rows = csv_rows(run_dir)
    columns = [k for k in rows[0] if k not in ("step", "stage")]
    assert set(client.get_run(run_id).data.metrics) == set(columns)
    for key in columns:
        expected = [(int(r["step"]), float(r[key])) for r in rows if r[key]]
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [s for s, _ in logged] == [s for s, _ in expected], key
        if not key.startswith("perf/"):
            assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), key


class Recorder:
    """A stand-in tracker logger that records what reaches it."""

    def __init__(self):
        self.sent = []

    def log_metrics(self, metrics, step):
        self.sent.append((step, dict(metrics)))

    def log_hyperparams(self, params):
        self.sent.append(("config", params))


def test_a_tracker_skips_what_it_already_holds_and_records_what_it_sent(tmp_path):
    """After a resume at step 3, rows the killed process sent (up to step 4's train row) are skipped, step 4's
    validation (not sent before the kill) goes, and the config is not sent again."""
    ledger = {"tracker": "mlflow", "run_id": "r", "config_logged": True, "step": 4, "keys": ["train/loss"]}
    inner = Recorder()
    tracker = Tracker("mlflow", inner, str(tmp_path), ledger)
    tracker.log_hyperparams({"seed": 0})
    tracker.log_metrics({"train/loss": 1.0}, step=3)
    tracker.log_metrics({"train/loss": 1.0}, step=4)
    tracker.log_metrics({"val/loss": 2.0}, step=4)
    tracker.log_metrics({"train/loss": 0.5, "lr/language": 1e-3}, step=5)
    assert inner.sent == [(4, {"val/loss": 2.0}), (5, {"train/loss": 0.5, "lr/language": 1e-3})]
    assert read_json(tmp_path / LEDGER) == {**ledger, "step": 5, "keys": ["lr/language", "train/loss"]}


def test_a_tracker_whose_package_is_missing_is_refused_with_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "mlflow") else real(name, *a))
    with pytest.raises(ConfigError, match=r"logger.tracker=wandb needs the wandb package: pip install 'curriculum\[wandb\]'"):
        LoggerConfig(tracker="wandb").check()
    with pytest.raises(ConfigError, match=r"logger.tracker=mlflow needs the mlflow package"):
        LoggerConfig(tracker="mlflow").check()
    with pytest.raises(ConfigError, match="logger.tracker=comet is not allowed: use mlflow, wandb or null"):
        LoggerConfig(tracker="comet").check()


@pytest.mark.slow
def test_mlflow_gets_the_config_every_row_and_the_files_and_a_sweep_is_one_parent_run(tmp_path, cache_dir):
    root = tmp_path / "outputs"
    sweep = root / "multirun" / "s"
    run_cli("train", "-m", "seed=0,1", "logger=mlflow", *ARGS, f"paths.output_root={root}", f"hydra.sweep.dir={sweep}")
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("curriculum")
    assert experiment.artifact_location == (root / "mlartifacts").as_uri()  # beside the store, not in the current folder
    runs = {r.data.tags["run_dir"]: r for r in client.search_runs([experiment.experiment_id])}
    parent = runs.pop(str(sweep))
    assert sorted(runs) == [str(sweep / "0"), str(sweep / "1")]
    for run_dir, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.info.run_name == os.path.relpath(run_dir, root)
        assert read_json(os.path.join(run_dir, LEDGER))["run_id"] == run.info.run_id
        params = run.data.params
        assert params["schedule.stages.align.steps"] == "2" and params["seed"] == run_dir[-1] and params["logger.tracker"] == "mlflow"
        mlflow_matches_csv(client, run.info.run_id, run_dir)
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"report.png", "plan.png", "plan.json", "status.json", "metrics.csv"} <= files


@pytest.mark.slow
def test_wandb_writes_an_offline_run_without_a_login_or_network(tmp_path, cache_dir):
    run = tmp_path / "run"
    home = tmp_path / "home"  # no ~/.netrc: not logged in
    home.mkdir()
    env = {"HOME": str(home), "WANDB_API_KEY": "", "WANDB_MODE": "", "WANDB_DIR": ""}
    run_cli("train", "logger=wandb", "logger.project=tests", *ARGS, f"hydra.run.dir={run}", env=env)
    run_id = read_json(run / LEDGER)["run_id"]
    (offline,) = glob.glob(str(run / "wandb" / f"offline-run-*-{run_id}"))
    files = set(os.listdir(os.path.join(offline, "files")))
    assert {"report.png", "plan.png", "plan.json", "status.json", "metrics.csv"} <= files
    # The run's records (config, history) are in its .wandb file, which `wandb sync` uploads.
    records = open(os.path.join(offline, f"run-{run_id}.wandb"), "rb").read()
    for key in ("train/loss_image_text", "val/loss_text_only", "mix/text_only", "schedule"):
        assert key.encode() in records, key


def test_a_resumed_run_continues_its_wandb_run_and_a_new_one_starts_its_own(tmp_path):
    """The W&B run id is kept in the run folder: a resume asks W&B for that run (resume=allow), a new run gets a new id."""
    from curriculum.config import RunConfig
    from curriculum.run.trackers import build_trackers

    cfg = RunConfig()
    cfg.logger.tracker, cfg.logger.offline, cfg.paths.output_root = "wandb", True, str(tmp_path)
    run = tmp_path / "2026-01-01" / "00-00-00"
    run.mkdir(parents=True)
    (first,) = build_trackers(cfg, str(run), None, None)
    run_id = read_json(run / LEDGER)["run_id"]
    assert first.inner._wandb_init["id"] == run_id and first.inner._wandb_init["name"] == "2026-01-01/00-00-00"
    (again,) = build_trackers(cfg, str(run), 3, str(tmp_path / "sweep"))
    assert again.inner._wandb_init["id"] == run_id and again.inner._wandb_init["resume"] == "allow"
    assert again.inner._wandb_init["group"] == str(tmp_path / "sweep")
    other = tmp_path / "2026-01-01" / "00-00-01"
    other.mkdir()
    (new,) = build_trackers(cfg, str(other), None, None)
    assert new.inner._wandb_init["id"] != run_id
