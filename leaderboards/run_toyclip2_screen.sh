#!/usr/bin/env bash
# Screening of the second-generation toy suite (issue 26, docs/toyclip2-design.md): zero-shot, CoOp with 16
# random context vectors and CoOp with 4 from "a photo of a" on the candidate datasets of
# configs/datasets/ (toy_orchard ... toy_cabinet), with the second toy CLIP, the base-to-new protocol and the CPU trainer's schedule
# (as leaderboards/run_toy.sh). Results go to results/toyclip2 (RESULTS_DIR; not leaderboard rows).
#
#   leaderboards/run_toyclip2_screen.sh                          # all candidates, seeds 1-5
#   SEEDS="[1]" leaderboards/run_toyclip2_screen.sh toy_orchard  # one candidate, one seed
#   TOYCLIP2=/tmp/toyclip2-trial/vlprompt-toyclip2.safetensors leaderboards/run_toyclip2_screen.sh  # a trial checkpoint
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
seeds="${SEEDS:-[1,2,3,4,5]}"
results="${RESULTS_DIR:-results/toyclip2}"
pretrained="${TOYCLIP2:-embedded}"
datasets=("$@")
[ ${#datasets[@]} -eq 0 ] && datasets=(toy_orchard toy_jewellery toy_mosaics toy_regatta toy_bazaar toy_cabinet)
for dataset in "${datasets[@]}"; do
  for learner in zero_shot/default coop/ctx16_rand coop/ctx4_init; do
    vlprompt fit --config configs/protocols/base2new.yaml --config configs/trainer/cpu.yaml \
      --config configs/backbones/toyclip2.yaml --model.backbone.init_args.pretrained "$pretrained" \
      --results_dir "$results" --seeds "$seeds" \
      --config configs/datasets/$dataset.yaml --config configs/learners/$learner.yaml --data.init_args.feature_cache true
  done
done
