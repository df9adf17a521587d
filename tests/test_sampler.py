"""Per-rank micro-batches cut from the global position stream, and the seeded permutations."""

from __future__ import annotations

import numpy as np
import pytest

from curriculum.schedule.permute import permute
from curriculum.schedule.sampler import GlobalBatchSampler


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


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_permute_is_a_bijection_of_every_size(n):
    assert sorted(permute(np.arange(n), n, 0, "g", 0).tolist()) == list(range(n))


def test_permutations_depend_on_seed_key_and_pass_only():
    a = permute(np.arange(50), 50, 1, "text_only", 0)
    assert a.tolist() == permute(np.arange(50), 50, 1, "text_only", 0).tolist()
    assert a.tolist() != permute(np.arange(50), 50, 2, "text_only", 0).tolist()
    assert a.tolist() != permute(np.arange(50), 50, 1, "image_text", 0).tolist()
    assert a.tolist() != permute(np.arange(50), 50, 1, "text_only", 1).tolist()
    assert permute(np.array([7, 3]), 50, 1, "text_only", 0).tolist() == [a[7], a[3]]


def test_rank_outside_world_is_rejected():
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        GlobalBatchSampler(lambda p: p, micro_batch=1, world_size=2, rank=2, accumulate=1, total_steps=1)
