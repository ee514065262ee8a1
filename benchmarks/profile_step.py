"""Where the time of vlprompt's default CoOp / CoCoOp / MaPLe training step and TPT test step goes: torch.profiler's
top operations.

A training step as ``PromptClassifier.training_step`` runs it (image features with autograd on, the learner's
logits and loss, backward, SGD step) on a ViT-B/16 in fp32 (``--weights``: an OpenAI-layout file such as the one
``vs_reference.py --make-random-weights`` writes; random open_clip weights without it), ``--classes`` synthetic
class names, a batch of ``--batch`` random images (MaPLe: 2 context vectors from "a photo of a", depth 9, its
ViT-B/16 base-to-new setting). ``--learner tpt``: one TPT episode as ``TestTimeClassifier`` runs it per test image
(``tpt_step``: the 64 views (``--batch``, default 64 for tpt) encoded once, confidence selection 0.1, one AdamW
step at lr 5e-3 on CoOp's context from "a photo of a", the tuned prediction). One warm-up step, then ``--steps``
profiled steps.

    python benchmarks/profile_step.py --learner coop --batch 8 --classes 5 --weights /dev/shm/vitb16-random.safetensors
    python benchmarks/profile_step.py --learner tpt --classes 1000 --steps 1 --weights /dev/shm/vitb16-random.safetensors
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from vlprompt.backbones.open_clip import OpenCLIPBackbone
from vlprompt.learners.cocoop import CoCoOp
from vlprompt.learners.coop import CoOp
from vlprompt.learners.maple import MaPLe
from vlprompt.learners.prompts.tta import tpt_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--learner", choices=["coop", "cocoop", "maple", "tpt"], default="coop")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 8; tpt: 64 views)")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--weights", default=None)
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    batch = a.batch or (64 if a.learner == "tpt" else 8)
    backbone = OpenCLIPBackbone("ViT-B-16-quickgelu", pretrained=a.weights, precision="fp32")
    if a.learner == "maple":
        learner = MaPLe(n_ctx=2, ctx_init="a photo of a", prompt_depth=9)
    else:
        learner = (CoCoOp if a.learner == "cocoop" else CoOp)(n_ctx=4, ctx_init="a photo of a")
    learner.setup(backbone, [f"class {i}" for i in range(a.classes)])
    images = torch.rand(batch, 3, 224, 224)
    labels = torch.arange(batch) % a.classes
    if a.learner == "tpt":
        learner.eval()
        opt = torch.optim.AdamW(list(learner.tunable_parameters().values()), lr=5e-3)

        def step() -> None:
            tpt_step(learner, images, opt, selection=0.1, steps=1)
    else:
        learner.train()
        opt = torch.optim.SGD([q for q in learner.parameters() if q.requires_grad], lr=0.002, momentum=0.9)
        step = train_step(learner, opt, images, labels)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    print(f"# {a.learner} step, batch {batch}, {a.classes} classes, fp32, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}; {a.steps} profiled step(s)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top, max_name_column_width=40))


def train_step(learner, opt, images, labels):
    """One training step of ``learner`` as ``PromptClassifier.training_step`` runs it."""

    def step() -> None:
        feats = learner.encode_images(images)
        logits = learner.logits(feats)
        loss = learner.loss(logits, labels, feats)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


if __name__ == "__main__":
    main()
