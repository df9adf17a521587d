"""Tests for the built-in ``shapes`` dataset generator."""

import json
import re
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curriculum.data import builtin
from curriculum.data.builtin import COLOURS, ShapesData, ensure_shapes, iter_texts

SMALL = dict(train_image_text=40, train_text_only=30, val_image_text=12, val_text_only=10)


def _load(path: str) -> list[dict]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _split(records: list[dict]) -> tuple[list[dict], list[dict]]:
    return [r for r in records if "image" in r], [r for r in records if "image" not in r]


def _components(image: Image.Image) -> list[dict]:
    """8-connected blobs of non-background pixels, each with colour name, kind and box."""
    pixels = np.asarray(image.convert("RGB"))
    mask = (pixels != builtin.BACKGROUND).any(axis=-1)
    seen = np.zeros_like(mask)
    blobs = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, points = deque([start]), []
        while queue:
            y, x = queue.popleft()
            points.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                    if inside and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        blobs.append(_describe(pixels, points))
    return blobs


def _describe(pixels: np.ndarray, points: list[tuple[int, int]]) -> dict:
    ys, xs = np.array(points).T
    colours = {tuple(int(v) for v in pixels[y, x]) for y, x in points}
    assert len(colours) == 1, f"a shape has mixed colours: {colours}"
    name = {rgb: n for n, rgb in COLOURS.items()}[colours.pop()]
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    # Fill ratio of the bounding box tells the kinds apart: square 1, circle ~0.67-0.82,
    # triangle ~0.5-0.58 at every size the generator draws.
    fill = len(points) / ((box[2] - box[0] + 1) * (box[3] - box[1] + 1))
    kind = "square" if fill > 0.95 else "circle" if fill > 0.62 else "triangle"
    return {"colour": name, "kind": kind, "box": box}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> ShapesData:
    return ensure_shapes(str(tmp_path_factory.mktemp("cache")), **SMALL)


def test_same_arguments_give_identical_bytes(tmp_path):
    a = ensure_shapes(str(tmp_path / "a"), **SMALL)
    b = ensure_shapes(str(tmp_path / "b"), **SMALL)
    for name in ("train.json", "val.json"):
        assert (Path(a.root) / name).read_bytes() == (Path(b.root) / name).read_bytes()
    images_a = sorted(p.name for p in (Path(a.root) / "images").iterdir())
    images_b = sorted(p.name for p in (Path(b.root) / "images").iterdir())
    assert images_a == images_b and len(images_a) == 40 + 12
    for name in images_a:
        image_a = (Path(a.root) / "images" / name).read_bytes()
        assert image_a == (Path(b.root) / "images" / name).read_bytes()


def test_counts_ids_and_files(small):
    expected = ((small.train_file, 40, 30, "train"), (small.val_file, 12, 10, "val"))
    for path, n_img, n_txt, split in expected:
        images, texts = _split(_load(path))
        assert (len(images), len(texts)) == (n_img, n_txt)
        assert [r["id"] for r in images] == [f"shapes-{split}-img-{i:06d}" for i in range(n_img)]
        assert [r["id"] for r in texts] == [f"shapes-{split}-txt-{i:06d}" for i in range(n_txt)]
        for r in images:
            assert r["image"].startswith(f"images/{split}_")
            with Image.open(Path(path).parent / r["image"]) as image:
                assert (image.format, image.size) == ("PNG", (32, 32))
            first = r["conversations"][0]["value"]
            assert first.startswith("<image>\n") and first.count("<image>") == 1
        for r in texts:
            assert all("<image>" not in t["value"] for t in r["conversations"])


