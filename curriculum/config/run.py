"""The run's config: data, model, optimizer, trainer, logging, export, evaluation, checkpoints and
paths around the schedule, and `validate`, which turns a composed Hydra config into a checked RunConfig."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from curriculum.config.common import COMPONENTS, ConfigError, Mode, OnInvalid, positive
from curriculum.config.schedule import ScheduleConfig, StageConfig, check_scheduler
from curriculum.config.search import SearchConfig


@dataclass
class ShapesConfig:
    train_image_text: int = 1200
    train_text_only: int = 800
    val_image_text: int = 64
    val_text_only: int = 64
    image_size: int = 32
    seed: int = 0


@dataclass
class DataConfig:
    # Empty train_files means the built-in `shapes` data.
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    image_root: Optional[str] = None
    file_groups: Optional[dict[str, str]] = None
    on_invalid: OnInvalid = OnInvalid.error
    # How records' images are checked when the record table is built: exists, header (opens it) or full (decodes it).
    check_images: str = "header"
    # Tokens per sample after the chat template and image expansion (LLaVA-1.5's 576 image tokens and a conversation fit).
    max_length: int = 2048
    # false: a longer sample is invalid (data.on_invalid); true: its text is cut at max_length (never image tokens).
    truncate: bool = False
    # true: each micro-batch's samples are laid end to end in rows of at most max_length tokens (no padding computed).
    packing: bool = False
    micro_batch_size: int = 8
    val_micro_batch_size: int = 16
    num_workers: int = 2
    shapes: ShapesConfig = field(default_factory=ShapesConfig)

    def check(self) -> None:
        positive("data.max_length", self.max_length)
        positive("data.micro_batch_size", self.micro_batch_size)
        positive("data.val_micro_batch_size", self.val_micro_batch_size)
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} is not allowed: use 0 or more.")
        if self.check_images not in ("exists", "header", "full"):
            raise ConfigError(f"data.check_images={self.check_images} is not allowed: use exists, header or full.")
        if self.val_files and not self.train_files:
            raise ConfigError("data.val_files is set but data.train_files is empty: give both, or neither for the built-in data.")
        unknown = sorted(set(self.file_groups or {}) - set(self.train_files) - set(self.val_files))
        if unknown:
            raise ConfigError(
                f"data.file_groups names {unknown[0]}, which is not in data.train_files or data.val_files: use the path as given there."
            )


@dataclass
class TrainableConfig:
    vision: Mode = Mode.frozen
    projector: Mode = Mode.full
    language: Mode = Mode.full


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # Regex (full match on module names); null builds one anchored on the components set to `lora`.
    target_modules: Optional[str] = None
    target_leaves: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
    name_or_path: str = "builtin:tiny-llava"
    # Weights' dtype when loaded (trainer.precision=bf16-true keeps them in bf16 while training).
    dtype: str = "float32"
    # dtype of the weights no stage trains (null = model.dtype). With trainer.precision=bf16-mixed,
    # bfloat16 halves their memory while trained weights, gradients and AdamW's state stay float32.
    frozen_dtype: Optional[str] = None
    # null = the model's default (SDPA where supported); flash_attention_2 when installed.
    attn_implementation: Optional[str] = None
    # Recompute activations in backward (transformers' gradient checkpointing): less memory, ~30% more compute.
    gradient_checkpointing: bool = False
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    peft: Optional[LoraConfig] = None
    # Keywords for the processor's from_pretrained, e.g. {size: {shortest_edge: 200704, longest_edge: 1003520}} for
    # Qwen2-VL (pixels); the export keeps them. null: none (a dict default would refuse new keys on the command line).
    processor_kwargs: Optional[dict[str, Any]] = None
    # For a family whose parameter names the built-in markers miss: {component: regex searched in
    # parameter names}, tried first, e.g. {projector: adapter, vision: image_encoder}.
    components: Optional[dict[str, str]] = None

    def check(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype={self.dtype} is not allowed: use float32, bfloat16 or float16.")
        if self.frozen_dtype not in (None, "float32", "bfloat16"):
            raise ConfigError(f"model.frozen_dtype={self.frozen_dtype} is not allowed: use null, float32 or bfloat16.")
        for comp, pattern in (self.components or {}).items():
            if comp not in COMPONENTS:
                raise ConfigError(f"model.components.{comp} is not allowed: use {', '.join(COMPONENTS)}.")
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"model.components.{comp}={pattern!r} is not a valid regex: {e}.") from None
        if self.peft is not None:
            positive("model.peft.r", self.peft.r)
            if not 0.0 <= self.peft.dropout < 1.0:
                raise ConfigError(f"model.peft.dropout={self.peft.dropout} is not allowed: use a value in [0, 1).")
            if self.peft.target_modules is not None:
                try:
                    re.compile(self.peft.target_modules)
                except re.error as e:
                    raise ConfigError(f"model.peft.target_modules={self.peft.target_modules!r} is not a valid regex: {e}.") from None


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # Each stage runs this schedule over its own steps unless the stage sets its own keys:
    # linear warmup, then cosine or linear decay to min_lr_ratio * lr at the stage's end (or constant).
    warmup_steps: int = 10
    scheduler: str = "cosine"
    min_lr_ratio: float = 0.1

    def check(self) -> None:
        positive("optim.lr", self.lr)
        check_scheduler("optim.scheduler", self.scheduler)
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} is not allowed: use 0 or more.")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay={self.weight_decay} is not allowed: use 0 or more.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)} is not allowed: use two values in [0, 1), e.g. [0.9, 0.999].")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} is not allowed: use a value in [0, 1].")


# Lightning's precision settings, with the short aliases Lightning also accepts (fp16 ones are refused in check).
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true", "32", "16", "bf16", "64")
FP16 = ("16-mixed", "16-true", "16")


def device_count(devices: Any) -> int | None:
    """Processes per node that `trainer.devices` asks Lightning for; None when only the machine knows (auto, -1)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, (list, tuple)):
        return len(devices) or None
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([d for d in text.split(",") if d.strip()]) or None
        return int(text) if text.isdigit() and int(text) > 0 else None
    return None


