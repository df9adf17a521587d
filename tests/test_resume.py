"""Kill a real training run with SIGKILL, resume it, and get exactly the uninterrupted run's metrics."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, read_json, run_cli
from curriculum.callbacks import AtomicCheckpointIO

ARGS = [
    "schedule.stages.align.steps=4", "schedule.stages.blend.steps=8", "data.micro_batch_size=4",
    "trainer.accumulate_grad_batches=2", "trainer.val_every_n_steps=3", "checkpoint.every_n_steps=2",
    "data.num_workers=0", "export.enabled=false", "trainer.enable_progress_bar=false",
]


def rows(run) -> list[dict]:
    with open(os.path.join(run, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def start(run, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "curriculum.cli.train", *ARGS, *extra, f"hydra.run.dir={run}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def kill_when(proc: subprocess.Popen, ready, delay: float = 0.0, timeout: float = 300) -> None:
    """SIGKILL the process `delay` seconds after `ready()` first holds."""
    end = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.time() < end, "kill point not reached"
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def train_rows_at_least(run, step):
    def ready():
        try:
            return any(r["train/loss"] and int(r["step"]) >= step for r in rows(run))
        except (FileNotFoundError, KeyError):
            return False
    return ready


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir, shapes):
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference")
    run_cli("train", *ARGS, f"hydra.run.dir={run}")
    return rows(run)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "mid_stage",           # well inside the blend stage, likely inside a step's accumulation
        "stage_boundary",      # right after the align stage's checkpoint is written
        "mid_accumulation",    # just after a step's row: the next step's first micro-batch is running
        "during_checkpoint",   # while last.ckpt.tmp is being written
    ],
)
def test_killed_run_resumes_to_identical_metrics(point, reference, tmp_path):
    run = tmp_path / "run"
    proc = start(run)
    ckpt_tmp = run / "checkpoints" / "last.ckpt.tmp"
    ready, delay = {
        "mid_stage": (train_rows_at_least(run, 7), 0.05),
        "stage_boundary": (lambda: (run / "checkpoints" / "stage-align.ckpt").exists(), 0.0),
        "mid_accumulation": (train_rows_at_least(run, 5), 0.0),
        "during_checkpoint": (lambda: ckpt_tmp.exists() and (run / "checkpoints" / "last.ckpt").exists(), 0.0),
    }[point]
    kill_when(proc, ready, delay)
    assert read_json(run / "status.json")["status"] == "running"
    run_cli("train", f"resume={run}")
    assert rows(run) == reference
    assert read_json(run / "status.json")["status"] == "completed"
    assert not ckpt_tmp.exists()


@pytest.mark.slow
def test_resume_latest_picks_the_newest_run(reference, tmp_path):
    root = tmp_path / "outputs"
    run = root / "2026-01-01" / "00-00-00"
    proc = start(run, f"paths.output_root={root}")
    kill_when(proc, train_rows_at_least(run, 3))
    run_cli("train", "resume=latest", f"paths.output_root={root}")
    assert rows(run) == reference


def test_atomic_checkpoint_keeps_the_previous_file_when_a_save_dies(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def dies(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["global_step"] == 1
