"""`curriculum-plan [overrides]`: read and validate every record, print the plan, write plan.json."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from curriculum.cli.common import hydra_main, run_task
from curriculum.config import RunConfig
from curriculum.data.sources import describe_invalid, load_data
from curriculum.datamodule import default_stream
from curriculum.plan import build_plan, print_plan, write_plan
from curriculum.recipe import world_size


def _task(cfg: RunConfig, run_dir: str) -> None:
    # Read everything even in error mode, so the report lists every invalid record at once.
    bundle = load_data(cfg, on_invalid="skip")
    stream = default_stream(bundle.train, cfg.seed) if bundle.train is not None else None
    plan = build_plan(cfg, bundle, stream, world_size(cfg))
    print_plan(plan)
    path = write_plan(plan, run_dir)
    print(f"plan: {path}")
    if bundle.invalid and cfg.data.on_invalid.value == "error":
        print(
            f"error: {len(bundle.invalid)} invalid record(s) (data.on_invalid=error; use data.on_invalid=skip to skip them):\n"
            + describe_invalid(bundle.invalid),
            file=sys.stderr,
        )
        sys.exit(1)


@hydra_main
def main(raw: DictConfig) -> None:
    """Console script entry point."""
    run_task(raw, _task)

if __name__ == "__main__":
    main()