@dataclass
class TrainerConfig:
    # null = the schedule's total steps; a smaller value stops the run early at that step.
    max_steps: Optional[int] = None
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0
    # Optimizer steps between validations; the run also validates at its end (0 = only there).
    val_every_n_steps: int = 40
    limit_val_batches: Optional[int] = None
    enable_progress_bar: bool = True
    # DDP without unused-parameter search: the model runs every trained module on every rank.
    find_unused_parameters: bool = False
    # Deterministic algorithms: a resumed run repeats the uninterrupted one value for value (CPU
    # default); GPU kernels without a deterministic version then raise, so trainer=gpu turns it off.
    deterministic: bool = True
    # Intra-op CPU threads per process; null = the cores this process may use, divided among the
    # node's processes, less one per DataLoader worker (oversubscribed OpenMP threads spin).
    threads: Optional[int] = None

    def shards_parameters(self) -> bool:
        """True when the strategy shards parameters (FSDP2): every rank runs the same modules' forward and checkpoints are folders.

        The one place that decides it (check() refuses every other FSDP spelling).
        """
        return self.strategy == "fsdp"

    def check(self) -> None:
        if self.max_steps is not None:
            positive("trainer.max_steps", self.max_steps)
        positive("trainer.accumulate_grad_batches", self.accumulate_grad_batches)
        positive("trainer.num_nodes", self.num_nodes)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision={self.precision} is not allowed: use one of {', '.join(PRECISIONS)}.")
        if self.precision in FP16:
            raise ConfigError(
                f"trainer.precision={self.precision} is not supported: fp16 needs loss scaling, and with this project's token-sum "
                "loss it overflows and skips steps that still advance the LR and the sample stream; use bf16-mixed (or 32-true on "
                "GPUs without bf16)."
            )
        if self.gradient_clip_val is not None and self.gradient_clip_val < 0:
            raise ConfigError(f"trainer.gradient_clip_val={self.gradient_clip_val} is not allowed: use 0 or more (or null for none).")
        if self.limit_val_batches is not None:
            positive("trainer.limit_val_batches", self.limit_val_batches)
        if "deepspeed" in self.strategy:
            raise ConfigError(
                f"trainer.strategy={self.strategy} is not supported: DeepSpeed keeps gradients outside the parameters, where the "
                "global-batch loss scaling and frozen-stage handling cannot reach them; use ddp."
            )
        if "fsdp" in self.strategy and self.strategy != "fsdp":
            raise ConfigError(f"trainer.strategy={self.strategy} is not supported: use fsdp (FSDP2 over all processes, see conf/trainer/fsdp.yaml).")
        if device_count(self.devices) is None:
            raise ConfigError(
                f"trainer.devices={self.devices!r} is not allowed: give the number of processes per node (e.g. 2) or "
                "device indices (e.g. [0,1]), since the global batch and the plan depend on it."
            )
        if self.threads is not None:
            positive("trainer.threads", self.threads)
        if self.val_every_n_steps < 0:
            raise ConfigError(f"trainer.val_every_n_steps={self.val_every_n_steps} is not allowed: use 0 or more.")


