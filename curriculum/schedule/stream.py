"""The curriculum stream: global sample position -> record row, a pure function of position.

Position p belongs to optimizer step p // global_batch and so to a stage. The stage's blend picks
the group; the group's running draw count picks the row through a seeded permutation keyed by
(seed, group, pass), and a group that runs out starts its next pass with a fresh permutation.
"""

from __future__ import annotations

import numpy as np

from curriculum.config import ConfigError, RunConfig
from curriculum.schedule.blend import StageBlend
from curriculum.schedule.permute import permute
from curriculum.schedule.stages import Schedule, compile_schedule


class CurriculumStream:
    """Maps global positions to table rows for a compiled schedule and a fixed global batch."""

    def __init__(self, schedule: Schedule, group_rows: dict[str, np.ndarray], global_batch: int, seed: int, lengths: np.ndarray | None = None):
        self.schedule = schedule
        self.global_batch = global_batch
        self.seed = seed
        self.grouped = schedule.batching == "grouped"
        self.rows = [np.asarray(group_rows.get(g, np.zeros(0, np.int64)), dtype=np.int64) for g in schedule.groups]
        self.megabatch = schedule.megabatch or global_batch
        if schedule.length_grouping:
            if lengths is None:
                raise ValueError("length grouping needs the records' lengths")
            if global_batch % self.megabatch and self.megabatch % global_batch:
                raise ConfigError(
                    f"schedule.megabatch={self.megabatch} is not allowed: use a divisor or a multiple of the global batch ({global_batch})."
                )
        self.lengths = lengths
        unit = 1 if self.grouped else global_batch
        self.blends = [StageBlend(st.ramp, st.mix, st.steps, unit, st.name) for st in schedule.stages]
        per_stage = [b.counts(np.array([b.length]))[0] * (global_batch if self.grouped else 1) for b in self.blends]
        self.offsets = np.vstack([np.zeros(len(schedule.groups), np.int64), np.cumsum(per_stage, axis=0)])
        self.stage_starts = np.array([st.start_step for st in schedule.stages], dtype=np.int64)
        self.total_positions = schedule.total_steps * global_batch

    def _stage_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.stage_starts, positions // self.global_batch, side="right") - 1

    def draws_before(self, position: int) -> np.ndarray:
        """Samples drawn per group (in schedule group order) before global position `position`."""
        if position >= self.total_positions:
            return self.offsets[-1].copy()
        s = int(self._stage_of(np.array([position]))[0])
        blend, k = self.blends[s], position - self.stage_starts[s] * self.global_batch
        if not self.grouped:
            return self.offsets[s] + blend.counts(np.array([k]))[0]
        step, within = divmod(k, self.global_batch)
        done = self.offsets[s] + blend.counts(np.array([step]))[0] * self.global_batch
        done[blend.groups_at(np.array([step]))[0]] += within
        return done

    def groups_and_ranks(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group index and running draw index within that group at each position (before length grouping)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.total_positions):
            raise IndexError(f"positions must lie in [0, {self.total_positions}): the schedule has {self.schedule.total_steps} steps")
        groups = np.empty(len(positions), np.int64)
        ranks = np.empty(len(positions), np.int64)
        stages = self._stage_of(positions)
        for s in np.unique(stages):
            sel = stages == s
            blend, k = self.blends[s], positions[sel] - self.stage_starts[s] * self.global_batch
            if self.grouped:
                step, within = np.divmod(k, self.global_batch)
                g, r = blend.groups_and_ranks(step)
                r = r * self.global_batch + within
            else:
                g, r = blend.groups_and_ranks(k)
            groups[sel] = g
            ranks[sel] = self.offsets[s][g] + r
        return groups, ranks

    def _rows(self, groups: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        out = np.empty(len(groups), np.int64)
        for g in np.unique(groups):
            sel = groups == g
            rows = self.rows[g]
            passes, offsets = np.divmod(ranks[sel], len(rows))
            picked = np.empty(int(sel.sum()), np.int64)
            for p in np.unique(passes):
                here = passes == p
                picked[here] = rows[permute(offsets[here], len(rows), self.seed, self.schedule.groups[g], int(p))]
            out[sel] = picked
        return out

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """Table rows at the given global positions."""
        positions = np.asarray(positions, dtype=np.int64)
        if not self.schedule.length_grouping or not len(positions):
            return self._rows(*self.groups_and_ranks(positions))
        G = self.global_batch
        if self.megabatch <= G:
            first, last = positions.min() // G * G, (positions.max() // G + 1) * G
        else:
            first, last = self._megabatch_span(int(positions.min())), self._megabatch_span(int(positions.max()), end=True)
        span = np.arange(first, last, dtype=np.int64)
        groups, ranks = self.groups_and_ranks(span)
        rows = self._rows(groups, ranks)
        if self.megabatch > G:
            for lo in np.unique([self._megabatch_span(int(p)) for p in range(first, last, G)]):
                sel = slice(lo - first, self._megabatch_span(int(lo), end=True) - first)
                rows[sel] = self._spread_by_length(groups[sel], rows[sel], int(lo))
        # Inside each step block, samples are ordered by group, then longest first: micro-batches
        # hold similar lengths (less padding) while every step keeps its exact group counts.
        block = min(self.megabatch, G)
        order = np.empty(len(span), np.int64)
        for m in range(0, len(span), block):
            sl = slice(m, m + block)
            order[sl] = m + np.lexsort((-self.lengths[rows[sl]], groups[sl]))
        return rows[order][positions - first]

    def _megabatch_span(self, position: int, end: bool = False) -> int:
        """First position of `position`'s megabatch (or the end of it); megabatches never cross a stage."""
        G, k = self.global_batch, self.megabatch // self.global_batch
        s = int(self._stage_of(np.array([position]))[0])
        start, stop = int(self.stage_starts[s]), self.schedule.stages[s].end_step
        lo = start + (position // G - start) // k * k
        return min(lo + k, stop) * G if end else lo * G

    def _spread_by_length(self, groups: np.ndarray, rows: np.ndarray, first: int) -> np.ndarray:
        """A megabatch's rows regrouped so each step holds rows of similar length, per group.

        Each group keeps its positions (so every step keeps its exact group counts); its rows,
        sorted longest first, are dealt to the steps in a seeded order, a contiguous run each.
        """
        G = self.global_batch
        steps = len(rows) // G
        step_order = np.random.default_rng([self.seed, first]).permutation(steps)
        out = rows.copy()
        for g in np.unique(groups):
            by_step = [np.flatnonzero(groups[j * G:(j + 1) * G] == g) + j * G for j in step_order]
            slots = np.concatenate(by_step)
            members = rows[np.sort(slots)]
            out[slots] = members[np.argsort(-self.lengths[members], kind="stable")]
        return out


def build_stream(cfg: RunConfig, bundle) -> tuple[CurriculumStream, int]:
    """The compiled curriculum stream over `bundle`'s training table (a DataBundle), and the number of steps this run trains."""
    schedule = compile_schedule(cfg, bundle.group_names, bundle.train_report.groups)
    lengths = bundle.train.approx_length() if schedule.length_grouping else None
    stream = CurriculumStream(schedule, bundle.train.group_indices(), cfg.global_batch(), cfg.seed, lengths)
    return stream, cfg.trainer.max_steps or schedule.total_steps
