#!/usr/bin/env bash
# The candidate designs tried while looking for toy data with a stable base-to-new trade-off
# (configs/datasets/tradeoff_probes/, vlprompt/data/toyworld/tradeoff_probe.py): zero-shot and both CoOp
# configurations, seeds 1-3, the same protocol and schedule as leaderboards/run_toy.sh. The results are not
# leaderboard rows; they go to results/tradeoff_probes (README, "Toy datasets with a base-to-new trade-off").
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
probes=("$@")
[ ${#probes[@]} -eq 0 ] && probes=($(cd configs/datasets/tradeoff_probes && ls *.yaml | sed 's/\.yaml$//'))
for probe in "${probes[@]}"; do
  for learner in zero_shot/default coop/ctx16_rand coop/ctx4_init; do
    vlprompt fit --config configs/protocols/base2new.yaml --config configs/trainer/cpu.yaml \
      --config configs/backbones/toyclip.yaml --results_dir results/tradeoff_probes \
      --config configs/datasets/tradeoff_probes/$probe.yaml --config configs/learners/$learner.yaml --data.init_args.feature_cache true
  done
done
