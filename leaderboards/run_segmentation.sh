#!/usr/bin/env bash
# Reproduce leaderboards/segmentation/ (embedded toy VLSM, CPU; toy rows seeds 1-5, real-smoke rows seeds 1-3) with
# five sweep files (one local
# worker each; an interrupted cell resumes from its run folder under sweeps-out/<name>/):
#   sweeps/seg_toy_scan.yaml, sweeps/seg_toy_scan_defaults.yaml, sweeps/seg_toy_scan_label_fractions.yaml ->
#     segmentation/toy: the toy segmentation benchmark (issue 26): toy_seg_scan (every split in the ultrasound-like
#     "scan" domain; 800 training images as Kvasir-SEG), prompt p2 (colour + category), the protocol's 20 epochs; TuneVLSeg configs where they exist
#     (zero_shot/segmentation, coop, cocoop, vpt, maple, shared_separate, shared_attention), the learners' defaults
#     otherwise (ivlp, promptsrc, dept, ept, tmml), and CoOp at 10/25/50% of the training images;
#   sweeps/seg_toyvlsm_real.yaml -> segmentation/real-smoke: the Kvasir-SEG (300 pairs) and BUSI (75 images)
#     subsets of ../shared/data with the same toy VLSM (48 px, never saw a medical image: low numbers expected),
#     every learner with a TuneVLSeg config, 3 epochs.
# Usage: leaderboards/run_segmentation.sh [toy|real|all] (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
what=${1:-all}
if [[ $what == toy || $what == all ]]; then
  vlprompt sweep --config sweeps/seg_toy_scan.yaml
  vlprompt sweep --config sweeps/seg_toy_scan_defaults.yaml
  vlprompt sweep --config sweeps/seg_toy_scan_label_fractions.yaml
fi
if [[ $what == real || $what == all ]]; then
  vlprompt sweep --config sweeps/seg_toyvlsm_real.yaml
fi
vlprompt leaderboard build leaderboards/results --out leaderboards --html --plotly shared
