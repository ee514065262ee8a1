"""Time and peak memory of one GRAM meta-step (vlprompt.learners.gram.meta): second order vs first order.

    OMP_NUM_THREADS=1 python benchmarks/gram_meta_step.py [--backbone tiny|toy] [--inner coop|vpt]

Prints median seconds per meta-step, the process's max RSS (run ``--order first`` and ``--order second`` in separate
processes to compare peak memory), and with ``--order both`` the second/first-order time ratio of the same run.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import timeit  # noqa: E402

from vlprompt.learners.coop import CoOp  # noqa: E402
from vlprompt.learners.gram.regulator import identity_regulator  # noqa: E402
from vlprompt.learners.vpt import VPT  # noqa: E402
from vlprompt.learners.gram.corpus import encode_corpus
from vlprompt.learners.gram.meta import attention_for, TaskHead, meta_step
from vlprompt.learners.gram.tasks import hierarchical_clusters, sample_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="toy", choices=["tiny", "toy"])
    ap.add_argument("--inner", default="coop", choices=["coop", "vpt"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--order", default="both", choices=["first", "second", "both"],
                    help="run one order per process to read its own peak RSS")
    args = ap.parse_args()
    if args.backbone == "tiny":
        from vlprompt.learners.testing import tiny_clip

        bb = tiny_clip()
    else:
        from vlprompt.backbones.toyclip import ToyCLIP

        bb = ToyCLIP(pretrained="embedded")
    torch.manual_seed(0)
    inner = CoOp(n_ctx=4) if args.inner == "coop" else VPT(n_ctx=4, prompt_depth=1)
    use_images = inner.modifies_image_encoder
    corpus = encode_corpus(bb, {"source": "toyworld", "size": 128}, seed=1, keep_images=use_images)
    h = hierarchical_clusters(corpus, coarse=2, fine=6, seed=1)
    rng = random.Random(0)
    tasks = [sample_task(h, n_way=4, support_shots=2, query_shots=4, rng=rng) for _ in range(2)]
    inner.setup(bb, tasks[0].support_names)
    inner.train()
    head = TaskHead(inner)
    init = {k: v.clone().requires_grad_(True) for k, v in inner.learned_state().items()}
    reg = {k: v.requires_grad_(True) for k, v in identity_regulator(list(init)).items()}
    out = {}
    orders = {"first": (True,), "second": (False,), "both": (True, False)}[args.order]
    for first_order in orders:
        def step() -> None:
            with attention_for(first_order):
                loss, _ = meta_step(head, init, reg, tasks, corpus, inner_steps=2, inner_lr=0.05,
                                    first_order=first_order, use_images=use_images)
                loss.backward()

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        secs = timeit(step, args.repeats)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out[first_order] = (secs, (rss1 - rss0) / 1024)
        print(f"{args.backbone}/{args.inner} {'first' if first_order else 'second'}-order: {secs:.3f} s/meta-step "
              f"(2 tasks x 2 inner steps), max-RSS growth {rss1 / 1024 - rss0 / 1024:.1f} MiB, max RSS {rss1 / 1024:.0f} MiB")
    if len(out) == 2:
        print(f"second/first-order time ratio: {out[False][0] / out[True][0]:.2f}x")


if __name__ == "__main__":
    main()
