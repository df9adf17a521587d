"""DDP on CPU (gloo), find_unused_parameters=False, with ranks or whole steps that have no image."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from conftest import REPO, png
from curriculum.run.recipe import build_parts, build_trainer

sys.path.insert(0, os.path.dirname(__file__))
import ddp_worker  # noqa: E402


def data_file(tmp_path) -> str:
    img = png(tmp_path / "a.png")
    lines = [{"id": f"img{k}", "image": img, "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]} for k in range(8)]
    # Text-only answers of very different lengths: a per-rank token mean would weigh them differently.
    lines += [{"id": f"txt{k}", "conversations": [{"from": "human", "value": f"{k}+1?"}, {"from": "gpt", "value": " ".join(["one"] * (1 + 5 * k))}]} for k in range(8)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


def run_ddp(tmp_path, case: str, model: str | None = None) -> tuple[list, list]:
    data = data_file(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "ddp_worker.py"), str(out), data, case, *([model] if model else [])],
        capture_output=True, text=True, timeout=240, cwd=str(tmp_path),  # a collective mismatch hangs
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return steps, seen


def changed_on_identical_ranks(s0, s1, seen0, seen1) -> list[str]:
    """Check rank 0 trained on images only and rank 1 on text only, both ending with identical parameters; return the
    names of the parameters that changed."""
    assert seen0 and all(s.startswith("img") for s in seen0)
    assert seen1 and all(s.startswith("txt") for s in seen1)
    initial, final = s0[0]["params"], s0[-1]["params"]
    for name in final:
        assert torch.equal(final[name], s1[-1]["params"][name]), name
    return [n for n in final if not torch.equal(final[n], initial[n])]


@pytest.mark.slow
@pytest.mark.parametrize("vision", ["full", "frozen"])  # full vision dummy / projector-only dummy
def test_mixed_modality_ddp_completes_with_identical_parameters(tmp_path, cache_dir, shapes, vision):
    (s0, s1), (seen0, seen1) = run_ddp(tmp_path, vision)
    changed = changed_on_identical_ranks(s0, s1, seen0, seen1)
    assert any("multi_modal_projector" in n for n in changed)
    assert any("vision_tower" in n for n in changed) == (vision == "full")
    # Frozen in `align`, trained in `blend` after the stage switch rebuilt the DDP reducer.
    initial, final, after_align = s0[0]["params"], s0[-1]["params"], s0[1]["params"]
    assert all(torch.equal(after_align[n], initial[n]) for n in final if "language_model" in n)
    assert any("language_model" in n for n in changed)


def one_process(tmp_path, case: str, micro_batch: int):
    """The model a case trains on one process with the whole global batch in each micro-batch."""
    cfg = ddp_worker.config(str(tmp_path / "one"), data_file(tmp_path), case)
    cfg.trainer.devices, cfg.trainer.strategy, cfg.data.micro_batch_size = 1, "auto", micro_batch
    cfg.check()
    pl.seed_everything(cfg.seed)
    parts = build_parts(cfg, str(tmp_path / "one"))
    build_trainer(cfg, str(tmp_path / "one"), parts).fit(parts.module, datamodule=parts.datamodule)
    return parts.module.model


@pytest.mark.slow
def test_two_ranks_match_one_process_and_image_less_steps_leave_the_projector(tmp_path, cache_dir, shapes):
    (s0, s1), _ = run_ddp(tmp_path, "grouped")
    # The same global batches (2 ranks x 4) on one process (1 x 8) give the same parameters.
    final = s0[-1]["params"]
    for n, p in one_process(tmp_path, "grouped", 8).named_parameters():
        if n in final:
            assert torch.equal(final[n], s1[-1]["params"][n]), n
            torch.testing.assert_close(final[n], p.detach(), rtol=1e-4, atol=1e-6, msg=n)
    text_steps = 0
    for before, after in zip(s0, s0[1:]):
        text_only = all(i.startswith("txt") for i in before["ids"])
        text_steps += text_only
        projector_moved = any(not torch.equal(before["params"][n], after["params"][n]) for n in final if "multi_modal_projector" in n)
        assert projector_moved == (not text_only)
    assert text_steps


@pytest.mark.slow
def test_packed_rows_on_two_ranks_train_what_padded_rows_train_on_one_process(tmp_path, cache_dir, shapes):
    """data.packing with an image-only and a text-only rank: no hang, identical ranks, the one-process padded run's weights."""
    (s0, s1), (seen0, seen1) = run_ddp(tmp_path, "packed")
    changed_on_identical_ranks(s0, s1, seen0, seen1)
    final = s0[-1]["params"]
    for n, p in one_process(tmp_path, "full", 4).named_parameters():
        if n in final:
            # AdamW turns float noise in a gradient that is zero in exact arithmetic (attention key biases) into steps of
            # ~1e-6; padded rows on 2 ranks differ from 1 process by as much.
            torch.testing.assert_close(final[n], p.detach(), rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.slow
def test_a_cross_attention_family_with_a_text_only_rank_completes_with_identical_parameters(tmp_path, cache_dir, llava_path):
    """Mllama's cross-attention layers see no image on a text-only rank; its zero-weight pass is a whole forward."""
    from families import ensure_family

    model = ensure_family("tiny-mllama", cache_dir, llava_path)
    (s0, s1), (seen0, seen1) = run_ddp(tmp_path, "frozen", model)
    changed = changed_on_identical_ranks(s0, s1, seen0, seen1)
    assert any("cross_attn" in n for n in changed) and any("multi_modal_projector" in n for n in changed)
