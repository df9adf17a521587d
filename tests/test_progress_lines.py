"""Counted progress lines: quiet for short steps, a line every interval and at the end for long ones."""

from __future__ import annotations

import logging

from curriculum.progress_lines import CountedLines


def test_a_line_every_interval_and_one_at_the_end_only_when_it_was_long(caplog):
    now = [0.0]
    caplog.set_level(logging.INFO, logger="curriculum")
    quick = CountedLines("generation", "samples answered", total=4, every=10, clock=lambda: now[0])
    for k in range(1, 5):
        quick.update(k)
    quick.finish()
    assert caplog.messages == []
    slow = CountedLines("pre-training", "steps", total=600, every=10, clock=lambda: now[0])
    for k in range(1, 601):
        now[0] += 0.125  # 75 s in all
        slow.update(k, f"at {k}")
    slow.finish("done")
    assert caplog.messages[0] == "pre-training: 80/600 steps (10 s), at 80"
    assert caplog.messages[-2:] == ["pre-training: 560/600 steps (70 s), at 560", "pre-training: 600/600 steps (75 s), done"]
    assert len(caplog.messages) == 8
