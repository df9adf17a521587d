"""Benchmark: memory and open files of DataLoader workers reading embedded images from many Parquet shards.

Writes --shards Parquet files (row groups of 100 rows, as `datasets` writes image data; each row a
~10 KB PNG plus a ~20 KB text column), then 2 DataLoader workers read one image from every shard,
shuffled, twice: with the per-process reader cache as shipped (32 open files, 256 MiB of row
groups) and with no bound (what the cache did before: every file stayed open and kept its last row
groups). Reported per worker: RSS growth and open file descriptors at the end.

    python experiments/benchmarks/embedded_shards.py [--shards 400]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import machine_line, markdown_table  # noqa: E402

from curriculum.data import embedded  # noqa: E402
from curriculum.data.embedded import EmbeddedImage, ReaderCache, read_bytes  # noqa: E402

ROWS = 200


def write_shards(folder: str, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        images = []
        for _ in range(ROWS):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": None})
        path = os.path.join(folder, f"train-{k:05d}-of-{n:05d}.parquet")
        pq.write_table(pa.table({"image": images, "text": ["x" * 20_000] * ROWS}), path, row_group_size=100)
        paths.append(path)
    return paths


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class OnePerShard(Dataset):
    """Item k: one image of shard k (a random row); returns the worker's RSS growth and open files after it."""

    def __init__(self, paths: list[str], bounded: bool):
        self.paths, self.bounded = paths, bounded
        self.rows = [random.Random(k).randrange(ROWS) for k in range(len(paths))]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        if not hasattr(self, "base"):
            embedded._CACHE = ReaderCache() if self.bounded else ReaderCache(files=10**9, row_group_bytes=10**15)
            self.base = rss_mb()
        read_bytes(EmbeddedImage(self.paths[k], self.rows[k], "image"))
        return rss_mb() - self.base, len(os.listdir("/proc/self/fd"))


def measure(paths: list[str], bounded: bool) -> tuple[float, int]:
    order = list(range(len(paths)))
    random.Random(1).shuffle(order)
    loader = DataLoader(OnePerShard(paths, bounded), batch_size=None, sampler=order, num_workers=2)
    out = [item for item in loader]
    return max(float(r) for r, _ in out), max(int(f) for _, f in out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=400)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_shards(tmp, args.shards)
        rows = []
        for name, bounded in (("bounded (32 files, 256 MiB)", True), ("unbounded (as before)", False)):
            growth, files = measure(paths, bounded)
            rows.append([name, f"{growth:.0f}", str(files)])
    print(machine_line())
    print(f"{args.shards} shards of {ROWS} rows (row groups of 100); 2 workers, one image from each shard in shuffled order\n")
    print(markdown_table(["reader cache", "worker RSS growth, max (MB)", "open fds, max"], rows))


if __name__ == "__main__":
    main()
