#!/usr/bin/env bash
# Reproduce leaderboards/base2new/toy: zero-shot and CoOp, base-to-new, every toy dataset, seeds 1-3.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
for dataset in toy_colors toy_patterns toy_places toy_mixtures toy_backdrops; do
  for learner in zero_shot/default coop/ctx4_init coop/ctx16_rand; do
    vlprompt fit --config configs/protocols/base2new.yaml --config configs/trainer/cpu.yaml \
      --config configs/backbones/toyclip.yaml --config configs/datasets/$dataset.yaml \
      --config configs/learners/$learner.yaml --results_dir leaderboards/results
  done
done
vlprompt leaderboard build leaderboards/results --out leaderboards
