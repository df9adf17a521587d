"""Kill a real training run with SIGKILL, resume it, and get exactly the uninterrupted run's metrics."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, png, read_json, run_cli
from lightning_fabric.plugins.io import torch_io

from curriculum.run.checkpoints import AtomicCheckpointIO
from curriculum.run.trackers import LEDGER
from test_trackers import mlflow_client, mlflow_matches_csv

ARGS = [
    "schedule.stages.align.steps=4", "schedule.stages.blend.steps=8", "data.micro_batch_size=4",
    "trainer.accumulate_grad_batches=2", "trainer.val_every_n_steps=3", "checkpoint.every_n_steps=2",
    "data.num_workers=0", "export.enabled=false", "trainer.enable_progress_bar=false",
]


def rows(run) -> list[dict]:
    """metrics.csv rows without the wall-clock throughput columns (perf/*), which no two runs share."""
    with open(os.path.join(run, "metrics.csv"), newline="") as f:
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in csv.DictReader(f)]


def start_resume(*overrides) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "curriculum.cli.train", *overrides, "trainer.max_steps=null"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def kill_when(proc: subprocess.Popen, ready, delay: float = 0.0, poll: float = 0.002, timeout: float = 300) -> None:
    """SIGKILL the process `delay` seconds after `ready()` first holds (checked every `poll` seconds)."""
    end = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.time() < end, "kill point not reached"
        time.sleep(poll)
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
def test_a_run_stopped_early_then_killed_at_every_kind_of_point_resumes_to_identical_metrics(reference, tmp_path):
    """One run, resumed after each interruption, ends with the uninterrupted run's metrics.csv row by row.

    Stopping early (trainer.max_steps) changes nothing in an update (the LR follows the stages), and
    a SIGKILL at any point loses nothing: right after a stage's checkpoint, inside a step's
    accumulation, with a half-written last.ckpt.tmp left behind, well inside a stage. One chain keeps the
    suite fast; the first resume finds the run with resume=latest, and TensorBoard holds each
    step once, with the CSV's value (the killed processes' later events are purged), as does the run's one
    MLflow run (the resumed processes skip the steps the killed ones sent).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "outputs"
    run = root / "2026-01-01" / "00-00-00"
    checkpoints = run / "checkpoints"
    ckpt_tmp = checkpoints / "last.ckpt.tmp"
    first = ["logger=tensorboard", "logger.tracker=mlflow", f"paths.output_root={root}", f"hydra.run.dir={run}"]
    run_cli("train", *ARGS, *first, "trainer.max_steps=3")
    assert read_json(run / "status.json")["status"] == "completed" and len(rows(run)) < len(reference)
    kills = [
        ("resume=latest", lambda: (checkpoints / "stage-align.ckpt").exists(), 0.0, 0.002),  # stage boundary
        (f"resume={run}", train_rows_at_least(run, 5), 0.0, 0.002),  # the next step's first micro-batch runs
        (f"resume={run}", train_rows_at_least(run, 7), 0.0, 0.002),
        (f"resume={run}", train_rows_at_least(run, 9), 0.05, 0.002),  # well inside the stage
    ]
    for k, (how, ready, delay, poll) in enumerate(kills):
        proc = start_resume(how, f"paths.output_root={root}")
        kill_when(proc, ready, delay, poll)
        assert read_json(run / "status.json")["status"] == "running", how
        if k == 2:
            # What a kill while last.ckpt is written leaves (the write lasts milliseconds, too short to hit reliably
            # under load): a half-written last.ckpt.tmp beside the whole previous last.ckpt; the next resume ignores it.
            whole = (checkpoints / "last.ckpt").read_bytes()
            ckpt_tmp.write_bytes(whole[: len(whole) // 2])
    run_cli("train", f"resume={run}", "trainer.max_steps=null")
    assert rows(run) == reference
    assert read_json(run / "status.json")["status"] == "completed"
    assert not ckpt_tmp.exists()
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    # One events file per process that logged before it died (a kill can come before the first row).
    assert 2 <= len(list((run / "tensorboard").glob("events.*"))) <= 2 + len(kills)
    for key in ("train/loss", "val/loss"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        expected = [(int(r["step"]), float(r[key])) for r in reference if r[key]]
        assert [s for s, _ in logged] == [s for s, _ in expected], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), key
    client = mlflow_client(root)
    (tracked,) = client.search_runs([client.get_experiment_by_name("curriculum").experiment_id])
    assert tracked.info.run_id == read_json(run / LEDGER)["run_id"] and tracked.info.status == "FINISHED"
    mlflow_matches_csv(client, tracked.info.run_id, run)


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_again_and_a_live_run_is_not_resumed(reference, tmp_path):
    """A requeued job can repeat `resume=<run>` whenever it was killed: during start-up (no status.json yet) or
    before the first checkpoint, the run starts again from step 0 in its folder; while a process trains the run,
    a second one is refused, naming it; once that process is killed, the resume goes on. The end equals the
    uninterrupted run."""
    run = tmp_path / "run"
    late = [*ARGS, "checkpoint.every_n_steps=100"]  # the first checkpoint comes at the end of align (step 4)
    first = subprocess.Popen([sys.executable, "-m", "curriculum.cli.train", *late, f"hydra.run.dir={run}"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = lambda: (run / ".hydra" / "overrides.yaml").exists() and (run / ".hydra" / "overrides.yaml").stat().st_size  # noqa: E731
    kill_when(first, started)  # start-up: Hydra's files, nothing of ours yet
    assert not (run / "status.json").exists()
    second = start_resume(f"resume={run}")
    # Frozen (alive, holding the run) once it trains, so the refusal is checked before its first checkpoint.
    kill_when(second, lambda: train_rows_at_least(run, 1)() and second.send_signal(signal.SIGSTOP) is None and _refused_while(run, second.pid))
    assert not (run / "checkpoints" / "last.ckpt").exists()
    proc = run_cli("train", f"resume={run}", "trainer.max_steps=null")
    assert "took over the lock of process" in proc.stderr and "again from step 0" in proc.stderr
    assert rows(run) == reference
    assert read_json(run / "status.json")["status"] == "completed"


def _refused_while(run, pid: int) -> bool:
    """A resume of `run` while process `pid` trains it is refused in one sentence naming that process."""
    proc = run_cli("train", f"resume={run}", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: resume: {run} is still being trained by process {pid} on ")
    return True


def test_atomic_checkpoint_keeps_the_previous_file_when_a_save_dies(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def dies(checkpoint, filepath):
        # The process dies halfway through writing the file.
        with open(filepath, "wb") as out:
            out.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_io, "_atomic_save", dies)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["global_step"] == 1


def assert_rows_close(got: list[dict], want: list[dict], rel: float = 1e-6) -> None:
    """Same rows, steps and columns; numbers equal within float rounding (a new layout sums in another order)."""
    assert [(r["step"], sorted(k for k, v in r.items() if v)) for r in got] == [(r["step"], sorted(k for k, v in r.items() if v)) for r in want]
    for g, w in zip(got, want):
        for k, v in w.items():
            if not v:
                continue
            try:
                assert float(g[k]) == pytest.approx(float(v), rel=rel, abs=1e-9), (w["step"], k)
            except ValueError:
                assert g[k] == v, (w["step"], k)


@pytest.mark.slow
def test_a_resume_that_changes_the_accumulation_trains_the_uninterrupted_steps(reference, tmp_path):
    """Stopped at step 3 with micro 4 x accumulation 2, resumed as micro 2 x accumulation 4 (global batch 8):
    every later step, validation and stage boundary falls where the uninterrupted run has it."""
    run = tmp_path / "run"
    run_cli("train", *ARGS, "trainer.max_steps=3", f"hydra.run.dir={run}")
    run_cli("train", f"resume={run}", "trainer.max_steps=null", "data.micro_batch_size=2", "trainer.accumulate_grad_batches=4")
    assert_rows_close(rows(run), reference)
    assert rows(run)[-1]["samples/image_text"] == reference[-1]["samples/image_text"]


@pytest.mark.slow
def test_the_first_step_after_a_resume_uses_the_new_schedules_lr(tmp_path):
    """Stopped at the end of `align` and resumed with another `blend` LR: the same run as one started with it."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = [*ARGS, "trainer.val_every_n_steps=4"]  # the stop at step 4 validates where the uninterrupted run does
    run_cli("train", *args, "schedule.stages.blend.lr=1e-5", f"hydra.run.dir={ref}")
    run_cli("train", *args, "trainer.max_steps=4", f"hydra.run.dir={run}")
    run_cli("train", f"resume={run}", "trainer.max_steps=null", "schedule.stages.blend.lr=1e-5")
    assert_rows_close(rows(run), rows(ref), rel=1e-9)


def global_order(run) -> list[str]:
    """Sample ids in global position order, rebuilt from every rank's sample_ids log."""
    entries = []
    for path in sorted((run / "sample_ids").glob("rank*.jsonl")):
        rank = int(path.stem[4:])
        for line in path.read_text().splitlines():
            e = json.loads(line)
            entries.append((e["step"], e["micro_step"], rank, e["ids"]))
    return [i for *_, ids in sorted(entries) for i in ids]


@pytest.mark.slow
def test_one_process_run_resumes_on_two_ddp_processes_in_the_same_global_order(tmp_path, cache_dir, shapes):
    base = [
        "schedule.stages.align.steps=2", "schedule.stages.blend.steps=4", "data.micro_batch_size=4",
        "trainer.accumulate_grad_batches=2", "data.num_workers=0", "export.enabled=false",
        "trainer.enable_progress_bar=false", "logger.sample_ids=true", "trainer.val_every_n_steps=0",
    ]
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_cli("train", *base, f"hydra.run.dir={ref}")
    run_cli("train", *base, "trainer.max_steps=3", f"hydra.run.dir={run}")
    # Same global batch of 8: 1 rank x micro 4 x accumulation 2, then 2 ranks x micro 2 x accumulation 2.
    run_cli("train", f"resume={run}", "trainer.max_steps=null", "trainer.devices=2", "trainer.strategy=ddp",
            "trainer.accelerator=cpu", "data.micro_batch_size=2")
    assert (run / "sample_ids" / "rank1.jsonl").exists()
    assert len(global_order(ref)) == 6 * 8
    assert global_order(run) == global_order(ref)
    # And the same training: every step's row within float rounding (ranks sum the step's losses in another order).
    # (The first process, stopped early at step 3, also validated there: a row the uninterrupted run does not have.)
    trained = lambda r: [row for row in rows(r) if row["train/loss"]]  # noqa: E731
    assert_rows_close(trained(run), trained(ref), rel=1e-5)
    assert "trainer.devices: 1 -> 2" in (run / "resumes.jsonl").read_text()


@pytest.mark.parametrize(
    "override, key",
    [
        ("seed=5", "seed"),
        ("data.max_length=64", "data.max_length"),
        ("schedule.stages.align.steps=3", "schedule.stages.align.steps"),
        ("data.micro_batch_size=2", "global batch"),
        ("schedule.stages.blend.ramp.shape=cosine", "schedule.stages.blend.ramp.shape"),
    ],
)
def test_overrides_that_change_the_past_are_refused(override, key, finished_run):
    proc = run_cli("train", f"resume={finished_run}", override, check=False)
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: resume:") and key in message


def snapshot(folder) -> dict:
    """Every file and folder under `folder` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.stat(path)
            out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return out


def test_a_refused_resume_leaves_the_run_folder_untouched(finished_run):
    before = snapshot(finished_run)
    proc = run_cli("train", f"resume={finished_run}", "seed=5", check=False)
    assert proc.returncode == 1 and "error: resume: `seed` cannot change" in proc.stderr
    assert snapshot(finished_run) == before


def test_resuming_a_complete_run_says_so_and_changes_nothing(finished_run):
    before = snapshot(finished_run)
    proc = run_cli("train", f"resume={finished_run}")  # it stopped at its trainer.max_steps=3
    assert "is complete: it trained all 3 steps" in proc.stderr and "raise trainer.max_steps" in proc.stderr
    assert snapshot(finished_run) == before


def test_a_run_killed_after_its_last_checkpoint_finishes_its_export_on_resume(finished_run, tmp_path):
    """Killed after the final checkpoint, before "completed": resuming trains nothing and does what was left."""
    import shutil

    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "status.json").write_text('{"status": "running", "reason": null}')
    before = rows(run)
    proc = run_cli("train", f"resume={run}", "export.enabled=true")
    assert "is complete" not in proc.stderr
    assert read_json(run / "status.json")["status"] == "completed" and rows(run) == before
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    exported = load_file(run / "export" / "model.safetensors")
    projector = {k.split("multi_modal_projector.")[1]: v for k, v in saved.items() if "multi_modal_projector." in k}
    assert projector and all(torch.equal(v, exported[f"multi_modal_projector.{k}"]) for k, v in projector.items())


def test_a_resume_checks_and_reads_its_records_once(finished_run, tmp_path, monkeypatch):
    """The command's pre-flight (before Hydra) and the training it starts share one config check and one data read."""
    import shutil
    import sys

    import curriculum.run.resume as resume
    from curriculum.cli import train as train_cli

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    calls = {"prepare": 0, "data": 0}
    prepare, load = resume.prepare, resume.load_checked_data

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(resume, "prepare", counted("prepare", prepare))
    monkeypatch.setattr(resume, "load_checked_data", counted("data", load))
    monkeypatch.setattr(sys, "argv", ["curriculum-train", f"resume={run}", "trainer.max_steps=4"])
    train_cli.main()
    assert calls == {"prepare": 1, "data": 1}
    assert read_json(run / "status.json")["status"] == "completed" and int(rows(run)[-1]["step"]) == 3


def test_changes_to_the_future_are_accepted_and_recorded(finished_run):
    from curriculum.config import validate
    from curriculum.run.resume import apply_overrides, prepare, saved_config

    cfg = validate(apply_overrides(saved_config(finished_run), [f"resume={finished_run}"]))
    cfg.resume = str(finished_run)
    r = prepare(cfg, str(finished_run), ["schedule.stages.blend.steps=9", "+schedule.stages.extra.steps=3",
                                         "+schedule.stages.extra.mix={text_only: 1.0}", "checkpoint.every_n_steps=1"])
    assert r.step == 3 and r.cfg.schedule.stages["blend"].steps == 9 and "extra" in r.cfg.schedule.stages
    assert any(c.startswith("checkpoint.every_n_steps") for c in r.changes)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir, shapes):
    """A run stopped after 3 of its 6 steps (inside `blend`, whose ramp is already done)."""
    run = tmp_path_factory.mktemp("finished")
    run_cli("train", "schedule.stages.align.steps=2", "schedule.stages.blend.steps=4", "schedule.stages.blend.ramp.steps=1",
            "schedule.stages.blend.ramp.fraction=null", "trainer.max_steps=3", "data.num_workers=0", "export.enabled=false", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run}")
    return run


def test_resume_latest_takes_the_newest_run_that_can_continue(tmp_path):
    from curriculum.config import ConfigError
    from curriculum.run.resume import find_run

    def folder(name, status, checkpoint=False, job="train"):
        d = tmp_path / "2026-01-01" / name
        (d / ".hydra").mkdir(parents=True)
        for f, text in (("config.yaml", "seed: 0\n"), ("hydra.yaml", f"hydra:\n  job:\n    name: {job}\n"), ("overrides.yaml", "[]\n")):
            (d / ".hydra" / f).write_text(text)
        if status:
            (d / "status.json").write_text(f'{{"status": "{status}"}}\n')
        if checkpoint:
            (d / "checkpoints").mkdir()
            (d / "checkpoints" / "last.ckpt").write_bytes(b"")
        return d

    def age(d, t):
        os.utime(d / ".hydra" / "config.yaml", (t, t))

    run = folder("00-00-00", status="running", checkpoint=True)
    plan = folder("00-00-01", status=None, job="plan")  # a later curriculum-plan folder
    folder("00-00-02", status="failed")  # a later run that failed before its first checkpoint: not continued blindly
    for k, d in enumerate(sorted((tmp_path / "2026-01-01").iterdir())):
        age(d, 1000 + k)
    assert find_run("latest", str(tmp_path)) == str(run)
    with pytest.raises(ConfigError, match="is not a training run: .* was not made by curriculum-train"):
        find_run(str(plan), str(tmp_path))
    # Killed during start-up, after Hydra's files: the newest run that can continue (from step 0).
    killed = folder("00-00-03", status=None)
    age(killed, 2000)
    assert find_run("latest", str(tmp_path)) == str(killed)
    # Killed while Hydra wrote its files: nothing says what it was.
    (killed / ".hydra" / "overrides.yaml").write_text("")
    with pytest.raises(ConfigError, match=r"\.hydra is incomplete .* start it again with its own command"):
        find_run(str(killed), str(tmp_path))


def fake_run(tmp_path, done: int, *overrides: str):
    """A run folder with the default config (plus overrides) and a last.ckpt at step `done`."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from curriculum.conf_path import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    (tmp_path / ".hydra").mkdir(parents=True)
    (tmp_path / "checkpoints").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    torch.save({"global_step": done}, tmp_path / "checkpoints" / "last.ckpt")
    return tmp_path


def test_growing_the_current_stage_keeps_its_fraction_ramp_length(tmp_path):
    from curriculum.config import ConfigError, validate
    from curriculum.run.resume import apply_overrides, prepare, saved_config

    # Default blend ramp: a quarter of the stage, 2 of 8 steps; the run stopped at step 3 (inside blend).
    run = fake_run(tmp_path, 3, "schedule.stages.align.steps=2", "schedule.stages.blend.steps=8")
    cfg = validate(apply_overrides(saved_config(run), [f"resume={run}"]))
    cfg.resume = str(run)
    r = prepare(cfg, str(run), ["schedule.stages.blend.steps=12"])
    ramp = r.cfg.schedule.stages["blend"].ramp
    assert r.cfg.schedule.stages["blend"].steps == 12 and (ramp.steps, ramp.fraction) == (2, None)
    assert "schedule.stages.blend.ramp.fraction: 0.25 -> None" in r.changes
    # Asking for another ramp length in the stage already under way changes its past.
    with pytest.raises(ConfigError, match="schedule.stages.blend.ramp.fraction"):
        prepare(cfg, str(run), ["schedule.stages.blend.steps=12", "schedule.stages.blend.ramp.fraction=0.5"])


def test_growing_the_current_stage_keeps_its_warmup_length(tmp_path):
    from curriculum.config import ConfigError, validate
    from curriculum.run.resume import apply_overrides, prepare, saved_config

    # blend warms up over 25% of its 8 steps (2); the run stopped at step 3, inside blend.
    run = fake_run(tmp_path, 3, "schedule.stages.align.steps=2", "schedule.stages.blend.steps=8", "schedule.stages.blend.warmup_fraction=0.25")
    cfg = validate(apply_overrides(saved_config(run), [f"resume={run}"]))
    cfg.resume = str(run)
    blend = prepare(cfg, str(run), ["schedule.stages.blend.steps=16"]).cfg.schedule.stages["blend"]
    assert (blend.steps, blend.warmup_steps, blend.warmup_fraction) == (16, 2, None)
    for change in (["schedule.stages.blend.warmup_fraction=0.5"], ["schedule.stages.blend.lr=0.1"], ["schedule.stages.align.scheduler=linear"]):
        with pytest.raises(ConfigError, match="changes what the run already trained"):
            prepare(cfg, str(run), change)


@pytest.mark.slow
def test_resume_refuses_data_files_whose_records_changed(tmp_path, cache_dir):
    img = png(tmp_path / "a.png")
    lines = [{"id": f"i{k}", "image": img, "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]} for k in range(6)]
    lines += [{"id": f"t{k}", "conversations": [{"from": "human", "value": f"{k}+1?"}, {"from": "gpt", "value": f"{k + 1}."}]} for k in range(6)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    run = tmp_path / "run"
    run_cli("train", f"data.train_files=[{data}]", "schedule.stages.align.steps=2", "schedule.stages.blend.steps=4",
            "trainer.max_steps=3", "data.micro_batch_size=2", "data.num_workers=0", "export.enabled=false",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run}")
    with open(data, "a") as f:
        f.write(json.dumps({"id": "t-new", "conversations": [{"from": "human", "value": "New?"}, {"from": "gpt", "value": "Yes."}]}) + "\n")
    plan_before = (run / "plan.json").read_text()
    proc = run_cli("train", f"resume={run}", "trainer.max_steps=null", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: resume: the data's records changed since the checkpoint (changed since: {data} (edited)), so the sample stream "
        "would differ; restore the files or start a new run."
    )
    assert (run / "plan.json").read_text() == plan_before


def test_stream_loader_state_is_the_position_and_a_mismatch_is_refused():
    from curriculum.run.datamodule import StreamLoader

    at = {"position": 48}
    loader = StreamLoader(list(range(4)), position=lambda: at["position"])
    state = loader.state_dict()
    assert state == {"position": 48}
    loader.load_state_dict(state)
    at["position"] = 56
    with pytest.raises(RuntimeError, match="stream position 48 differs from the restored 56"):
        loader.load_state_dict(state)


def test_resume_refuses_a_new_stage_length_that_moves_a_started_megabatch(tmp_path):
    from curriculum.config import ConfigError, validate
    from curriculum.run.resume import apply_overrides, prepare, saved_config

    # Global batch 8, megabatch of 4 steps; blend has 10 steps, so its last megabatch is blend steps 8-9.
    def resume_at(done_in_blend):
        run = fake_run(tmp_path / str(done_in_blend), 2 + done_in_blend, "schedule.stages.align.steps=2", "schedule.stages.blend.steps=10",
                       "schedule.length_grouping=true", "schedule.megabatch=32", "schedule.stages.blend.ramp.fraction=null",
                       "schedule.stages.blend.ramp.steps=2")
        cfg = validate(apply_overrides(saved_config(run), [f"resume={run}"]))
        cfg.resume = str(run)
        return prepare(cfg, str(run), ["schedule.stages.blend.steps=12"])

    with pytest.raises(ConfigError, match="schedule.stages.blend.steps"):
        resume_at(9)  # step 8 was trained from a megabatch sorted over steps 8-9 only
    assert resume_at(8).cfg.schedule.stages["blend"].steps == 12  # the last megabatch has not started


def test_changing_a_finished_stage_is_refused_by_its_own_key(tmp_path):
    from curriculum.config import ConfigError, validate
    from curriculum.run.resume import apply_overrides, prepare, saved_config

    run = fake_run(tmp_path, 11, "schedule.stages.align.steps=2", "schedule.stages.blend.steps=8",
                   "+schedule.stages.extra.steps=4", "+schedule.stages.extra.mix={text_only: 1.0}")
    cfg = validate(apply_overrides(saved_config(run), [f"resume={run}"]))
    cfg.resume = str(run)
    with pytest.raises(ConfigError, match=r"^resume: `schedule.stages.blend.steps` cannot change"):
        prepare(cfg, str(run), ["schedule.stages.blend.steps=12"])


def test_a_stage_that_ended_cannot_grow_its_lr_would_jump(tmp_path):
    """Stopped exactly at the end of `blend` (its cosine decayed to the floor): lengthening it would restart the decay."""
    from curriculum.config import ConfigError, RunConfig
    from curriculum.run.resume import prepare

    run = fake_run(tmp_path, 10, "schedule.stages.align.steps=2", "schedule.stages.blend.steps=8")
    with pytest.raises(ConfigError, match=r"the stage ended at step 10 .* would jump the LR .* add a stage instead"):
        prepare(RunConfig(resume=str(run)), str(run), ["schedule.stages.blend.steps=12"])
    r = prepare(RunConfig(resume=str(run)), str(run), ["+schedule.stages.more.steps=4", "+schedule.stages.more.mix={text_only: 1.0}"])
    assert list(r.cfg.schedule.stages) == ["align", "blend", "more"]


@pytest.mark.slow
def test_lora_resume_uses_lean_checkpoints_and_the_runs_own_config(tmp_path, cache_dir, shapes):
    import shutil

    from transformers import AutoModelForImageTextToText

    from curriculum.model.load import resolve_model_path

    base = tmp_path / "base"
    shutil.copytree(resolve_model_path("builtin:tiny-llava", cache_dir), base)
    own = tmp_path / "conf"
    (own / "schedule").mkdir(parents=True)
    (own / "schedule" / "two.yaml").write_text("stages:\n  warm: {steps: 2, mix: {image_text: 1.0}}\n  polish: {steps: 2, mix: {text_only: 1.0}}\n")
    run = tmp_path / "run"
    run_cli("train", "--config-dir", str(own), "schedule=two", f"model.name_or_path={base}", "model/peft=lora", "model.trainable.language=lora",
            "trainer.max_steps=3", "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.val_every_n_steps=0", f"hydra.run.dir={run}")
    # The checkpoint holds the adapter and the fully trained projector, not the frozen base.
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in k or ".modules_to_save." in k for k in state)
    model = AutoModelForImageTextToText.from_pretrained(base)
    assert sum(t.numel() for t in state.values()) < 0.2 * sum(p.numel() for p in model.parameters())
    # Other base weights under the same path are refused: the adapter would land on a different model.
    shutil.copytree(base, tmp_path / "saved")
    with torch.no_grad():
        model.model.language_model.layers[0].mlp.up_proj.weight.add_(0.5)
    model.save_pretrained(base)
    proc = run_cli("train", f"resume={run}", "trainer.max_steps=null", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: resume: the base model's weights that this run does not train differ")
    shutil.rmtree(base)
    shutil.copytree(tmp_path / "saved", base)
    # A LoRA run may switch to a merged export, and a stage of its own schedule file may grow.
    run_cli("train", f"resume={run}", "trainer.max_steps=null", "export.mode=merged", "schedule.stages.polish.steps=3")
    assert read_json(run / "status.json")["status"] == "completed"
    assert (run / "export" / "config.json").exists() and not (run / "export" / "adapter_config.json").exists()
    assert read_json(run / "plan.json")["steps"] == 5


def test_the_skip_policy_an_error_suggests_is_accepted_on_resume_and_refusals_print_values(tmp_path):
    """A run stopped by an invalid sample (under `error`, nothing was skipped) resumes with data.on_invalid=skip;
    the opposite change is refused, and the sentence names the values as the user writes them."""
    from curriculum.config import ConfigError, RunConfig
    from curriculum.run.resume import prepare

    run = fake_run(tmp_path / "a", 3)
    r = prepare(RunConfig(resume=str(run)), str(run), ["data.on_invalid=skip"])
    assert r.cfg.data.on_invalid.value == "skip" and r.changes == ["data.on_invalid: 'error' -> 'skip'"]
    run = fake_run(tmp_path / "b", 3, "data.on_invalid=skip")
    with pytest.raises(ConfigError, match=r"`data.on_invalid` cannot change when resuming at step 3 \(was 'skip', now 'error'\)"):
        prepare(RunConfig(resume=str(run)), str(run), ["data.on_invalid=error"])
