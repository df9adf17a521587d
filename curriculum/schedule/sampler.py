"""Batch samplers that cut a global position -> record-index stream into per-rank micro-batches.

The stream is global and independent of the number of ranks: optimizer step s consumes global
positions [s*G, (s+1)*G) with G = micro_batch * world_size * accumulate; within it, accumulation
micro-step k of rank r takes positions s*G + k*micro*world + r*micro + [0, micro). Any stream that
maps an array of positions to record indices (a pure function) can drive it.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler

IndexStream = Callable[[np.ndarray], np.ndarray]


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches for optimizer steps [start_step, total_steps) of a global stream."""

    def __init__(
        self,
        stream: IndexStream,
        *,
        micro_batch: int,
        world_size: int,
        rank: int,
        accumulate: int,
        total_steps: int,
        start_step: int = 0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.stream = stream
        self.micro_batch = micro_batch
        self.world_size = world_size
        self.rank = rank
        self.accumulate = accumulate
        self.total_steps = total_steps
        self.start_step = start_step

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step across all ranks and accumulation micro-steps."""
        return self.micro_batch * self.world_size * self.accumulate

    def positions(self, step: int, micro_step: int) -> np.ndarray:
        """Global positions this rank reads at (optimizer step, accumulation micro-step)."""
        base = step * self.global_batch + micro_step * self.micro_batch * self.world_size + self.rank * self.micro_batch
        return np.arange(base, base + self.micro_batch, dtype=np.int64)

    def __len__(self) -> int:
        # The whole run, also when resuming: Lightning's restored batch counter continues from
        # start_step, and its epoch length must still end at the last step.
        return self.total_steps * self.accumulate

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            for k in range(self.accumulate):
                yield self.stream(self.positions(step, k)).tolist()
