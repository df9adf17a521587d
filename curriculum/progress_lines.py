"""Counted progress lines for long steps outside Lightning's loop (table builds, generation, pre-training).

A line at most every `every` seconds and one at the end when any was written, so a step that takes
a second prints nothing and one that takes minutes says how far it is, in logs as on a terminal.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("curriculum")


class CountedLines:
    """`update(done)` logs `<label>: <done>[/<total>] <unit>` when `every` seconds passed since the last line."""

    def __init__(self, label: str, unit: str, total: int | None = None, every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.label, self.unit, self.total, self.every, self.clock = label, unit, total, every, clock
        self.start = self.last = clock()
        self.lines = 0
        self.done = 0

    def update(self, done: int, extra: str = "") -> None:
        """Progress is `done`; say so if it is time."""
        self.done = done
        if self.clock() - self.last >= self.every:
            self._line(extra)

    def finish(self, extra: str = "") -> None:
        """The closing line, when the step was long enough to have said anything."""
        if self.lines:
            self._line(extra)

    def _line(self, extra: str) -> None:
        self.last = self.clock()
        self.lines += 1
        of = f"/{self.total:,}" if self.total is not None else ""
        tail = f", {extra}" if extra else ""
        log.info("%s: %s%s %s (%.0f s)%s", self.label, f"{self.done:,}", of, self.unit, self.last - self.start, tail)
