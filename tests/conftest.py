"""Shared fixtures: one cache folder per test session holding small built-in data and tiny models."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from filelock import FileLock
from PIL import Image

from families import BUILT, MATRIX, ensure_family
from curriculum.config import OptimConfig, RunConfig, ScheduleConfig, StageConfig
from curriculum.data.builtin import ensure_shapes
from curriculum.schedule.stages import compile_schedule
from curriculum.model.load import load_processor, resolve_model_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(items):
    """Slow end-to-end cases first: collected last (test_resume, test_sharding), the longest of them ran alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, worker_id) -> str:
    """Session cache for built-in data, models and record tables (also used by CLI subprocesses).

    Shared by pytest-xdist's workers (the parent of each worker's base temp folder), so each tiny
    model is built once per session.
    """
    base = tmp_path_factory.getbasetemp()
    path = str(base / "cache" if worker_id == "master" else base.parent / "cache")
    os.makedirs(path, exist_ok=True)
    os.environ["CURRICULUM_CACHE"] = path
    return path


def built_once(cache_dir: str, build):
    """`build()` under a lock shared by the xdist workers: one builds, the others wait and reuse."""
    with FileLock(os.path.join(cache_dir, ".tests.lock")):
        return build()


@pytest.fixture(scope="session")
def shapes(cache_dir):
    """The default built-in data (the tokenizer of the built-in models is trained on it)."""
    return built_once(cache_dir, lambda: ensure_shapes(cache_dir))


@pytest.fixture(scope="session", params=MATRIX)
def arch(request, cache_dir, shapes) -> str:
    """Folder of a tiny model: the two built-ins, then further families (tests/families/)."""
    if request.param in BUILT:
        return built_once(cache_dir, lambda: ensure_family(request.param, cache_dir, resolve_model_path("builtin:tiny-llava", cache_dir)))
    return built_once(cache_dir, lambda: resolve_model_path(f"builtin:{request.param}", cache_dir))


@pytest.fixture(scope="session")
def llava_path(cache_dir, shapes) -> str:
    """Folder of the built-in tiny LLaVA."""
    return built_once(cache_dir, lambda: resolve_model_path("builtin:tiny-llava", cache_dir))


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


def run_cli(name: str, *overrides: str, cwd: str | None = None, check: bool = True, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a console script (`python -m curriculum.cli.<name>`) with overrides; capture its output."""
    proc = subprocess.run(
        [sys.executable, "-m", f"curriculum.cli.{name}", *overrides],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        timeout=timeout,
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


def png_bytes(color=(255, 0, 0), size=(16, 16)) -> bytes:
    """A small PNG image as bytes."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


HF_COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def write_hf_datasets(folder) -> dict[str, str]:
    """Data as the Hugging Face ecosystem stores it, written by `datasets` itself.

    - `hub/`: a Hub repo copy, content-part `messages` with embedded `images`, 2 train shards of
      3 rows (2 image-text, 1 text-only each) and 1 validation shard (1 image-text, 1 text-only);
    - `llava.parquet`: LLaVA columns, `image` an embedded Image or null: 3 image-text, 2 text-only;
    - `saved/`: `save_to_disk` DatasetDict of the hub rows, splits train (6 rows) and test (2).
    Image-text answers name the image's colour.
    """
    import datasets
    from datasets import Dataset, DatasetDict, Features, Image as HFImage, List, Value

    datasets.disable_progress_bars()
    colours = list(HF_COLOURS)

    def chat_row(i: int) -> dict:
        if i % 3 == 2:
            user = [{"type": "text", "text": f"What is {i} plus one?"}]
            return {"id": f"t{i}", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": f"{i + 1}."}]}], "images": []}
        colour = colours[i % 3]
        user = [{"type": "image"}, {"type": "text", "text": "Which colour fills the picture?"}]
        answer = [{"type": "text", "text": f"{colour.capitalize()}."}]
        return {"id": f"i{i}", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                "images": [{"bytes": png_bytes(HF_COLOURS[colour]), "path": None}]}

    part = {"type": Value("string"), "text": Value("string")}
    features = Features({"id": Value("string"), "messages": List({"role": Value("string"), "content": List(part)}), "images": List(HFImage())})
    train = Dataset.from_list([chat_row(i) for i in range(6)], features=features)
    val = Dataset.from_list([chat_row(i) for i in (6, 8)], features=features)
    hub = os.path.join(folder, "hub")
    os.makedirs(os.path.join(hub, "data"))
    for k in range(2):
        train.shard(2, k, contiguous=True).to_parquet(os.path.join(hub, "data", f"train-{k:05d}-of-00002.parquet"))
    val.to_parquet(os.path.join(hub, "data", "validation-00000-of-00001.parquet"))
    with open(os.path.join(hub, "README.md"), "w") as f:
        f.write("---\nlicense: cc-by-4.0\n---\n")
    saved = os.path.join(folder, "saved")
    DatasetDict({"train": train, "test": val}).save_to_disk(saved)
    llava_rows = []
    for i in range(5):
        image = {"bytes": png_bytes(HF_COLOURS[colours[i % 3]]), "path": None} if i % 2 == 0 else None
        question = "<image>\nWhich colour fills the picture?" if image else f"Say {i}."
        answer = f"{colours[i % 3].capitalize()}." if image else f"{i}."
        llava_rows.append({"id": f"l{i}", "image": image, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]})
    llava_features = Features({"id": Value("string"), "image": HFImage(), "conversations": List({"from": Value("string"), "value": Value("string")})})
    llava = os.path.join(folder, "llava.parquet")
    Dataset.from_list(llava_rows, features=llava_features).to_parquet(llava)
    return {"hub": hub, "saved": saved, "llava": llava}


GROUPS = ["image_text", "text_only"]


def module_for(path, trainable=None, peft=None, dummy=True):
    """A VLMModule over the checkpoint at `path` (with the projector-only vision dummy unless `dummy` is false) and its collator."""
    from curriculum.config import ModelConfig, TrainableConfig
    from curriculum.data.collate import Collator
    from curriculum.model.load import load_model
    from curriculum.model.module import VLMModule
    from curriculum.model.vision_dummy import VisionDummy, vision_dummy_inputs

    processor = load_processor(path)
    model = load_model(ModelConfig(name_or_path=path, trainable=trainable or TrainableConfig(), peft=peft), path)
    vision_dummy = VisionDummy(vision_dummy_inputs(processor, model), full_tower=False) if dummy else None
    module = VLMModule(model, compiled(), OptimConfig(), vision_dummy=vision_dummy)
    return module, Collator(processor, GROUPS, 512, "error")


def grads_of(module, component):
    """Gradients of the module's trained parameters in `component`."""
    from curriculum.model.components import component_of

    return [p.grad for n, p in module.model.named_parameters() if p.requires_grad and component_of(n) == component]
