"""Shared entry-point plumbing: Hydra main over the packaged configs, one-line user errors."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from curriculum.conf_path import conf_dir
from curriculum.config import ConfigError, RunConfig, validate
from curriculum.data.errors import SampleError
from curriculum.data.formats import DataFileError
from curriculum.data.images import ImageError
from curriculum.data.sources import InvalidDataError

USER_ERRORS = (ConfigError, InvalidDataError, DataFileError, SampleError, ImageError, FileNotFoundError)
log = logging.getLogger("curriculum")
# "<run folder>: <reason>" of each failed job of this process's multirun, for its exit code.
FAILED_JOBS: list[str] = []
# The sweep folder of this process's multirun, printed when it ends.
SWEEP_DIRS: list[str] = []


def user_message(e: BaseException) -> str:
    """The error's own message; for errors re-raised from DataLoader workers, the original one."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def first_line(e: BaseException) -> str:
    """`Type: first line of the message`, for status files and sweep reports."""
    lines = user_message(e).splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def process_rank() -> int:
    """This process's global rank as the launchers set it (0 outside distributed runs; > 0 on any node but the first)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    # Lightning's global rank: node x processes per node + local rank (any process on a later node is > 0).
    local, node, per_node = (int(os.environ.get(v, "") or default) for v, default in (("LOCAL_RANK", 0), ("NODE_RANK", 0), ("LOCAL_WORLD_SIZE", 1)))
    return node * per_node + local


def _own_log_file(handler: logging.FileHandler) -> logging.FileHandler:
    """A handler writing to train_rank<r>.log beside the shared train.log (processes started by a cluster launcher)."""
    own = logging.FileHandler(os.path.join(os.path.dirname(handler.baseFilename), f"train_rank{process_rank()}.log"))
    own.setFormatter(handler.formatter)
    own.setLevel(handler.level)
    return own


def quiet_output(lightning: bool = True) -> None:
    """Our log lines only: library tips, device banners, deprecation notices and load bars are silenced,
    and a process of rank > 0 logs to its own file instead of repeating rank 0's lines on the console.

    `lightning=False` for commands that never train (curriculum-plan), which then start without it.
    """
    if lightning:
        # Imported first: importing Lightning sets its own loggers' level.
        import pytorch_lightning  # noqa: F401
    import transformers

    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    for message in (r".*isinstance\(treespec, LeafSpec\)", r".*is_gradient_checkpointing. is deprecated", r"Total length of .* across ranks is zero"):
        warnings.filterwarnings("ignore", message=message)
    if process_rank() > 0:
        # Hydra gives each DDP child Lightning starts its own log file (train_ddp_process_<r>.log); a process
        # started by a cluster launcher (other nodes, torchrun, SLURM) gets train_rank<r>.log. The console is rank 0's.
        root = logging.getLogger()
        for handler in list(root.handlers):
            if not isinstance(handler, logging.FileHandler):
                root.removeHandler(handler)
            elif os.path.basename(handler.baseFilename) == "train.log":
                root.removeHandler(handler)
                handler.close()
                root.addHandler(_own_log_file(handler))


def discard_unstarted(run_dir: str, marker: str) -> None:
    """Remove a single run's folder in which `marker` was never written: it holds only Hydra's files
    (a mistyped key, unusable data), and a folder for a run that did not start misleads `resume=latest`."""
    if os.path.isdir(run_dir) and not os.path.exists(os.path.join(run_dir, marker)):
        shutil.rmtree(run_dir, ignore_errors=True)


def hydra_main(fn: Callable[[DictConfig], None]) -> Callable[[], None]:
    """Hydra's main over the packaged configs (the job is named after the calling module)."""
    return hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")(fn)


def run_task(
    raw: DictConfig,
    task: Callable[[RunConfig, str, list[str]], object],
    on_failure: Callable[[str, str, bool], None] | None = None,
    lightning: bool = True,
) -> None:
    """Validate the config and run `task(cfg, run_dir, overrides)`.

    A user error ends a single run with one line and exit code 1. In a multirun, a failed job is
    recorded (`on_failure(run_dir, reason, multirun)`) and the sweep goes on with the next job.
    `lightning`: whether the task trains (its output is quieted once Lightning is imported).
    """
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    if hc.mode == RunMode.MULTIRUN and os.path.dirname(run_dir) not in SWEEP_DIRS:
        SWEEP_DIRS.append(os.path.dirname(run_dir))
    try:
        # A resume's composed config is the defaults plus forced overrides; the run's own saved
        # config with the overrides is what gets checked (curriculum.resume.prepare).
        cfg = validate(raw, check=not raw.get("resume"))
        quiet_output(lightning)
        task(cfg, run_dir, list(hc.overrides.task))
    except Exception as e:
        if on_failure is not None:
            on_failure(run_dir, first_line(e), hc.mode == RunMode.MULTIRUN)
        if hc.mode == RunMode.MULTIRUN:
            log.error("job %s failed: %s", run_dir, first_line(e))
            FAILED_JOBS.append(f"{run_dir}: {first_line(e)}")
            return
        if isinstance(e, USER_ERRORS):
            print(f"error: {user_message(e)}", file=sys.stderr)
            sys.exit(1)
        raise