# tracker: (packages it needs, how to install them).
TRACKERS = {
    None: ((), ""),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "pip install 'curriculum[mlflow]' (mlflow-skinny, sqlalchemy, alembic)"),
    "wandb": (("wandb",), "pip install 'curriculum[wandb]' (wandb)"),
}


@dataclass
class LoggerConfig:
    csv: bool = True
    tensorboard: bool = False
    # Write the ids of the samples each rank trains on to sample_ids/rank<r>.jsonl (audits data order).
    sample_ids: bool = False
    # A tracker that also gets the config, every metrics.csv column per step and the run's files: mlflow | wandb | null.
    tracker: Optional[str] = None
    # mlflow: where runs go; null = sqlite:///<paths.output_root>/mlflow.db (a local store beside the run folders).
    tracking_uri: Optional[str] = None
    # MLflow experiment / W&B project.
    project: str = "curriculum"
    # wandb: the team or user; null = the logged-in user's default.
    entity: Optional[str] = None
    # wandb: true = offline files only (`wandb sync` later); null = offline unless logged in (WANDB_API_KEY or `wandb login`).
    offline: Optional[bool] = None

    def check(self) -> None:
        if self.tensorboard and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise ConfigError("logger.tensorboard=true needs the tensorboard package: pip install tensorboard.")
        if self.tracker not in TRACKERS:
            raise ConfigError(f"logger.tracker={self.tracker} is not allowed: use mlflow, wandb or null.")
        for module in TRACKERS[self.tracker][0]:
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"logger.tracker={self.tracker} needs the {module} package: {TRACKERS[self.tracker][1]}.")


@dataclass
class ExportConfig:
    enabled: bool = True
    # auto: adapter when PEFT is used, full model otherwise; merged: merge LoRA into the weights.
    mode: str = "auto"
    # Where the export goes; null = <run folder>/export.
    dir: Optional[str] = None

    def check(self) -> None:
        if self.mode not in ("auto", "merged", "adapter"):
            raise ConfigError(f"export.mode={self.mode} is not allowed: use auto, merged or adapter.")


@dataclass
class EvalConfig:
    # Generate answers to the validation samples at the end of the run (and every N validation
    # rounds) and log eval/{exact_match,token_f1,loss}_<group>; `curriculum-eval` uses the rest too.
    generate: bool = False
    max_new_tokens: int = 32
    batch_size: int = 16
    every_n_validations: Optional[int] = None
    # Validation samples per group that get an answer (the first ones in table order); null = all.
    max_samples_per_group: Optional[int] = None
    # Where eval.json goes: null = the run folder (training; curriculum-eval: <run>/evals/<time>/, or
    # <paths.output_root>/evals/<time>/ for a model folder no run made: never into a model folder).
    output_dir: Optional[str] = None

    def check(self) -> None:
        positive("eval.max_new_tokens", self.max_new_tokens)
        positive("eval.batch_size", self.batch_size)
        if self.every_n_validations is not None:
            positive("eval.every_n_validations", self.every_n_validations)
        if self.max_samples_per_group is not None:
            positive("eval.max_samples_per_group", self.max_samples_per_group)


@dataclass
class CheckpointConfig:
    # checkpoints/last.ckpt every N optimizer steps (0 = only at stage ends and the end of the run).
    every_n_steps: int = 20

    def check(self) -> None:
        if self.every_n_steps < 0:
            raise ConfigError(f"checkpoint.every_n_steps={self.every_n_steps} is not allowed: use 0 or more.")


@dataclass
class PathsConfig:
    output_root: str = "outputs"
    cache_dir: str = "~/.cache/curriculum"


