"""curriculum-report: per-run report.png, multirun runs.csv / runs.png and the seed-aggregated summary from fixture folders."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
from PIL import Image

from curriculum.report.runs import read_metrics, read_overrides, read_status, stage_starts, write_run_report
from curriculum.report.sweeps import aggregate, few_seeds, summarize, write_summary

GROUPS = ("image_text", "text_only")
ALIGN, BLEND = 15, 25  # steps per stage
STEPS = ALIGN + BLEND

# Validation losses per job: {step after which validation ran: (image_text, text_only)}.
VAL = {
    "0": {9: (3.0, 4.0), 19: (2.2, 3.9), 29: (2.5, 3.1), 39: (2.3, 3.3)},
    "1": {9: (3.1, 4.1), 19: (2.6, 3.5), 29: (2.4, 2.9), 39: (2.45, 2.95)},
}
OVERRIDES = {
    "0": ["schedule.stages.blend.mix.text_only=0.1", "seed=1", "hydra.run.dir=/somewhere"],
    "1": ["schedule.stages.blend.mix.text_only=0.3", "seed=1"],
    "2": ["schedule.stages.blend.mix.text_only=0.5", "seed=1"],
}


def mix_at(step: int, text_only: float) -> dict[str, float]:
    """Target mix of the fixture schedule: align is image-text only, blend ramps text-only in over 5 steps."""
    t = 0.0 if step < ALIGN else text_only * min(1.0, (step - ALIGN + 1) / 5)
    return {"image_text": 1.0 - t, "text_only": t}


def write_run(run: str, text_only: float, steps: int, val: dict, status: str | None, reason: str | None,
              overrides: list[str], truncated_tail: bool = False, exact_match: float | None = None) -> None:
    """A run folder as curriculum-train writes it: metrics.csv, plan.json, .hydra/, status.json.

    With `exact_match`, the last step also has a generation-score row (eval.generate) for text_only.
    """
    os.makedirs(os.path.join(run, ".hydra"), exist_ok=True)
    cols = sorted(["epoch", "lr/language", "lr/projector", "stage", "step", "train/loss", "train/skipped", "val/loss", "eval/exact_match_text_only"]
                  + [f"{p}{g}" for g in GROUPS for p in ("mix/", "samples/", "train/loss_", "train/tokens_", "val/loss_")])
    rows, drawn = [], {g: 0.0 for g in GROUPS}
    for s in range(steps):
        mix = mix_at(s, text_only)
        row = {"epoch": 0, "step": s, "stage": float(s >= ALIGN), "lr/language": 0.0 if s < ALIGN else 1e-4,
               "lr/projector": 1e-4, "train/skipped": 0.0}
        for g in GROUPS:
            drawn[g] += 8 * mix[g]
            row[f"mix/{g}"], row[f"samples/{g}"] = mix[g], drawn[g]
            row[f"train/tokens_{g}"] = 60.0 * mix[g]
            if mix[g] > 0:  # a group absent from a step leaves its loss cell empty
                row[f"train/loss_{g}"] = (4.0 if g == "image_text" else 5.0) * math.exp(-s / 30) + 0.1 * math.sin(s)
        row["train/loss"] = row["train/loss_image_text"]
        rows.append(row)
        if s in val:
            v = val[s]
            rows.append({"epoch": 0, "step": s, "val/loss": sum(v) / 2, "val/loss_image_text": v[0], "val/loss_text_only": v[1]})
    if exact_match is not None:
        rows.append({"epoch": 0, "step": steps - 1, "eval/exact_match_text_only": exact_match})
    with open(os.path.join(run, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows([{k: repr(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows])
        if truncated_tail:
            f.write("0,0.0001,0.0001,0.5,0.")  # the process died while writing a row
    stages = [
        {"name": "align", "start_step": 0, "steps": ALIGN, "mix": mix_at(0, text_only)},
        {"name": "blend", "start_step": ALIGN, "steps": BLEND, "mix": mix_at(STEPS - 1, text_only)},
    ]
    plan = {"groups": {"image_text": 1200, "text_only": 800}, "stages": stages, "global_batch": 8, "steps": STEPS}
    with open(os.path.join(run, "plan.json"), "w") as f:
        json.dump(plan, f)
    with open(os.path.join(run, ".hydra", "overrides.yaml"), "w") as f:
        f.write("".join(f"- {o}\n" for o in overrides))
    with open(os.path.join(run, ".hydra", "config.yaml"), "w") as f:
        f.write(f"seed: 1\nschedule:\n  stages:\n    blend:\n      mix:\n        text_only: {text_only}\n")
    if status is not None:
        with open(os.path.join(run, "status.json"), "w") as f:
            json.dump({"status": status, "reason": reason, "step": steps}, f)


@pytest.fixture
def multirun(tmp_path) -> str:
    """Three jobs: two completed with validation rows, one failed after 3 steps."""
    root = str(tmp_path / "multirun")
    write_run(os.path.join(root, "0"), 0.1, STEPS, VAL["0"], "completed", None, OVERRIDES["0"])
    write_run(os.path.join(root, "1"), 0.3, STEPS, VAL["1"], "completed", None, OVERRIDES["1"])
    write_run(os.path.join(root, "2"), 0.5, 3, {}, "failed", "RuntimeError: boom", OVERRIDES["2"], truncated_tail=True)
    with open(os.path.join(root, "multirun.yaml"), "w") as f:
        f.write("hydra:\n  mode: MULTIRUN\n")
    return root


def assert_png(path: str, min_size=(500, 350)) -> None:
    """The file is a valid PNG image at least `min_size` pixels."""
    assert os.path.isfile(path), path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size


def test_summary_rows_and_files(multirun):
    paths = write_summary(multirun)
    assert paths == {name: os.path.join(multirun, name) for name in ("summary.csv", "summary.md", "summary.png", "runs.csv", "runs.png")}
    with open(paths["runs.csv"], newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert header == ["run", "overrides", "status", "reason", "steps_done",
                      "final val/loss_image_text", "best val/loss_image_text",
                      "final val/loss_text_only", "best val/loss_text_only"]
    expected = [
        {"run": "0", "overrides": "schedule.stages.blend.mix.text_only=0.1 seed=1", "status": "completed",
         "reason": "", "steps_done": "40", "final val/loss_image_text": 2.3, "best val/loss_image_text": 2.2,
         "final val/loss_text_only": 3.3, "best val/loss_text_only": 3.1},
        {"run": "1", "overrides": "schedule.stages.blend.mix.text_only=0.3 seed=1", "status": "completed",
         "reason": "", "steps_done": "40", "final val/loss_image_text": 2.45, "best val/loss_image_text": 2.4,
         "final val/loss_text_only": 2.95, "best val/loss_text_only": 2.9},
        {"run": "2", "overrides": "schedule.stages.blend.mix.text_only=0.5 seed=1", "status": "failed",
         "reason": "RuntimeError: boom", "steps_done": "3", "final val/loss_image_text": "",
         "best val/loss_image_text": "", "final val/loss_text_only": "", "best val/loss_text_only": ""},
    ]
    got = [{k: float(v) if k.startswith(("final", "best")) and v else v for k, v in r.items()} for r in rows]
    assert got == expected

    md = open(paths["summary.md"]).read()
    assert "| " + " | ".join(header) + " |" in md.split("## Runs")[1]
    assert "| 0 | schedule.stages.blend.mix.text_only=0.1 seed=1 | completed |  | 40 | 2.3000 | 2.2000 | 3.3000 | 3.1000 |" in md
    assert "| 1 | schedule.stages.blend.mix.text_only=0.3 seed=1 | completed |  | 40 | 2.4500 | 2.4000 | 2.9500 | 2.9000 |" in md
    assert "| 2 | schedule.stages.blend.mix.text_only=0.5 seed=1 | failed | RuntimeError: boom | 3 |  |  |  |  |" in md
    assert_png(paths["summary.png"])
    assert_png(paths["runs.png"])


def seeded_multirun(root: str) -> None:
    """Two configurations: text_only=0.1 with seeds 1-3 completed and seed 4 failed; text_only=0.3 with seeds 1-2."""
    finals = {("0.1", 1): (2.0, 3.0), ("0.1", 2): (2.2, 3.3), ("0.1", 3): (2.4, 3.6), ("0.3", 1): (1.9, 2.9), ("0.3", 2): (2.1, 3.1)}
    job = 0
    for (mix, seed), final in finals.items():
        val = {19: (final[0] + 1, final[1] + 1), 39: final}
        write_run(os.path.join(root, str(job)), float(mix), STEPS, val, "completed", None, [f"schedule.stages.blend.mix.text_only={mix}", f"seed={seed}"],
                  exact_match=0.25 * seed)
        job += 1
        if (mix, seed) == ("0.1", 3):
            write_run(os.path.join(root, str(job)), 0.1, 3, {}, "failed", "RuntimeError: boom", ["schedule.stages.blend.mix.text_only=0.1", "seed=4"])
            job += 1


def test_runs_that_differ_only_in_seed_are_aggregated_with_t_intervals(tmp_path):
    root = str(tmp_path / "multirun")
    seeded_multirun(root)
    runs = summarize(root)
    configs = aggregate(runs, [read_overrides(os.path.join(root, r["run"])) for r in runs])
    a, b = configs
    assert (a["config"], a["runs"], a["seeds"], a["excluded"]) == ("schedule.stages.blend.mix.text_only=0.1", "0 1 2 3", 3, 1)
    assert (b["config"], b["runs"], b["seeds"], b["excluded"]) == ("schedule.stages.blend.mix.text_only=0.3", "4 5", 2, 0)
    half_a = 4.3026527 * 0.2 / math.sqrt(3)  # t(0.975, 2 df) * sd / sqrt(n)
    assert a["final val/loss_image_text mean"] == pytest.approx(2.2) and a["final val/loss_image_text std"] == pytest.approx(0.2)
    assert (a["final val/loss_image_text ci95_low"], a["final val/loss_image_text ci95_high"]) == (
        pytest.approx(2.2 - half_a, abs=1e-6), pytest.approx(2.2 + half_a, abs=1e-6))
    assert a["final val/loss_text_only mean"] == pytest.approx(3.3) and a["final val/loss_text_only std"] == pytest.approx(0.3)
    half_b = 12.7062047 * math.sqrt(0.02) / math.sqrt(2)
    assert b["final val/loss_image_text ci95_high"] == pytest.approx(2.0 + half_b, abs=1e-6)
    assert few_seeds(configs) == [b]
    # Generation scores aggregate like losses: seeds 1-3 scored 0.25, 0.5, 0.75.
    assert a["final eval/exact_match_text_only mean"] == pytest.approx(0.5) and a["final eval/exact_match_text_only std"] == pytest.approx(0.25)
    paths = write_summary(root)
    with open(paths["summary.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["config"], r["seeds"], r["excluded"]) for r in rows] == [
        ("schedule.stages.blend.mix.text_only=0.1", "3", "1"), ("schedule.stages.blend.mix.text_only=0.3", "2", "0")]
    assert float(rows[0]["final val/loss_image_text ci95_high"]) == pytest.approx(2.2 + half_a, abs=1e-6)
    md = open(paths["summary.md"]).read()
    assert f"| 2.2000 ± {half_a:.4f} (sd 0.2000) |" in md
    assert "Fewer than 3 seeds: schedule.stages.blend.mix.text_only=0.3 (2)" in md
    assert_png(paths["summary.png"])


def test_summarize_returns_python_values(multirun):
    rows = summarize(multirun)
    assert [r["run"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["reason"] is None and rows[2]["best val/loss_text_only"] is None
    assert rows[1]["best val/loss_text_only"] == 2.9 and rows[2]["steps_done"] == 3


def test_run_report_for_completed_and_failed_runs(multirun):
    for job in ("0", "1", "2"):
        path = write_run_report(os.path.join(multirun, job))
        assert path == os.path.join(multirun, job, "report.png")
        assert_png(path)


def test_run_report_without_plan_or_validation(tmp_path):
    run = str(tmp_path / "run")
    write_run(run, 0.3, STEPS, {}, None, None, [])
    os.remove(os.path.join(run, "plan.json"))
    # Stage boundaries fall back to the logged `stage` column.
    assert stage_starts({}, read_metrics(run)) == [(0, "stage 0"), (ALIGN, "stage 1")]
    assert_png(write_run_report(run))


def test_status_without_status_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert read_status(str(run)) == {"status": "failed", "reason": "no status.json", "step": None}
    (run / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.5\n")
    assert read_status(str(run))["status"] == "running"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m curriculum.cli.report ARGS`, captured."""
    return subprocess.run([sys.executable, "-m", "curriculum.cli.report", *args], capture_output=True, text=True, timeout=120)


