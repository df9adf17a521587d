"""Benchmark: record tables at LLaVA-Instruct-665k scale, from its JSON layout and from Parquet with embedded images.

Generates (once per --workdir):
- `llava_v1_5_mix665k.json`: one JSON array of --records LLaVA records (about 94% with an image,
  multi-turn like the real file, ~1.5 KB each), images under `images/` in the real file's folders
  (coco/train2017, gqa/images, ocr_vqa/images, textvqa/train_images, vg/VG_100K, vg/VG_100K_2),
  --unique-images small PNG files shared by the records;
- `llava_665k.parquet`: the same records with `image` an embedded `datasets.Image()` (small PNGs,
  null for text-only rows), row groups of 100 rows as `datasets` writes image data.

Then measures, each in a fresh process (peak RSS above the process's RSS before the step): `json.load` of the JSON (what
LLaVA's script does), our record table built from the JSON (image headers checked), that table
reused from the cache, `curriculum-plan` on the JSON (new cache, then reused), our table built from
the Parquet (embedded images checked) and `datasets.load_dataset("parquet")` on the same file.
Last, the memory of 2 DataLoader workers decoding the embedded images of --read shuffled rows.

    python experiments/benchmarks/records_scale.py                       # 665k records, ~15 min on 2 cores
    python experiments/benchmarks/records_scale.py --records 50000 --unique-images 20000 --read 5000
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchlib import machine_line, markdown_table

# The same vocabulary as records.py, which imports torch: kept out of the measured processes.
WORDS = (
    "the a an of in on to and is are there what which how many where colour shape circle square triangle "
    "red green blue yellow left right top bottom picture image object person table window describe detail "
    "answer question because small large near far behind front"
).split()

MB = 2**20
# The real file's image folders and roughly their shares of its 624k image records.
FOLDERS = {
    "coco/train2017": 0.58, "gqa/images": 0.12, "ocr_vqa/images": 0.13, "textvqa/train_images": 0.03,
    "vg/VG_100K": 0.08, "vg/VG_100K_2": 0.06,
}
TEXT_ONLY = 0.061  # 40,688 ShareGPT conversations of 665,298
ROW_GROUP = 100  # datasets.config.PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS
WORKERS, BATCH = 2, 32


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=665_298)
    p.add_argument("--unique-images", type=int, default=350_000, help="distinct image files under images/")
    p.add_argument("--read", type=int, default=50_000, help="rows the 2 workers decode in the worker-memory run")
    p.add_argument("--workdir", help="folder for the generated data, reused across runs (default: a temp dir)")
    return p.parse_args()


def _png(rng: random.Random) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 24), tuple(rng.randrange(256) for _ in range(3))).save(out, "PNG")
    return out.getvalue()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))


def _conversation(rng: random.Random, image: bool) -> list[dict]:
    turns = []
    for k in range(rng.choice((1, 1, 2, 4, 6, 10))):
        question = _text(rng, 6, 20) + "?"
        turns.append({"from": "human", "value": ("<image>\n" + question) if image and k == 0 else question})
        turns.append({"from": "gpt", "value": _text(rng, 5, 60) + "."})
    return turns


def write_data(workdir: str, n: int, unique: int) -> tuple[str, str, str]:
    """The LLaVA JSON, its image folder and the Parquet with embedded images (kept when already there)."""
    root = os.path.join(workdir, "images")
    json_path = os.path.join(workdir, "llava_v1_5_mix665k.json")
    parquet_path = os.path.join(workdir, "llava_665k.parquet")
    if os.path.isfile(json_path) and os.path.isfile(parquet_path):
        return json_path, root, parquet_path
    rng = random.Random(0)
    pngs = [_png(rng) for _ in range(256)]
    names = []
    for folder, share in FOLDERS.items():
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for k in range(max(1, int(unique * share))):
            name = f"{folder}/{k:012d}.jpg" if folder.startswith("coco") else f"{folder}/{k}.png"
            names.append(name)
            with open(os.path.join(root, name), "wb") as f:
                f.write(pngs[k % len(pngs)])
    records, embedded = [], []
    for i in range(n):
        image = rng.random() >= TEXT_ONLY
        record = {"id": f"{i:09d}"}
        if image:
            record["image"] = rng.choice(names)
        record["conversations"] = _conversation(rng, image)
        records.append(record)
        embedded.append({"bytes": rng.choice(pngs), "path": None} if image else None)
    with open(json_path + ".tmp", "w", encoding="utf-8") as f:
        # One record per line (json.dump with indent runs the pure-Python encoder: minutes at this size).
        f.write("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    os.replace(json_path + ".tmp", json_path)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "id": [r["id"] for r in records],
        "image": pa.array(embedded, type=image_type),
        "conversations": [r["conversations"] for r in records],
    })
    # The features datasets records, so load_dataset decodes `image` as an Image() column.
    features = {"id": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"},
                "conversations": {"feature": {"from": {"dtype": "string", "_type": "Value"}, "value": {"dtype": "string", "_type": "Value"}}, "_type": "List"}}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, parquet_path + ".tmp", row_group_size=ROW_GROUP)
    os.replace(parquet_path + ".tmp", parquet_path)
    return json_path, root, parquet_path


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _growth_mb(start_mb: float) -> float:
    """Peak RSS of this process above what it held when the measured step started.

    VmHWM, not ru_maxrss: the latter survives exec, so a spawned child would report its parent's peak.
    """
    with open("/proc/self/status", encoding="ascii") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    return peak - start_mb


def task_json_load(path: str) -> dict:
    """json.load of the whole file, as LLaVA's training script does."""
    rss, start = _rss_mb(), time.perf_counter()
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {"seconds": time.perf_counter() - start, "peak_mb": _growth_mb(rss), "rows": len(data)}


