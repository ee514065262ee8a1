"""CoCoOp training-step memory and time at batch 1 and 32, against CoOp measured in the same run.

Each configuration runs in its own subprocess (so peaks do not mix): build the backbone and learner, one
warm-up training step, then ``--steps`` timed steps (frozen image features, logits, cross-entropy,
backward, SGD step). Reported per configuration:

- ``saved MiB``: activations autograd keeps for the backward pass in one step (exact, deterministic; what
  chunking + recomputation reduces; model weights it references and the few inputs ``torch.utils.checkpoint``
  keeps per chunk are not counted),
- ``peak MiB``: the process's peak resident memory during the first training step above its resident
  memory just before it (Linux ``VmHWM`` after ``malloc_trim`` and a reset through ``/proc/self/clear_refs``;
  later steps reuse the freed heap, so they are not used for it). Coarse (allocator granularity), but it includes the
  forward pass's transient tensors, which ``saved MiB`` does not,
- ``s/step``: median seconds per training step,
- ratios of the three against CoOp at the same batch size.

Variants: ``coop``; ``cocoop-ref`` (CoCoOp encoding one image's C prompts per text-encoder call with all
activations kept: the reference's memory behaviour, ``chunk_size = C``, ``recompute: false``); ``cocoop``
(vlprompt's defaults: ``chunk_size: 64``, ``recompute: true``); ``cocoop:N`` (``chunk_size: N``,
``recompute: true``). With recomputation the peak is about one chunk's activations (rebuilt during
backward), so the chunk size sets the memory/time trade-off. The logits of the three CoCoOp variants
are identical (tests/test_cocoop.py).

    python benchmarks/cocoop_memory.py                       # toy CLIP, 5 classes (toy_colors base), batch 1 and 32
    python benchmarks/cocoop_memory.py --backbone vit_b16 --batches 1 8   # random-weight open_clip ViT-B-16
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))  # kB


def worker(cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from vlprompt.data.toyworld.datasets import ToyColors
    from vlprompt.learners.cocoop import CoCoOp
    from vlprompt.learners.coop import CoOp

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    if cfg["backbone"] == "toy":
        from vlprompt.backbones.toyclip import ToyCLIP

        backbone = ToyCLIP()
    else:
        from vlprompt.backbones.open_clip import OpenCLIPBackbone

        backbone = OpenCLIPBackbone("ViT-B-16", pretrained=None)
    base = ToyColors().classnames
    names = [base[i % len(base)] + ("" if i < len(base) else f" {i}") for i in range(cfg["classes"])]
    if cfg["variant"] == "coop":
        learner = CoOp(n_ctx=4, ctx_init="a photo of a")
    elif cfg["variant"] == "cocoop-ref":
        learner = CoCoOp(chunk_size=len(names), recompute=False)
    elif cfg["variant"].startswith("cocoop:"):  # cocoop:CHUNK, with recomputation
        learner = CoCoOp(chunk_size=int(cfg["variant"].split(":")[1]), recompute=True)
    else:
        learner = CoCoOp()
    learner.setup(backbone, names)
    learner.train()
    b, size = cfg["batch"], backbone.preprocess.image_size
    images = torch.rand(b, 3, size, size)
    targets = torch.arange(b) % len(names)
    opt = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.002, momentum=0.9)

    saved: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in [*backbone.parameters(), *learner.parameters()]}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:  # frozen weights kept for backward are resident anyway: not counted
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    def step(record: bool = False) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            feats = learner.encode_images(images)
        if record:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = F.cross_entropy(learner.logits(feats), targets)
        else:
            loss = F.cross_entropy(learner.logits(feats), targets)
        loss.backward()
        opt.step()

    with torch.no_grad():
        learner.encode_images(images)  # image-tower buffers are not part of the comparison
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back to the OS, so the step's peak shows in RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS
    before = _status("VmRSS")
    step(record=True)  # first step: peak memory and the saved-for-backward bytes (later steps reuse the heap)
    peak = _status("VmHWM") - before
    times = []
    for _ in range(cfg["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"saved_mib": sum(saved.values()) / 2**20, "peak_mib": peak / 1024, "s_per_step": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=["toy", "vit_b16"], default="toy")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--classes", type=int, default=5, help="number of classes C (5 = EuroSAT / toy_colors base)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["coop", "cocoop-ref", "cocoop"])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))  # noqa: T201 - read by the parent process
        return
    import torch

    print(f"# torch {torch.__version__}, threads {args.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "  # noqa: T201
          f"load {os.getloadavg()[0]:.2f}, backbone {args.backbone}, classes {args.classes}, steps {args.steps}")
    print(f"{'batch':>5} {'variant':>11} {'saved MiB':>10} {'peak MiB':>9} {'s/step':>8} "  # noqa: T201
          f"{'saved x':>8} {'peak x':>7} {'time x':>7}")
    for batch in args.batches:
        base = None
        for variant in args.variants:
            cfg = {"backbone": args.backbone, "batch": batch, "classes": args.classes, "steps": args.steps,
                   "threads": args.threads, "variant": variant}
            out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{batch:>5} {variant:>11} failed: {out.stderr.strip().splitlines()[-1:]}")  # noqa: T201
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or r
            print(f"{batch:>5} {variant:>11} {r['saved_mib']:>10.1f} {r['peak_mib']:>9.1f} {r['s_per_step']:>8.3f} "  # noqa: T201
                  f"{r['saved_mib'] / base['saved_mib']:>8.1f} {r['peak_mib'] / max(base['peak_mib'], 1e-9):>7.1f} "
                  f"{r['s_per_step'] / base['s_per_step']:>7.1f}")


if __name__ == "__main__":
    main()