def test_cli_on_run_folder(multirun):
    run = os.path.join(multirun, "1")
    res = run_cli(run)
    assert res.returncode == 0, res.stderr
    assert os.path.join(run, "report.png") in res.stdout
    assert_png(os.path.join(run, "report.png"))


def test_cli_on_multirun_folder(multirun):
    res = run_cli(multirun)
    assert res.returncode == 0, res.stderr
    for name in ("summary.csv", "summary.md", "summary.png", "runs.csv", "runs.png"):
        assert os.path.join(multirun, name) in res.stdout
        assert os.path.isfile(os.path.join(multirun, name))
    for job in ("0", "1", "2"):
        assert os.path.join(multirun, job, "report.png") in res.stdout
        assert_png(os.path.join(multirun, job, "report.png"))
    # The table: differing overrides, statuses, the failure reason, numbers with 4 decimals.
    for text in ("schedule.stages.blend.mix.text_only=0.3", "completed", "failed", "RuntimeError: boom", "2.4500",
                 "common overrides: seed=1"):
        assert text in res.stdout
    # One seed per configuration here: the aggregated table says so.
    assert "warning: 3 configuration(s) with fewer than 3 completed seeds" in res.stdout


def test_cli_on_wrong_folder(tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    res = run_cli(str(empty))
    assert res.returncode == 2
    assert str(empty) in res.stderr and "metrics.csv" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    missing = run_cli(str(tmp_path / "missing"))
    assert missing.returncode == 2 and "missing" in missing.stderr


def test_a_running_run_whose_process_is_gone_reads_as_stopped(tmp_path):
    from curriculum.run import lock as run_lock
    from curriculum.report.runs import read_status

    (tmp_path / "status.json").write_text('{"status": "running", "reason": null}')
    (tmp_path / "metrics.csv").write_text("step\n")
    run_lock.acquire(str(tmp_path))
    try:
        assert read_status(str(tmp_path))["status"] == "running"
    finally:
        run_lock.release(str(tmp_path))
    stopped = read_status(str(tmp_path))  # the lock file stays, no process holds it
    assert stopped["status"] == "stopped" and "killed?" in stopped["reason"]

