"""FSDP2 (trainer.strategy=fsdp) on 2 CPU processes with gloo: wrap policy, a text-only rank, exact resume, gathered export."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import run_cli
from curriculum.model.components import component_of
from curriculum.model.sharding import block_modules
from curriculum.run.checkpoints import last_checkpoint, swap_in

sys.path.insert(0, os.path.dirname(__file__))
from test_ddp import changed_on_identical_ranks, run_ddp  # noqa: E402
from test_resume import rows  # noqa: E402


def test_the_wrap_policy_finds_every_decoder_layer_and_vision_block(arch):
    model = AutoModelForImageTextToText.from_pretrained(arch)
    names = {id(m): n for n, m in model.named_modules()}
    blocks = [names[id(b)] for b in block_modules(model)]
    text, vision = model.config.text_config, model.config.vision_config
    vision_layers = vision.num_hidden_layers + getattr(vision, "num_global_layers", 0)  # Mllama adds global layers
    by_component = {c: [b for b in blocks if component_of(b + ".x") == c] for c in ("vision", "projector", "language")}
    assert len(by_component["language"]) == text.num_hidden_layers, blocks
    assert len(by_component["vision"]) == vision_layers, blocks
    # Repeated projector modules are units too (Qwen3-VL's DeepStack mergers, MiniCPM-V's merger layers).
    assert sorted(sum(by_component.values(), [])) == sorted(blocks)


def test_a_checkpoint_swap_killed_at_any_point_leaves_a_whole_checkpoint(tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)

    def sharded(name, step):
        folder = ckpts / name
        folder.mkdir()
        torch.save({"global_step": step}, folder / "meta.pt")
        return str(folder)

    assert last_checkpoint(str(run)) is None
    swap_in(sharded("last.ckpt.tmp", 2), str(ckpts / "last.ckpt"))
    assert last_checkpoint(str(run)) == str(ckpts / "last.ckpt")
    # Killed between the two renames of the next swap: the previous checkpoint is last.ckpt.old.
    os.replace(ckpts / "last.ckpt", ckpts / "last.ckpt.old")
    sharded("last.ckpt.tmp", 4)
    assert last_checkpoint(str(run)) == str(ckpts / "last.ckpt.old")
    swap_in(str(ckpts / "last.ckpt.tmp"), str(ckpts / "last.ckpt"))
    assert sorted(os.listdir(ckpts)) == ["last.ckpt"]
    assert torch.load(ckpts / "last.ckpt" / "meta.pt")["global_step"] == 4


@pytest.mark.slow
def test_a_text_only_rank_does_not_hang_and_sharded_training_equals_ddp(tmp_path, cache_dir, shapes):
    (s0, s1), (seen0, seen1) = run_ddp(tmp_path, "fsdp")
    changed = changed_on_identical_ranks(s0, s1, seen0, seen1)
    initial, final, after_align = s0[0]["params"], s0[-1]["params"], s0[1]["params"]
    assert all(torch.equal(after_align[n], initial[n]) for n in final if "language_model" in n)
    assert any("language_model" in n for n in changed) and any("multi_modal_projector" in n for n in changed)
    # DDP on the same batches (test_ddp.py shows DDP equals one process): the same updates. Within 1% of one
    # update (lr 1e-3): AdamW's first steps are ~lr x sign(gradient), so float rounding of a near-zero gradient
    # summed in another order (reduce-scatter per unit vs one all-reduce) moves a few elements by up to ~1e-5.
    (tmp_path / "ddp").mkdir()
    (d0, _), _ = run_ddp(tmp_path / "ddp", "frozen")
    for before, after in zip(s0, d0):
        assert before["ids"] == after["ids"]
        for n in final:
            torch.testing.assert_close(before["params"][n], after["params"][n], rtol=1e-5, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


FSDP_CPU = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "model.dtype=float32"]
ARGS = [
    *FSDP_CPU, "schedule.stages.align.steps=3", "schedule.stages.blend.steps=2", "data.micro_batch_size=2",
    "trainer.val_every_n_steps=2", "checkpoint.every_n_steps=1", "data.num_workers=0", "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_a_sharded_run_resumes_exactly_and_exports_a_full_model(tmp_path, cache_dir, llava_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_cli("train", *ARGS, f"hydra.run.dir={ref}")
    run_cli("train", *ARGS, "trainer.max_steps=2", f"hydra.run.dir={run}")  # stops in align: no optimizer state for the LM yet
    ckpt = run / "checkpoints" / "last.ckpt"
    assert sorted(os.listdir(ckpt)) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]  # one shard per rank
    saved = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    weights = [k for k in saved if k.startswith("state_dict.")]
    # Lean: the vision tower, frozen in every stage, comes from the base model on resume.
    assert weights and not [k for k in weights if "vision_tower" in k]
    assert any("language_model" in k for k in weights) and any("multi_modal_projector" in k for k in weights)
    run_cli("train", f"resume={run}", "trainer.max_steps=null")
    assert rows(run) == rows(ref)
    exported = {name: AutoModelForImageTextToText.from_pretrained(str(d / "export")) for name, d in (("ref", ref), ("run", run))}
    ref_state, run_state = exported["ref"].state_dict(), exported["run"].state_dict()
    assert ref_state.keys() == run_state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], run_state[k]), k
    # The gathered weights are the trained ones: the language model moved, the frozen tower did not.
    base = AutoModelForImageTextToText.from_pretrained(llava_path).state_dict()
    assert any(not torch.equal(base[k], run_state[k]) for k in base if "language_model" in k)
    assert all(torch.equal(base[k], run_state[k]) for k in base if "vision_tower" in k)
    processor = AutoProcessor.from_pretrained(str(run / "export"))
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "What is 2+3?"}]}], add_generation_prompt=True, tokenize=True,
        return_dict=True, return_tensors="pt",
    )
    out = exported["run"].generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_a_resume_across_file_and_sharded_checkpoints_is_refused_in_one_sentence(tmp_path):
    from curriculum.config import ConfigError, validate
    from curriculum.run.resume import apply_overrides, prepare, saved_config
    from test_resume import fake_run

    run = fake_run(tmp_path, 3)  # a one-process run: last.ckpt is one file
    cfg = validate(apply_overrides(saved_config(run), [f"resume={run}"]))
    cfg.resume = str(run)
    with pytest.raises(ConfigError, match=r"trainer.strategy=fsdp cannot continue from .*last.ckpt, which is one file .*; resume with the run's own trainer.strategy=auto"):
        prepare(cfg, str(run), ["trainer.strategy=fsdp"])


def test_a_cross_attention_family_is_refused_with_fsdp_in_one_sentence(cache_dir, llava_path):
    from families import ensure_family

    from curriculum.config import ConfigError, RunConfig, TrainerConfig
    from curriculum.model.load import load_processor
    from curriculum.model.vision_dummy import build_vision_dummy

    path = ensure_family("tiny-mllama", cache_dir, llava_path)
    cfg = RunConfig(trainer=TrainerConfig(strategy="fsdp", devices=2, accelerator="cpu"))
    with pytest.raises(ConfigError, match=r"trainer.strategy=fsdp does not support MllamaForConditionalGeneration yet: .*; use trainer.strategy=ddp."):
        build_vision_dummy(cfg, load_processor(path), AutoModelForImageTextToText.from_pretrained(path))


def test_a_sharded_rank_whose_samples_were_all_skipped_still_runs_the_whole_forward(llava_path):
    """Sharded units gather only inside a forward, so an empty micro-batch becomes one unsupervised token, with the
    vision pass run inside that forward: every trained parameter gets a zero gradient and nothing is learnt."""
    from conftest import compiled
    from curriculum.config import OptimConfig
    from curriculum.model.load import load_processor
    from curriculum.model.module import VLMModule
    from curriculum.model.vision_dummy import VisionDummy, vision_dummy_inputs

    model = AutoModelForImageTextToText.from_pretrained(llava_path)
    dummy = VisionDummy(vision_dummy_inputs(load_processor(llava_path), model), full_tower=True)
    module = VLMModule(model, compiled(), OptimConfig(), vision_dummy=dummy, sharded=True)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    empty = {"input_ids": torch.zeros(0, 0, dtype=torch.long), "group_ids": torch.zeros(0, dtype=torch.long), "sample_ids": []}
    loss, sums = module.group_losses(empty)
    loss.backward()
    assert calls == [1] and loss.item() == 0.0 and not sums.any()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is None or not g.any() for g in grads.values())
    # Every language and projector parameter, and the vision tower's (but the post-layernorm LLaVA's features skip).
    assert all(g is not None for n, g in grads.items() if component_of(n) != "vision")
    assert [n for n, g in grads.items() if g is None] == ["model.vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.bias"]


def test_a_sharded_resume_missing_a_trained_weight_is_refused_naming_it(tmp_path):
    """A partial load would leave a trained weight at the base model's value; it is refused instead."""
    from curriculum.config import ConfigError
    from curriculum.run.checkpoints import refuse_missing_trained

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trained, self.frozen = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

        def never_trained(self):
            return ["frozen.weight", "frozen.bias"]

    module = Tiny()
    lean = {k: v for k, v in module.state_dict().items() if k.startswith("trained.")}
    dcp.save({"state_dict": lean}, checkpoint_id=str(tmp_path / "whole"))
    refuse_missing_trained(module, module.state_dict(), str(tmp_path / "whole"))  # frozen weights may be absent
    dcp.save({"state_dict": {"trained.bias": lean["trained.bias"]}}, checkpoint_id=str(tmp_path / "renamed"))
    with pytest.raises(ConfigError, match=r"no saved values for 1 trained weight\(s\) \(trained.weight\)"):
        refuse_missing_trained(module, module.state_dict(), str(tmp_path / "renamed"))
