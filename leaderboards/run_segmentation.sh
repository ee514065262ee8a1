#!/usr/bin/env bash
# Reproduce leaderboards/segmentation/ (embedded toy VLSM, CPU; toy rows seeds 1-5, real-smoke rows seeds 1-3) with
# four sweep files (one local
# worker each; an interrupted cell resumes from its run folder under sweeps-out/<name>/):
#   sweeps/seg_toyvlsm_toy.yaml, sweeps/seg_toyvlsm_toy_defaults.yaml -> segmentation/toy: every built-in learner
#     that declares segmentation on toy_seg (train/val clean, test in the ultrasound-like "scan" domain), 10 epochs;
#     TuneVLSeg configs where they exist (zero_shot/segmentation, coop, cocoop, vpt, maple, shared_separate,
#     shared_attention), the learners' defaults otherwise (ivlp, promptsrc, dept, ept, tmml);
#   sweeps/seg_toyvlsm_real.yaml -> segmentation/real-smoke: the Kvasir-SEG (300 pairs) and BUSI (75 images)
#     subsets of ../shared/data with the same toy VLSM (48 px, never saw a medical image: low numbers expected),
#     every learner with a TuneVLSeg config, 3 epochs.
# Usage: leaderboards/run_segmentation.sh [toy|real|all] (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
what=${1:-all}
if [[ $what == toy || $what == all ]]; then
  vlprompt sweep --config sweeps/seg_toyvlsm_toy.yaml
  vlprompt sweep --config sweeps/seg_toyvlsm_toy_defaults.yaml
  vlprompt sweep --config sweeps/seg_toy_label_fractions.yaml
fi
if [[ $what == real || $what == all ]]; then
  vlprompt sweep --config sweeps/seg_toyvlsm_real.yaml
fi
vlprompt leaderboard build leaderboards/results --out leaderboards --html --plotly shared