def test_conversations_alternate_human_gpt(small):
    for r in _load(small.train_file) + _load(small.val_file):
        roles = [t["from"] for t in r["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2) and roles


def test_image_answers_match_pixels(tmp_path):
    data = ensure_shapes(
        str(tmp_path), train_image_text=200, train_text_only=0,
        val_image_text=0, val_text_only=0, image_size=40,
    )
    seen = set()
    for r in _load(data.train_file):
        with Image.open(Path(data.root) / r["image"]) as image:
            blobs = _components(image)
            size = image.size[0]
        assert 1 <= len(blobs) <= 4
        answer = r["conversations"][1]["value"]
        by_colour = {b["colour"]: b for b in blobs}
        assert len(by_colour) == len(blobs), "colours within a picture are distinct"
        if m := re.fullmatch(r"There (?:is|are) (\d) shapes?\.", answer):
            seen.add("count")
            assert int(m[1]) == len(blobs)
        elif m := re.fullmatch(r"The (circle|square|triangle) is (\w+)\.", answer):
            seen.add("colour")
            assert [b["colour"] for b in blobs if b["kind"] == m[1]] == [m[2]]
        elif m := re.fullmatch(r"The (?:(\w+) )?shape is a (\w+)\.", answer):
            seen.add("shape")
            blob = by_colour[m[1]] if m[1] else blobs[0]
            assert m[1] or len(blobs) == 1
            assert blob["kind"] == m[2]
        elif m := re.fullmatch(r"The (\w+) (\w+) is (?:on|at) the (\w+)\.", answer):
            seen.add("position")
            blob = by_colour[m[1]]
            assert blob["kind"] == m[2]
            left, top, right, bottom = blob["box"]
            half = size // 2
            assert {"left": right < half, "right": left >= half, "top": bottom < half,
                    "bottom": top >= half}[m[3]]
        else:
            pytest.fail(f"unexpected answer {answer!r}")
    assert seen == {"count", "colour", "shape", "position"}


def test_text_answers_are_correct(small):
    texts = _split(_load(small.train_file))[1] + _split(_load(small.val_file))[1]
    sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "octagon": 8}
    mixes = {frozenset(("red", "yellow")): "orange", frozenset(("blue", "yellow")): "green",
             frozenset(("red", "blue")): "purple", frozenset(("red", "white")): "pink",
             frozenset(("black", "white")): "grey"}
    checked = set()
    for r in texts:
        turns = r["conversations"]
        for question, answer in zip(turns[::2], turns[1::2]):
            q, a = question["value"], answer["value"]
            if m := re.fullmatch(r"There are (\d+) words\.", a):
                checked.add("words")
                assert int(m[1]) == len(re.search(r'"([^"]+)"', q)[1].split())
            elif m := re.fullmatch(r"A (\w+) has (\d) sides\.", a):
                checked.add("sides")
                assert sides[m[1]] == int(m[2]) and m[1] in q
            elif m := re.fullmatch(r"Mixing (\w+) and (\w+) gives (\w+)\.", a):
                checked.add("mix")
                assert mixes[frozenset((m[1], m[2]))] == m[3]
                assert m[1] in q and m[2] in q
            elif m := re.fullmatch(r"(\d+) is larger\.", a):
                checked.add("compare")
                assert int(m[1]) == max(int(n) for n in re.findall(r"\d+", q))
            else:
                pytest.fail(f"unexpected answer {a!r}")
    assert checked == {"words", "sides", "mix", "compare"}


def test_some_text_only_samples_are_multi_turn(small):
    texts = _split(_load(small.train_file))[1]
    multi = [r for r in texts if len(r["conversations"]) == 4]
    assert len(multi) >= 5
    for r in multi:
        assert r["conversations"][0]["value"] != r["conversations"][2]["value"]


def test_splits_differ_and_smaller_split_is_a_prefix(tmp_path, small):
    train, val = _load(small.train_file), _load(small.val_file)
    assert [r["conversations"] for r in train[:12]] != [r["conversations"] for r in val[:12]]
    tiny = ensure_shapes(str(tmp_path), train_image_text=10, train_text_only=5,
                         val_image_text=1, val_text_only=1)
    tiny_images, tiny_texts = _split(_load(tiny.train_file))
    images, texts = _split(train)
    assert tiny_images == images[:10] and tiny_texts == texts[:5]


def test_second_call_reuses_cache(tmp_path):
    first = ensure_shapes(str(tmp_path), **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in Path(first.root).rglob("*")}
    assert ensure_shapes(str(tmp_path), **SMALL) == first
    assert {p: p.stat().st_mtime_ns for p in Path(first.root).rglob("*")} == stamps
    other = ensure_shapes(str(tmp_path), **{**SMALL, "seed": 1})
    assert other.root != first.root
    assert sorted(p.name for p in (tmp_path / "shapes").iterdir()) == sorted(
        [Path(first.root).name, Path(other.root).name]
    ), "no temporary folder is left behind"


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def broken_draw(shapes, image_size):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("crash mid-build")
        return original(shapes, image_size)

    original = builtin._draw
    monkeypatch.setattr(builtin, "_draw", broken_draw)
    with pytest.raises(RuntimeError):
        ensure_shapes(str(tmp_path), **SMALL)
    assert list((tmp_path / "shapes").iterdir()) == []
    monkeypatch.setattr(builtin, "_draw", original)
    data = ensure_shapes(str(tmp_path), **SMALL)
    assert len(_load(data.train_file)) == 70


def test_iter_texts_yields_every_turn(small):
    records = _load(small.train_file) + _load(small.val_file)
    expected = [t["value"] for r in records for t in r["conversations"]]
    assert list(iter_texts(small)) == expected


@pytest.mark.parametrize(
    "kwargs", [{"train_image_text": -1}, {"val_text_only": -2}, {"image_size": 8}]
)
def test_bad_arguments_are_rejected(tmp_path, kwargs):
    with pytest.raises(ValueError):
        ensure_shapes(str(tmp_path), **kwargs)
