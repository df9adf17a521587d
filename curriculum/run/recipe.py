"""The training recipe: build data, model, module and trainer from a validated config, then fit."""

from __future__ import annotations

import glob
import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from curriculum.atomic import write_json
from curriculum.config import ConfigError, RunConfig, device_count
from curriculum.data.collate import Collator, SampleError
from curriculum.data.sources import DataBundle, cache_dir, file_states
from curriculum.model.load import load_model, load_processor, resolve_model_path
from curriculum.model.module import VLMModule
from curriculum.model.sharding import full_state_dict
from curriculum.model.packing import packing_refusal
from curriculum.model.vision_dummy import build_vision_dummy, one_image_sample
from curriculum.run import lock as run_lock
from curriculum.run.callbacks import GenerationEval, StageProgressBar, StepRows
from curriculum.run.checkpoints import AtomicCheckpointIO, RunCheckpoints, ShardedStrategy
from curriculum.run.datamodule import CurriculumDataModule
from curriculum.run.evaluate import EvalSettings, Evaluator, eval_metrics, eval_records, write_eval
from curriculum.run.export import export_dir, export_model
from curriculum.run.metrics_file import FILE as METRICS
from curriculum.run.metrics_file import read_rows
from curriculum.run.metrics_log import RunCSVLogger
from curriculum.run.objective import TrialReport, write_objective
from curriculum.run.resume import RUN_CONFIG, Resume, checked_data, preflight
from curriculum.run.resume import record as record_resume
from curriculum.run.trackers import Tracker, build_trackers, flat_config, sweep_folder
from curriculum.schedule.plan import build_plan, plot_plan, write_plan
from curriculum.schedule.stream import CurriculumStream, build_stream

log = logging.getLogger("curriculum")

SAMPLE_IDS = "sample_ids"


@dataclass
class Parts:
    bundle: DataBundle
    stream: CurriculumStream
    run_steps: int
    processor: object
    module: VLMModule
    datamodule: CurriculumDataModule
    plan: dict


def build_parts(cfg: RunConfig, run_dir: str, resumed: Resume | None = None) -> Parts:
    """Data, schedule stream, processor, model and datamodule for a run folder.

    A resume's records come checked by its pre-flight, and training starts at its step.
    """
    bundle, fingerprint = resumed.data if resumed and resumed.data else checked_data(cfg)
    start_step = resumed.step if resumed else 0
    stream, run_steps = build_stream(cfg, bundle)
    path = resolve_model_path(cfg.model.name_or_path, cache_dir(cfg))
    processor = load_processor(path, cfg.model.processor_kwargs)
    model = load_model(cfg.model, path, cfg.trained_modes())
    if cfg.data.packing:
        refuse_packing(model, processor, cfg.data.max_length)
        if getattr(model.config, "_attn_implementation", None) != "flash_attention_2":
            log.info("data.packing: without model.attn_implementation=flash_attention_2, each packed row's attention scores every "
                     "token pair of the row (masked): packing saves the padding, not the attention across samples")
    collator = Collator(processor, bundle.group_names, cfg.data.max_length, cfg.data.on_invalid.value, truncate=cfg.data.truncate,
                        packing=cfg.data.packing)
    module = VLMModule(
        model,
        stream.schedule,
        cfg.optim,
        vision_dummy=build_vision_dummy(cfg, processor, model),
        skipped_log=os.path.join(run_dir, "skipped.jsonl"),
        sample_id_dir=os.path.join(run_dir, SAMPLE_IDS) if cfg.logger.sample_ids else None,
        start_step=start_step,
        sharded=cfg.trainer.shards_parameters(),
    )
    if cfg.world_size() > 1 and not cfg.trainer.shards_parameters():
        # DDP's reducer must not wait for a parameter that never gets a gradient; the module finds them on device.
        module.probe_batch = collator(_probe_records(bundle))
    datamodule = CurriculumDataModule(
        bundle.train,
        bundle.val,
        collator,
        stream,
        micro_batch=cfg.data.micro_batch_size,
        val_micro_batch=cfg.data.val_micro_batch_size,
        accumulate=cfg.trainer.accumulate_grad_batches,
        total_steps=run_steps,
        num_workers=cfg.data.num_workers,
        fingerprint=fingerprint,
        files=file_states(bundle),
    )
    return Parts(bundle, stream, run_steps, processor, module, datamodule, build_plan(bundle, stream, run_steps))


