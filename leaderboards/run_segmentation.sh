#!/usr/bin/env bash
# Reproduce leaderboards/segmentation/ (embedded toy VLSM, seeds 1-3, CPU):
#   segmentation/toy: every learner that declares segmentation, TuneVLSeg configs, on toy_seg (train/val clean,
#     test in the ultrasound-like "scan" domain);
#   segmentation/kvasir_seg_release, segmentation/busi_release: the Kvasir-SEG (300 pairs) and BUSI (75 images)
#     subsets of ../shared/data with the same toy VLSM (48 px, never saw a medical image: low numbers expected).
# Usage: leaderboards/run_segmentation.sh [toy|toy-extra|real|all] (default all; toy-extra: the other learners that
# declare segmentation, TuneVLSeg configs for shared_*, the learners' defaults otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
what=${1:-all}
EPOCHS=${EPOCHS:-3}
BACKBONE=${BACKBONE:-toyvlsm}
common=(--config configs/protocols/segmentation.yaml --model.backbone "$BACKBONE" --results_dir leaderboards/results
        --trainer.max_epochs "$EPOCHS" --data.init_args.batch_size 32 --progress false)
learners=(zero_shot/segmentation coop/tunevlseg cocoop/tunevlseg vpt/tunevlseg maple/tunevlseg)
if [[ $what == toy || $what == all ]]; then
  for learner in "${learners[@]}"; do
    vlprompt fit "${common[@]}" --config configs/datasets/toy_seg.yaml --config configs/learners/$learner.yaml
  done
fi
if [[ $what == toy-extra ]]; then
  for learner in shared_separate/tunevlseg shared_attention/tunevlseg; do
    vlprompt fit "${common[@]}" --config configs/datasets/toy_seg.yaml --config configs/learners/$learner.yaml
  done
  for name in ivlp promptsrc dept ept tmml; do  # PromptSRC, DePT, EPT, TMML rows: EPOCHS=10, run 2026-12-02
    vlprompt fit "${common[@]}" --config configs/datasets/toy_seg.yaml --model.learner "$name"
  done
fi
if [[ $what == real || $what == all ]]; then
  for dataset in kvasir_seg_release busi_release; do
    for learner in zero_shot/segmentation coop/tunevlseg; do
      vlprompt fit "${common[@]}" --benchmark real-smoke --config configs/datasets/$dataset.yaml --config configs/learners/$learner.yaml \
        --data.init_args.dataset.init_args.root ../shared/data
    done
  done
fi
vlprompt leaderboard build leaderboards/results --out leaderboards --html --plotly shared
