"""The deterministic error-minimising blend of one stage, as a pure function of position.

At each position the group whose cumulative target minus cumulative count is largest is drawn
(ties by group order), so every prefix of the stage is within one sample per group of its target.
Targets are integers in units of 1/UNITS, so the rule is exact integer arithmetic.

With one or two groups the rule has a closed form (the count of the first group after k positions
is round-half-up of its target), so any position is reached in O(1). With three or more groups the
stage is simulated once when the schedule is built: the ramp, then the constant mix until its
deficit state repeats, after which the sequence is periodic. Either way, seeking costs no replay.
"""

from __future__ import annotations

import math

import numpy as np

from curriculum.config import ConfigError
from curriculum.schedule.stages import UNITS

_BLOCK = 1024
_MAX_SIMULATED = 20_000_000


class StageBlend:
    """Group per position of one stage: `ramp` weights per step, then `mix`; `unit` positions per step."""

    def __init__(self, ramp: np.ndarray, mix: np.ndarray, steps: int, unit: int, name: str = "stage"):
        self.ramp = np.asarray(ramp, dtype=np.int64).reshape(-1, len(mix))
        self.mix = np.asarray(mix, dtype=np.int64)
        self.unit = unit
        self.n_groups = len(self.mix)
        self.length = steps * unit
        self.ramp_end = len(self.ramp) * unit
        self.cum = np.zeros((len(self.ramp) + 1, self.n_groups), dtype=np.int64)
        np.cumsum(self.ramp * unit, axis=0, out=self.cum[1:])
        self._rows = np.vstack([self.ramp, self.mix[None]])
        self.active = np.flatnonzero(self._rows.any(axis=0))
        self._sim = _Simulation(self, name) if len(self.active) > 2 else None

    def weights_at(self, k: int) -> np.ndarray:
        """Weights of stage position k."""
        return self._rows[min(k // self.unit, len(self.ramp))]

    def targets(self, k: np.ndarray) -> np.ndarray:
        """Cumulative target (units) per group after the first k positions; shape (len(k), groups)."""
        k = np.asarray(k, dtype=np.int64)
        step = np.minimum(k // self.unit, len(self.ramp))
        return self.cum[step] + (k - step * self.unit)[:, None] * self._rows[step]

    def counts(self, k: np.ndarray) -> np.ndarray:
        """Draws per group among the first k positions of the stage; shape (len(k), groups)."""
        k = np.atleast_1d(np.asarray(k, dtype=np.int64))
        if self._sim is not None:
            return self._sim.counts(k)
        out = np.zeros((len(k), self.n_groups), dtype=np.int64)
        first = self.active[0]
        if len(self.active) == 1:
            out[:, first] = k
            return out
        a = self._first_counts(k)
        out[:, first] = a
        out[:, self.active[1]] = k - a
        return out

    def _first_counts(self, k: np.ndarray) -> np.ndarray:
        """Closed form: draws of the first active group among the first k positions (round-half-up of its target)."""
        first = self.active[0]
        if len(self.ramp) == 0:
            # No ramp: the target is k * weight, without the per-position row lookups of `targets` (the hot path).
            target = k * self.mix[first]
        else:
            step = np.minimum(k // self.unit, len(self.ramp))
            target = self.cum[step, first] + (k - step * self.unit) * self._rows[step, first]
        return (2 * target + UNITS) // (2 * UNITS)

    def groups_at(self, k: np.ndarray) -> np.ndarray:
        """Group index drawn at each stage position k."""
        return self.groups_and_ranks(k)[0]

    def groups_and_ranks(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group drawn at each stage position k, and that group's draws in the stage before k."""
        k = np.asarray(k, dtype=np.int64)
        if self._sim is not None:
            g = self._sim.codes_at(k)
            return g, self.counts(k)[np.arange(len(k)), g]
        if len(self.active) == 1:
            return np.full(len(k), self.active[0], dtype=np.int64), k.copy()
        before = self._first_counts(k)
        drawn = self._first_counts(k + 1) > before
        return np.where(drawn, self.active[0], self.active[1]), np.where(drawn, before, k - before)


class _Simulation:
    """Explicit group codes for 3+ groups: the stage's prefix, then one period of the constant tail."""

    def __init__(self, blend: StageBlend, name: str):
        ramp_end = blend.ramp_end
        period = UNITS // math.gcd(UNITS, *map(int, blend.mix))
        codes: list[int] = []
        deficit = [0] * blend.n_groups
        seen: dict[tuple, int] = {}
        self.periodic_from, self.period = blend.length, 0
        for k in range(blend.length):
            if k >= ramp_end and (k - ramp_end) % period == 0:
                state = tuple(deficit)
                if state in seen:
                    self.periodic_from, self.period = seen[state], k - seen[state]
                    break
                seen[state] = k
            if k >= _MAX_SIMULATED:
                raise ConfigError(
                    f"schedule.stages.{name}.mix: with {len(blend.active)} groups this mix repeats only every "
                    f"{period} samples; round the fractions (e.g. to 1/1000) so the blend can be precomputed."
                )
            row = blend.weights_at(k)
            best, best_val = 0, None
            for g in range(blend.n_groups):
                deficit[g] += int(row[g])
                if row[g] and (best_val is None or deficit[g] > best_val):
                    best, best_val = g, deficit[g]
            deficit[best] -= UNITS
            codes.append(best)
        self.codes = np.array(codes, dtype=np.int8)
        self.n_groups = blend.n_groups
        onehot = np.zeros((len(codes), blend.n_groups), dtype=np.int64)
        onehot[np.arange(len(codes)), self.codes] = 1
        # Counts at every _BLOCK-th position; a count in between adds one short bincount.
        self.blocks = np.vstack([np.zeros((1, blend.n_groups), np.int64), np.cumsum(onehot, axis=0)])[::_BLOCK]
        self.per_period = self._explicit_counts(len(codes)) - self._explicit_counts(self.periodic_from)

    def _explicit_counts(self, i: int) -> np.ndarray:
        b = i // _BLOCK
        return self.blocks[b] + np.bincount(self.codes[b * _BLOCK : i], minlength=self.n_groups)

    def _fold(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into the explicit codes, number of whole periods skipped)."""
        if self.period == 0:
            return k, np.zeros_like(k)
        cycles = np.maximum(k - self.periodic_from, 0) // self.period
        return k - cycles * self.period, cycles

    def counts(self, k: np.ndarray) -> np.ndarray:
        idx, cycles = self._fold(k)
        return np.stack([self._explicit_counts(int(i)) for i in idx]) + cycles[:, None] * self.per_period

    def codes_at(self, k: np.ndarray) -> np.ndarray:
        idx, _ = self._fold(k)
        return self.codes[idx].astype(np.int64)
