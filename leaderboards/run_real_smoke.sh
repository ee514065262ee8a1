#!/usr/bin/env bash
# Reproduce leaderboards/base2new/real-smoke: zero-shot and CoOp, base-to-new, on the cut-down EuroSAT and
# Caltech-101 subsets in ../shared/data, with the embedded toy CLIP (a pipeline check, not a benchmark:
# the toy CLIP never saw natural images). Caltech's subset has 8 training images per class, so K=8 there.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
DATA=${VLPROMPT_DATA:-../shared/data}
for learner in zero_shot/default coop/ctx4_init; do
  vlprompt fit --config configs/protocols/base2new.yaml --config configs/trainer/cpu.yaml \
    --config configs/backbones/toyclip.yaml --config configs/datasets/eurosat.yaml \
    --data.init_args.dataset.init_args.root "$DATA" --config configs/learners/$learner.yaml \
    --benchmark real-smoke --results_dir leaderboards/results
  vlprompt fit --config configs/protocols/base2new.yaml --config configs/trainer/cpu.yaml \
    --config configs/backbones/toyclip.yaml --config configs/datasets/caltech101.yaml \
    --data.init_args.dataset.init_args.root "$DATA" --data.init_args.shots 8 --config configs/learners/$learner.yaml \
    --benchmark real-smoke --results_dir leaderboards/results
done
vlprompt leaderboard build leaderboards/results --out leaderboards --html --plotly shared