def refuse_packing(model, processor, max_length: int) -> None:
    """Refuse data.packing=true, in one sentence, for a family that cannot train on packed rows."""
    try:
        sample = one_image_sample(processor, model)
    except Exception:  # noqa: BLE001 - a processor that cannot build a bare one-image sample: judged by the model alone
        sample = {}
    reason = packing_refusal(model, sample)
    text = getattr(model.config, "text_config", model.config)
    chunk = getattr(text, "attention_chunk_size", None)
    if not reason and chunk and chunk < max_length:
        # Chunked local attention (Llama 4) splits a packed row at multiples of the chunk size, not at each sample's.
        reason = f"its attention is chunked every {chunk} tokens of a row, fewer than data.max_length={max_length}"
    if reason:
        raise ConfigError(f"data.packing=true is not supported for this model: {reason}; train it with data.packing=false.")


def _probe_records(bundle: DataBundle) -> list[dict]:
    """One record per group: enough to see which trained parameters a real batch reaches."""
    return [bundle.train[int(rows[0])] for rows in bundle.train.group_indices().values() if len(rows)]


def build_trainer(cfg: RunConfig, run_dir: str, parts: Parts, resume_step: int | None = None, trackers: list | None = None,
                  trial: TrialReport | None = None) -> pl.Trainer:
    """A Lightning Trainer writing metrics.csv and checkpoints into the run folder (and rows to `trackers`; validations to a
    search's `trial`)."""
    t = cfg.trainer
    loggers = list(trackers or [])
    if cfg.logger.csv:
        loggers.append(RunCSVLogger(run_dir, resume_step))
    if cfg.logger.tensorboard:
        from pytorch_lightning.loggers import TensorBoardLogger

        # On resume, TensorBoard discards the events the killed process wrote at or after the checkpoint.
        purge = {"purge_step": resume_step} if resume_step is not None else {}
        loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", **purge))
    # Components a stage freezes run in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    strategy = t.strategy
    if strategy == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=t.find_unused_parameters)
    elif cfg.trainer.shards_parameters():
        strategy = ShardedStrategy(cfg.world_size())
    # A run shorter than the validation interval still validates once, at its end.
    val_every = min(t.val_every_n_steps or parts.run_steps, parts.run_steps)
    checkpoints = os.path.join(run_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=t.precision,
        max_steps=parts.run_steps,
        max_epochs=-1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        # Validation cadence in micro-batches of the single long epoch the sampler provides.
        val_check_interval=val_every * t.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=loggers or False,
        enable_checkpointing=False,  # RunCheckpoints writes them
        callbacks=[
            StepRows(),
            RunCheckpoints(
                parts.stream.schedule, checkpoints, cfg.checkpoint.every_n_steps, val_every if parts.bundle.val else None, parts.run_steps
            ),
            *([StageProgressBar(parts.stream.schedule)] if t.enable_progress_bar else []),
            *(
                [GenerationEval(lambda: eval_metrics(generation_eval(cfg, parts)), val_every, cfg.eval.every_n_validations, parts.run_steps)]
                if cfg.eval.generate and cfg.eval.every_n_validations and parts.bundle.val
                else []
            ),
            *([trial] if trial else []),
        ],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=t.enable_progress_bar,
        # The per-component trainable counts are logged at load; Lightning's table adds nothing (FLOPs 0).
        enable_model_summary=False,
        # The global-stream sampler shards across ranks itself.
        use_distributed_sampler=False,
        default_root_dir=run_dir,
        deterministic=t.deterministic,
    )


