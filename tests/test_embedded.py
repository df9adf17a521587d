"""Embedded images read back from Parquet shards through one bounded per-process cache."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curriculum.data import embedded
from curriculum.data.embedded import EmbeddedImage, ReaderCache, read_bytes


def shard(path, color: int, rows: int = 3) -> str:
    """A Parquet file with a `datasets.Image()` column (struct of bytes and path), one PNG per row."""
    images = []
    for k in range(rows):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (color % 256, k, 0)).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    pq.write_table(pa.table({"image": images, "noise": [os.urandom(200_000) for _ in range(rows)]}), path)
    return str(path)


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_one_image_from_each_of_200_shards_stays_under_the_bounds(tmp_path, monkeypatch):
    """Hub datasets have thousands of shards: open files and decoded row groups stay bounded, and every read is right."""
    cache = ReaderCache(files=16, row_group_bytes=200_000)
    monkeypatch.setattr(embedded, "_CACHE", cache)
    paths = [shard(tmp_path / f"train-{k:05d}.parquet", k) for k in range(200)]
    before = open_files()
    peak_files, peak_bytes = 0, 0
    for k, path in enumerate(paths):
        data = read_bytes(EmbeddedImage(path, 1, "image"))
        assert Image.open(io.BytesIO(data)).getpixel((0, 0)) == (k % 256, 1, 0)
        peak_files, peak_bytes = max(peak_files, len(cache.readers)), max(peak_bytes, cache.bytes)
    assert peak_files == 16 and peak_bytes <= 200_000
    assert open_files() - before <= 16
    # The noise column is never decoded: only the image column's row group is read.
    assert all(key[2] == "image" for key in cache.groups)


def test_a_row_group_read_again_comes_from_the_cache(tmp_path, monkeypatch):
    cache = ReaderCache()
    monkeypatch.setattr(embedded, "_CACHE", cache)
    path = shard(tmp_path / "a.parquet", 7)
    reads = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, *a, **k: reads.append(a) or original(self, *a, **k))
    first = [bytes(read_bytes(EmbeddedImage(path, row, "image"))) for row in (0, 1, 2)]
    assert len(reads) == 1 and len(set(first)) == 3
