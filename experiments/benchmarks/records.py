"""Benchmark: memory of DataLoader workers reading every record, our record table vs a Python list of dicts.

LLaVA-style scripts load the whole data file into a list of dicts in the parent process and let
forked DataLoader workers index it. Every read (and any full garbage collection) writes to the
objects' reference counts, so each worker gradually copies the pages holding the list
(copy-on-write) and ends up with a private copy of much of the dataset. Our RecordTable keeps the
records in a memory-mapped Arrow file and builds one dict per read, so the workers share the
file's pages and stay flat.

Each variant runs in a fresh spawned process that opens the data and reads every record once
through DataLoader(num_workers=2, batch_size=64, collate_fn=len), so only record reading is
measured, while a thread samples each worker's USS / PSS and the parent's RSS.

    python experiments/benchmarks/records.py [--records 1000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import random
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchlib import machine_line, markdown_table
from curriculum.data.records import load_or_build
from curriculum.run.datamodule import RecordDataset

MB = 2**20
WORKERS = 2
BATCH = 64
SAMPLE_EVERY_S = 0.25  # reading smaps costs CPU on a 2-core machine
TEXT_ONLY_EVERY = 4  # one record in four is text-only, the rest share one tiny image
IMAGE = "tiny.png"
WORDS = (
    "the a an of in on to and is are there what which how many where colour shape circle square triangle "
    "red green blue yellow left right top bottom picture image object person table window describe detail "
    "answer question because small large near far behind front"
).split()
OURS = "curriculum RecordTable (Arrow, mmap)"
LLAVA = "list of dicts (LLaVA-style)"


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_000_000, help="number of generated records")
    p.add_argument("--workdir", help="folder for the generated data and table, reused across runs (default: a temp dir)")
    return p.parse_args()


def write_data(workdir: str, n: int) -> str:
    """Write the tiny image and an n-record LLaVA JSONL into workdir (unless there already); return its path."""
    Image.new("RGB", (8, 8)).save(os.path.join(workdir, IMAGE))
    path = os.path.join(workdir, f"llava_{n}.jsonl")
    if os.path.isfile(path):
        return path
    rng = random.Random(0)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps(_record(i, rng)) + "\n")
    os.replace(tmp, path)
    return path


def _record(i: int, rng: random.Random) -> dict:
    question = " ".join(rng.choices(WORDS, k=rng.randint(5, 20))) + "?"
    answer = " ".join(rng.choices(WORDS, k=rng.randint(10, 60))) + "."
    if i % TEXT_ONLY_EVERY == TEXT_ONLY_EVERY - 1:
        return {"id": f"r{i}", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    turns = [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]
    return {"id": f"r{i}", "image": IMAGE, "conversations": turns}


class ListDataset(Dataset):
    """The LLaVA way: every raw record parsed into one Python list in the parent, read by index.

    One json.loads per JSONL line builds the same objects LLaVA's json.load of a .json array does.
    """

    def __init__(self, path: str):
        with open(path, encoding="utf-8") as f:
            self.records = [json.loads(line) for line in f]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]


def open_dataset(variant: str, jsonl: str, workdir: str) -> Dataset:
    """The dataset of one variant; ours comes from the table cache main() built beforehand."""
    if variant == LLAVA:
        return ListDataset(jsonl)
    table, _ = load_or_build([jsonl], cache_dir=workdir)
    return RecordDataset(table)


def memory(pid: int | str) -> tuple[int, int, int, int]:
    """(USS, private dirty, PSS, RSS) of a process in bytes, from the kernel's /proc/PID/smaps_rollup.

    USS (psutil's definition) is private clean + private dirty. Private dirty alone is the
    anonymous memory a worker made its own (copy-on-write copies, new allocations); private clean
    pages of a read-only mmap are page cache that turns shared once another process reads it.
    """
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) * 1024 if rest.strip().endswith("kB") else 0
    return (fields["Private_Clean"] + fields["Private_Dirty"], fields["Private_Dirty"], fields["Pss"], fields["Rss"])


class MemorySampler(threading.Thread):
    """Samples memory() of each worker and the peak RSS of this process until stopped."""

    def __init__(self, pids: list[int]):
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[list[tuple[int, int, int, int]]] = [[] for _ in pids]
        self.parent_rss = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            self.take()
            if self.stop.wait(SAMPLE_EVERY_S):
                return

    def take(self) -> None:
        """One sample of every process."""
        self.parent_rss = max(self.parent_rss, memory("self")[3])
        for samples, pid in zip(self.samples, self.pids):
            samples.append(memory(pid))

    def summary(self) -> list[dict]:
        """Per worker: USS and private dirty at the first sample and at their peaks, and peak PSS."""
        return [
            {
                "uss": (s[0][0], max(x[0] for x in s)),
                "dirty": (s[0][1], max(x[1] for x in s)),
                "pss_peak": max(x[2] for x in s),
            }
            for s in self.samples
        ]


def measure(variant: str, jsonl: str, workdir: str) -> dict:
    """Open the data, read every record with 2 forked workers, and return memory per worker (in bytes)."""
    start = time.perf_counter()
    dataset = open_dataset(variant, jsonl, workdir)
    open_s = time.perf_counter() - start
    # Shuffled like training; fork (Linux's default before Python 3.14) is what LLaVA's workers rely on.
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=WORKERS,
        collate_fn=len,
        multiprocessing_context="fork",
    )
    seen, read_s, sampler = read_sampled(loader)
    return {
        "variant": variant,
        "records": seen,
        "open_s": open_s,
        "read_s": read_s,
        "parent_rss": sampler.parent_rss,
        "workers": sampler.summary(),
    }


def read_sampled(loader: DataLoader) -> tuple[int, float, MemorySampler]:
    """Sum of the loader's batch values, seconds after the first batch, and the workers' memory samples."""
    batches = iter(loader)
    seen = next(batches)
    # torch offers no public handle on its worker processes; the iterator's list is the reliable one.
    sampler = MemorySampler([w.pid for w in batches._workers])
    sampler.start()  # after the fork, so no worker inherits a running sampler thread
    start = time.perf_counter()
    # Stop one short of StopIteration, which shuts the workers down before the last sample.
    seen += sum(itertools.islice(batches, len(loader) - 1))
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    sampler.take()
    return seen, seconds, sampler


def run_isolated(variant: str, jsonl: str, workdir: str) -> dict:
    """measure() in a fresh interpreter, so one variant's heap never inflates the other's numbers."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(measure, variant, jsonl, workdir).result()


def _mb(n: int) -> str:
    return f"{n / MB:,.1f}"


def report(results: list[dict]) -> str:
    """The per-worker table, then per-variant timings and the ratios of the list of dicts against ours."""
    headers = [
        "variant", "worker", "USS start MB", "USS peak MB", "USS growth MB", "private dirty start MB",
        "private dirty peak MB", "private dirty growth MB", "PSS peak MB", "parent RSS peak MB",
    ]
    rows = [
        [r["variant"], k, _mb(w["uss"][0]), _mb(w["uss"][1]), _mb(w["uss"][1] - w["uss"][0]), _mb(w["dirty"][0]),
         _mb(w["dirty"][1]), _mb(w["dirty"][1] - w["dirty"][0]), _mb(w["pss_peak"]), f"{r['parent_rss'] / MB:,.0f}"]
        for r in results
        for k, w in enumerate(r["workers"])
    ]
    lines = [markdown_table(headers, rows), ""]
    for r in results:
        lines.append(f"{r['variant']}: opened in {r['open_s']:.1f} s, read {r['records']:,} records in {r['read_s']:.1f} s")
    by = {r["variant"]: r["workers"] for r in results}
    lines += [
        _ratio("worker USS peak", by, lambda w: w["uss"][1]),
        _ratio("worker USS growth", by, lambda w: w["uss"][1] - w["uss"][0]),
        _ratio("worker private dirty growth", by, lambda w: w["dirty"][1] - w["dirty"][0]),
    ]
    return "\n".join(lines)


def _ratio(what: str, by: dict, value: Callable[[dict], int]) -> str:
    llava, ours = (max(value(w) for w in by[v]) for v in (LLAVA, OURS))
    # Under 1 MB a figure is sampling noise, so the ratio is floored there.
    if max(llava, ours) < MB:
        shown = "both under 1 MB, no ratio"
    else:
        shown = f">{llava / MB:,.0f}x" if ours < MB else f"{llava / ours:,.1f}x"
    return f"largest {what}: list of dicts {_mb(llava)} MB, ours {_mb(ours)} MB -> {shown}"


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="records-bench-") as tmp:
        workdir = os.path.abspath(args.workdir or tmp)
        os.makedirs(workdir, exist_ok=True)
        start = time.perf_counter()
        jsonl = write_data(workdir, args.records)
        data_s = time.perf_counter() - start
        start = time.perf_counter()
        table, report_ = load_or_build([jsonl], cache_dir=workdir)
        build_s = time.perf_counter() - start
        print(
            f"{args.records:,} records {report_.groups}, JSONL {os.path.getsize(jsonl) / MB:,.0f} MB (written in {data_s:.0f} s), "
            f"Arrow table {os.path.getsize(table.path) / MB:,.0f} MB (built or reused in {build_s:.0f} s)"
        )
        results = [run_isolated(variant, jsonl, workdir) for variant in (OURS, LLAVA)]
    print(machine_line() + f"; DataLoader(num_workers={WORKERS}, batch_size={BATCH}, shuffle=True, collate_fn=len), fork")
    print(
        "start = first sample, after the first batch; growth = peak - start; USS = private clean + private dirty;\n"
        "private dirty = anonymous pages the worker owns (copy-on-write copies); PSS splits shared pages between sharers.\n"
    )
    print(report(results))


if __name__ == "__main__":
    main()
