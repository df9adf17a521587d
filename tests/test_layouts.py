"""The same training on several processes as on one: uneven validation and generation over 2 and 3 gloo ranks."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from conftest import run_cli

from curriculum.run.datamodule import _RankSlices

BASE = [
    "schedule.stages.align.steps=2", "schedule.stages.blend.steps=2", "trainer.val_every_n_steps=2", "trainer.accelerator=cpu",
    "data.num_workers=0", "export.enabled=false", "trainer.enable_progress_bar=false",
    "eval.generate=true", "eval.max_samples_per_group=6", "eval.batch_size=4", "eval.max_new_tokens=4",
]
# A hang (a rank waiting in a collective the others never join) fails the test instead of blocking it.
HANG = 240


def columns(run, prefix: str) -> list[tuple[str, dict]]:
    """(step, {column: value}) of the metrics.csv rows that have columns starting with `prefix`."""
    with open(os.path.join(run, "metrics.csv"), newline="") as f:
        out = []
        for r in csv.DictReader(f):
            picked = {k: float(v) for k, v in r.items() if k.startswith(prefix) and v}
            if picked:
                out.append((r["step"], picked))
        return out


def assert_close(got, want, rel=1e-5):
    assert [s for s, _ in got] == [s for s, _ in want] and [sorted(r) for _, r in got] == [sorted(r) for _, r in want]
    for (step, g), (_, w) in zip(got, want):
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=rel), (step, k)


@pytest.mark.parametrize("batch, world", [(48, 2), (128, 2), (40, 3), (7, 3)])
def test_every_rank_gets_the_same_number_of_validation_batches_and_every_record_once(batch, world):
    order = np.arange(128)
    slices = [_RankSlices(order, batch, r, world).batches for r in range(world)]
    assert len({len(s) for s in slices}) == 1 and len(slices[0]) >= 1
    assert sorted(i for s in slices for b in s for i in b) == order.tolist()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache_dir, shapes):
    """The reference: one process, global batch 6."""
    run = tmp_path_factory.mktemp("one")
    run_cli("train", *BASE, "data.micro_batch_size=6", f"hydra.run.dir={run}")
    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [
        # FSDP: 128 validation records in batches of 48, 48, 32 over 2 ranks; one rank has an empty batch.
        ["trainer=fsdp", "trainer.precision=32-true", "model.dtype=float32", "model.gradient_checkpointing=false", "trainer.devices=2",
         "data.micro_batch_size=3", "data.val_micro_batch_size=48"],
        # DDP: one validation batch for 2 ranks (rank 1 would have none).
        ["trainer=ddp_cpu", "data.micro_batch_size=3", "data.val_micro_batch_size=128"],
        # DDP on 3 ranks, a rank count that divides nothing: 4 validation batches, generation chunks 2 per group.
        ["trainer=ddp_cpu", "trainer.devices=3", "data.micro_batch_size=2", "data.val_micro_batch_size=40"],
    ],
    ids=["fsdp-2", "ddp-2", "ddp-3"],
)
def test_uneven_validation_and_generation_finish_and_equal_one_process(one_process, tmp_path, layout):
    run = tmp_path / "run"
    run_cli("train", *BASE, *layout, f"hydra.run.dir={run}", timeout=HANG)
    assert_close(columns(run, "val/loss"), columns(one_process, "val/loss"))
    assert_close(columns(run, "eval/loss"), columns(one_process, "eval/loss"))
    answers = json.loads((run / "eval.json").read_text())["samples"]
    reference = json.loads((one_process / "eval.json").read_text())["samples"]
    assert [a["id"] for a in answers] == [r["id"] for r in reference] and len(answers) == 12
    assert all(a["prediction"] is not None for a in answers)


def test_a_process_on_a_later_node_has_a_rank_above_zero(monkeypatch):
    from curriculum.cli.common import process_rank

    for var in ("RANK", "SLURM_PROCID", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")
    assert process_rank() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert process_rank() == 6
    monkeypatch.setenv("RANK", "5")
    assert process_rank() == 5


NODES = [
    "schedule.stages.align.steps=2", "schedule.stages.blend.steps=4", "trainer.val_every_n_steps=3", "checkpoint.every_n_steps=2",
    "trainer.accelerator=cpu", "data.num_workers=0", "export.enabled=false", "trainer.enable_progress_bar=false", "logger.sample_ids=true",
]


@pytest.mark.slow
def test_two_nodes_train_as_one_process_and_resume_on_one_node_with_two_processes(tmp_path, cache_dir, shapes):
    """2 nodes x 1 process, started as a cluster launcher starts them (MASTER_ADDR/PORT, NODE_RANK, WORLD_SIZE,
    LOCAL_RANK), stop at step 3; resumed on 1 node x 2 processes: the metrics of 1 process with the same global batch."""
    import socket
    import subprocess
    import sys

    from conftest import REPO

    one, run = tmp_path / "one", tmp_path / "nodes"
    run_cli("train", *NODES, "data.micro_batch_size=4", f"hydra.run.dir={one}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "curriculum.cli.train", *NODES, "data.micro_batch_size=2", "trainer.strategy=ddp",
             "trainer.num_nodes=2", "trainer.devices=1", "trainer.max_steps=3", f"hydra.run.dir={run}"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node), "WORLD_SIZE": "2",
                 "LOCAL_RANK": "0", "PYTHONWARNINGS": "ignore"},
        )
        for node in (0, 1)
    ]
    for proc in nodes:
        _, err = proc.communicate(timeout=HANG)
        assert proc.returncode == 0, err[-3000:]
    assert (run / "train_rank1.log").exists()  # the second node logs to its own file, not into rank 0's train.log
    assert sorted(p.name for p in (run / "sample_ids").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    run_cli("train", f"resume={run}", "trainer.max_steps=null", "trainer.num_nodes=1", "trainer.devices=2", timeout=HANG)
    assert_close(columns(run, "train/"), columns(one, "train/"))
    assert_close(columns(run, "val/loss"), columns(one, "val/loss"))
    assert columns(run, "samples/") == columns(one, "samples/")
    assert "trainer.num_nodes: 2 -> 1" in (run / "resumes.jsonl").read_text()
