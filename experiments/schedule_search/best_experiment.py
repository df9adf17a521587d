"""Write a search's best trial as an experiment file:  python best_experiment.py <search folder> <experiment .yaml>.

The file holds the searched keys' best values over the default schedule, so the comparison multirun can name it
beside the shipped experiments (`--config-dir <its conf folder> experiment=searched`).
"""

from __future__ import annotations

import os
import sys

from omegaconf import OmegaConf

from curriculum.report.searches import best_trial, load


def main(folder: str, path: str) -> None:
    """Write the experiment file of the best completed trial."""
    study, settings = load(folder)
    best = best_trial(study)
    if best is None:
        sys.exit(f"error: no trial of {folder} completed")
    values = OmegaConf.from_dotlist([f"{k}={v}" for k, v in best.params.items()])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# @package _global_\n# Trial {best.number} of {folder}: objective {best.value:.6g} ({settings['objective']}).\n")
        f.write("defaults:\n  - override /schedule: default\n")
        f.write(OmegaConf.to_yaml(values))
    print(f"{path}: trial {best.number}, " + " ".join(f"{k}={v}" for k, v in best.params.items()))


if __name__ == "__main__":
    main(*sys.argv[1:3])
