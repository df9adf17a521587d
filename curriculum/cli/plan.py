"""`curriculum-plan [overrides]`: read and validate every record, print the plan, write plan.json."""

from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

from curriculum.cli.common import discard_unstarted, hydra_main, run_task
from curriculum.config import RunConfig


def _task(cfg: RunConfig, run_dir: str, overrides: list[str]) -> None:
    # Imported here, so a config error answers before the training stack loads.
    from curriculum.data.sources import describe_invalid, load_data
    from curriculum.schedule.plan import build_plan, plot_plan, print_plan, write_plan
    from curriculum.schedule.stream import build_stream

    # Read everything even in error mode, so the report lists every invalid record at once.
    bundle = load_data(cfg, on_invalid="skip")
    stream, run_steps = build_stream(cfg, bundle)
    plan = build_plan(bundle, stream, run_steps)
    print_plan(plan)
    path = write_plan(plan, run_dir)
    plot_plan(stream, run_steps, os.path.join(run_dir, "plan.png"))
    print(f"plan: {path}")
    if cfg.inspect:
        _inspect(cfg, bundle, run_dir)
    if bundle.invalid and cfg.data.on_invalid.value == "error":
        print(
            f"error: {len(bundle.invalid)} invalid record(s) (data.on_invalid=error; use data.on_invalid=skip to skip them):\n"
            + describe_invalid(bundle.invalid),
            file=sys.stderr,
        )
        sys.exit(1)


def _inspect(cfg: RunConfig, bundle, run_dir: str) -> None:
    from curriculum.data.collate import Collator
    from curriculum.data.sources import cache_dir
    from curriculum.model.load import load_processor, resolve_model_path
    from curriculum.schedule.plan import inspect_samples, print_inspected, write_inspected

    processor = load_processor(resolve_model_path(cfg.model.name_or_path, cache_dir(cfg)), cfg.model.processor_kwargs)
    collator = Collator(processor, bundle.group_names, cfg.data.max_length, "skip", truncate=cfg.data.truncate)
    samples = inspect_samples(bundle.train, collator, cfg.inspect)
    print_inspected(samples, cfg.data.max_length)
    print(f"inspect: {write_inspected(samples, run_dir)}")


@hydra_main
def main(raw: DictConfig) -> None:
    """Console script entry point."""
    run_task(raw, _task, on_failure=lambda run_dir, reason, multirun: multirun or discard_unstarted(run_dir, "plan.json"), lightning=False)

if __name__ == "__main__":
    main()
