"""DDP on CPU (gloo), find_unused_parameters=False, one rank with images and one text-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, png


@pytest.mark.slow
@pytest.mark.parametrize("vision", ["full", "frozen"])  # full vision dummy / projector-only dummy
def test_mixed_modality_ddp_completes_with_identical_parameters(tmp_path, cache_dir, shapes, vision):
    img = png(tmp_path / "a.png")
    lines = [{"id": f"img{k}", "image": img, "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]} for k in range(4)]
    lines += [{"id": f"txt{k}", "conversations": [{"from": "human", "value": f"{k}+1?"}, {"from": "gpt", "value": f"{k + 1}."}]} for k in range(4)]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "ddp_worker.py"), str(out), str(data), vision],
        capture_output=True, text=True, timeout=240, cwd=str(tmp_path),  # a collective mismatch hangs
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    seen0, seen1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert seen0 and all(s.startswith("img") for s in seen0)
    assert seen1 and all(s.startswith("txt") for s in seen1)
    assert r0["trained"].keys() == r1["trained"].keys()
    for name in r0["trained"]:
        assert torch.equal(r0["trained"][name], r1["trained"][name]), name
    changed = [n for n in r0["trained"] if not torch.equal(r0["trained"][n], r0["initial"][n])]
    assert any("multi_modal_projector" in n for n in changed)
    assert any("vision_tower" in n for n in changed) == (vision == "full")
