"""Shared entry-point plumbing: Hydra main over the packaged configs, one-line user errors."""

from __future__ import annotations

import sys
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from curriculum.conf_path import conf_dir
from curriculum.config import ConfigError, RunConfig, validate
from curriculum.data.collate import SampleError
from curriculum.data.images import ImageError
from curriculum.data.sources import InvalidDataError

USER_ERRORS = (ConfigError, InvalidDataError, SampleError, ImageError, FileNotFoundError)


def user_message(e: BaseException) -> str:
    """The error's own message; for errors re-raised from DataLoader workers, the original one."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def hydra_main(fn: Callable[[DictConfig], None]) -> Callable[[], None]:
    """Hydra's main over the packaged configs (the job is named after the calling module)."""
    return hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")(fn)


def run_task(raw: DictConfig, task: Callable[[RunConfig, str], object]) -> None:
    """Validate the composed config and run `task(cfg, run_dir)`; user errors exit 1 with one message."""
    try:
        cfg = validate(raw)
        task(cfg, HydraConfig.get().runtime.output_dir)
    except USER_ERRORS as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(1)
