"""Stages, the error-minimising blend and the curriculum stream: exact counts, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import compiled
from curriculum.config import ConfigError, RampConfig, RunConfig, ScheduleConfig, StageConfig, StageTrainable
from curriculum.schedule.blend import StageBlend
from curriculum.schedule.sampler import GlobalBatchSampler
from curriculum.schedule.stages import UNITS, quantise
from curriculum.schedule.stream import CurriculumStream

GROUPS = ("image_text", "text_only")


def stages(**named) -> ScheduleConfig:
    return ScheduleConfig(stages={k: StageConfig(**v) for k, v in named.items()})


def strict(**named) -> ScheduleConfig:
    cfg = stages(**named)
    cfg.missing_groups = "error"
    return cfg


def test_a_group_the_data_lacks_is_renormalised_away_and_said_once(caplog):
    cfg = stages(
        a={"steps": 2, "mix": {"image_text": 1.0}},
        b={"steps": 2, "mix": {"image_text": 0.5, "text_only": 0.3, "video": 0.2}},
        c={"steps": 2, "mix": {"image_text": "rest", "text_only": 0}},
    )
    s = compiled(cfg, groups=("image_text", "text_only"), sizes={"image_text": 10, "text_only": 10})
    assert s.mix_at(2) == pytest.approx({"image_text": 0.625, "text_only": 0.375})
    assert s.mix_at(4) == {"image_text": 1.0, "text_only": 0.0}
    warnings = [r.getMessage() for r in caplog.records if "which the data lacks" in r.getMessage()]
    assert warnings == ["schedule.stages.b.mix names video, which the data lacks: the stage draws from image_text 0.625, text_only 0.375, renormalised"]
    # Image-text-only data with the default two stages: blend trains image-text alone.
    only = compiled(stages(align={"steps": 2, "mix": {"image_text": 1.0}}, blend={"steps": 2, "mix": {"image_text": "rest", "text_only": 0.3}}),
                    groups=("image_text",), sizes={"image_text": 10})
    assert only.mix_at(3) == {"image_text": 1.0}


def greedy(weights: np.ndarray, unit: int) -> np.ndarray:
    """Reference: at each position the group with the largest target-minus-count, ties by order."""
    deficit, out = np.zeros(weights.shape[1], np.int64), []
    for k in range(weights.shape[0] * unit):
        row = weights[k // unit]
        deficit += row
        cand = np.where(row > 0, deficit, np.iinfo(np.int64).min)
        g = int(np.argmax(cand))
        deficit[g] -= UNITS
        out.append(g)
    return np.array(out)


def stream_of(schedule_cfg, global_batch=8, groups=GROUPS, sizes=None, seed=0, lengths=None):
    sizes = sizes or dict.fromkeys(groups, 50)
    schedule = compiled(schedule_cfg, groups, sizes)
    rows, start = {}, 0
    for g in groups:
        rows[g] = np.arange(start, start + sizes[g])
        start += sizes[g]
    return CurriculumStream(schedule, rows, global_batch, seed, lengths)


def group_codes(stream, n):
    groups, _ = stream.groups_and_ranks(np.arange(n))
    return groups


@pytest.mark.parametrize("shape", ["linear", "cosine"])
@pytest.mark.parametrize("groups", [GROUPS, ("a", "b", "c")])
def test_every_prefix_of_every_stage_is_within_one_sample(shape, groups):
    last = {g: "rest" if i == 0 else 0.7 / (len(groups) - 1) for i, g in enumerate(groups)}
    cfg = stages(
        first={"steps": 5, "mix": {groups[0]: 1.0}},
        second={"steps": 12, "mix": last, "ramp": RampConfig(steps=6, shape=shape)},
        third={"steps": 7, "mix": {g: 1 / len(groups) for g in groups}},
    )
    s = stream_of(cfg, global_batch=6, groups=groups)
    codes = group_codes(s, s.total_positions)
    for st, blend in zip(s.schedule.stages, s.blends):
        part = codes[st.start_step * 6 : st.end_step * 6]
        counts = np.cumsum(np.eye(len(groups), dtype=np.int64)[part], axis=0)
        targets = blend.targets(np.arange(1, len(part) + 1)) / UNITS
        assert np.abs(counts - targets).max() < 1
        assert np.array_equal(part, greedy(np.array([st.weights_at(i) for i in range(st.steps)]), 6))


def test_closed_form_and_simulation_match_the_reference_rule():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, steps, unit = rng.integers(1, 5), rng.integers(1, 10), rng.integers(1, 7)
        frac = rng.dirichlet(np.ones(n), size=steps)
        w = quantise(frac)
        b = StageBlend(w, w[-1], int(steps), int(unit))
        assert np.array_equal(b.groups_at(np.arange(b.length)), greedy(w, int(unit)))
        assert np.array_equal(b.counts(np.array([b.length]))[0], np.bincount(greedy(w, int(unit)), minlength=n))


def test_three_groups_seek_far_into_a_periodic_stage():
    w = quantise(np.array([[0.45, 0.35, 0.2]] * 10))
    b = StageBlend(np.zeros((0, 3)), w[0], 1000, 64)
    ref = greedy(w, 64)  # the constant mix repeats every 20 positions
    far = np.arange(50_000, 50_640)
    assert np.array_equal(b.groups_at(far), ref[far - 50_000])
    counts = b.counts(np.array([64_000]))[0]
    assert counts.tolist() == [28_800, 22_400, 12_800]


def test_two_groups_seek_to_position_a_billion_without_replay():
    s = stream_of(stages(train={"steps": 10**9, "mix": {"image_text": 0.7, "text_only": 0.3}}), global_batch=4)
    p = 10**9
    draws = s.draws_before(p)
    assert draws.tolist() == [700_000_000, 300_000_000]
    groups, ranks = s.groups_and_ranks(np.arange(p, p + 10))
    assert groups.tolist() == greedy(quantise(np.array([[0.7, 0.3]])), 10).tolist()
    assert ranks[0] == draws[groups[0]]


def test_grouped_batching_gives_one_group_per_step_at_the_step_ratio():
    cfg = stages(train={"steps": 20, "mix": {"image_text": 0.75, "text_only": 0.25}})
    cfg.batching = "grouped"
    s = stream_of(cfg, global_batch=8)
    codes = group_codes(s, s.total_positions).reshape(20, 8)
    assert (codes == codes[:, :1]).all()
    per_step = codes[:, 0]
    counts = np.cumsum(np.eye(2, dtype=int)[per_step], axis=0)
    assert np.abs(counts - np.outer(np.arange(1, 21), [0.75, 0.25])).max() < 1
    assert s.draws_before(s.total_positions).tolist() == [15 * 8, 5 * 8]


@pytest.mark.parametrize("batching", ["mixed", "grouped"])
def test_single_group_schedule_works_in_both_modes(batching):
    cfg = stages(only={"steps": 6, "mix": {"image_text": 1.0}})
    cfg.batching = batching
    s = stream_of(cfg, global_batch=4, groups=("image_text",))
    rows = s(np.arange(24))
    assert sorted(rows[:24].tolist()) == sorted(rows.tolist()) and len(set(rows[:24].tolist())) == 24


def test_ranks_and_world_sizes_see_the_same_global_order():
    cfg = stages(a={"steps": 3, "mix": {"image_text": 1.0}}, b={"steps": 5, "mix": {"image_text": "rest", "text_only": 0.4}, "ramp": RampConfig(fraction=0.5)})
    s = stream_of(cfg, global_batch=8)

    def order(world, micro, accum):
        per_rank = [list(GlobalBatchSampler(s, micro_batch=micro, world_size=world, rank=r, accumulate=accum, total_steps=8)) for r in range(world)]
        out = []
        for i in range(8 * accum):
            for r in range(world):
                out += per_rank[r][i]
        return out

    assert order(1, 8, 1) == order(2, 4, 1) == order(2, 2, 2) == order(4, 1, 2) == s(np.arange(64)).tolist()


def test_groups_cycle_through_fresh_permutations():
    only_images = {"image_text": 1.0, "text_only": 0}
    s = stream_of(stages(t={"steps": 10, "mix": only_images}), global_batch=10, sizes={"image_text": 25, "text_only": 5})
    rows = s(np.arange(100)).reshape(4, 25)
    for p in rows:
        assert sorted(p.tolist()) == list(range(25))
    assert rows[0].tolist() != rows[1].tolist()
    again = stream_of(stages(t={"steps": 10, "mix": only_images}), global_batch=10, sizes={"image_text": 25, "text_only": 5})
    assert again(np.arange(100)).tolist() == rows.reshape(-1).tolist()
    other_seed = stream_of(stages(t={"steps": 10, "mix": only_images}), global_batch=10, sizes={"image_text": 25, "text_only": 5}, seed=1)
    assert other_seed(np.arange(25)).tolist() != rows[0].tolist()


def test_draw_indices_continue_across_stages():
    cfg = stages(a={"steps": 2, "mix": {"image_text": 1.0}}, b={"steps": 2, "mix": {"image_text": 1.0, "text_only": 0}})
    s = stream_of(cfg, global_batch=5, sizes={"image_text": 20, "text_only": 5})
    _, ranks = s.groups_and_ranks(np.arange(20))
    assert ranks.tolist() == list(range(20))


def test_ramp_scales_or_clips_with_its_stage():
    cfg = stages(a={"steps": 4, "mix": {"image_text": 1.0}}, b={"steps": 8, "mix": {"image_text": "rest", "text_only": 0.5}, "ramp": RampConfig(steps=100)})
    s = compiled(cfg)
    assert s.stages[1].ramp_steps == 8
    assert [s.mix_at(st)["text_only"] for st in (4, 7, 11)] == [0.0625, 0.25, 0.5]
    frac = stages(a={"steps": 4, "mix": {"image_text": 1.0}}, b={"steps": 8, "mix": {"text_only": 1.0}, "ramp": RampConfig(fraction=0.25)})
    assert compiled(frac).stages[1].ramp_steps == 2


def test_rest_takes_the_remainder_so_a_sweep_value_is_exact():
    s = compiled(stages(b={"steps": 2, "mix": {"image_text": "rest", "text_only": 0.1}}))
    assert s.mix_at(0) == {"image_text": 0.9, "text_only": 0.1}


def test_length_grouping_keeps_step_counts_and_reduces_padding():
    cfg = stages(t={"steps": 40, "mix": {"image_text": 0.5, "text_only": 0.5}})
    lengths = np.random.default_rng(0).integers(10, 500, size=100)
    plain = stream_of(cfg, global_batch=16, lengths=lengths)
    cfg.length_grouping = True
    grouped = stream_of(cfg, global_batch=16, lengths=lengths)
    a, b = plain(np.arange(640)), grouped(np.arange(640))
    for step in range(40):
        sl = slice(step * 16, step * 16 + 16)
        assert sorted(a[sl].tolist()) == sorted(b[sl].tolist())

    def padding(rows):
        mb = lengths[rows].reshape(-1, 4)
        return (mb.max(axis=1, keepdims=True) - mb).sum() / mb.size

    assert padding(b) < 0.7 * padding(a)


def test_megabatch_of_several_steps_sorts_across_steps_but_keeps_each_steps_group_counts():
    # One rank, no accumulation: the global batch is one micro-batch of 8, so only a megabatch
    # spanning steps can bring similar lengths together. Stages of 10 and 14 steps, megabatch 4 steps.
    cfg = stages(a={"steps": 10, "mix": {"image_text": 0.7, "text_only": 0.3}}, b={"steps": 14, "mix": {"image_text": 0.4, "text_only": 0.6}})
    lengths = np.random.default_rng(1).integers(10, 500, size=100)
    plain = stream_of(cfg, lengths=lengths)
    cfg.length_grouping, cfg.megabatch = True, 32
    grouped = stream_of(cfg, lengths=lengths)
    total = 24 * 8
    a, b = plain(np.arange(total)), grouped(np.arange(total))
    group_of = {int(r): g for g, rows in enumerate(plain.rows) for r in rows}
    for step in range(24):
        sl = slice(step * 8, step * 8 + 8)
        assert sorted(group_of[int(r)] for r in a[sl]) == sorted(group_of[int(r)] for r in b[sl])
    # The same rows in each megabatch (4 steps, the last of each stage shorter), never across stages.
    for lo, hi in [(0, 4), (4, 8), (8, 10), (10, 14), (14, 18), (18, 22), (22, 24)]:
        assert sorted(a[lo * 8:hi * 8].tolist()) == sorted(b[lo * 8:hi * 8].tolist())
    # A pure function of position: any slice, asked alone, gives the same rows.
    for lo, hi in [(0, 8), (37, 45), (80, 81), (150, 192)]:
        assert grouped(np.arange(lo, hi)).tolist() == b[lo:hi].tolist()

    def padding(rows):
        mb = lengths[rows].reshape(-1, 8)
        return (mb.max(axis=1, keepdims=True) - mb).sum() / mb.size

    assert padding(b) < 0.7 * padding(a)


def test_megabatch_must_divide_or_be_a_multiple_of_the_global_batch():
    cfg = stages(a={"steps": 4, "mix": {"image_text": 1.0, "text_only": 0}})
    cfg.length_grouping, cfg.megabatch = True, 12
    with pytest.raises(ConfigError, match=r"schedule.megabatch=12 is not allowed: use a divisor or a multiple of the global batch \(8\)"):
        stream_of(cfg, lengths=np.ones(100, np.int64))


@pytest.mark.parametrize(
    "cfg, sizes, message",
    [
        (stages(a={"steps": 2, "mix": {"video": 1.0}}), None, "schedule.stages.a.mix draws only from video, which the data lacks"),
        (stages(a={"steps": 2, "mix": {"image_text": 0.5, "text_only": 0.4}}), None, "schedule.stages.a.mix fractions sum to 0.9"),
        (stages(a={"steps": 2, "mix": {"image_text": "rest", "text_only": "rest"}}), None, "several `rest` groups"),
        (stages(a={"steps": 2, "mix": {"image_text": -0.5, "text_only": 1.5}}), None, "schedule.stages.a.mix.image_text=-0.5 is not allowed"),
        (strict(a={"steps": 2, "mix": {"image_text": 0.5, "text_only": 0.5}}), {"image_text": 10, "text_only": 0}, "the data has no text_only records"),
        (strict(a={"steps": 2, "mix": {"image_text": 0.5, "video": 0.5}}), None, "the data has no group 'video' (it has image_text, text_only)"),
        (stages(a={"steps": 2, "mix": {"image_text": 1.0}}), {"image_text": 10, "text_only": 3}, "data group 'text_only' (3 records) is in no stage's mix"),
    ],
)
def test_mix_errors_name_the_stage(cfg, sizes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        compiled(cfg, sizes=sizes)


@pytest.mark.parametrize(
    "cfg, message",
    [
        (stages(a={"steps": 0, "mix": {"image_text": 1.0}}), "schedule.stages.a.steps=0 is not allowed"),
        (stages(a={"steps": 2, "mix": {"image_text": 1.0}, "ramp": RampConfig(steps=1)}), "first stage has no previous mix"),
        (stages(a={"steps": 2, "mix": {}}), "schedule.stages.a.mix is empty"),
        (ScheduleConfig(stages={}), "schedule.stages is empty"),
        (
            stages(a={"steps": 2, "mix": {"image_text": 1.0}, "trainable": StageTrainable(language="frozen", projector="frozen")}),
            "freeze vision, projector and language in every stage",
        ),
    ],
)
def test_stage_errors_come_before_any_model_loads(cfg, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(schedule=cfg).check()


def test_fingerprint_changes_with_the_mix():
    a = compiled(stages(t={"steps": 2, "mix": {"image_text": "rest", "text_only": 0.1}}))
    b = compiled(stages(t={"steps": 2, "mix": {"image_text": "rest", "text_only": 0.2}}))
    assert a.fingerprint() != b.fingerprint() and a.fingerprint() == compiled(stages(t={"steps": 2, "mix": {"image_text": 0.9, "text_only": 0.1}})).fingerprint()
