"""Stage trainability: which parameters a stage trains, making that hold, and finishing each step's gradients.

What a stage's `trainable` says holds exactly: a component frozen in the current stage has no
gradient (requires_grad off, so no `.grad`, no optimizer-state change, no share of the clipping
norm) and runs in eval mode. Under FSDP2 the units fix which parameters have gradients when first
gathered, so there a frozen stage drops its gradients before the optimizer step instead.

May import config, schedule and model.components.
"""

from __future__ import annotations

import torch

from curriculum.config import COMPONENTS, Mode
from curriculum.model.components import component_of, component_prefixes
from curriculum.schedule.stages import Stage


class Trainability:
    """The current stage's trainability over `model`'s components."""

    def __init__(self, model: torch.nn.Module, toggle_requires_grad: bool = True):
        self.model = model
        # False for sharded parameters: gradients are dropped in finish_gradients instead.
        self.toggle_requires_grad = toggle_requires_grad
        self.stage: Stage | None = None
        self._trained: dict[str, list[torch.nn.Parameter]] | None = None
        # (vision path trains, tower trains) in the current stage.
        self.vision_path: tuple[bool, bool] = (False, False)

    def trained_parameters(self) -> dict[str, list[torch.nn.Parameter]]:
        """Per component, the parameters trained in some stage (requires_grad when first asked)."""
        if self._trained is None:
            self._trained = {c: [] for c in COMPONENTS}
            for name, p in self.model.named_parameters():
                if p.requires_grad:
                    self._trained[component_of(name)].append(p)
        return self._trained

    def forget_parameters(self) -> None:
        """Find the trained parameters again on the next call (sharding replaced them)."""
        self._trained = None

    def enter(self, stage: Stage) -> bool:
        """Make `stage`'s trainability hold; True when the set of parameters with gradients changed."""
        trained = self.trained_parameters()
        self.stage = stage
        changed = False
        if self.toggle_requires_grad:
            for comp, params in trained.items():
                on = self.trains(comp)
                changed |= any(p.requires_grad != on for p in params)
                for p in params:
                    p.requires_grad_(on)
        tower = self.trains("vision") and bool(trained["vision"])
        self.vision_path = (tower or self.trains("projector") and bool(trained["projector"]), tower)
        return changed

    def trains(self, component: str) -> bool:
        """Whether the current stage trains `component` (every component before the first stage)."""
        return self.stage is None or getattr(self.stage.trainable, component) is not Mode.frozen

    def set_modes(self) -> None:
        """Train mode for the components the current stage trains; eval mode for the ones it freezes."""
        if self.stage is None:
            return
        prefixes = component_prefixes(self.model)
        modules = dict(self.model.named_modules())  # a prefix may name a bare parameter (image_newline): no mode
        # Outer modules first, so a component nested in another (a projector inside the vision module) keeps its own mode.
        for prefix, comp in sorted(((p, c) for c in COMPONENTS for p in prefixes[c] if p in modules), key=lambda x: x[0].count(".")):
            modules[prefix].train(self.trains(comp) and bool(self.trained_parameters()[comp]))

    def vision_path_now(self) -> tuple[bool, bool]:
        """(vision path trains, tower trains): the stage's, or outside a stage (a probe) what has requires_grad now."""
        if self.stage is not None:
            return self.vision_path
        trains = {c: False for c in COMPONENTS}
        for n, p in self.model.named_parameters():
            trains[component_of(n)] |= p.requires_grad
        return trains["vision"] or trains["projector"], trains["vision"]

    def finish_gradients(self, tokens: float, image_batches: float, splits: int) -> None:
        """Turn the step's summed gradients into the global batch's token mean; drop what must not move.

        Lightning divides each micro-batch loss by the accumulation steps and DDP averages over
        ranks, so the summed-loss gradients are scaled by `splits` (accumulation x ranks) / global
        tokens. Gradients are dropped (set to None, so AdamW leaves weights and state alone) for
        the vision path on a step whose global batch holds no image (the zero-weight dummy's
        zeros), for components the stage freezes where gradients could not be switched off, and
        for everything on a step without any supervised token.
        """
        scale = splits / tokens if tokens > 0 else 0.0
        for comp, params in self.trained_parameters().items():
            drop = scale == 0.0 or not self.trains(comp) or comp in ("vision", "projector") and image_batches == 0
            for p in params:
                if p.grad is None:
                    continue
                if drop:
                    p.grad = None
                else:
                    p.grad.mul_(scale)


def never_trained(module: torch.nn.Module, trained: dict[str, list[torch.nn.Parameter]]) -> list[str]:
    """state_dict keys of `module`'s parameters that no stage trains (every alias of a tied weight)."""
    ids = {id(p) for params in trained.values() for p in params}
    return [k for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, torch.nn.Parameter) and id(v) not in ids]


def freeze_unused_parameters(module, probe_batch: dict) -> list[str]:
    """Drop trained parameters that get no gradient from a real batch (e.g. an unused pooler) and return their names.

    DDP without find_unused_parameters needs every parameter with a gradient to take part in
    every step. Every parameter some stage trains is probed, whatever the current stage freezes.
    `module` is the VLMModule (its group_losses runs the batch).
    """
    trained = module.trainability.trained_parameters()
    params = [p for group in trained.values() for p in group]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    loss, _ = module.group_losses(probe_batch)
    loss.backward()
    names = {id(p): n for n, p in module.model.named_parameters()}
    unused = [names[id(p)] for p in params if p.grad is None]
    for comp in trained:
        trained[comp] = [p for p in trained[comp] if p.grad is not None]
    for p, was in zip(params, before):
        p.requires_grad_(was and p.grad is not None)
        p.grad = None
    return unused
