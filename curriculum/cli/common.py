"""Shared entry-point plumbing: Hydra main over the packaged configs, one-line user errors."""

from __future__ import annotations

import logging
import sys
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from curriculum.conf_path import conf_dir
from curriculum.config import ConfigError, RunConfig, validate
from curriculum.data.collate import SampleError
from curriculum.data.formats import DataFileError
from curriculum.data.images import ImageError
from curriculum.data.sources import InvalidDataError

USER_ERRORS = (ConfigError, InvalidDataError, DataFileError, SampleError, ImageError, FileNotFoundError)
log = logging.getLogger("curriculum")
# "<run folder>: <reason>" of each failed job of this process's multirun, for its exit code.
FAILED_JOBS: list[str] = []


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


def hydra_main(fn: Callable[[DictConfig], None]) -> Callable[[], None]:
    """Hydra's main over the packaged configs (the job is named after the calling module)."""
    return hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")(fn)


def run_task(
    raw: DictConfig,
    task: Callable[[RunConfig, str, list[str]], object],
    on_failure: Callable[[str, str], None] | None = None,
) -> None:
    """Validate the config and run `task(cfg, run_dir, overrides)`.

    A user error ends a single run with one line and exit code 1. In a multirun, a failed job is
    recorded (`on_failure(run_dir, reason)`) and the sweep goes on with the next job.
    """
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    try:
        task(validate(raw), run_dir, list(hc.overrides.task))
    except Exception as e:
        if on_failure is not None:
            on_failure(run_dir, first_line(e))
        if hc.mode == RunMode.MULTIRUN:
            log.error("job %s failed: %s", run_dir, first_line(e))
            FAILED_JOBS.append(f"{run_dir}: {first_line(e)}")
            return
        if isinstance(e, USER_ERRORS):
            print(f"error: {user_message(e)}", file=sys.stderr)
            sys.exit(1)
        raise
