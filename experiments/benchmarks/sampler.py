"""Benchmark: our curriculum sampler vs HF `interleave_datasets` and torchdata's weighted sampler.

One 2-group mix (image_text 0.7 / text_only 0.3, global batch 64, seed 0) drawn three ways:

- ours: `CurriculumStream`, a pure function global position -> row (error-minimising blend, then
  a seeded Feistel permutation per group and pass, evaluated index by index);
- HF: `datasets.interleave_datasets(probabilities=[0.7, 0.3], seed=0, stopping_strategy="all_exhausted")`
  over two in-memory `Dataset.from_dict` tables; it draws sources with `rng.choice` and builds the
  index map of the whole epoch up front;
- torchdata 0.11: `nodes.MultiNodeWeightedSampler` over two `IterableWrapper` sources
  (`torch.multinomial` draws, CYCLE_FOREVER), an iterator.

Measured: (a) largest deviation of any prefix from its target counts, (b) indices per second,
(c) time to reach a position, (d) memory for a group of 10M records (each variant in a fresh
spawned process: growth of RSS and of peak RSS, Linux only), (e) padding of micro-batches of 8
with and without our length grouping. A baseline whose package is missing is skipped.

    python experiments/benchmarks/sampler.py [--draws 100000] [--rate-positions 4194304]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import numpy as np

from benchlib import machine_line, markdown_table
from curriculum.config import RunConfig, ScheduleConfig, StageConfig
from curriculum.schedule.stages import compile_schedule
from curriculum.schedule.stream import CurriculumStream

WEIGHTS = {"image_text": 0.7, "text_only": 0.3}
GROUPS = list(WEIGHTS)
SEED = 0
GLOBAL_BATCH = 64
MICRO_BATCH = 8
# Large enough that HF's all_exhausted epoch (~1.33M positions) reaches past position 10^6.
SIZES = {"image_text": 800_000, "text_only": 400_000}
STEPS = 10**9 // GLOBAL_BATCH + 1  # one stage that reaches past position 10^9
CHUNK = 65_536
MICRO_CALLS = 20_000
SEEKS = (10**3, 10**6, 10**9)
BIG_SIZES = {"image_text": 10_000_000, "text_only": 100_000}
BIG_PASSES = 4
PAD_SIZES = {"image_text": 70_000, "text_only": 30_000}
# 1,500 steps stay inside HF's all_exhausted epoch of these 100k records (~100k positions).
PAD_DRAWS = 1_500 * GLOBAL_BATCH

OURS, HF, TD = "ours", "HF interleave_datasets", "torchdata weighted sampler"
METRICS = {
    "deviation": "(a) max prefix deviation from k*w, first {draws:,} draws (samples)",
    "rate_chunk": "(b) indices/s, large calls",
    "rate_micro": f"(b) indices/s, one call per micro-batch of {MICRO_BATCH}",
    **{f"seek_{p}": f"(c) reach position 10^{len(str(p)) - 1} (first 64 rows)" for p in SEEKS},
    "memory": "(d) memory, 10M-record group: RSS held / peak growth (time)",
    "memory_passes": f"(d) same, after batches from {BIG_PASSES} passes of the group",
    "pad_plain": "(e) padding fraction, draw order (micro-batch 8)",
    "pad_grouped": "(e) padding fraction, length grouping (megabatch 64 = 1 step)",
    "pad_grouped_steps": "(e) padding fraction, length grouping (megabatch 512 = 8 steps)",
}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=100_000, help="draws checked for the prefix deviation")
    p.add_argument("--rate-positions", type=int, default=64 * CHUNK, help="positions timed in large calls")
    return p.parse_args()


# ---- shared measures ----------------------------------------------------------------------------


def starts(sizes: dict[str, int]) -> list[int]:
    """First row id of each group: groups occupy consecutive row ranges in GROUPS order."""
    return np.cumsum([0, *sizes.values()]).tolist()


def group_codes(rows: np.ndarray, sizes: dict[str, int]) -> np.ndarray:
    """Group index (0 = image_text, 1 = text_only) of each drawn row id."""
    return (np.asarray(rows) >= sizes["image_text"]).astype(np.int64)


def max_prefix_deviation(codes: np.ndarray) -> float:
    """Largest |count_g(k) - k * w_g| over every prefix length k and group g."""
    counts = np.cumsum(np.eye(len(GROUPS), dtype=np.int64)[codes], axis=0)
    k = np.arange(1, len(codes) + 1)[:, None]
    return float(np.abs(counts - k * np.array(list(WEIGHTS.values()))).max())


def pad_lengths() -> np.ndarray:
    """Token lengths of the padding test's records: lognormal (median ~150, long tail), seeded."""
    n = sum(PAD_SIZES.values())
    return np.maximum(1, np.random.default_rng(0).lognormal(5.0, 0.8, n).round()).astype(np.int64)


