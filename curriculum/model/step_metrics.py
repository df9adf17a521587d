"""What each optimizer step and validation reports: per-group losses, tokens, drawn and trained
samples, skips and throughput, summed over micro-batches and ranks into one row per step; and the
run's cumulative counts that checkpoints carry. Skipped samples are listed in skipped.jsonl.

May import schedule.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Callable

import torch

from curriculum.schedule.stages import Schedule

log = logging.getLogger("curriculum")
Reduce = Callable[[torch.Tensor], torch.Tensor]


class StepMetrics:
    """Sums of the optimizer step (and validation) under way, the run's totals, and the rows they make."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.group_names = list(schedule.groups)
        n = len(self.group_names)
        # Per group (loss sum, supervised tokens, drawn samples, trained samples) of the current optimizer step.
        self._sums = torch.zeros(n, 4, dtype=torch.float64)
        # Skipped samples, micro-batches with images, real (unpadded) and computed tokens of the current optimizer step.
        self._extra = torch.zeros(4, dtype=torch.float64)
        # When the current optimizer step's first micro-batch started, and its row until the step is done.
        self._clock = 0.0
        self._pending: tuple[dict, int] | None = None
        self._val_sums = torch.zeros(n, 2, dtype=torch.float64)
        self._val_skipped = 0.0
        # Cumulative samples drawn and trained per group over all ranks, and samples skipped; saved in checkpoints.
        self.drawn_total = torch.zeros(n, dtype=torch.float64)
        self.trained_total = torch.zeros(n, dtype=torch.float64)
        self.skipped_total = 0.0
        # Supervised tokens trained on over all ranks: zero at the end means nothing was learnt.
        self.trained_tokens = 0.0

    def start_step(self) -> None:
        """The optimizer step's first micro-batch starts now."""
        self._clock = time.perf_counter()

    def add_micro_batch(self, sums: torch.Tensor, batch: dict, skipped: int) -> None:
        """Add a training micro-batch: its [groups, 2] (loss sum, tokens), drawn and trained samples, skips, images, tokens."""
        n = len(self.group_names)
        step = torch.zeros(n, 4, dtype=torch.float64, device=sums.device)
        step[:, :2] = sums
        step[:, 2] = torch.bincount(batch["drawn_group_ids"], minlength=n).double()
        step[:, 3] = torch.bincount(batch["group_ids"], minlength=n).double()
        self._sums = self._sums.to(sums.device) + step
        extra = [skipped, float("pixel_values" in batch), real_tokens(batch), float(batch["input_ids"].numel())]
        extra = torch.tensor(extra, dtype=torch.float64, device=sums.device)
        self._extra = self._extra.to(sums.device) + extra

    def close_step(self, step: int, reduce: Reduce, lrs: dict[str, float]) -> tuple[dict, float, float]:
        """Sum the step over all ranks (one collective) and build its row; returns it, the supervised tokens and the micro-batches with images.

        The row keeps its raw token and sample counts until `finish_row` turns them into rates;
        perf/padding_fraction is padded tokens / computed tokens (input ids) of the global batch.
        """
        n = len(self.group_names)
        total = reduce(torch.cat([self._sums.flatten(), self._extra.to(self._sums.device)]))
        self._sums = torch.zeros_like(self._sums)
        self._extra = torch.zeros_like(self._extra)
        sums, (skipped, image_batches, real, computed) = total[: 4 * n].view(n, 4), total[4 * n:].tolist()
        self.drawn_total = self.drawn_total.to(sums.device) + sums[:, 2]
        self.trained_total = self.trained_total.to(sums.device) + sums[:, 3]
        self.skipped_total += skipped
        self.trained_tokens += float(sums[:, 1].sum())
        metrics = {"train/loss": ratio(sums[:, 0].sum(), sums[:, 1].sum()), "stage": self.schedule.stage_at(step).name}
        for name, frac in self.schedule.mix_at(step).items():
            metrics[f"mix/{name}"] = frac
        for g, name in enumerate(self.group_names):
            metrics[f"samples/{name}"] = float(self.drawn_total[g])
            metrics[f"trained/{name}"] = float(self.trained_total[g])
            if sums[g, 1] > 0:  # a group absent from this step leaves its loss cell empty
                metrics[f"train/loss_{name}"] = ratio(sums[g, 0], sums[g, 1])
            metrics[f"train/tokens_{name}"] = float(sums[g, 1])
        metrics["train/skipped"] = self.skipped_total
        for comp, lr in lrs.items():
            metrics[f"lr/{comp}"] = lr
        metrics["perf/tokens"], metrics["perf/samples"] = real, float(sums[:, 3].sum())
        metrics["perf/padding_fraction"] = 1.0 - real / computed if computed else 0.0
        self._pending = (metrics, step)
        return metrics, float(sums[:, 1].sum()), image_batches

    def finish_row(self, device: torch.device) -> tuple[dict, int] | None:
        """The finished step's row with its throughput, once (None when no step is pending).

        perf/step_s is rank 0's wall time from the step's first micro-batch to after its optimizer
        step; tokens are all real tokens of the global batch (padding excluded), supervised tokens
        those with a label; peak memory is the GPU's, since the previous row.
        """
        if self._pending is None:
            return None
        metrics, step = self._pending
        self._pending = None
        seconds = time.perf_counter() - self._clock
        tokens, samples = metrics.pop("perf/tokens"), metrics.pop("perf/samples")
        supervised = sum(v for k, v in metrics.items() if k.startswith("train/tokens_"))
        metrics["perf/step_s"] = seconds
        metrics["perf/samples_per_s"] = samples / seconds
        metrics["perf/tokens_per_s"] = tokens / seconds
        metrics["perf/supervised_tokens_per_s"] = supervised / seconds
        if device.type == "cuda":
            metrics["perf/peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
        return metrics, step

    def add_validation(self, sums: torch.Tensor, skipped: int) -> None:
        """Add a validation batch's [groups, 2] (loss sum, tokens) and its skipped samples."""
        self._val_sums = self._val_sums.to(sums.device) + sums
        self._val_skipped += skipped

    def close_validation(self, reduce: Reduce) -> dict:
        """The validation row over all ranks: loss overall and per group, and skipped samples."""
        sums = reduce(self._val_sums)
        self._val_sums = torch.zeros_like(self._val_sums)
        skipped = float(reduce(torch.tensor([self._val_skipped], dtype=torch.float64))[0])
        self._val_skipped = 0.0
        metrics = {"val/loss": ratio(sums[:, 0].sum(), sums[:, 1].sum()), "val/skipped": skipped}
        for g, name in enumerate(self.group_names):
            if sums[g, 1] > 0:
                metrics[f"val/loss_{name}"] = ratio(sums[g, 0], sums[g, 1])
        return metrics

    def state(self) -> dict:
        """The run's totals, as a checkpoint keeps them."""
        return {"drawn_total": self.drawn_total.tolist(), "trained_total": self.trained_total.tolist(),
                "skipped_total": self.skipped_total, "trained_tokens": self.trained_tokens}

    def load_state(self, state: dict) -> None:
        """Restore the totals a checkpoint kept."""
        self.drawn_total = torch.tensor(state["drawn_total"], dtype=torch.float64)
        # Checkpoints that predate the count trained every drawn sample that was not skipped.
        self.trained_total = torch.tensor(state.get("trained_total", state["drawn_total"]), dtype=torch.float64)
        self.skipped_total = state["skipped_total"]
        # NaN for checkpoints that predate the count: unknown, so the "nothing trained" check stays quiet.
        self.trained_tokens = state.get("trained_tokens", math.nan)


class SkipLog:
    """skipped.jsonl: every skipped sample with its step, rank, split and reason; a warning on the first."""

    def __init__(self, path: str | None):
        self.path = path
        self._exhausted: set[str] = set()

    def record(self, skipped: list[dict], split: str, step: int, rank: int) -> int:
        """List skipped samples of optimizer step `step` (warning on the first one) and return how many there were."""
        if not skipped:
            return 0
        for s in skipped:
            group = s.get("exhausted")
            if group and group not in self._exhausted:
                self._exhausted.add(group)
                log.error(
                    "group %s has no usable sample left to replace skipped ones (first: %s): from step %d its steps train fewer "
                    "%s samples than planned; trained/%s in metrics.csv shows how many", group, s["id"], step, group, group,
                )
        if self.path:
            if not os.path.exists(self.path):
                first = skipped[0]
                log.warning(
                    "skipped %s sample %s (%s): %s; every skip is counted in metrics.csv (%s/skipped) and listed in %s",
                    split, first["id"], first["source"], first["reason"], split, self.path,
                )
            with open(self.path, "a", encoding="utf-8") as f:
                for s in skipped:
                    f.write(json.dumps({"step": step, "rank": rank, "split": split, **s}) + "\n")
        return len(skipped)


def real_tokens(batch: dict) -> float:
    """Tokens of samples in a batch, padding excluded (packed rows name each token's sample)."""
    if "sample_index" in batch:
        return float((batch["sample_index"] >= 0).sum())
    return float(batch["attention_mask"].sum()) if "attention_mask" in batch else 0.0


def ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    """num / den as a float, NaN when den is 0."""
    return float(num / den) if float(den) > 0 else float("nan")
