"""Peak memory of a CoOp text step (forward + backward) over many classes, chunked vs in one pass.

Each configuration runs in a fresh child process (random ViT-B/16, CoOp with 16 context vectors, class
names ``class 0 .. class N-1``) and reports the growth of its peak resident memory over the memory it held
right before the step (model and prompts loaded). Baseline (same run): ``chunk_size=None``, all classes at
once, which is what every learner did before ``vlprompt.learners.prompts.layers.text_features`` learned to chunk. Also
prints seconds per step (the chunked step recomputes each chunk's forward in backward).

    python benchmarks/text_memory.py [--classes 96] [--chunk 16] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def child(classes: int, chunk: int | None, precision: str) -> dict:
    import torch

    from vlprompt.backbones.open_clip import OpenCLIPBackbone
    from vlprompt.learners.prompts.layers import text_features
    from vlprompt.learners.coop import CoOp

    torch.manual_seed(0)
    b = OpenCLIPBackbone("ViT-B-16", pretrained=None, precision=precision)
    learner = CoOp(n_ctx=16)
    learner.setup(b, [f"class {i}" for i in range(classes)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    feats = text_features(b, learner.prompts(learner.ctx), learner.prompts.pool_index, chunk_size=chunk)
    feats.square().sum().backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"growth_gib": (peak - before) / 2**20, "peak_gib": peak / 2**20, "seconds": seconds,
            "grad_norm": float(learner.ctx.grad.norm())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=96)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        chunk = None if a.child == "none" else int(a.child)
        print(json.dumps(child(a.classes, chunk, a.precision)))
        return
    print(f"# CoOp text step memory, random ViT-B/16 {a.precision}, {a.classes} classes, 16 context vectors; "
          f"load average {os.getloadavg()[0]:.2f}")
    rows = {}
    for mode in ("none", str(a.chunk)):
        out = subprocess.run(
            [sys.executable, __file__, "--classes", str(a.classes), "--precision", a.precision, "--child", mode],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        rows[mode] = json.loads(out)
    base = rows["none"]
    print(f"{'chunk_size':>10} {'step growth GiB':>16} {'per class MiB':>14} {'peak GiB':>9} {'s/step':>7} {'memory vs one pass':>19} {'grad norm':>10}")
    for mode, r in rows.items():
        print(f"{mode:>10} {r['growth_gib']:>16.2f} {1024 * r['growth_gib'] / a.classes:>14.1f} {r['peak_gib']:>9.2f} "
              f"{r['seconds']:>7.1f} {r['growth_gib'] / base['growth_gib']:>19.2f} {r['grad_norm']:>10.6f}")
    per_class = base["growth_gib"] / a.classes
    print(f"one pass: ~{1024 * per_class:.0f} MiB per class, i.e. ~{1000 * per_class:.0f} GiB for a 1000-class step (extrapolated); "
          f"chunked: one chunk's activations plus the [N, 77, width] inputs/outputs kept per class")

if __name__ == "__main__":
    main()
