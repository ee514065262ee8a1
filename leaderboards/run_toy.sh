#!/usr/bin/env bash
# Reproduce the toy leaderboards (embedded toy CLIP, seeds 1-3). Sections (default: all, in this order):
#   base      base2new/toy: zero-shot, CoOp (two configurations) and the KgCoOp plugin on the five original toy
#             datasets; zero-shot and both CoOp configurations on the trade-off probes toy_archive, toy_swatches
#   zoo       base2new/toy: CoCoOp, MaPLe, PromptSRC, VPT, IVLP (configs/learners/<name>/toy.yaml) on all seven
#   papers    base2new/toy: DePT, EPT, ConES, TMML on all seven
#   fewshot   fewshot/toy: CoOp, CoCoOp, MaPLe, PromptSRC, DePT, EPT, ConES, TMML on toy_patterns, K = 1, 2, 4, 8, 16
#   transfer  transfer/toy: toy_mixtures (blurred) -> the same classes clean / noisy / faded / as sketches
# e.g. leaderboards/run_toy.sh zoo fewshot. The leaderboards are rebuilt at the end. The same cells as sweeps (resumable,
# N local workers or SLURM): sweeps/toy_papers.yaml, toy_fewshot.yaml, toy_fewshot_papers.yaml, toy_base_rerun.yaml.
# KgCoOp needs the example plugin: pip install -e plugins/vlprompt-kgcoop
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(base zoo papers fewshot transfer)
wants() { [[ " ${sections[*]} " == *" $1 "* ]]; }
common=(--config configs/trainer/cpu.yaml --config configs/backbones/toyclip.yaml --results_dir leaderboards/results)
all_datasets=(toy_archive toy_swatches toy_mixtures toy_patterns toy_places toy_colors toy_backdrops)
if wants base; then
  for dataset in toy_colors toy_patterns toy_places toy_mixtures toy_backdrops; do
    for learner in zero_shot/default coop/ctx4_init coop/ctx16_rand kgcoop/default; do
      vlprompt fit --config configs/protocols/base2new.yaml "${common[@]}" \
        --config configs/datasets/$dataset.yaml --config configs/learners/$learner.yaml
    done
  done
  # base-to-new trade-off probes (vlprompt/data/toyworld/tradeoff.py): zero-shot and both CoOp configurations
  for dataset in toy_archive toy_swatches; do
    for learner in zero_shot/default coop/ctx4_init coop/ctx16_rand kgcoop/default; do
      vlprompt fit --config configs/protocols/base2new.yaml "${common[@]}" \
        --config configs/datasets/$dataset.yaml --config configs/learners/$learner.yaml --data.init_args.feature_cache true
    done
  done
fi
# The paper configs' depths need ViT-B/16 towers: toy.yaml = the paper config with its depths scaled to the toy CLIP
# (ceil(J * layers / 12)), everything else the paper's. They set batch size and epochs, so they come last.
# feature_cache only serves frozen image features to learners that leave the image tower alone (CoCoOp).
if wants zoo; then
  for dataset in "${all_datasets[@]}"; do
    for learner in cocoop maple promptsrc vpt ivlp; do
      vlprompt fit --config configs/protocols/base2new.yaml "${common[@]}" \
        --config configs/datasets/$dataset.yaml --data.init_args.feature_cache true --config configs/learners/$learner/toy.yaml
    done
  done
fi
if wants papers; then
  for dataset in "${all_datasets[@]}"; do
    for learner in dept/toy_budget16 ept/toy_budget16 cones/default tmml/default; do
      vlprompt fit --config configs/protocols/base2new.yaml "${common[@]}" \
        --config configs/datasets/$dataset.yaml --config configs/learners/$learner.yaml
    done
  done
fi
if wants fewshot; then
  for k in 1 2 4 8 16; do
    for learner in coop/ctx4_init cocoop/toy maple/toy promptsrc/toy dept/toy_budget16 ept/toy_budget16 cones/default tmml/default; do
      vlprompt fit --config configs/protocols/fewshot_k$k.yaml "${common[@]}" \
        --config configs/datasets/toy_patterns.yaml --data.init_args.feature_cache true --config configs/learners/$learner.yaml
    done
  done
fi
if wants transfer; then
  for learner in zero_shot/default coop/ctx4_init kgcoop/default; do
    vlprompt fit --config configs/protocols/toy_domain_shift.yaml "${common[@]}" --config configs/learners/$learner.yaml
  done
fi
vlprompt leaderboard build leaderboards/results --out leaderboards --html --plotly shared
