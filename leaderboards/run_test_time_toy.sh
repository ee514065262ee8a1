#!/usr/bin/env bash
# Reproduce leaderboards/test_time/toy (embedded toy CLIP, seeds 1-3): toy_mixtures classes tested under the
# four toy shifts (noise, low_contrast, blur, sketch), IMAGES test images per shift (a fixed subset, the same
# for every entrant and seed). Entrants: zero-shot, CoOp (4 vectors from "a photo of a", 16 shots per class
# of the clean source rendering, one prompt file per seed), TPT and TPT+CoOp (TPT starting from those prompts).
# DiffTPT uses the embedded generator (toy_diffusion, configs/learners/difftpt/toy.yaml); its generated views
# are made once by `vlprompt generate` and cached (the committed DiffTPT row has 3 seeds; the generate
# run used --seeds '[1]', which does not change the views). The committed TPT rows were run with
# TPT_SEEDS='[1]' (time); zero-shot and CoOp are deterministic, so their 3 seeds agree exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
IMAGES=${IMAGES:-24}
TPT_SEEDS=${TPT_SEEDS:-[1,2,3]}
DIFFTPT_SEEDS=${DIFFTPT_SEEDS:-[1,2,3]}
RESULTS=${RESULTS:-leaderboards/results}
vlprompt fit --config configs/protocols/fewshot_k16.yaml --config configs/trainer/cpu.yaml \
  --config configs/backbones/toyclip.yaml --config configs/datasets/toy_mixtures.yaml \
  --config configs/learners/coop/ctx4_init.yaml --data.init_args.dataset.init_args.style clean \
  --data.init_args.feature_cache true \
  --trainer.default_root_dir runs/test_time_toy --results_dir runs/test_time_toy/results
prompts='runs/test_time_toy/fewshot/toy_mixtures/coop/seed{seed}/prompts.safetensors'
common=(--config configs/protocols/test_time/toy_shifts.yaml --config configs/backbones/toyclip.yaml
        --data.init_args.images_per_set "$IMAGES" --results_dir "$RESULTS")
coop=(--model.learner coop --model.learner.init_args.n_ctx 4 --model.learner.init_args.ctx_init "a photo of a")
vlprompt tta "${common[@]}" --config configs/learners/zero_shot/default.yaml
vlprompt tta "${common[@]}" "${coop[@]}" --prompts "$prompts"
vlprompt tta "${common[@]}" --config configs/learners/tpt/default.yaml --seeds "$TPT_SEEDS"
vlprompt tta "${common[@]}" --config configs/learners/tpt/default.yaml --prompts "$prompts" --seeds "$TPT_SEEDS"
vlprompt generate "${common[@]}" --config configs/learners/difftpt/toy.yaml --seeds "$DIFFTPT_SEEDS"
vlprompt tta "${common[@]}" --config configs/learners/difftpt/toy.yaml --seeds "$DIFFTPT_SEEDS"
vlprompt leaderboard build "$RESULTS" --out leaderboards --html --plotly shared
