"""The zero-weight vision pass for micro-batches without images (text-only ranks under DDP or FSDP).

A collective (DDP's gradient reduction, FSDP's gathers) waits for every rank; a rank whose batch has
no image must still reach every trained vision/projector parameter, or the job hangs or crashes.
The pass multiplies the vision path's output by zero: no weight moves, every rank takes part.

May import config and model.components.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
from PIL import Image

from curriculum.config import ConfigError, Mode, RunConfig
from curriculum.model.components import component_prefixes


def vision_dummy_inputs(processor, model) -> dict:
    """Smallest valid image input for `model.get_image_features`, built by the model's own processor.

    A family without that method reads images inside its language model (Mllama's cross-attention
    layers): its dummy is a whole one-image sample, run through the model's forward.
    """
    size = getattr(getattr(model.config, "vision_config", None), "image_size", 32)
    size = size if isinstance(size, int) else 32
    image = Image.new("RGB", (size, size))
    if not hasattr(model, "get_image_features"):
        return one_image_sample(processor, model)
    pixels = dict(processor.image_processor(images=[image], return_tensors="pt"))
    accepted = inspect.signature(model.get_image_features).parameters
    # A signature hidden behind a decorator's (*args, **kwargs) (MiniCPM-V) takes every tensor the processor made.
    takes_all = all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in accepted.values())
    return {k: v for k, v in pixels.items() if (takes_all or k in accepted) and isinstance(v, torch.Tensor)}


class VisionDummy:
    """Zero-weight pass over the vision path for a micro-batch without images.

    Only needed when a collective expects every trained vision/projector parameter to take part in
    every step (DDP, sharding): it then gets a (zero) gradient on every rank. While the tower does
    not train and parameters are not sharded, only the projector runs, on the tower's output for
    the dummy image, captured once per stage: a frozen tower has no gradient to give and no
    collective to join.
    """

    def __init__(self, inputs: dict, full_tower: bool, images_first: bool = False):
        self.inputs = inputs
        # Sharded parameters: every rank must run the whole tower, trained or not.
        self.full_tower = full_tower
        # The model encodes images before it embeds the text (see images_before_embeddings).
        self.images_first = images_first
        self._projector_calls: list | None = None
        self._placed: tuple | None = None
        self._loose: list[str] | None = None

    def reset(self) -> None:
        """Forget the captured tower output (the tower may have trained since)."""
        self._projector_calls, self._placed = None, None

    def term(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype, tower_trains: bool) -> torch.Tensor:
        """A zero scalar that depends on every trained parameter the vision path reaches."""
        # Projector parameters held outside a module (LLaVA-NeXT's image_newline, used after the
        # image features) are not reached by the path below: they join directly.
        if self._loose is None:
            self._loose = _loose_projector_parameters(model)
        loose = _zero_sum([model.get_parameter(name) for name in self._loose])
        if not hasattr(model, "get_image_features"):
            # Cross-attention layers of the language model read the image too: they need the whole forward.
            return loose + _zero_sum(model(**self._inputs_on(device, dtype), use_cache=False).logits)
        if not (tower_trains or self.full_tower):
            if self._placed != (device, dtype):
                self._projector_calls = _projector_calls(model, self._inputs_on(device, dtype))
                self._placed = (device, dtype)
            if self._projector_calls:
                return loose + _zero_sum([m(*args, **kwargs) for m, args, kwargs in self._projector_calls])
        return loose + _zero_sum(model.get_image_features(**self._inputs_on(device, dtype)))

    @contextmanager
    def inside_forward(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype):
        """Compute the term inside `model`'s next forward, into the yielded list.

        With sharded parameters every rank must gather the same units in the same order: the
        vision path runs where a real image batch runs it, just after the text embeddings (or just
        before them, for a model that encodes images first), before the language model's layers.
        """
        terms: list[torch.Tensor] = []

        def run(*_):
            if not terms:
                terms.append(self.term(model, device, dtype, True))

        embeddings = model.get_input_embeddings()
        handle = embeddings.register_forward_pre_hook(run) if self.images_first else embeddings.register_forward_hook(run)
        try:
            yield terms
        finally:
            handle.remove()

    def _inputs_on(self, device: torch.device, dtype: torch.dtype) -> dict:
        return {k: v.to(device, dtype) if torch.is_floating_point(v) else v.to(device) for k, v in self.inputs.items()}


class _First(Exception):
    """Raised by the first hooked module a forward reaches."""


def images_before_embeddings(model: torch.nn.Module, sample: dict) -> bool:
    """Whether `model`'s forward encodes images before it embeds the text, the order its FSDP units then gather in.

    The forward of a one-image sample stops at whichever comes first, so it costs nothing. A sample
    the model cannot take counts as the usual order (text embeddings first).
    """
    modules = dict(model.named_modules())
    vision = [modules[p] for p in component_prefixes(model)["vision"] if p in modules]
    order: list[str] = []

    def stop(name):
        def hook(*_):
            order.append(name)
            raise _First

        return hook

    handles = [model.get_input_embeddings().register_forward_pre_hook(stop("text"))]
    handles += [m.register_forward_pre_hook(stop("images")) for m in vision]
    try:
        with torch.no_grad():
            model(**sample, use_cache=False)
    except Exception:  # noqa: BLE001 - _First, or a sample this family's forward refuses
        pass
    finally:
        for h in handles:
            h.remove()
    return order[:1] == ["images"]


def one_image_sample(processor, model) -> dict:
    """A whole one-image sample (the image token and its pixels), as the processor builds it."""
    size = getattr(getattr(model.config, "vision_config", None), "image_size", 32)
    image = Image.new("RGB", (size, size) if isinstance(size, int) else (32, 32))
    sample = processor(text=[processor.image_token], images=[[image]], return_tensors="pt")
    return {k: v for k, v in sample.items() if isinstance(v, torch.Tensor)}


def _projector_calls(model: torch.nn.Module, inputs: dict) -> list:
    """(module, args, kwargs) of each projector call while the vision path runs on `inputs`, detached."""
    calls = []

    def capture(module, args, kwargs):
        calls.append((module, tuple(map(_detached, args)), {k: _detached(v) for k, v in kwargs.items()}))

    modules = dict(model.named_modules())
    projectors = [modules[name] for name in component_prefixes(model)["projector"] if name in modules]
    # A list of projectors (Qwen3-VL's DeepStack mergers) is never called itself: its entries are.
    called = [m for p in projectors for m in (p if isinstance(p, torch.nn.ModuleList) else [p])]
    hooks = [m.register_forward_pre_hook(capture, with_kwargs=True) for m in called]
    device = next(iter(inputs.values())).device
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        # The RNG is left untouched (a tower with dropout would draw), so a resumed run, which
        # captures again, stays on the uninterrupted run's random stream.
        # Plain tensors even when first called under inference mode: training steps replay them.
        with torch.inference_mode(False), torch.no_grad(), torch.random.fork_rng(devices=cuda):
            model.get_image_features(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _loose_projector_parameters(model: torch.nn.Module) -> list[str]:
    """Projector prefixes that name a parameter rather than a module."""
    params = dict(model.named_parameters())
    return [name for name in component_prefixes(model)["projector"] if name in params]


def _detached(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


def _zero_sum(out) -> torch.Tensor:
    return sum(t.float().sum() for t in _tensors(out) if t.requires_grad) * 0.0


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict) or hasattr(x, "values") and not isinstance(x, str):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def needs_vision_dummy(cfg: RunConfig) -> bool:
    """True when a micro-batch without images must still run the vision path (DDP / sharding safety).

    On one process no collective waits for the vision path, so a text-only batch skips it.
    """
    if cfg.trainer.shards_parameters():
        return True
    t = cfg.trained_modes()
    return cfg.world_size() > 1 and (t.vision is not Mode.frozen or t.projector is not Mode.frozen)


def build_vision_dummy(cfg: RunConfig, processor, model) -> VisionDummy | None:
    """The recipe's vision dummy: none when not needed; the whole tower when parameters are sharded."""
    if not needs_vision_dummy(cfg):
        return None
    if cfg.trainer.shards_parameters() and not hasattr(model, "get_image_features"):
        raise ConfigError(
            f"trainer.strategy=fsdp does not support {type(model).__name__} yet: its language model reads images through "
            "cross-attention layers, which a text-only rank cannot run inside the same sharded forward; use trainer.strategy=ddp."
        )
    if not cfg.trainer.shards_parameters():
        return VisionDummy(vision_dummy_inputs(processor, model), full_tower=False)
    try:
        images_first = images_before_embeddings(model, one_image_sample(processor, model))
    except Exception:  # noqa: BLE001 - a processor that cannot build a bare one-image sample: the usual order
        images_first = False
    return VisionDummy(vision_dummy_inputs(processor, model), full_tower=True, images_first=images_first)
