#!/bin/bash
# Reproduce one table of this study:  bash experiments/curriculum_vs_baselines/run.sh schedules|blend [output folder]
# (from the repository root, after `bash .ci/setup.sh`). Each multirun is 20 runs of ~20 s on 2 CPU cores.
set -euo pipefail
which="${1:?give schedules or blend}"
out="${2:-outputs/curriculum_vs_baselines}/$which"
common=(model.name_or_path=builtin:tiny-llava-pretrained eval.generate=true eval.max_new_tokens=24
        trainer.val_every_n_steps=20 export.enabled=false trainer.enable_progress_bar=false "hydra.sweep.dir=$out")
case "$which" in
  schedules) .venv/bin/curriculum-train -m \
               experiment=curriculum/align_blend,curriculum/mixed,curriculum/image_only,curriculum/text_first \
               seed=0,1,2,3,4 "${common[@]}" ;;
  blend)     .venv/bin/curriculum-train -m schedule.stages.blend.mix.text_only=0.0,0.1,0.3,0.5 seed=0,1,2,3,4 "${common[@]}" ;;
  *) echo "give schedules or blend, not $which" >&2; exit 2 ;;
esac
.venv/bin/curriculum-report "$out"
