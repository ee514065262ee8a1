#!/usr/bin/env bash
# Toy base-to-new rows of issue 28's methods, embedded toy CLIP, seeds 1-5, into leaderboards/results:
#   1. the one-stage methods through the sweep file: TCP, CLIP-LoRA, MMA, CoPrompt, MMRL on toy_archive,
#      toy_patterns and toy_mixtures (sweeps/toy_new_methods.yaml), and DePT's decoupled head on CoOp (joint);
#   2. the two-stage ones on toy_patterns: DPC on a CoOp trained with seed 1 (4 vectors from "a photo of a"),
#      PromptKD distilled from a PromptSRC teacher trained with seed 1 on the same toy CLIP (the toy world has one
#      CLIP, so the teacher is not larger: the row measures the method's machinery, not a ViT-L/14's knowledge).
#      The first stage is one checkpoint, as the papers use one teacher / one pre-trained prompt; the 5 seeds are
#      seeds of the second stage.
# OMP_NUM_THREADS=1 bash leaderboards/run_toy_new_methods.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
RESULTS=${RESULTS:-leaderboards/results}
STAGE=runs/toy_new_methods
SEEDS='[1, 2, 3, 4, 5]'
vlprompt sweep --config sweeps/toy_new_methods.yaml
common=(--config configs/protocols/base2new.yaml --config configs/trainer/cpu.yaml --config configs/backbones/toyclip.yaml
        --config configs/datasets/toy_patterns.yaml)
vlprompt fit "${common[@]}" --config configs/learners/dept_head/toy.yaml --seeds "$SEEDS" --results_dir "$RESULTS"
if [ ! -f "$STAGE/coop_stage1/seed1/prompts.safetensors" ]; then
  vlprompt fit "${common[@]}" --config configs/learners/coop/ctx4_init.yaml --seeds '[1]' --run_id coop_stage1 \
    --trainer.default_root_dir "$STAGE" --results_dir "$STAGE/results"
fi
vlprompt fit "${common[@]}" --config configs/learners/dpc/toy.yaml --seeds "$SEEDS" --results_dir "$RESULTS" \
  --model.learner.init_args.prompts "$STAGE/coop_stage1/seed1/prompts.safetensors"
if [ ! -f "$STAGE/promptsrc_teacher/seed1/prompts.safetensors" ]; then
  vlprompt fit "${common[@]}" --config configs/learners/promptsrc/toy.yaml --seeds '[1]' --run_id promptsrc_teacher \
    --trainer.default_root_dir "$STAGE" --results_dir "$STAGE/results"
fi
vlprompt fit "${common[@]}" --config configs/learners/promptkd/toy.yaml --seeds "$SEEDS" --results_dir "$RESULTS" \
  --model.learner.init_args.teacher_prompts "$STAGE/promptsrc_teacher/seed1/prompts.safetensors"