def padding_fraction(rows: np.ndarray, lengths: np.ndarray) -> float:
    """Padded tokens / all tokens when consecutive draws form micro-batches padded to their longest."""
    mb = lengths[rows[: len(rows) // MICRO_BATCH * MICRO_BATCH]].reshape(-1, MICRO_BATCH)
    longest = mb.max(axis=1)
    return float((longest[:, None] - mb).sum() / (longest.sum() * MICRO_BATCH))


def rate(call: Callable[[int], object], calls: int, per_call: int) -> float:
    """Indices per second of `calls` calls of call(i), each producing `per_call` indices."""
    t = time.perf_counter()
    for i in range(calls):
        call(i)
    return calls * per_call / (time.perf_counter() - t)


def fmt_rate(r: float) -> str:
    """Indices per second, rounded for the table."""
    return f"{r / 1e6:.2f} M/s" if r >= 1e6 else f"{r / 1e3:.0f} k/s"


def fmt_s(seconds: float) -> str:
    """A duration in the most readable unit."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 3600:.1f} h"


# ---- ours ---------------------------------------------------------------------------------------


def row_ranges(sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Row ids per group, as the caller of CurriculumStream passes them (the data's index, not ours)."""
    first = starts(sizes)
    return {g: np.arange(first[i], first[i + 1]) for i, g in enumerate(GROUPS)}


def our_stream(
    rows: dict[str, np.ndarray], steps: int, length_grouping: bool = False, lengths: np.ndarray | None = None, megabatch: int | None = None
) -> CurriculumStream:
    """A one-stage CurriculumStream over the given row ids per group."""
    stage = StageConfig(steps=steps, mix=dict(WEIGHTS))
    run = RunConfig(schedule=ScheduleConfig(length_grouping=length_grouping, megabatch=megabatch, stages={"train": stage}))
    run.check()
    schedule = compile_schedule(run, GROUPS, {g: len(r) for g, r in rows.items()})
    return CurriculumStream(schedule, rows, GLOBAL_BATCH, SEED, lengths)


def our_seek(rows: dict[str, np.ndarray], p: int) -> str:
    """First call at position p on a fresh stream (what a resumed job pays), then a second call."""
    times = []
    for _ in range(2):
        stream = our_stream(rows, STEPS)
        t = time.perf_counter()
        stream(np.arange(p, p + GLOBAL_BATCH))
        times.append(time.perf_counter() - t)
    return f"{fmt_s(times[0])} first / {fmt_s(times[1])} second call"


def measure_ours(draws: int, rate_positions: int) -> dict[str, str]:
    """Every metric for CurriculumStream."""
    rows = row_ranges(SIZES)
    stream = our_stream(rows, STEPS)
    out = {"deviation": f"{max_prefix_deviation(group_codes(stream(np.arange(draws)), SIZES)):.2f}"}
    chunks = rate_positions // CHUNK
    out["rate_chunk"] = fmt_rate(rate(lambda i: stream(np.arange(i * CHUNK, (i + 1) * CHUNK)), chunks, CHUNK)) + f" (chunks of {CHUNK:,})"
    out["rate_micro"] = fmt_rate(rate(lambda i: stream(np.arange(i * MICRO_BATCH, (i + 1) * MICRO_BATCH)), MICRO_CALLS, MICRO_BATCH))
    out.update({f"seek_{p}": our_seek(rows, p) for p in SEEKS})
    lengths = pad_lengths()
    pad_steps = PAD_DRAWS // GLOBAL_BATCH
    for key, grouping, megabatch in (("pad_plain", False, None), ("pad_grouped", True, None), ("pad_grouped_steps", True, 8 * GLOBAL_BATCH)):
        drawn = our_stream(row_ranges(PAD_SIZES), pad_steps, grouping, lengths, megabatch)(np.arange(PAD_DRAWS))
        out[key] = f"{padding_fraction(drawn, lengths):.2%}"
    return out


# ---- HF datasets --------------------------------------------------------------------------------


def hf_sources(sizes: dict[str, int]) -> list:
    """One in-memory Dataset per group with a row id column and a group column."""
    from datasets import Dataset

    first = starts(sizes)
    return [Dataset.from_dict({"idx": np.arange(first[i], first[i + 1]), "group": [g] * sizes[g]}) for i, g in enumerate(GROUPS)]


def hf_interleave(sources: list):
    """The interleaved dataset: the index map of one whole epoch, built up front."""
    from datasets import interleave_datasets

    return interleave_datasets(sources, probabilities=list(WEIGHTS.values()), seed=SEED, stopping_strategy="all_exhausted")


def hf_ids(ds):
    """A view reading only the row id column as Arrow (its fastest public read path; numpy is ~4x slower)."""
    return ds.select_columns(["idx"]).with_format("arrow")


def measure_hf(draws: int) -> dict[str, str]:
    """Every metric for interleave_datasets (the index map of a whole epoch is its only mode)."""
    sources = hf_sources(SIZES)
    t = time.perf_counter()
    ds = hf_ids(hf_interleave(sources))
    build = time.perf_counter() - t
    n = len(ds)
    out = {"deviation": f"{max_prefix_deviation(group_codes(ds[:draws]['idx'].to_numpy(), SIZES)):.2f}"}
    out["rate_chunk"] = fmt_rate(n / build) + f" (index map of the epoch, {n / 1e6:.2f}M)"
    out["rate_micro"] = fmt_rate(rate(lambda i: ds[i * MICRO_BATCH : (i + 1) * MICRO_BATCH], MICRO_CALLS, MICRO_BATCH)) + " (ds[a:a+8])"
    for p in SEEKS:
        if p + GLOBAL_BATCH > n:
            out[f"seek_{p}"] = f"~{fmt_s(build * p / n)} extrapolated (an epoch that long: {p / 1e9 * 8:.0f} GB index map)"
            continue
        t = time.perf_counter()
        ds[p : p + GLOBAL_BATCH]
        out[f"seek_{p}"] = f"{fmt_s(build + time.perf_counter() - t)} (build the epoch's map, then O(1))"
    lengths = pad_lengths()
    pad_rows = hf_ids(hf_interleave(hf_sources(PAD_SIZES)))[:PAD_DRAWS]["idx"].to_numpy()
    out["pad_plain"] = f"{padding_fraction(pad_rows, lengths):.2%}"
    out["pad_grouped"] = out["pad_grouped_steps"] = "n/a (no length grouping)"
    return out


# ---- torchdata ----------------------------------------------------------------------------------


def td_node(sizes: dict[str, int]):
    """MultiNodeWeightedSampler over one IterableWrapper of row ids per group, cycling forever."""
    from torchdata.nodes import IterableWrapper, MultiNodeWeightedSampler, StopCriteria

    first = starts(sizes)
    sources = {g: IterableWrapper(range(first[i], first[i + 1])) for i, g in enumerate(GROUPS)}
    return MultiNodeWeightedSampler(sources, dict(WEIGHTS), stop_criteria=StopCriteria.CYCLE_FOREVER, rank=0, world_size=1, seed=SEED)


def td_take(node, n: int) -> np.ndarray:
    """The next n row ids of a node."""
    return np.fromiter(itertools.islice(node, n), dtype=np.int64, count=n)


def measure_torchdata(draws: int) -> dict[str, str]:
    """Every metric for MultiNodeWeightedSampler (an iterator: reaching a position means iterating to it)."""
    from torchdata.nodes import Batcher

    out = {"deviation": f"{max_prefix_deviation(group_codes(td_take(td_node(SIZES), draws), SIZES)):.2f}"}
    node = td_node(SIZES)
    t = time.perf_counter()
    td_take(node, 10 * CHUNK)
    per_item = 10 * CHUNK / (time.perf_counter() - t)
    out["rate_chunk"] = fmt_rate(per_item) + " (per item; no bulk mode)"
    batches = Batcher(td_node(SIZES), batch_size=MICRO_BATCH)
    out["rate_micro"] = fmt_rate(rate(lambda i: next(batches), MICRO_CALLS, MICRO_BATCH)) + " (Batcher)"
    elapsed = {}
    for p in SEEKS[:2]:
        t = time.perf_counter()
        node = td_node(SIZES)
        td_take(node, p)
        td_take(node, GLOBAL_BATCH)
        elapsed[p] = time.perf_counter() - t
        out[f"seek_{p}"] = f"{fmt_s(elapsed[p])} (iterate)"
    far, near = SEEKS[2], SEEKS[1]
    out[f"seek_{far}"] = f"~{fmt_s(elapsed[near] * far / near)} extrapolated (iterate)"
    out["pad_plain"] = f"{padding_fraction(td_take(td_node(PAD_SIZES), PAD_DRAWS), pad_lengths()):.2%}"
    out["pad_grouped"] = out["pad_grouped_steps"] = "n/a (no length grouping)"
    return out


# ---- memory (each probe in a fresh spawned process) ---------------------------------------------


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) of this process in MB, from /proc/self/status."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def draw_ours(sizes: dict[str, int], rows: dict[str, np.ndarray], passes: int):
    """Build the stream over the big group and draw a batch near the start of each of `passes` passes."""
    stream = our_stream(rows, STEPS)
    for j in range(passes):
        # image_text (weight 0.7) starts pass j near position j * size / 0.7.
        p = int(np.ceil(j * sizes["image_text"] / WEIGHTS["image_text"])) + GLOBAL_BATCH
        stream(np.arange(p, p + GLOBAL_BATCH))
    return stream


def draw_hf(_sizes, sources, _passes: int):
    """Interleave the big sources (the epoch's index map) and read a few batches."""
    ds = hf_ids(hf_interleave(sources))
    for p in (0, 10_000, 1_000_000):
        ds[p : p + GLOBAL_BATCH]
    return ds


def draw_td(sizes: dict[str, int], _inputs, _passes: int):
    """Start the weighted sampler over the big group and take a few batches."""
    node = td_node(sizes)
    td_take(node, 3 * GLOBAL_BATCH)
    return node


PROBES = {
    OURS: (row_ranges, draw_ours),
    HF: (hf_sources, draw_hf),
    TD: (lambda sizes: None, draw_td),
}


def _probe(variant: str, passes: int) -> tuple[float, float, float]:
    """(held MB, peak growth MB, seconds) of drawing from the 10M-record group, in this fresh process."""
    setup, draw = PROBES[variant]
    inputs = setup(BIG_SIZES)  # the data and its index (HF's tables, our row ids) are not the sampler's cost
    gc.collect()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM, so the peak below is the peak of the draw alone
    before, _ = rss_mb()
    t = time.perf_counter()
    kept = draw(BIG_SIZES, inputs, passes)
    seconds = time.perf_counter() - t
    now, peak = rss_mb()  # `kept` is still alive here, so `now` counts what the sampler holds
    del kept
    return now - before, peak - before, seconds


def memory_probe(variant: str, passes: int = 1) -> str:
    """Run _probe in a fresh spawned process (imports and earlier measurements do not count)."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        held, peak, seconds = pool.submit(_probe, variant, passes).result()
    return f"{held:.0f} / {peak:.0f} MB ({fmt_s(seconds)})"


# ---- main ---------------------------------------------------------------------------------------


def missing(module: str) -> str | None:
    """A skip message if `module` cannot be imported, else None."""
    try:
        __import__(module)
    except ImportError as e:
        return f"skipped: {module} is not installed ({e})"
    return None


def main() -> None:
    """Measure every variant and print the markdown table."""
    args = parse_args()
    print(machine_line())
    t0 = time.perf_counter()
    print(f"measuring {OURS} ...", flush=True)
    columns = {OURS: measure_ours(args.draws, args.rate_positions)}
    columns[OURS]["memory"] = memory_probe(OURS)
    columns[OURS]["memory_passes"] = memory_probe(OURS, BIG_PASSES)
    for name, module, measure in ((HF, "datasets", measure_hf), (TD, "torchdata.nodes", measure_torchdata)):
        skip = missing(module)
        if skip:
            print(f"{name}: {skip}", flush=True)
            columns[name] = dict.fromkeys(METRICS, "skipped (not installed)")
            continue
        print(f"measuring {name} ...", flush=True)
        columns[name] = {**measure(args.draws), "memory": memory_probe(name), "memory_passes": "n/a"}
    rows = [[label.format(draws=args.draws), *(columns[c][key] for c in (OURS, HF, TD))] for key, label in METRICS.items()]
    print()
    print(markdown_table(["metric", OURS, HF, TD], rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")

if __name__ == "__main__":
    main()