@dataclass
class RunConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # A run folder (or `latest`) to continue in; set by `curriculum-train resume=...`.
    resume: Optional[str] = None
    # curriculum-plan: show this many samples of each group as the model will be trained on them.
    inspect: int = 0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def check(self) -> None:
        for part in (self.data, self.model, self.optim, self.trainer, self.logger, self.export, self.eval, self.checkpoint, self.schedule,
                     self.search):
            part.check()
        trained = self.trained_modes()
        lora = [c for c in COMPONENTS if getattr(trained, c) is Mode.lora]
        if lora and self.model.peft is None:
            raise ConfigError(f"model.trainable.{lora[0]}=lora needs a LoRA config: add model/peft=lora.")
        if self.model.peft is not None and not lora:
            raise ConfigError("model.peft is set but no component is `lora` in model.trainable or any stage: set one, e.g. model.trainable.language=lora.")
        if self.inspect < 0:
            raise ConfigError(f"inspect={self.inspect} is not allowed: use 0 or more samples per group.")
        if self.eval.generate and self.data.train_files and not self.data.val_files:
            raise ConfigError("eval.generate=true needs validation samples to answer: set data.val_files.")
        total = self.schedule_steps()
        if self.trainer.max_steps is not None and self.trainer.max_steps > total:
            raise ConfigError(
                f"trainer.max_steps={self.trainer.max_steps} is not allowed: the schedule has {total} steps; "
                "use at most that, or add a stage."
            )
        frozen = self.model.frozen_dtype
        if frozen is not None and frozen != self.model.dtype and self.trainer.precision not in ("bf16-mixed", "bf16"):
            raise ConfigError(
                f"model.frozen_dtype={frozen} differs from model.dtype={self.model.dtype} and needs trainer.precision=bf16-mixed "
                f"(autocast computes with both), not {self.trainer.precision}."
            )
        if self.trainer.shards_parameters() and self.export.mode == "merged":
            raise ConfigError(
                "export.mode=merged is not supported with trainer.strategy=fsdp: export the adapter (export.mode=adapter) and merge "
                "it with PEFT's merge_and_unload on one process."
            )
        if self.search.trial is not None and not (self.search.dir and self.logger.csv):
            raise ConfigError("search.trial is set by curriculum-search, with search.dir and logger.csv=true (the objective is read from metrics.csv).")
        if self.export.mode == "merged" and self.model.peft is None:
            raise ConfigError("export.mode=merged needs model/peft=lora: there is no adapter to merge.")


    def schedule_steps(self) -> int:
        """Optimizer steps of all stages."""
        return sum(st.steps for st in self.schedule.stages.values())

    def world_size(self) -> int:
        """Number of training processes the trainer config asks for (devices x nodes)."""
        return (device_count(self.trainer.devices) or 1) * self.trainer.num_nodes

    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks: micro batch x ranks x accumulation."""
        return self.data.micro_batch_size * self.world_size() * self.trainer.accumulate_grad_batches

    def stage_modes(self, stage: StageConfig) -> TrainableConfig:
        """A stage's component modes: its own where given, else model.trainable's."""
        base = self.model.trainable
        return TrainableConfig(**{c: getattr(stage.trainable, c) or getattr(base, c) for c in COMPONENTS})

    def trained_modes(self) -> TrainableConfig:
        """The mode each component has whenever it trains in some stage (frozen if never)."""
        modes = {}
        for c in COMPONENTS:
            used = {getattr(self.stage_modes(st), c) for st in self.schedule.stages.values()} - {Mode.frozen}
            if len(used) > 1:
                raise ConfigError(f"schedule.stages: component {c} is lora in one stage and full in another: pick one mode for it.")
            modes[c] = used.pop() if used else Mode.frozen
        if all(m is Mode.frozen for m in modes.values()):
            raise ConfigError("model.trainable and schedule.stages freeze vision, projector and language in every stage: at least one must train.")
        return TrainableConfig(**modes)


def validate(cfg: DictConfig | dict, check: bool = True) -> RunConfig:
    """Check a composed config against the schema (and its values, with `check`) and return it typed, or raise ConfigError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        run: RunConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_sentence(e)) from None
    if check:
        run.check()
    return run


def _one_sentence(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0].strip()
    if "not in" in msg or "Key '" in msg and "not" in msg:
        return f"Config key `{key}` is not allowed here ({msg})."
    return f"Config key `{key}` has a wrong value: {msg}."
