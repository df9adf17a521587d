"""The zero-weight vision pass: text-only micro-batches reach every trained vision/projector parameter with zero gradient,
a frozen tower runs only the projector, and under FSDP the pass runs where a real image batch runs the vision path."""

from __future__ import annotations

import pytest
import torch

from conftest import grads_of, module_for, png, record
from families import MATRIX
from curriculum.config import Mode, TrainableConfig
from curriculum.model.components import component_prefixes
from curriculum.model.load import load_processor
from curriculum.model.trainability import freeze_unused_parameters
from curriculum.model.vision_dummy import VisionDummy, vision_dummy_inputs


def test_text_only_batch_runs_the_vision_path_with_zero_weight(arch, tmp_path):
    module, collate = module_for(arch, TrainableConfig(vision=Mode.full, projector=Mode.full, language=Mode.full))
    freeze_unused_parameters(module, collate([record("i", "<image>\nQ?", "A.", [png(tmp_path / "a.png")])]))
    batch = collate([record("t", "Q?", "A.")])
    assert "pixel_values" not in batch
    loss, _ = module.group_losses(batch)
    loss.backward()
    for comp in ("vision", "projector"):
        grads = grads_of(module, comp)
        assert grads and all(g is not None for g in grads), comp
        assert all(float(g.abs().sum()) == 0.0 for g in grads), comp
    # Every trained parameter takes part (DDP's reducer waits for each), Mllama's cross-attention layers included.
    assert all(g is not None for g in grads_of(module, "language"))
    with torch.no_grad():
        plain, _ = module_for(arch, dummy=False)[0].group_losses(batch)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5)


def test_frozen_tower_dummy_runs_only_the_projector(arch):
    """Where image features feed the language model's input (every family but cross-attention ones: Mllama's
    dummy is a whole forward, since its language model's cross-attention layers read the image too)."""
    module, collate = module_for(arch, TrainableConfig(vision=Mode.frozen, projector=Mode.full, language=Mode.full))
    cross_attention = not hasattr(module.model, "get_image_features")
    tower_calls = []
    for name in component_prefixes(module.model)["vision"]:
        module.model.get_submodule(name).register_forward_hook(lambda *_: tower_calls.append(1))
    batch = collate([record("t", "Q?", "A.")])
    module.group_losses(batch)  # the first call captures the tower's output for the dummy image
    tower_calls.clear()
    for p in module.model.parameters():
        p.grad = None
    loss, _ = module.group_losses(batch)
    loss.backward()
    assert (tower_calls == []) != cross_attention
    grads = grads_of(module, "projector")
    assert grads and all(g is not None and float(g.abs().sum()) == 0.0 for g in grads)
    with torch.no_grad():
        plain, _ = module_for(arch, dummy=False)[0].group_losses(batch)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5)


def test_frozen_tower_dummy_first_captured_in_inference_mode_still_trains(llava_path):
    module, collate = module_for(llava_path)
    batch = collate([record("t", "Q?", "A.")])
    with torch.inference_mode():  # e.g. a trainer.validate before training
        module.group_losses(batch)
    module.group_losses(batch)[0].backward()
    assert all(g is not None for g in grads_of(module, "projector"))


def test_without_dummy_text_only_batch_leaves_projector_without_grad(llava_path):
    module, collate = module_for(llava_path, dummy=False)
    module.group_losses(collate([record("t", "Q?", "A.")]))[0].backward()
    assert all(g is None for g in grads_of(module, "projector"))


# Cross-attention families (Mllama) are refused with trainer.strategy=fsdp (tests/test_sharding.py): no sharded dummy.
SHARDABLE = [name for name in MATRIX if name != "tiny-mllama"]


@pytest.mark.parametrize("arch", SHARDABLE, indirect=True)
def test_the_sharded_dummy_runs_the_vision_path_where_a_real_image_batch_does(arch, tmp_path):
    """Under FSDP every rank gathers units in call order: a text-only forward must reach the text embeddings and
    the vision tower in the order an image forward does (the probe finds it, without running the model)."""
    from curriculum.model.vision_dummy import images_before_embeddings, one_image_sample

    module, collate = module_for(arch, TrainableConfig(vision=Mode.full, projector=Mode.full, language=Mode.full))
    model = module.model
    modules = dict(model.named_modules())
    tower = [modules[p] for p in component_prefixes(model)["vision"] if p in modules]
    order = []
    handles = [model.get_input_embeddings().register_forward_pre_hook(lambda *_: order.append("text"))]
    handles += [m.register_forward_pre_hook(lambda *_: order.append("images")) for m in tower]

    def first_of(batch) -> str:
        order.clear()
        with torch.no_grad():
            module.group_losses(batch)
        return next(x for x in order if x in ("text", "images"))

    real = first_of(collate([record("i", "<image>\nQ?", "A.", [png(tmp_path / "a.png")])]))
    for h in handles:  # the probe's own hooks only
        h.remove()
    images_first = images_before_embeddings(model, one_image_sample(load_processor(arch), model))
    assert images_first == (real == "images")
    module.sharded = True
    module.vision_dummy = VisionDummy(vision_dummy_inputs(load_processor(arch), model), full_tower=True, images_first=images_first)
    handles = [model.get_input_embeddings().register_forward_pre_hook(lambda *_: order.append("text"))]
    handles += [m.register_forward_pre_hook(lambda *_: order.append("images")) for m in tower]
    assert first_of(collate([record("t", "Q?", "A.")])) == real
