#!/usr/bin/env bash
# base2new/toy rows of TuneVLSeg's joint learners (shared_separate, shared_attention) on toy_patterns and
# toy_colors: embedded toy CLIP, seeds 1-3, the TuneVLSeg configuration at depth 4 (configs/learners/*/toy_deep4.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
common=(--config configs/trainer/cpu.yaml --config configs/backbones/toyclip.yaml --results_dir leaderboards/results)
for dataset in toy_patterns toy_colors; do
  for learner in shared_separate/toy_deep4 shared_attention/toy_deep4; do
    vlprompt fit --config configs/protocols/base2new.yaml "${common[@]}" \
      --config configs/datasets/$dataset.yaml --config configs/learners/$learner.yaml
  done
done
vlprompt leaderboard build leaderboards/results --out leaderboards
