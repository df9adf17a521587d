"""LightningDataModule: record tables + a replaceable global-stream sampler + the collator."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from curriculum.data.collate import Collator
from curriculum.data.records import RecordTable
from curriculum.schedule.sampler import GlobalBatchSampler, IndexStream


class RecordDataset(Dataset):
    """Map-style view of a record table; rows are read from the memory-mapped file on demand."""

    def __init__(self, table: RecordTable):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict:
        return {**self.table[int(i)], "row": int(i)}


class NextInGroup:
    """Replacement candidates for a training record: the following rows of its group, wrapping around.

    A pure function of the record's row, so a replaced sample is the same in every run and resume.
    """

    def __init__(self, table: RecordTable):
        self.dataset = RecordDataset(table)
        self.rows = table.group_indices()

    def __call__(self, record: dict) -> Iterator[dict]:
        rows = self.rows[record["group"]]
        at = int(np.searchsorted(rows, record["row"]))
        for k in range(1, len(rows)):
            yield self.dataset[int(rows[(at + k) % len(rows)])]


def stratified_order(groups: np.ndarray) -> np.ndarray:
    """Row order in which every prefix holds each group in proportion (within one row per group).

    Validation batches follow it, so `trainer.limit_val_batches` validates every group.
    """
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(names))]
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    taken = np.zeros(len(names), np.int64)
    order = np.empty(len(groups), np.int64)
    for k in range(len(groups)):
        # Integer form of "largest target (k+1) * size / n minus taken", ties by group name.
        g = int(np.argmax((k + 1) * sizes - taken * len(groups)))
        order[k] = members[g][taken[g]]
        taken[g] += 1
    return order


class _RankSlices:
    """Rank-strided validation batches over a row order: every record is seen once across ranks.

    Every rank gets the same number of batches (empty ones where the records run out): under FSDP
    each batch is a forward whose all-gathers every rank must join, and under DDP a rank without
    any batch would leave validation while the others wait in its reduction.
    """

    def __init__(self, order: np.ndarray, batch: int, rank: int, world: int):
        starts = list(range(0, len(order), batch))
        per_rank = -(-len(starts) // world)
        mine = [order[s : s + batch].tolist() for s in starts[rank::world]]
        self.batches = mine + [[] for _ in range(per_rank - len(mine))]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamLoader(DataLoader):
    """The training DataLoader; its state is the global stream position, checkpointed by Lightning.

    The sampler already starts at the restored step, so restoring only checks that both agree.
    """

    def __init__(self, *args, position: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self._position = position

    def state_dict(self) -> dict:
        """The global position of the next sample to draw."""
        return {"position": self._position()}

    def load_state_dict(self, state: dict) -> None:
        """Check that the checkpoint's position is where this loader starts."""
        if state["position"] != self._position():
            raise RuntimeError(f"the checkpoint's stream position {state['position']} differs from the restored {self._position()}")


class CurriculumDataModule(pl.LightningDataModule):
    """Serves training micro-batches from a global index stream and sharded validation batches."""

    def __init__(
        self,
        train: RecordTable,
        val: RecordTable | None,
        collator: Collator,
        stream: IndexStream,
        *,
        micro_batch: int,
        val_micro_batch: int,
        accumulate: int,
        total_steps: int,
        num_workers: int,
        fingerprint: str,
        files: dict | None = None,
    ):
        super().__init__()
        self.train = train
        self.val = val
        self.collator = collator
        self.micro_batch = micro_batch
        self.val_micro_batch = val_micro_batch
        self.accumulate = accumulate
        self.total_steps = total_steps
        self.num_workers = num_workers
        self.stream = stream
        self.data_fingerprint = fingerprint
        # Per data file [size, mtime, ctime, inode]: a refused resume names the files that changed.
        self.data_files = files or {}
        self._val_order: np.ndarray | None = None

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_sampler(self, start_step: int = 0) -> GlobalBatchSampler:
        """This rank's batch sampler for the whole run (from `start_step`)."""
        rank, world = self._world()
        return GlobalBatchSampler(
            self.stream,
            micro_batch=self.micro_batch,
            world_size=world,
            rank=rank,
            accumulate=self.accumulate,
            total_steps=self.total_steps,
            start_step=start_step,
        )

    def _loader(self, dataset: Dataset, batch_sampler, persistent: bool, loader: type[DataLoader] = DataLoader, **extra) -> DataLoader:
        extra.setdefault("collate_fn", self.collator)
        return loader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            persistent_workers=persistent and self.num_workers > 0,
            # Its own generator: starting workers must not draw from the global RNG a resume restores.
            generator=torch.Generator().manual_seed(0),
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        # On resume Lightning has restored global_step already: the stream continues from there.
        start = self.trainer.global_step if self.trainer is not None else 0
        collate = self.collator.with_replacements(NextInGroup(self.train))
        return self._loader(
            RecordDataset(self.train), self.train_sampler(start), persistent=False, loader=StreamLoader, position=self.position, collate_fn=collate
        )

    def position(self) -> int:
        """Global stream position of the next sample: optimizer steps done x global batch."""
        return (self.trainer.global_step if self.trainer is not None else 0) * self.stream.global_batch

    def state_dict(self) -> dict:
        """Sampler position, schedule and data fingerprints, saved in every checkpoint."""
        return {
            "position": self.position(),
            "global_batch": self.stream.global_batch,
            "fingerprint": self.stream.schedule.fingerprint(),
            "data": self.data_fingerprint,
            "data_files": self.data_files,
        }

    def load_state_dict(self, state: dict) -> None:
        """Refuse a checkpoint whose sample order differs from this run's."""
        if state["global_batch"] != self.stream.global_batch:
            raise ValueError(
                f"the checkpoint was trained with a global batch of {state['global_batch']} samples, this run has "
                f"{self.stream.global_batch}: keep data.micro_batch_size x devices x trainer.accumulate_grad_batches equal"
            )

    def val_dataloader(self):
        if self.val is None or len(self.val) == 0:
            return []
        rank, world = self._world()
        if self._val_order is None:
            self._val_order = stratified_order(self.val.table.column("group").to_numpy(zero_copy_only=False))
        return self._loader(RecordDataset(self.val), _RankSlices(self._val_order, self.val_micro_batch, rank, world), persistent=True)
