#!/bin/bash
# The worked example of a schedule search (README.md here):  bash experiments/schedule_search/run.sh [output folder]
# (from the repository root, after `bash .ci/setup.sh`). 1. a 16-trial search on seed 0; 2. the searched schedule,
# the default and `mixed` over seeds 1-5 (not the search's seed), with generation scores; 3. the reports.
set -euo pipefail
out="${1:-outputs/schedule_search}"
common=(model.name_or_path=builtin:tiny-llava-pretrained trainer.val_every_n_steps=20 export.enabled=false
        trainer.enable_progress_bar=false)
.venv/bin/curriculum-search \
  'schedule.stages.blend.mix.text_only=interval(0,0.6)' \
  'schedule.stages.blend.ramp.fraction=interval(0.05,1)' \
  'schedule.stages.align.trainable.language=frozen,full' \
  'optim.lr=tag(log,interval(3e-4,3e-3))' \
  "${common[@]}" seed=0 search.n_trials=16 search.startup_trials=6 search.seed=0 "search.dir=$out/search"
.venv/bin/python experiments/schedule_search/best_experiment.py "$out/search" "$out/conf/experiment/searched.yaml"
.venv/bin/curriculum-train -m --config-dir "$out/conf" experiment=searched,curriculum/align_blend,curriculum/mixed seed=1,2,3,4,5 \
  eval.generate=true eval.max_new_tokens=24 "${common[@]}" "hydra.sweep.dir=$out/compare"
.venv/bin/curriculum-report "$out/search"
.venv/bin/curriculum-report "$out/compare"
