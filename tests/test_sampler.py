"""Global-stream batch sampling: the global order is the same for any number of ranks."""

from __future__ import annotations

import numpy as np
import pytest

from curriculum.schedule.sampler import GlobalBatchSampler, ShuffledStream, permutation


def global_order(stream, world, micro, accum, steps):
    """Sample indices per optimizer step, concatenated over ranks and micro-steps in position order."""
    samplers = [GlobalBatchSampler(stream, micro_batch=micro, world_size=world, rank=r, accumulate=accum, total_steps=steps) for r in range(world)]
    per_rank = [list(s) for s in samplers]
    out = []
    for step in range(steps):
        for k in range(accum):
            for r in range(world):
                out.extend(per_rank[r][step * accum + k])
    return out


def test_one_and_two_ranks_see_the_same_global_order():
    stream = ShuffledStream(np.arange(37), seed=3)
    one = global_order(stream, world=1, micro=4, accum=2, steps=5)
    two = global_order(stream, world=2, micro=2, accum=2, steps=5)
    four = global_order(stream, world=4, micro=2, accum=1, steps=5)
    assert one == two == four == stream(np.arange(40)).tolist()


def test_rank_positions_are_disjoint_and_cover_each_step():
    s = [GlobalBatchSampler(lambda p: p, micro_batch=3, world_size=2, rank=r, accumulate=2, total_steps=4) for r in (0, 1)]
    assert s[0].global_batch == 12
    assert s[0].positions(1, 0).tolist() == [12, 13, 14] and s[1].positions(1, 0).tolist() == [15, 16, 17]
    assert s[0].positions(1, 1).tolist() == [18, 19, 20]
    assert len(s[0]) == 8
    assert sorted(i for r in s for b in r for i in b) == list(range(48))


def test_start_step_resumes_without_replay():
    full = list(GlobalBatchSampler(lambda p: p, micro_batch=2, world_size=1, rank=0, accumulate=1, total_steps=6))
    resumed = list(GlobalBatchSampler(lambda p: p, micro_batch=2, world_size=1, rank=0, accumulate=1, total_steps=6, start_step=4))
    assert resumed == full[4:]


def test_each_pass_is_a_fresh_permutation_of_all_rows():
    rows = np.arange(100, 110)
    stream = ShuffledStream(rows, seed=0)
    passes = stream(np.arange(30)).reshape(3, 10)
    for p in passes:
        assert sorted(p.tolist()) == rows.tolist()
    assert passes[0].tolist() != passes[1].tolist()
    assert stream(np.array([25])).tolist() == [passes[2][5]]


def test_permutations_depend_on_seed_key_and_pass_only():
    a = permutation(1, "text_only", 0, 50)
    assert a.tolist() == permutation(1, "text_only", 0, 50).tolist()
    assert a.tolist() != permutation(2, "text_only", 0, 50).tolist()
    assert a.tolist() != permutation(1, "image_text", 0, 50).tolist()
    assert a.tolist() != permutation(1, "text_only", 1, 50).tolist()


def test_rank_outside_world_is_rejected():
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        GlobalBatchSampler(lambda p: p, micro_batch=1, world_size=2, rank=2, accumulate=1, total_steps=1)
