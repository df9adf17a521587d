"""Benchmark: step time of `experiment=quick data.num_workers=2` (the default data loading) with the intra-op threads we set against torch's default (one per
core), on an idle machine and with a competing CPU load (one busy process per core), in the same run.

    python experiments/benchmarks/threads.py [--rounds 2]

Each cell is the median `perf/step_s` over the run's steps (the first of each stage left out) and the
rounds; the competing load is one Python busy loop per core, started before and stopped after the run.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import machine_line, markdown_table  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spin(stop) -> None:
    """Busy loop until `stop` is set."""
    while not stop.is_set():
        sum(range(10_000))


def step_times(threads: str, rounds: int) -> list[float]:
    """perf/step_s of every step past each stage's first, over `rounds` runs of experiment=quick."""
    out = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as run:
            subprocess.run(
                [sys.executable, "-m", "curriculum.cli.train", "experiment=quick", "data.num_workers=2", "export.enabled=false", "trainer.enable_progress_bar=false",
                 f"trainer.threads={threads}", f"hydra.run.dir={run}"],
                cwd=REPO, check=True, capture_output=True,
            )
            with open(os.path.join(run, "metrics.csv"), newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("perf/step_s")]
            out += [float(r["perf/step_s"]) for k, r in enumerate(rows) if k and r["stage"] == rows[k - 1]["stage"]]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    ours = "null"  # the rule: usable cores / processes on the node - DataLoader workers
    rows = []
    for load in ("idle", f"{cores} busy processes"):
        stop = mp.Event()
        spinners = [mp.Process(target=spin, args=(stop,)) for _ in range(cores if load != "idle" else 0)]
        for s in spinners:
            s.start()
        time.sleep(0.5)
        try:
            default = statistics.median(step_times(str(cores), args.rounds))
            chosen = statistics.median(step_times(ours, args.rounds))
        finally:
            stop.set()
            for s in spinners:
                s.join()
        rows.append([load, f"{default * 1000:.1f}", f"{chosen * 1000:.1f}", f"{default / chosen:.2f}x"])
    print(machine_line())
    print(f"experiment=quick data.num_workers=2 (built-in tiny LLaVA, micro batch 4): torch's default is {cores} intra-op threads, "
          f"ours max(1, {cores} cores / 1 process - 2 workers) = {max(1, cores - 2)}.\n")
    print(markdown_table(["load", f"torch default ({cores} threads), ms/step", "ours, ms/step", "speed-up"], rows))


if __name__ == "__main__":
    main()