def generation_eval(cfg: RunConfig, parts: Parts) -> dict:
    """Greedy answers of the model in training to the validation samples, scored per group (eval.json's contract)."""
    settings = EvalSettings(cfg.eval.max_new_tokens, cfg.eval.batch_size)
    evaluator = Evaluator(parts.module.model, parts.processor, parts.bundle.group_names, cfg.data.max_length, settings, cfg.data.truncate)
    return evaluator.evaluate(eval_records(parts.bundle.val, cfg.eval.max_samples_per_group))


def final_validation_due(cfg: RunConfig, parts: Parts, trainer: pl.Trainer) -> bool:
    """The run ends between validation intervals and its last step has no validation row yet."""
    every = cfg.trainer.val_every_n_steps
    if not parts.bundle.val or not every or parts.run_steps % every == 0 or parts.run_steps <= every:
        return False
    logged = [lg for lg in trainer.loggers if isinstance(lg, RunCSVLogger)]
    return not (logged and logged[0].has(parts.run_steps - 1, "val/loss"))


def _scores_line(result: dict) -> str:
    return "; ".join(
        f"{g} exact match {s['exact_match']:.3f}, token F1 {s['token_f1']:.3f}" for g, s in result["groups"].items() if s["exact_match"] is not None
    )


def truncate_jsonl(paths: list[str], step: int) -> None:
    """Drop entries of steps at or after `step` (written by a killed process after its checkpoint)."""
    for path in paths:
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            keep = [line for line in f if line.endswith("\n") and _step_of(line) < step]
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def _distinct_skipped(path: str) -> str:
    """How many distinct training records the skips were (a record drawn in several passes counts once)."""
    ids = set()
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                if entry.get("split") == "train":
                    ids.add((entry["source"], entry["id"]))
    return f"{len(ids)} distinct record(s)"


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62


def write_status(run_dir: str, status: str, reason: str | None = None) -> None:
    """status.json: running, completed or failed (with the first line of the reason)."""
    write_json(os.path.join(run_dir, "status.json"), {"status": status, "reason": reason}, indent=None)


