"""Seconds per training step and peak training memory of VPT, IVLP, MaPLe and PromptSRC against CoOp.

One training step = ``encode_images`` + ``logits`` + the learner's ``loss`` + backward + an SGD step, on
random images for 5 classes (EuroSAT's base half: 5 classes), at each method's paper batch (4; CoOp is
measured at the same batch 4, the baseline of the ratios, and at its own paper batch 32). Backbones: the
embedded toy CLIP (48 px; prompt depths capped at its 6 image / 4 text layers) and a random ViT-B/16
(``OpenCLIPBackbone(model="ViT-B-16", pretrained=None)``, 224 px, the papers' depths). Each (backbone,
learner) runs in a fresh subprocess; ``cpu s`` is the process's CPU time per step (steadier than wall time
when other processes share the cores; with one thread it is the step's compute); peak memory = the process's peak resident set size minus its resident
size after building the backbone and the learner (CPU; what training adds on top of the frozen model).

    python benchmarks/vl_learners.py                       # toy CLIP and ViT-B/16, 3 timed steps each
    python benchmarks/vl_learners.py --backbones toy --steps 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _timing import rss_kb  # noqa: E402 - benchmarks/ helper (the script directory is on sys.path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent

EUROSAT_BASE = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings"]
#: (row name, learner, kwargs for the toy CLIP, kwargs for ViT-B/16, batch)
ROWS = [
    ("coop (16 ctx)", "coop", {"n_ctx": 16}, {"n_ctx": 16}, 4),
    ("coop (16 ctx) b32", "coop", {"n_ctx": 16}, {"n_ctx": 16}, 32),
    ("vpt deep (8 tok)", "vpt", {"n_ctx": 8}, {"n_ctx": 8, "prompt_depth": 12}, 4),
    ("vpt shallow (8 tok)", "vpt", {"n_ctx": 8, "prompt_depth": 1}, {"n_ctx": 8, "prompt_depth": 1}, 4),
    ("ivlp 2+2", "ivlp", {"n_ctx_text": 2, "n_ctx_vision": 2},
     {"n_ctx_text": 2, "n_ctx_vision": 2, "prompt_depth_text": 12, "prompt_depth_vision": 12}, 4),
    ("maple (2 ctx)", "maple", {"n_ctx": 2}, {"n_ctx": 2, "prompt_depth": 9}, 4),
    ("promptsrc 4+4", "promptsrc", {}, {"prompt_depth_text": 9, "prompt_depth_vision": 9}, 4),
]


def one(backbone_name: str, learner_name: str, kwargs: dict, batch: int, steps: int, threads: int | None) -> dict:
    """Measure one (backbone, learner) in this process; returns a JSON-able dict."""
    import torch

    from vlprompt.learners.registry import get_registry

    if threads:
        torch.set_num_threads(threads)
    if backbone_name == "toy":
        from vlprompt.backbones.toyclip import ToyCLIP

        bb = ToyCLIP()
    else:
        from vlprompt.backbones.open_clip import OpenCLIPBackbone

        torch.manual_seed(0)
        bb = OpenCLIPBackbone(model="ViT-B-16", pretrained=None)
    torch.manual_seed(0)
    learner = get_registry("learners").get(learner_name)(**kwargs)
    learner.setup(bb, EUROSAT_BASE)
    size = bb.preprocess.image_size
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(batch) % len(EUROSAT_BASE)
    params = [p for p in learner.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    base_rss = rss_kb()

    def step() -> None:
        learner.train()
        opt.zero_grad(set_to_none=True)
        feats = learner.encode_images(images)
        loss = learner.loss(learner.logits(feats), targets, feats)
        loss.backward()
        opt.step()

    step()  # warm-up (PromptSRC also computes its frozen template features here, once)
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    times.sort()
    cpu.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "sec_per_step": times[len(times) // 2],
        "cpu_sec_per_step": cpu[len(cpu) // 2],
        "peak_extra_mib": max(0, peak - base_rss) / 1024,
        "params": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["toy", "vit-b-16"], choices=["toy", "vit-b-16"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median printed) after one warm-up step")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(one(spec["backbone"], spec["learner"], spec["kwargs"], spec["batch"], args.steps, args.threads)))
        return

    import torch

    print(f"# torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load {os.getloadavg()[0]:.2f}")
    for backbone in args.backbones:
        print(f"\n## backbone {backbone}: {args.steps} timed steps, 5 classes")
        print(f"{'learner':>22} {'batch':>5} {'params':>9} {'s/step':>8} {'x coop':>7} {'cpu s':>8} {'x coop':>7} "
              f"{'peak MiB':>9} {'x coop':>7}")
        base = None
        for name, learner, toy_kw, b16_kw, batch in ROWS:
            spec = {"backbone": backbone, "learner": learner, "kwargs": toy_kw if backbone == "toy" else b16_kw, "batch": batch}
            cmd = [sys.executable, __file__, "--one", json.dumps(spec), "--steps", str(args.steps)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{name:>22} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if base is None:
                base = r
            print(
                f"{name:>22} {batch:>5} {r['params']:>9} {r['sec_per_step']:>8.3f} {r['sec_per_step'] / base['sec_per_step']:>7.2f} "
                f"{r['cpu_sec_per_step']:>8.3f} {r['cpu_sec_per_step'] / base['cpu_sec_per_step']:>7.2f} "
                f"{r['peak_extra_mib']:>9.1f} {r['peak_extra_mib'] / max(base['peak_extra_mib'], 1e-9):>7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