def task_table(files: list[str], cache: str, image_root: str | None) -> dict:
    """Our record table for files (built or reused from the cache)."""
    from curriculum.data.records import load_or_build

    rss, start = _rss_mb(), time.perf_counter()
    table, report = load_or_build(files, cache_dir=cache, image_root=image_root, on_invalid="skip")
    return {"seconds": time.perf_counter() - start, "peak_mb": _growth_mb(rss), "rows": len(table), "invalid": len(report.invalid),
            "groups": report.groups, "reused": report.reused, "table_mb": os.path.getsize(table.path) / MB}


def task_load_dataset(path: str, cache: str) -> dict:
    """datasets.load_dataset("parquet") into a new cache (it converts the file to its Arrow cache)."""
    import datasets

    datasets.disable_progress_bars()
    rss, start = _rss_mb(), time.perf_counter()
    ds = datasets.load_dataset("parquet", data_files=path, split="train", cache_dir=cache)
    return {"seconds": time.perf_counter() - start, "peak_mb": _growth_mb(rss), "rows": len(ds)}


def task_workers(files: list[str], cache: str, n: int) -> dict:
    """2 forked DataLoader workers decode the embedded images of n shuffled rows; their memory over time."""
    import torch
    from torch.utils.data import DataLoader

    from curriculum.data.images import load_image
    from curriculum.data.records import load_or_build
    from curriculum.run.datamodule import RecordDataset
    from records import read_sampled

    table, _ = load_or_build(files, cache_dir=cache, on_invalid="skip")
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(0))[:n].tolist()
    loader = DataLoader(RecordDataset(table), batch_size=BATCH, sampler=order, num_workers=WORKERS,
                        collate_fn=lambda records: sum(load_image(ref).size[0] > 0 for r in records for ref in r["images"]),
                        multiprocessing_context="fork")
    images, seconds, sampler = read_sampled(loader)
    return {"seconds": seconds, "images": images, "workers": sampler.summary()}


def isolated(fn, *args) -> dict:
    """fn(*args) in a fresh interpreter, so one measurement's heap never inflates another's."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def plan_cli(json_path: str, root: str, cache: str, run_dir: str) -> float:
    """Wall seconds of `curriculum-plan` on the JSON, as a user runs it."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "curriculum.cli.plan", f"data.train_files=[{json_path}]", f"data.image_root={root}",
         "data.on_invalid=skip", f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"],
        check=True, stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="records-scale-") as tmp:
        workdir = os.path.abspath(args.workdir or tmp)
        os.makedirs(workdir, exist_ok=True)
        start = time.perf_counter()
        json_path, root, parquet = write_data(workdir, args.records, args.unique_images)
        print(f"data ready in {time.perf_counter() - start:.0f} s: JSON {os.path.getsize(json_path) / MB:,.0f} MB, "
              f"Parquet {os.path.getsize(parquet) / MB:,.0f} MB, {args.unique_images:,} image files")
        caches = tempfile.mkdtemp(dir=workdir, prefix="caches-")
        rows = []
        def add(name: str, result: dict, baseline: str | None = None, base: dict | None = None) -> None:
            ratio = "" if base is None else f"{result['seconds'] / base['seconds']:.2f}x time, {result['peak_mb'] / base['peak_mb']:.2f}x memory of {baseline}"
            rows.append([name, f"{result['seconds']:.1f}", f"{result['peak_mb']:,.0f}", ratio])
            print(name, {k: v for k, v in result.items() if k != "workers"}, flush=True)

        loaded = isolated(task_json_load, json_path)
        add("json.load (LLaVA's script)", loaded)
        built = isolated(task_table, [json_path], os.path.join(caches, "json"), root)
        add("ours: table from JSON (image headers checked)", built, "json.load", loaded)
        add("ours: table from JSON, reused", isolated(task_table, [json_path], os.path.join(caches, "json"), root), "json.load", loaded)
        plan_new = plan_cli(json_path, root, os.path.join(caches, "plan"), os.path.join(caches, "plan-run"))
        plan_reused = plan_cli(json_path, root, os.path.join(caches, "plan"), os.path.join(caches, "plan-run"))
        hf = isolated(task_load_dataset, parquet, os.path.join(caches, "hf"))
        add("datasets.load_dataset(parquet)", hf)
        ours = isolated(task_table, [parquet], os.path.join(caches, "parquet"), None)
        add("ours: table from Parquet (embedded images checked)", ours, "load_dataset", hf)
        workers = isolated(task_workers, [parquet], os.path.join(caches, "parquet"), args.read)
    print()
    print(machine_line())
    print(f"{args.records:,} records: {built['groups']}; table from JSON {built['table_mb']:,.0f} MB, from Parquet {ours['table_mb']:,.0f} MB "
          "(references, no image bytes)")
    print(markdown_table(["step", "seconds", "peak RSS growth MB", "against"], rows))
    print(f"curriculum-plan on the JSON, whole command: {plan_new:.0f} s with a new cache, {plan_reused:.0f} s reusing it")
    w = workers["workers"]
    print(
        f"2 workers decoded {workers['images']:,} embedded images of {args.read:,} shuffled rows in {workers['seconds']:.0f} s; "
        + "; ".join(f"worker {k}: USS {x['uss'][0] / MB:,.1f} -> peak {x['uss'][1] / MB:,.1f} MB, private dirty "
                    f"{x['dirty'][0] / MB:,.1f} -> {x['dirty'][1] / MB:,.1f} MB" for k, x in enumerate(w))
    )


if __name__ == "__main__":
    main()
