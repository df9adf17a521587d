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
from curriculum.data.errors import DataFileError
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
    """Hydra's main over the packaged configs (the job is named after the calling module), after `precheck`."""
    decorated = hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")(fn)

    def main() -> None:
        try:
            precheck(sys.argv[1:])
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        decorated()

    main.__doc__ = fn.__doc__
    return main


# A sweep larger than this is checked job by job as each starts.
PRECHECK_JOBS = 1000


def precheck(args: list[str]) -> None:
    """Compose and validate every job's config before Hydra starts: a mistyped key (with the closest valid
    keys) or an invalid value in any job of a sweep answers in one line before the first job runs.

    Resumes check their own config; `--config-dir` folders and interval sweeps are checked per job.
    """
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith(("resume=", "--config-dir", "-cd", "--config-path", "-cp")) for a in args):
        return
    parsed = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    choices = []
    for o in parsed:
        if o.key_or_group.startswith("hydra"):
            continue
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # noqa: BLE001 - an interval (a search) has no list of values
                return
            choices.append([f"{o.get_key_element()}={v}" for v in values])
        else:
            choices.append([o.input_line])
    jobs = list(itertools.islice(itertools.product(*choices), PRECHECK_JOBS + 1))
    if len(jobs) > PRECHECK_JOBS:
        return
    for k, job in enumerate(jobs):
        try:
            validate(_compose(list(job)))
        except ConfigError as e:
            where = f"sweep job {k} ({' '.join(job)}): " if len(jobs) > 1 else ""
            raise ConfigError(f"{where}{e}") from None


def _compose(overrides: list[str]) -> DictConfig:
    """The composed config of `overrides`; a key that does not exist is one ConfigError naming the closest valid keys."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        try:
            return compose("config", overrides=overrides)
        except ConfigCompositionException as e:
            key = next((line.split("full_key:", 1)[1].strip() for line in str(e.__cause__ or e).splitlines() if "full_key:" in line), None)
            if key is None:
                raise ConfigError(" ".join(str(e).split())) from None
            groups = [o for o in overrides if "." not in o.split("=", 1)[0]]
            raise ConfigError(_unknown_key(key, compose("config", overrides=groups))) from None


def _unknown_key(key: str, cfg: DictConfig) -> str:
    """One sentence for a key the config does not have, with the closest keys it has."""
    import difflib

    from omegaconf import OmegaConf

    def leaves(node, prefix=""):
        for k, v in node.items():
            path = f"{prefix}{k}"
            yield path
            if isinstance(v, dict):
                yield from leaves(v, path + ".")

    known = list(leaves(OmegaConf.to_container(cfg, resolve=False)))
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "`curriculum-train --cfg job` lists the keys."
    return f"unknown config key `{key}`: {hint} (a new key of an open mapping such as schedule.stages takes a leading +)"


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
        # config with the overrides is what gets checked (curriculum.run.resume.prepare).
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
