#!/usr/bin/env bash
# Reproduce the toy leaderboards (embedded toy CLIP, seeds 1-3):
#   base2new/toy: zero-shot, CoOp (two configurations) and the KgCoOp plugin on every toy dataset;
#   transfer/toy: toy_mixtures (blurred) -> the same classes rendered clean / noisy / faded / as sketches.
# KgCoOp needs the example plugin: pip install -e plugins/vlprompt-kgcoop
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
common=(--config configs/trainer/cpu.yaml --config configs/backbones/toyclip.yaml --results_dir leaderboards/results)
for dataset in toy_colors toy_patterns toy_places toy_mixtures toy_backdrops; do
  for learner in zero_shot/default coop/ctx4_init coop/ctx16_rand kgcoop/default; do
    vlprompt fit --config configs/protocols/base2new.yaml "${common[@]}" \
      --config configs/datasets/$dataset.yaml --config configs/learners/$learner.yaml
  done
done
# base-to-new trade-off probes (vlprompt/data/toyworld/tradeoff.py): zero-shot and both CoOp configurations
for dataset in toy_archive toy_swatches; do
  for learner in zero_shot/default coop/ctx4_init coop/ctx16_rand; do
    vlprompt fit --config configs/protocols/base2new.yaml "${common[@]}" \
      --config configs/datasets/$dataset.yaml --config configs/learners/$learner.yaml --data.init_args.feature_cache true
  done
done
for learner in zero_shot/default coop/ctx4_init kgcoop/default; do
  vlprompt fit --config configs/protocols/toy_domain_shift.yaml "${common[@]}" --config configs/learners/$learner.yaml
done
vlprompt leaderboard build leaderboards/results --out leaderboards --html --plotly shared
