"""Shared fixtures: one cache folder per test session holding small built-in data and tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from curriculum.config import OptimConfig, RunConfig, ScheduleConfig, StageConfig
from curriculum.data.builtin import ensure_shapes
from curriculum.schedule.stages import compile_schedule
from curriculum.model.load import load_processor, resolve_model_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """Session cache for built-in data, models and record tables (also used by CLI subprocesses)."""
    path = str(tmp_path_factory.mktemp("cache"))
    os.environ["CURRICULUM_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def shapes(cache_dir):
    """The default built-in data (the tokenizer of the built-in models is trained on it)."""
    return ensure_shapes(cache_dir)


@pytest.fixture(scope="session", params=["tiny-llava", "tiny-idefics3"])
def arch(request, cache_dir, shapes) -> str:
    """Folder of a built-in model; tests using it run on both architectures."""
    return resolve_model_path(f"builtin:{request.param}", cache_dir)


@pytest.fixture(scope="session")
def llava_path(cache_dir, shapes) -> str:
    """Folder of the built-in tiny LLaVA."""
    return resolve_model_path("builtin:tiny-llava", cache_dir)


@pytest.fixture
def processor(llava_path):
    """A fresh processor of the built-in tiny LLaVA."""
    return load_processor(llava_path)


def one_stage(steps: int = 10, mix: dict | None = None, **schedule) -> ScheduleConfig:
    """A schedule config with a single stage `train`."""
    return ScheduleConfig(stages={"train": StageConfig(steps=steps, mix=mix or {"image_text": "rest", "text_only": 0.5})}, **schedule)


def compiled(schedule: ScheduleConfig | None = None, groups=("image_text", "text_only"), sizes=None, optim: OptimConfig | None = None):
    """A compiled Schedule over `groups` (each with 100 records unless `sizes` says otherwise)."""
    run = RunConfig(schedule=schedule or one_stage(), optim=optim or OptimConfig())
    run.check()
    return compile_schedule(run, list(groups), sizes or dict.fromkeys(groups, 100))


def record(id_, user, answer, images=(), group=None, source="test.jsonl"):
    """A canonical record."""
    return {
        "id": id_,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        "images": list(images),
        "group": group or ("image_text" if images else "text_only"),
        "source": source,
    }


def png(path, color=(255, 0, 0), size=(32, 32)) -> str:
    """Write a small PNG and return its path."""
    Image.new("RGB", size, color).save(path)
    return str(path)


def run_cli(name: str, *overrides: str, cwd: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a console script (`python -m curriculum.cli.<name>`) with overrides; capture its output."""
    proc = subprocess.run(
        [sys.executable, "-m", f"curriculum.cli.{name}", *overrides],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def write_jsonl(path, lines: list) -> str:
    """Write JSONL; str items are written verbatim (to plant broken lines)."""
    with open(path, "w", encoding="utf-8") as f:
        for item in lines:
            f.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return str(path)


def read_json(path: str):
    """Load a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