def cpu_threads(cfg: RunConfig) -> tuple[int, str]:
    """Intra-op threads for this process, and why: trainer.threads, else its cores shared by the node's processes and workers.

    DataLoader workers run one thread each (torch sets that in every worker), so each takes a core.
    """
    if cfg.trainer.threads is not None:
        return cfg.trainer.threads, "trainer.threads"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = device_count(cfg.trainer.devices) or 1
    workers = cfg.data.num_workers
    threads = max(1, cores // processes - workers)
    return threads, f"{cores} usable core(s) / {processes} process(es) on this node - {workers} DataLoader worker(s); trainer.threads overrides"


def train(cfg: RunConfig, run_dir: str, overrides: list[str] | None = None, on_end: Callable[[str], None] | None = None) -> str:
    """Run (or, with cfg.resume, continue) a training job in `run_dir` and return the run folder.

    `on_end(run_dir)` runs on rank 0 after training, before the run's files go to its tracker (the CLI writes report.png).
    """
    trackers: list[Tracker] = []
    try:
        _train(cfg, run_dir, overrides, trackers)
        if rank_zero_only.rank == 0 and on_end is not None:
            on_end(run_dir)
    except BaseException:
        for tracker in trackers:
            tracker.close("failed")
        raise
    finally:
        # A sweep's next job runs in this process: the folder is free for a resume once its job ended.
        run_lock.release(run_dir)
    for tracker in trackers:
        tracker.close("success")
    return run_dir


def _train(cfg: RunConfig, run_dir: str, overrides: list[str] | None, trackers: list[Tracker]) -> str:
    # The command's pre-flight when it ran one in this process (rank 0); DDP's other processes check here.
    resumed = preflight(cfg.resume, run_dir, overrides or []) if cfg.resume else None
    if resumed and resumed.checkpoint is None:
        cfg = resumed.cfg
        log.info("starting %s again from step 0: it stopped before its first checkpoint", run_dir)
    elif resumed:
        cfg = resumed.cfg
        log.info("resuming %s at step %d%s", run_dir, resumed.step, "; changes: " + ", ".join(resumed.changes) if resumed.changes else "")
    threads, why = cpu_threads(cfg)
    torch.set_num_threads(threads)
    log.info("intra-op CPU threads: %d (%s)", threads, why)
    pl.seed_everything(cfg.seed, workers=True)
    parts = build_parts(cfg, run_dir, resumed)
    trackers += build_trackers(cfg, run_dir, resumed.step if resumed else None, sweep_folder(cfg, run_dir))
    trial = TrialReport(cfg.search) if cfg.search.trial is not None else None
    trainer = build_trainer(cfg, run_dir, parts, resumed.step if resumed else None, trackers, trial)
    for tracker in trackers:
        tracker.log_hyperparams(flat_config(cfg))
    if trainer.is_global_zero:
        note = run_lock.acquire(run_dir)  # held already when a resume took it before Hydra started
        if note:
            log.warning("%s", note)
        write_status(run_dir, "running")
        log.info("run folder: %s", run_dir)
        write_plan(parts.plan, run_dir)
        plot_plan(parts.stream, parts.run_steps, os.path.join(run_dir, "plan.png"))
        if resumed:
            record_resume(resumed)
            truncate_jsonl(glob.glob(os.path.join(run_dir, SAMPLE_IDS, "*.jsonl")) + [os.path.join(run_dir, "skipped.jsonl")], resumed.step)
        else:
            OmegaConf.save(OmegaConf.structured(cfg), os.path.join(run_dir, RUN_CONFIG))
    if cfg.logger.sample_ids:
        os.makedirs(os.path.join(run_dir, SAMPLE_IDS), exist_ok=True)
    trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=resumed.checkpoint if resumed else None)
    if trial and trial.pruned:
        if trainer.is_global_zero:
            write_status(run_dir, "pruned", trial.pruned)
        return run_dir
    if final_validation_due(cfg, parts, trainer):
        trainer.validate(parts.module, datamodule=parts.datamodule, verbose=False)
    module = parts.module
    if cfg.eval.generate and parts.bundle.val:
        # Every rank answers its share (sharded weights gather in every forward); all get every answer.
        result = generation_eval(cfg, parts)
        module.write_metrics(eval_metrics(result), trainer.global_step - 1)
        if trainer.is_global_zero:
            log.info("generation scores: %s (answers in %s)", _scores_line(result), write_eval(cfg.eval.output_dir or run_dir, result))
    if module.skipped_total:
        log.warning("%d drawn training sample(s) were skipped (%s): see %s", module.skipped_total,
                    _distinct_skipped(os.path.join(run_dir, "skipped.jsonl")), os.path.join(run_dir, "skipped.jsonl"))
    if module.trained_tokens == 0:
        raise SampleError(
            f"no training sample was usable: all {module.skipped_total:.0f} drawn samples were skipped "
            f"(see {os.path.join(run_dir, 'skipped.jsonl')}); nothing is exported."
        )
    # Sharded weights are gathered to rank 0 by every rank together.
    gathered = full_state_dict(module.model) if cfg.export.enabled and cfg.trainer.shards_parameters() else None
    if trainer.is_global_zero:
        if cfg.export.enabled:
            out = export_dir(cfg, run_dir)
            kind = export_model(module.model, parts.processor, out, cfg.export.mode, gathered)
            log.info("exported %s to %s", kind, out)
        if trial:
            result = write_objective(run_dir, read_rows(os.path.join(run_dir, METRICS)), cfg.search)
            log.info("search objective: %s", f"{result['value']:.6g} ({cfg.search.objective} at step {result['step']})" if result
                     else f"none: the run logged no {cfg.search.objective}_<group> for every weighted group")
        write_status(run_dir, "completed")
    return run_dir
