"""`curriculum-search [overrides]`: find the schedule that optimises search.objective, one training run per trial.

    curriculum-search 'schedule.stages.blend.mix.text_only=interval(0,0.6)' \\
        'schedule.stages.align.steps=range(20,80,20)' 'optim.lr=tag(log,interval(1e-4,3e-3))' search.n_trials=20
    curriculum-search search.dir=outputs/searches/2026-12-06/10-00-00      # continue a stopped search
    curriculum-search search.dir=<folder> search.n_trials=30               # ... with more trials
    curriculum-report outputs/searches/2026-12-06/10-00-00                 # trials table, best configuration, plots

Searched keys use Hydra's sweep syntax: interval(a,b) (tag(log,...), tag(int,...)), range(a,b,step), a,b,c
choices (config groups too, e.g. experiment=curriculum/mixed,curriculum/align_blend). Every other override is
shared by all trials. Optuna (TPE or random, seeded) picks the values; each trial is a `curriculum-train` run in
<search folder>/<trial number>/ that returns the weighted per-group objective, and the median pruner stops a
trial that is worse than the earlier ones at a validation. The study lives in <search folder>/search.db.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from curriculum.cli.common import USER_ERRORS, _compose, user_message
from curriculum.config import ConfigError, validate

log = logging.getLogger("curriculum")

# Keys the search sets on each trial itself.
OWN = ("search.dir=", "search.trial=", "hydra.run.dir=", "resume=")


def search_args(args: list[str]) -> list[str]:
    """The overrides to search with: as given, or a stopped search's own (from search.dir) plus new search.* settings."""
    from curriculum.search.study import SETTINGS, saved_args

    bad = [a for a in args if a.startswith(("-", *OWN[1:]))]
    if bad:
        raise ConfigError(f"curriculum-search sets {bad[0].split('=')[0]} itself: leave it out.")
    folder = next((a.split("=", 1)[1] for a in args if a.startswith("search.dir=")), None)
    if folder and os.path.isfile(os.path.join(folder, SETTINGS)) and all(a.startswith("search.") for a in args):
        given = {a.split("=", 1)[0] for a in args}
        return [a for a in saved_args(folder) if a.split("=", 1)[0] not in given] + args
    return args


def main() -> None:
    """Console script entry point."""
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        from curriculum.search.space import parse_space
        from curriculum.search.study import run_search, trial_runner

        args = search_args(sys.argv[1:])
        space = parse_space(args)
        # Every key checked once, with one allowed value per searched key, before any trial starts.
        cfg = validate(_compose(space.overrides(space.first_values())))
        folder = cfg.search.dir or os.path.join(cfg.paths.output_root, "searches", time.strftime("%Y-%m-%d"), time.strftime("%H-%M-%S"))
        space.fixed = [a for a in space.fixed if not a.startswith(OWN)]
        log.info("search folder: %s (%d trials, objective %s, %s)", folder, cfg.search.n_trials, cfg.search.objective,
                 "minimised" if cfg.search.minimize() else "maximised")
        run_search(folder, cfg.search, space, trial_runner(folder), args=[a for a in args if not a.startswith("search.dir=")])
    except USER_ERRORS as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(1)
    from curriculum.report.searches import write_search_report

    print(write_search_report(folder)[0])
    print(f"search folder: {folder}")


if __name__ == "__main__":
    main()
