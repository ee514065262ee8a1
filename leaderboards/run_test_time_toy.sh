#!/usr/bin/env bash
# Reproduce leaderboards/test_time/toy: episodic test-time evaluation, IMAGES test images per shift (a fixed subset,
# the same for every entrant and seed), in either toy world (first argument, default toyclip):
#   toyclip   the first toy CLIP: toy_mixtures classes under noise, low_contrast, blur, sketch
#             (configs/protocols/test_time/toy_shifts.yaml; the rows committed with IMAGES=48, seeds 1-3)
#   toyclip2  the second toy CLIP (issue 26): toy_bazaar classes under the same four shifts
#             (configs/protocols/test_time/toy2_shifts.yaml)
# Entrants here: CoOp (4 vectors from "a photo of a", 16 shots per class of the clean source rendering, one prompt
# file per seed), TPT+CoOp (TPT starting from those prompts) and DiffTPT (the embedded generator, toy_diffusion,
# configs/learners/difftpt/toy.yaml; its generated views are made once by `vlprompt generate` and cached: the views
# do not depend on the run seed). For toyclip, zero-shot and TPT run here too; for toyclip2 they run in
# sweeps/toy2_test_time.yaml with ZERO, C-TPT and TDA (the first world's: sweeps/toy_test_time_methods.yaml).
# The CoOp fit of the second world runs Dassl's schedule (cosine_horizon max_epochs); the first world's keeps the
# config's earlier cosine, with which its committed rows were made. Zero-shot is deterministic. The CoOp fit has a
# fixed id so its prompt files have a known path; it is skipped when they already exist.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
WORLD=${1:-toyclip}
IMAGES=${IMAGES:-48}
TPT_SEEDS=${TPT_SEEDS:-[1,2,3]}
DIFFTPT_SEEDS=${DIFFTPT_SEEDS:-[1,2,3]}
RESULTS=${RESULTS:-leaderboards/results}
case "$WORLD" in
  toyclip) protocol=toy_shifts; dataset=toy_mixtures; root=runs/test_time_toy; schedule=() ;;
  toyclip2) protocol=toy2_shifts; dataset=toy_bazaar; root=runs/test_time_toy2; schedule=(--model.cosine_horizon max_epochs) ;;
  *) echo "usage: $0 [toyclip|toyclip2] (got '$WORLD')" >&2; exit 2 ;;
esac
prompts="$root/coop_clean_source/seed{seed}/prompts.safetensors"
if ! ls "$root"/coop_clean_source/seed{1,2,3}/prompts.safetensors >/dev/null 2>&1; then
  vlprompt fit --config configs/protocols/fewshot_k16.yaml --config configs/trainer/cpu.yaml \
    --config "configs/backbones/$WORLD.yaml" --config "configs/datasets/$dataset.yaml" \
    --config configs/learners/coop/ctx4_init.yaml --data.init_args.dataset.init_args.style clean \
    --data.init_args.feature_cache true --run_id coop_clean_source \
    --trainer.default_root_dir "$root" --results_dir "$root/results" "${schedule[@]}"
fi
common=(--config "configs/protocols/test_time/$protocol.yaml" --config "configs/backbones/$WORLD.yaml"
        --data.init_args.images_per_set "$IMAGES" --results_dir "$RESULTS")
coop=(--model.learner coop --model.learner.init_args.n_ctx 4 --model.learner.init_args.ctx_init "a photo of a")
if [ "$WORLD" = toyclip ]; then
  vlprompt tta "${common[@]}" --config configs/learners/zero_shot/default.yaml
  vlprompt tta "${common[@]}" --config configs/learners/tpt/default.yaml --seeds "$TPT_SEEDS"
fi
vlprompt tta "${common[@]}" "${coop[@]}" --prompts "$prompts"
vlprompt tta "${common[@]}" --config configs/learners/tpt/default.yaml --prompts "$prompts" --seeds "$TPT_SEEDS"
vlprompt generate "${common[@]}" --config configs/learners/difftpt/toy.yaml --seeds "$DIFFTPT_SEEDS"
vlprompt tta "${common[@]}" --config configs/learners/difftpt/toy.yaml --seeds "$DIFFTPT_SEEDS"
vlprompt leaderboard build "$RESULTS" --out leaderboards --html --plotly shared
