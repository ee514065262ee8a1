"""Where the time of vlprompt's default CoOp / CoCoOp training step goes: torch.profiler's top operations.

One step as ``PromptClassifier.training_step`` runs it (image features with autograd on, the learner's logits
and loss, backward, SGD step) on a ViT-B/16 in fp32 (``--weights``: an OpenAI-layout file such as the one
``vs_reference.py --make-random-weights`` writes; random open_clip weights without it), ``--classes`` synthetic
class names, a batch of ``--batch`` random images; one warm-up step, then ``--steps`` profiled steps.

    python benchmarks/profile_step.py --learner coop --batch 8 --classes 5 --weights /dev/shm/vitb16-random.safetensors
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from vlprompt.backbones.open_clip import OpenCLIPBackbone
from vlprompt.learners.cocoop import CoCoOp
from vlprompt.learners.coop import CoOp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--learner", choices=["coop", "cocoop"], default="coop")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--weights", default=None)
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    backbone = OpenCLIPBackbone("ViT-B-16-quickgelu", pretrained=a.weights, precision="fp32")
    learner = (CoOp if a.learner == "coop" else CoCoOp)(n_ctx=4, ctx_init="a photo of a")
    learner.setup(backbone, [f"class {i}" for i in range(a.classes)])
    learner.train()
    opt = torch.optim.SGD([q for q in learner.parameters() if q.requires_grad], lr=0.002, momentum=0.9)
    images = torch.rand(a.batch, 3, 224, 224)
    labels = torch.arange(a.batch) % a.classes

    def step() -> None:
        feats = learner.encode_images(images)
        logits = learner.logits(feats)
        loss = learner.loss(logits, labels, feats)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    print(f"# {a.learner} step, batch {a.batch}, {a.classes} classes, fp32, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}; {a.steps} profiled step(s)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
