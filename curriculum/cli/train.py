"""`curriculum-train [overrides]`: train on the configured data, model and curriculum, in one run folder.

`curriculum-train resume=<run folder>` (or `resume=latest`) continues a run in its own folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time

from omegaconf import DictConfig

from curriculum.cli.common import FAILED_JOBS, SWEEP_DIRS, USER_ERRORS, discard_unstarted, hydra_main, process_rank, run_task, user_message
from curriculum.config import ConfigError, RunConfig
from curriculum.run import lock as run_lock
from curriculum.run.resume import Complete, find_run, preflight


def _task(cfg: RunConfig, run_dir: str, overrides: list[str]) -> None:
    # The training stack is imported only for a run that starts: config errors and refused resumes answer fast.
    from curriculum.run.recipe import train

    train(cfg, run_dir, overrides, on_end=_report)
    if process_rank() == 0:
        print(f"run folder: {run_dir}")


def _report(run_dir: str) -> None:
    from curriculum.report.runs import write_run_report

    logging.getLogger("curriculum").info("report: %s", write_run_report(run_dir))


def check_launcher(args: list[str]) -> None:
    """Refuse the SLURM launcher in one sentence when its Hydra plugin is not installed."""
    wants = any(a.split("=", 1)[-1] in ("slurm", "submitit_slurm") for a in args if a.startswith("hydra/launcher="))
    if wants and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        raise ConfigError("hydra/launcher=slurm needs Hydra's submitit launcher plugin: pip install hydra-submitit-launcher.")


def resume_args(args: list[str]) -> list[str]:
    """With resume=..., run Hydra in that run's folder and keep this invocation's config beside the original.

    Every refusal happens here, before Hydra writes anything: a refused resume leaves the run
    folder exactly as it was.
    """
    spec = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if spec in (None, "null", "None") or os.environ.get("LOCAL_RANK", "0") != "0":
        # DDP children started by Lightning already carry the parent's resolved arguments.
        return args
    root = next((a.split("=", 1)[1] for a in args if a.startswith("paths.output_root=")), "outputs")
    run = find_run(spec, root)
    live = run_lock.holder(run)
    if live:
        raise ConfigError(f"resume: {run} is still being trained by process {live['pid']} on {live['host']}; wait for it to end or stop it first.")
    if spec == "latest":
        print(f"resume=latest: continuing {run}", file=sys.stderr)
    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    resumed = preflight(spec, run, overrides, keep=True)
    if resumed.checkpoint is None:
        print(f"resume: {run} stopped before its first checkpoint: it starts again from step 0 in its folder", file=sys.stderr)
    if process_rank() == 0:  # the process that trains holds the lock from here on (other nodes' processes do not)
        note = run_lock.acquire(run)
        if note:
            print(f"resume: {note}", file=sys.stderr)
    # The saved config is the base: its keys (e.g. stages the default config lacks) may be overridden.
    args = [f"resume={run}" if a.startswith("resume=") else _force(a) for a in args]
    return args + [f"hydra.run.dir={run}", f"hydra.output_subdir=.hydra/resume-{time.strftime('%Y%m%d-%H%M%S')}"]


def _force(arg: str) -> str:
    key = arg.split("=", 1)[0]
    return f"++{arg}" if "=" in arg and "." in key and not key.startswith(("hydra.", "+", "~")) else arg


def _failed(run_dir: str, reason: str, multirun: bool) -> None:
    """Mark a started run (or a sweep's job, for its report) failed; remove the folder of a single run that never started."""
    if multirun or os.path.isfile(os.path.join(run_dir, "status.json")):
        from curriculum.run.recipe import write_status

        if os.path.isdir(run_dir):
            write_status(run_dir, "failed", reason)
    else:
        discard_unstarted(run_dir, "status.json")


@hydra_main
def _main(raw: DictConfig) -> None:
    run_task(raw, _task, on_failure=_failed)


def main() -> None:
    """Console script entry point."""
    try:
        check_launcher(sys.argv[1:])
        sys.argv[1:] = resume_args(sys.argv[1:])
    except Complete as e:
        print(str(e), file=sys.stderr)
        sys.exit(0)
    except USER_ERRORS as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(1)
    _main()
    if SWEEP_DIRS:
        print(f"sweep folder: {SWEEP_DIRS[-1]}")
    if FAILED_JOBS:
        # The other jobs ran to their end; the exit code still tells scripts that the sweep is incomplete.
        print(f"error: {len(FAILED_JOBS)} job(s) of the sweep failed:\n" + "\n".join(FAILED_JOBS), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
