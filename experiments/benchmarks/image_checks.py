"""Benchmark: what `data.check_images` costs per image, and at LLaVA-Instruct-665k's 624,865 records with an image.

Writes --images PNG and JPEG files of COCO-like size (640x480 with texture, ~100-400 KB) and times,
in the same run: `exists` (a stat), the header check as it was (Pillow opens the file: format,
size, bomb limit), the header check now (also: the file is whole: PNG chunk CRCs up to IEND,
JPEG's end marker), and `full` (decode every pixel). Warm page cache, one core.

    python experiments/benchmarks/image_checks.py [--images 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import machine_line, markdown_table  # noqa: E402

from curriculum.data.images import check_image  # noqa: E402

RECORDS_WITH_IMAGE = 624_865


def write_images(folder: str, n: int, ext: str) -> list[str]:
    """n textured 640x480 images (noise over gradients, so they compress like photos, not like flat colour)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    paths = []
    for k in range(n):
        base = np.stack([(x + k) % 256, (y * 2 + k) % 256, (x + y) % 256], -1).astype(np.int16)
        pixels = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"{k}.{ext}")
        Image.fromarray(pixels).save(path, quality=90) if ext == "jpg" else Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def per_image(fn, paths: list[str]) -> float:
    """Seconds per image of fn over the paths (after one untimed pass, so the page cache is warm)."""
    for p in paths:
        fn(p)
    start = time.perf_counter()
    for p in paths:
        fn(p)
    return (time.perf_counter() - start) / len(paths)


def opened(path: str) -> None:
    with Image.open(path):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=300)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ext in ("jpg", "png"):
            paths = write_images(tmp, args.images, ext)
            size = sum(os.path.getsize(q) for q in paths) / len(paths) / 1024
            checks = [("exists", os.path.isfile), ("header before (open)", opened), ("header now (open + whole)", lambda q: check_image(q, "header")),
                      ("full (decode)", lambda q: check_image(q, "full"))]
            base = None
            for name, fn in checks:
                t = per_image(fn, paths)
                base = t if name.startswith("header before") else base
                rows.append([f"{ext.upper()} ({size:.0f} KB)", name, f"{t * 1e6:.0f}", f"{t * RECORDS_WITH_IMAGE / 60:.1f}",
                             f"{t / base:.1f}x" if base else ""])
    print(machine_line())
    print(f"{args.images} images of each format, 640x480; minutes for 665k = 624,865 checks on one core\n")
    print(markdown_table(["format", "check", "us / image", "min at 665k", "vs header before"], rows))


if __name__ == "__main__":
    main()
