"""A non-editable wheel install finds its packaged configs and runs a console script."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, read_json


@pytest.mark.slow
def test_wheel_console_script_runs_outside_the_checkout(tmp_path, cache_dir, shapes):
    dist, target = tmp_path / "dist", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), REPO], check=True, capture_output=True)
    wheel = next(dist.glob("curriculum-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import curriculum.conf_path as c; print(c.conf_dir())"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert where.stdout.strip() == str(target / "curriculum" / "conf")
    run = tmp_path / "run"
    proc = subprocess.run(
        [str(target / "bin" / "curriculum-plan"), f"hydra.run.dir={run}"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(run / "plan.json")["groups"] == {"image_text": 1200, "text_only": 800}
    # The user's own schedule and experiment files, kept next to their data, through Hydra's --config-dir.
    own = tmp_path / "myconf"
    (own / "schedule").mkdir(parents=True)
    (own / "experiment").mkdir()
    (own / "schedule" / "three.yaml").write_text(
        "stages:\n"
        "  warm: {steps: 2, mix: {image_text: 1.0}}\n"
        "  mix: {steps: 3, mix: {image_text: rest, text_only: 0.5}}\n"
        "  text: {steps: 1, mix: {text_only: 1.0}}\n"
    )
    (own / "experiment" / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /schedule: three\nseed: 7\n")
    run = tmp_path / "own"
    proc = subprocess.run(
        [str(target / "bin" / "curriculum-plan"), "--config-dir", str(own), "experiment=mine", f"hydra.run.dir={run}"],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [st["name"] for st in read_json(run / "plan.json")["stages"]] == ["warm", "mix", "text"]
