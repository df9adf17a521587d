"""LightningModule around any transformers image-text-to-text model, with per-group losses."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import random
import time
from contextlib import contextmanager

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from PIL import Image

from curriculum.config import COMPONENTS, ConfigError, Mode, OptimConfig
from curriculum.data.collate import IGNORE_INDEX
from curriculum.run.metrics_log import RunCSVLogger
from curriculum.model.components import component_of, component_prefixes
from curriculum.schedule.stages import Schedule, Stage

log = logging.getLogger("curriculum")
NOT_MODEL_INPUTS = ("labels", "group_ids", "sample_ids", "skipped", "drawn_group_ids")


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


class VLMModule(pl.LightningModule):
    """Trains `model` stage by stage on collated batches and logs loss per mixing group every optimizer step.

    What a stage's `trainable` says holds exactly: a component frozen in the current stage has no
    gradient (requires_grad off, so no `.grad`, no optimizer-state change, no share of the clipping
    norm) and runs in eval mode. The objective is the summed token loss of the whole global batch
    divided by its supervised tokens, so how the batch is split over micro-batches and ranks does
    not change the update.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        schedule: Schedule,
        optim: OptimConfig,
        vision_dummy: VisionDummy | None = None,
        skipped_log: str | None = None,
        sample_id_dir: str | None = None,
        start_step: int = 0,
        sharded: bool = False,
    ):
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.group_names = list(schedule.groups)
        self.optim = optim
        # Run the vision path on a tiny input when a micro-batch has no image, so every rank calls the same modules.
        self.vision_dummy = vision_dummy
        self.skipped_log = skipped_log
        self.sample_id_dir = sample_id_dir
        # The step training starts (or resumes) at: its stage's trainability is set before any wrapper is built.
        self.start_step = start_step
        # Parameters sharded by FSDP2 in configure_model. Its units fix which parameters have
        # gradients when first gathered, so a frozen stage drops gradients there instead of toggling.
        self.sharded = sharded
        self.toggle_requires_grad = not sharded
        # (state_dict keys, weights_identity) of the weights no stage trains, taken before sharding.
        self._identity: tuple[list[str], str] | None = None
        # Checkpoints leave out the weights no stage trains (on_save_checkpoint), so they are missing on load.
        self.strict_loading = False
        # A real batch whose backward shows which trained parameters never get a gradient (DDP only).
        self.probe_batch: dict | None = None
        self._trained: dict[str, list[torch.nn.Parameter]] | None = None
        self._stage: Stage | None = None
        # (vision path trains, tower trains) in the current stage.
        self._vision_path: tuple[bool, bool] = (False, False)
        # Per group (loss sum, supervised tokens, drawn samples, trained samples) of the current optimizer step.
        self._step_sums = torch.zeros(len(self.group_names), 4, dtype=torch.float64)
        # Skipped samples, micro-batches with images and real (unpadded) tokens of the current optimizer step.
        self._step_extra = torch.zeros(3, dtype=torch.float64)
        # When the current optimizer step's first micro-batch started, and its row until the step is done.
        self._step_clock = 0.0
        self._pending_row: tuple[dict, int] | None = None
        # (supervised tokens, micro-batches with images) of the step over all ranks, read before the optimizer step.
        self._step_totals: tuple[float, float] | None = None
        self._val_sums = torch.zeros(len(self.group_names), 2, dtype=torch.float64)
        # Cumulative samples drawn and trained per group over all ranks, and samples skipped; saved in checkpoints.
        self.drawn_total = torch.zeros(len(self.group_names), dtype=torch.float64)
        self.trained_total = torch.zeros(len(self.group_names), dtype=torch.float64)
        self.skipped_total = 0.0
        self._val_skipped = 0.0
        self._exhausted: set[str] = set()
        # Supervised tokens trained on over all ranks: zero at the end means nothing was learnt.
        self.trained_tokens = 0.0

    # ---- stages -----------------------------------------------------------------------------

    def trained_parameters(self) -> dict[str, list[torch.nn.Parameter]]:
        """Per component, the parameters trained in some stage (requires_grad when first asked)."""
        if self._trained is None:
            self._trained = {c: [] for c in COMPONENTS}
            for name, p in self.model.named_parameters():
                if p.requires_grad:
                    self._trained[component_of(name)].append(p)
        return self._trained

    def enter_stage(self, stage: Stage) -> bool:
        """Make `stage`'s trainability hold; True when the set of parameters with gradients changed."""
        trained = self.trained_parameters()
        self._stage = stage
        changed = False
        if self.toggle_requires_grad:
            for comp, params in trained.items():
                on = self._trains(comp)
                changed |= any(p.requires_grad != on for p in params)
                for p in params:
                    p.requires_grad_(on)
        tower = self._trains("vision") and bool(trained["vision"])
        self._vision_path = (tower or self._trains("projector") and bool(trained["projector"]), tower)
        if self.vision_dummy is not None:
            self.vision_dummy.reset()
        if self.training:
            self.train()
        return changed

    def _trains(self, component: str) -> bool:
        return self._stage is None or getattr(self._stage.trainable, component) is not Mode.frozen

    def train(self, mode: bool = True):
        """Train mode for the components the current stage trains; eval mode for the ones it freezes."""
        super().train(mode)
        if mode and self._stage is not None:
            prefixes = component_prefixes(self.model)
            modules = dict(self.model.named_modules())  # a prefix may name a bare parameter (image_newline): no mode
            # Outer modules first, so a component nested in another (a projector inside the vision module) keeps its own mode.
            for prefix, comp in sorted(((p, c) for c in COMPONENTS for p in prefixes[c] if p in modules), key=lambda x: x[0].count(".")):
                is_trained = self._trains(comp) and bool(self.trained_parameters()[comp])
                modules[prefix].train(is_trained)
        return self

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._stage is None:
            self.enter_stage(self.schedule.stage_at(self.start_step))

    def configure_model(self) -> None:
        if not self.sharded or self._identity is not None:
            return
        from curriculum.model.sharding import shard_model

        frozen = self.never_trained()
        self._identity = (sorted(frozen), weights_identity(self.state_dict(keep_vars=True), frozen))
        # bf16-mixed: float32 shards (the optimizer's precision), gathered in bf16 for compute.
        param_dtype = torch.bfloat16 if str(self.trainer.precision) in ("bf16-mixed", "bf16") else None
        units = shard_model(self.model, self.device_mesh["data_parallel"], param_dtype)
        log.info("sharded %d units (blocks, embeddings, head) and the rest of the model over %d processes (FSDP2)", units,
                 self.device_mesh["data_parallel"].size())
        # Sharding replaced the parameters: find the trained ones again.
        self._trained = None
        self.enter_stage(self._stage or self.schedule.stage_at(self.start_step))

    def on_fit_start(self) -> None:
        # On the training device, once: no model compute on the CPU before training starts.
        if self.probe_batch is None:
            return
        unused = freeze_unused_parameters(self, move_data_to_device(self.probe_batch, self.device))
        self.probe_batch = None
        if unused:
            log.info("%d parameter tensor(s) never receive a gradient and stay frozen, e.g. %s", len(unused), unused[0])
            self.enter_stage(self._stage)
            self._rewrap_ddp()

    def on_train_start(self) -> None:
        # A restored LambdaLR keeps the LR its checkpoint saved in each parameter group; the first step
        # after a resume must already use this run's schedule (a stage's lr may have changed).
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if batch_idx % self.trainer.accumulate_grad_batches:
            return
        self._step_clock = time.perf_counter()
        stage = self.schedule.stage_at(self.global_step)
        if stage is not self._stage and self.enter_stage(stage):
            self._rewrap_ddp()

    def _rewrap_ddp(self) -> None:
        """A fresh DDP wrapper whose reducer covers exactly the parameters that now have gradients."""
        from pytorch_lightning.strategies import DDPStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and strategy.model is not self:
            strategy.model = self
            strategy.configure_ddp()

    # ---- forward and loss -------------------------------------------------------------------

    def group_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed token loss of the batch and a [groups, 2] tensor of (loss sum, token count)."""
        sums = torch.zeros(len(self.group_names), 2, dtype=torch.float64, device=self.device)
        if batch["input_ids"].numel() == 0:
            if not self.sharded:
                # Every sample was skipped: still touch every trained parameter so collectives match.
                zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
                return zero + self._dummy_vision_term(), sums
            # Sharded units gather only inside a forward: run one on a token nothing learns from.
            batch = self._unsupervised_batch()
        inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
        dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        inputs = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in inputs.items()}
        inside = self.sharded and self.vision_dummy is not None and "pixel_values" not in batch
        if inside:
            with self.vision_dummy.inside_forward(self.model, self.device, dtype) as terms:
                token_loss, rows = supervised_token_losses(self.model, inputs, batch["labels"])
        else:
            token_loss, rows = supervised_token_losses(self.model, inputs, batch["labels"])
        n_rows = batch["labels"].shape[0]
        row_loss = torch.zeros(n_rows, dtype=token_loss.dtype, device=token_loss.device).index_add(0, rows, token_loss)
        row_tokens = torch.bincount(rows, minlength=n_rows)
        sums[:, 0].index_add_(0, batch["group_ids"], row_loss.detach().double())
        sums[:, 1].index_add_(0, batch["group_ids"], row_tokens.double())
        loss = row_loss.sum()
        if inside:
            loss = loss + terms[0]
        elif "pixel_values" not in batch:
            loss = loss + self._dummy_vision_term()
        return loss, sums

    def _unsupervised_batch(self) -> dict:
        """One text token without a label (the text model's BOS or pad token), in group 0."""
        text = getattr(self.model.config, "text_config", self.model.config)
        token = next((t for t in (text.bos_token_id, text.pad_token_id) if isinstance(t, int)), 0)
        ids = torch.full((1, 1), token, dtype=torch.long, device=self.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, IGNORE_INDEX),
                "group_ids": torch.zeros(1, dtype=torch.long, device=self.device)}

    def _dummy_vision_term(self) -> torch.Tensor:
        if self.vision_dummy is None:
            return torch.zeros((), device=self.device)
        if self._stage is not None:
            path, tower = self._vision_path
        else:  # outside a stage (a probe before training): what has requires_grad now
            trains = {c: False for c in COMPONENTS}
            for n, p in self.model.named_parameters():
                trains[component_of(n)] |= p.requires_grad
            path, tower = trains["vision"] or trains["projector"], trains["vision"]
        if not (path or self.vision_dummy.full_tower):
            return torch.zeros((), device=self.device)
        dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        return self.vision_dummy.term(self.model, self.device, dtype, tower)

    # ---- training ---------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, sums = self.group_losses(batch)
        n = len(self.group_names)
        step = torch.zeros(n, 4, dtype=torch.float64, device=self.device)
        step[:, :2] = sums
        step[:, 2] = torch.bincount(batch["drawn_group_ids"], minlength=n).double()
        step[:, 3] = torch.bincount(batch["group_ids"], minlength=n).double()
        self._step_sums = self._step_sums.to(self.device) + step
        real_tokens = float(batch["attention_mask"].sum()) if "attention_mask" in batch else 0.0
        extra = [self._record_skipped(batch.get("skipped", []), "train"), float("pixel_values" in batch), real_tokens]
        self._step_extra = self._step_extra.to(self.device) + torch.tensor(extra, dtype=torch.float64, device=self.device)
        if self.sample_id_dir:
            with open(os.path.join(self.sample_id_dir, f"rank{self.global_rank}.jsonl"), "a", encoding="utf-8") as f:
                entry = {"step": self.global_step, "micro_step": batch_idx % self.trainer.accumulate_grad_batches, "ids": batch["sample_ids"]}
                f.write(json.dumps(entry) + "\n")
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self._log_step(self.global_step)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._step_totals is None:
            return
        tokens, image_batches = self._step_totals
        self._step_totals = None
        self.finish_gradients(tokens, image_batches, self.trainer.accumulate_grad_batches * self.trainer.world_size)

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
            drop = scale == 0.0 or not self._trains(comp) or comp in ("vision", "projector") and image_batches == 0
            for p in params:
                if p.grad is None:
                    continue
                if drop:
                    p.grad = None
                else:
                    p.grad.mul_(scale)

    def _log_step(self, step: int) -> None:
        # One collective per optimizer step for everything the step's row and update need.
        n = len(self.group_names)
        total = self._reduce(torch.cat([self._step_sums.to(self.device).flatten(), self._step_extra.to(self.device)]))
        self._step_sums = torch.zeros_like(self._step_sums)
        self._step_extra = torch.zeros_like(self._step_extra)
        sums, (skipped, image_batches, real_tokens) = total[: 4 * n].view(n, 4), total[4 * n:].tolist()
        self._step_totals = (float(sums[:, 1].sum()), image_batches)
        self.drawn_total = self.drawn_total.to(self.device) + sums[:, 2]
        self.trained_total = self.trained_total.to(self.device) + sums[:, 3]
        self.skipped_total += skipped
        self.trained_tokens += float(sums[:, 1].sum())
        metrics = {"train/loss": _ratio(sums[:, 0].sum(), sums[:, 1].sum()), "stage": self.schedule.stage_at(step).name}
        for name, frac in self.schedule.mix_at(step).items():
            metrics[f"mix/{name}"] = frac
        for g, name in enumerate(self.group_names):
            metrics[f"samples/{name}"] = float(self.drawn_total[g])
            metrics[f"trained/{name}"] = float(self.trained_total[g])
            if sums[g, 1] > 0:  # a group absent from this step leaves its loss cell empty
                metrics[f"train/loss_{name}"] = _ratio(sums[g, 0], sums[g, 1])
            metrics[f"train/tokens_{name}"] = float(sums[g, 1])
        metrics["train/skipped"] = self.skipped_total
        for comp in {g["component"] for g in self.trainer.optimizers[0].param_groups}:
            metrics[f"lr/{comp}"] = self.optim.lr * self.lr_factor(step, comp)
        # Replaced by rates once the step is done (write_step_row).
        metrics["perf/tokens"], metrics["perf/samples"] = real_tokens, float(sums[:, 3].sum())
        for k in metrics:
            if k.startswith("train/loss_"):
                self.log(k, metrics[k], prog_bar=True, logger=False, rank_zero_only=True)
        self._pending_row = (metrics, step)

    def write_step_row(self) -> None:
        """Write the finished optimizer step's row, with its throughput, before anything checkpoints the step.

        perf/step_s is rank 0's wall time from the step's first micro-batch to after its optimizer
        step; tokens are all real tokens of the global batch (padding excluded), supervised tokens
        those with a label; peak memory is the GPU's, since the previous row.
        """
        if self._pending_row is None:
            return
        metrics, step = self._pending_row
        self._pending_row = None
        seconds = time.perf_counter() - self._step_clock
        tokens, samples = metrics.pop("perf/tokens"), metrics.pop("perf/samples")
        supervised = sum(v for k, v in metrics.items() if k.startswith("train/tokens_"))
        metrics["perf/step_s"] = seconds
        metrics["perf/samples_per_s"] = samples / seconds
        metrics["perf/tokens_per_s"] = tokens / seconds
        metrics["perf/supervised_tokens_per_s"] = supervised / seconds
        if self.device.type == "cuda":
            metrics["perf/peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        self.log("tok/s", metrics["perf/tokens_per_s"], prog_bar=True, logger=False, rank_zero_only=True)
        self._write(metrics, step, shown=[])

    def write_metrics(self, metrics: dict, step: int) -> None:
        """A row of metrics computed outside the loops (generation scores) to the loggers, at `step`."""
        self._write(metrics, step, shown=[])

    def _write(self, metrics: dict, step: int, shown: list[str]) -> None:
        """One row per step straight to the loggers (and the progress bar), flushed at once."""
        if self.trainer.is_global_zero:
            numeric = {k: v for k, v in metrics.items() if not isinstance(v, str)}
            for logger in self.loggers:
                # metrics.csv keeps the stage name; other loggers take numbers only.
                logger.log_metrics(metrics if isinstance(logger, RunCSVLogger) else numeric, step=step)
                logger.save()
        for k in shown:
            self.log(k, metrics[k], prog_bar=True, logger=False, rank_zero_only=True)

    def never_trained(self) -> list[str]:
        """state_dict keys of parameters no stage trains (every alias of a tied weight)."""
        trained = {id(p) for params in self.trained_parameters().values() for p in params}
        return [k for k, v in self.state_dict(keep_vars=True).items() if isinstance(v, torch.nn.Parameter) and id(v) not in trained]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lean checkpoints: weights no stage trains come from the base model again on resume; an
        # identity of them makes sure it is the same base.
        frozen = self.never_trained()
        for key in frozen:
            checkpoint["state_dict"].pop(key, None)
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        checkpoint["curriculum"] = {
            "base_weights": self._base_identity(frozen),
            # A sharded load initialises every parameter's optimizer state; this says which to keep.
            "optimizer_state": [n for n, p in self.named_parameters() if optimizer is not None and p in optimizer.state],
            "drawn_total": self.drawn_total.tolist(),
            "trained_total": self.trained_total.tolist(),
            "skipped_total": self.skipped_total,
            "trained_tokens": self.trained_tokens,
            # Plain containers and tensors only, so Lightning's weights_only loading accepts them.
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_state(),
                "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }

    def _base_identity(self, keys: list[str]) -> str:
        """weights_identity of the named weights; for sharded parameters, the one taken before sharding."""
        if self._identity is not None and self._identity[0] == sorted(keys):
            return self._identity[1]
        return weights_identity(self.state_dict(keep_vars=True), keys)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None:
            realign_batch_progress(checkpoint, self.trainer.accumulate_grad_batches)
        state = checkpoint["curriculum"]
        if "base_weights" in state:  # a lean checkpoint (older ones hold every weight)
            # The weights it left out come from the base model: they must be the ones it was saved with.
            if "state_dict" in checkpoint:
                current = self.state_dict(keep_vars=True)
                absent = [k for k, v in current.items() if isinstance(v, torch.nn.Parameter) and k not in checkpoint["state_dict"]]
            else:  # a sharded checkpoint's weights are loaded already; it left out what no stage trains
                absent = self.never_trained()
            if self._base_identity(absent) != state["base_weights"]:
                raise ConfigError(
                    "resume: the base model's weights that this run does not train differ from the ones its checkpoint was "
                    "trained with (its checkpoints hold only the trained weights); resume with the same model.name_or_path files."
                )
        self.drawn_total = torch.tensor(state["drawn_total"], dtype=torch.float64)
        # Checkpoints that predate the count trained every drawn sample that was not skipped.
        self.trained_total = torch.tensor(state.get("trained_total", state["drawn_total"]), dtype=torch.float64)
        self.skipped_total = state["skipped_total"]
        # NaN for checkpoints that predate the count: unknown, so the "nothing trained" check stays quiet.
        self.trained_tokens = state.get("trained_tokens", math.nan)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        kind, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _record_skipped(self, skipped: list[dict], split: str) -> int:
        """List skipped samples in skipped.jsonl (warning on the first one) and return how many there were."""
        if not skipped:
            return 0
        for s in skipped:
            group = s.get("exhausted")
            if group and group not in self._exhausted:
                self._exhausted.add(group)
                log.error(
                    "group %s has no usable sample left to replace skipped ones (first: %s): from step %d its steps train fewer "
                    "%s samples than planned; trained/%s in metrics.csv shows how many", group, s["id"], self.global_step, group, group,
                )
        if self.skipped_log:
            if not os.path.exists(self.skipped_log):
                first = skipped[0]
                log.warning(
                    "skipped %s sample %s (%s): %s; every skip is counted in metrics.csv (%s/skipped) and listed in %s",
                    split, first["id"], first["source"], first["reason"], split, self.skipped_log,
                )
            with open(self.skipped_log, "a", encoding="utf-8") as f:
                # Validation belongs to the step it follows, as its metrics row does (and so survives a resume).
                step = self.global_step - 1 if split == "val" else self.global_step
                for s in skipped:
                    f.write(json.dumps({"step": step, "rank": self.global_rank, "split": split, **s}) + "\n")
        return len(skipped)

    # ---- validation -------------------------------------------------------------------------

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, sums = self.group_losses(batch)
        self._val_sums = self._val_sums.to(self.device) + sums
        self._val_skipped += self._record_skipped(batch.get("skipped", []), "val")

    def on_validation_epoch_end(self) -> None:
        sums = self._reduce(self._val_sums)
        self._val_sums = torch.zeros_like(self._val_sums)
        skipped = float(self._reduce(torch.tensor([self._val_skipped], dtype=torch.float64))[0])
        self._val_skipped = 0.0
        if self.trainer.sanity_checking:
            return
        metrics = {"val/loss": _ratio(sums[:, 0].sum(), sums[:, 1].sum()), "val/skipped": skipped}
        for g, name in enumerate(self.group_names):
            if sums[g, 1] > 0:
                metrics[f"val/loss_{name}"] = _ratio(sums[g, 0], sums[g, 1])
        # Logged at the step whose training preceded this validation, before any checkpoint of it.
        self._write(metrics, self.global_step - 1, shown=[])

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device)
        if self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        return t

    # ---- optimizer --------------------------------------------------------------------------

    def configure_optimizers(self):
        groups = []
        trained = self.trained_parameters()
        names = {p: n for n, p in self.model.named_parameters()}
        for comp in COMPONENTS:
            decay, no_decay = [], []
            for p in trained[comp]:
                (no_decay if p.ndim < 2 or "norm" in names[p].lower() else decay).append(p)
            groups += [
                {"params": decay, "weight_decay": self.optim.weight_decay, "component": comp},
                {"params": no_decay, "weight_decay": 0.0, "component": comp},
            ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, betas=tuple(self.optim.betas))
        # Every parameter any stage trains is in the optimizer from the start; a stage that freezes
        # a component leaves its gradients None, so AdamW skips it. LR follows each stage's schedule.
        lambdas = [lambda step, c=g["component"]: self.lr_factor(step, c) for g in groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_factor(self, step: int, component: str | None = None) -> float:
        """LR at optimizer step `step` as a multiple of optim.lr: the stage's own schedule, 0 where it freezes `component`."""
        stage = self.schedule.stage_at(step)
        if component is not None and getattr(stage.trainable, component) is Mode.frozen:
            return 0.0
        return stage.lr.at(step - stage.start_step, stage.steps) / self.optim.lr


def realign_batch_progress(checkpoint: dict, accumulate: int) -> None:
    """Count the checkpoint's micro-batches as its optimizer steps x this run's accumulation.

    Lightning restores its micro-batch counter as saved (steps x the old accumulation) and places
    step boundaries, validation and the epoch's end by that counter, so a resume that changes
    `trainer.accumulate_grad_batches` (same global batch) would cut its first steps in the wrong place.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if progress is None:
        return
    micro = int(checkpoint["global_step"]) * accumulate
    for counter in ("total", "current"):
        for key in ("ready", "started", "processed", "completed"):
            progress[counter][key] = micro


def weights_identity(state: dict, keys: list[str], samples: int = 64) -> str:
    """A short digest of the named tensors: names, shapes, dtypes and an evenly strided sample of values.

    Cheap at any size (reads `samples` values per tensor) and enough to tell two checkpoints' base weights apart.
    """
    h = hashlib.sha256()
    for key in sorted(keys):
        t = state[key].detach()
        flat = t.reshape(-1)
        picked = flat[:: max(1, flat.numel() // samples)][:samples].float().cpu()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(picked.numpy().tobytes())
    return h.hexdigest()[:16]


def supervised_token_losses(model: torch.nn.Module, inputs: dict, labels: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every supervised token (row-major order) and the batch row it belongs to.

    Only the hidden states of positions that predict a supervised token reach the LM head (a
    pre-hook selects them), so logits exist for those tokens only, never for the whole sequence;
    the fp32 cross-entropy runs in chunks that are recomputed in backward, so no fp32 copy of the
    logits is kept. The model's own processing after its head (e.g. logit soft-capping) still applies.
    """
    targets_all = labels[:, 1:]
    wanted = targets_all != IGNORE_INDEX
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = wanted
    targets = targets_all[wanted]
    rows = wanted.nonzero()[:, 0]

    def select(module, args):
        hidden = args[0]
        if hidden.dim() == 3 and hidden.shape[:2] == keep.shape:
            return (hidden[keep],) + tuple(args[1:])
        return None

    handle = model.get_output_embeddings().register_forward_pre_hook(select)
    try:
        # No KV cache in training: it would hold every layer's keys and values past the forward.
        logits = model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    if logits.dim() == 3:  # the model fed its head something else: take the positions from the full logits
        logits = logits[keep]
    pieces = []
    for start in range(0, len(targets), chunk):
        part, want = logits[start : start + chunk], targets[start : start + chunk]
        pieces.append(checkpoint(_cross_entropy, part, want, use_reentrant=False) if part.requires_grad else _cross_entropy(part, want))
    token_loss = torch.cat(pieces) if pieces else logits.float().sum(-1)[:0]
    return token_loss, rows


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="none")


def freeze_unused_parameters(module: VLMModule, probe_batch: dict) -> list[str]:
    """Drop trained parameters that get no gradient from a real batch (e.g. an unused pooler) and return their names.

    DDP without find_unused_parameters needs every parameter with a gradient to take part in
    every step. Every parameter some stage trains is probed, whatever the current stage freezes.
    """
    trained = module.trained_parameters()
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


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num / den) if float(den) > 0 else float("nan")
