"""`curriculum-train [overrides]`: train on the configured data and model, in one run folder."""

from __future__ import annotations

from omegaconf import DictConfig

from curriculum.cli.common import hydra_main, run_task
from curriculum.config import RunConfig
from curriculum.recipe import train


def _task(cfg: RunConfig, run_dir: str) -> None:
    train(cfg, run_dir)
    print(f"run folder: {run_dir}")


@hydra_main
def main(raw: DictConfig) -> None:
    """Console script entry point."""
    run_task(raw, _task)

if __name__ == "__main__":
    main()
