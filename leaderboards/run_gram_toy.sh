#!/usr/bin/env bash
# GRAM (meta-learned, re-implementation) against its inner learner on the toy world, embedded toy CLIP, seeds 1-3:
#   few-shot K = 1, 2, 4, 16 on toy_patterns (all classes): GRAM+CoOp (shipped artifact) vs CoOp, 10 epochs each.
# The K=4 base-to-new and transfer rows of leaderboards/{base2new/gram-toy,transfer/gram-toy-shift} were made with the
# commands printed under those tables.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
common=(--config configs/trainer/cpu.yaml --config configs/backbones/toyclip.yaml --config configs/datasets/toy_patterns.yaml
        --results_dir leaderboards/results/gram_toy --benchmark gram-toy-fewshot --trainer.max_epochs 10
        --trainer.default_root_dir /tmp/gramruns --save_prompts false)
for k in 1 2 4 16; do
  vlprompt fit --config configs/protocols/fewshot_k$k.yaml "${common[@]}" --config configs/learners/coop/ctx4_init.yaml
  vlprompt fit --config configs/protocols/fewshot_k$k.yaml "${common[@]}" --config configs/learners/gram/coop_ctx4_init.yaml \
    --model.learner.init_args.meta vlprompt/learners/gram/assets/gram_coop_toy.safetensors
done
# GRAM around a visual learner: VPT-shallow (8 tokens), meta artifact from
#   vlprompt meta-train --config configs/meta/gram_vpt_toy.yaml --out vlprompt/learners/gram/assets/gram_vpt_toy.safetensors
# base-to-new on toy_patterns, K=4, with VPT-shallow's own schedule (5 epochs, batch 4, lr 0.0025: the learner
# configs come after --trainer.max_epochs 10 and set it back to 5) for both.
b2n=(--config configs/protocols/base2new.yaml --config configs/trainer/cpu.yaml --config configs/backbones/toyclip.yaml
     --config configs/datasets/toy_patterns.yaml --results_dir leaderboards/results/gram_toy --benchmark gram-toy
     --data.init_args.shots 4 --trainer.max_epochs 10 --trainer.default_root_dir /tmp/gramruns --save_prompts false)
vlprompt fit "${b2n[@]}" --config configs/learners/vpt/vit_b16_c8_ep5_batch4_shallow.yaml
vlprompt fit "${b2n[@]}" --config configs/learners/gram/vpt_shallow.yaml \
  --model.learner.init_args.meta vlprompt/learners/gram/assets/gram_vpt_toy.safetensors
# few-shot K = 1, 2, 4, 16 for VPT-shallow and GRAM+VPT-shallow (VPT's schedule: 5 epochs, batch 4, lr 0.0025)
fs=(--config configs/trainer/cpu.yaml --config configs/backbones/toyclip.yaml --config configs/datasets/toy_patterns.yaml
    --results_dir leaderboards/results/gram_toy --benchmark gram-toy-fewshot --trainer.default_root_dir /tmp/gramruns
    --save_prompts false)
for k in 1 2 4 16; do
  vlprompt fit --config configs/protocols/fewshot_k$k.yaml "${fs[@]}" --config configs/learners/vpt/vit_b16_c8_ep5_batch4_shallow.yaml
  vlprompt fit --config configs/protocols/fewshot_k$k.yaml "${fs[@]}" --config configs/learners/gram/vpt_shallow.yaml \
    --model.learner.init_args.meta vlprompt/learners/gram/assets/gram_vpt_toy.safetensors
done
# toy cross-domain transfer (toy_mixtures blurred -> clean / noise / low_contrast / sketch), K = 4, VPT's schedule
tr=(--config configs/protocols/toy_domain_shift.yaml --config configs/trainer/cpu.yaml --config configs/backbones/toyclip.yaml
    --results_dir leaderboards/results/gram_toy --benchmark gram-toy-shift --data.init_args.shots 4
    --trainer.default_root_dir /tmp/gramruns --save_prompts false)
vlprompt fit "${tr[@]}" --config configs/learners/vpt/vit_b16_c8_ep5_batch4_shallow.yaml
vlprompt fit "${tr[@]}" --config configs/learners/gram/vpt_shallow.yaml \
  --model.learner.init_args.meta vlprompt/learners/gram/assets/gram_vpt_toy.safetensors
