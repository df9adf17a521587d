"""`curriculum-train [overrides]`: train on the configured data, model and curriculum, in one run folder.

`curriculum-train resume=<run folder>` (or `resume=latest`) continues a run in its own folder.
"""

from __future__ import annotations

import os
import sys
import time

from omegaconf import DictConfig

from curriculum.cli.common import FAILED_JOBS, hydra_main, run_task
from curriculum.config import ConfigError, RunConfig
from curriculum.recipe import train, write_status
from curriculum.resume import find_run


def _task(cfg: RunConfig, run_dir: str, overrides: list[str]) -> None:
    train(cfg, run_dir, overrides)
    print(f"run folder: {run_dir}")


def resume_args(args: list[str]) -> list[str]:
    """With resume=..., run Hydra in that run's folder and keep this invocation's config beside the original."""
    spec = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if spec in (None, "null", "None") or os.environ.get("LOCAL_RANK", "0") != "0":
        # DDP children started by Lightning already carry the parent's resolved arguments.
        return args
    root = next((a.split("=", 1)[1] for a in args if a.startswith("paths.output_root=")), "outputs")
    run = find_run(spec, root)
    # The saved config is the base: its keys (e.g. stages the default config lacks) may be overridden.
    args = [f"resume={run}" if a.startswith("resume=") else _force(a) for a in args]
    return args + [f"hydra.run.dir={run}", f"hydra.output_subdir=.hydra/resume-{time.strftime('%Y%m%d-%H%M%S')}"]


def _force(arg: str) -> str:
    key = arg.split("=", 1)[0]
    return f"++{arg}" if "=" in arg and "." in key and not key.startswith(("hydra.", "+", "~")) else arg


@hydra_main
def _main(raw: DictConfig) -> None:
    run_task(raw, _task, on_failure=lambda run_dir, reason: os.path.isdir(run_dir) and write_status(run_dir, "failed", reason))


def main() -> None:
    """Console script entry point."""
    try:
        sys.argv[1:] = resume_args(sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    _main()
    if FAILED_JOBS:
        # The other jobs ran to their end; the exit code still tells scripts that the sweep is incomplete.
        print(f"error: {len(FAILED_JOBS)} job(s) of the sweep failed:\n" + "\n".join(FAILED_JOBS), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
