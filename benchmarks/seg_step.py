"""Seconds per segmentation training step and peak training memory per learner on a CLIPSeg VLSM, against CoOp.

One step is the segmentation track's (docs: /work SEG_SPEC, ``vlprompt/backbones/clipseg.py``):
``learner.set_classnames(prompts)``, ``learner.encode_images`` inside ``backbone.record_activations()``,
``learner.paired_text_features``, ``backbone.decode_masks``, smp ``DiceLoss`` + 0.2 ``SoftBCEWithLogitsLoss``
(TuneVLSeg's lambda_dice 1, lambda_ce 0.2), backward, AdamW step (lr 2e-4), on random images and random
binary masks with one referring prompt per image. CoOp (text prompts only) at the same batch is the baseline of
the ratios (``x coop``). Backbones:

* ``toy``: the embedded toy VLSM (``ToyVLSM()``) when its folder is shipped, otherwise the tiny random test
  VLSM (``vlprompt.learners.testing.tiny_vlsm()``), named in the output;
* ``tiny``: the tiny random test VLSM (64 px);
* ``folder``: any CLIPSeg folder given with ``--folder`` (e.g. a toy VLSM folder not shipped yet);
* ``clipseg``: a random CLIPSeg of the published size (``CIDAS/clipseg-rd64-refined``'s architecture: ViT-B/16,
  text 512 x 12, D 512, reduce_dim 64, extract layers 3/6/9, refined transposed convolution) at 352 px, saved
  once into a temp folder and loaded through the same adapter.

Learner depths are their defaults, which the adapter caps at the layers that reach the masks
(``vision_layers``: 11 of 12 for CLIPSeg). Each (backbone, learner) runs in a fresh subprocess; ``cpu s`` is
the process's CPU time per step (steadier than wall time on shared cores); ``peak MiB`` is the process's peak
resident set size minus its resident size after building backbone and learner (CPU), or the peak CUDA memory
allocated during the steps on a GPU.

    python benchmarks/seg_step.py                                   # toy and published-size CLIPSeg
    OMP_WAIT_POLICY=passive python benchmarks/seg_step.py --backbones toy --steps 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import rss_kb  # noqa: E402 - benchmarks/ helper (the script directory is on sys.path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["a polyp", "a benign tumour in the breast", "the red circle on the left", "a small blue square"]
#: (row name, learner, kwargs); rows whose learner is not registered are skipped
ROWS = [
    ("coop (16 ctx)", "coop", {"n_ctx": 16}),
    ("cocoop (4 ctx)", "cocoop", {}),
    ("vpt deep (8 tok)", "vpt", {"n_ctx": 8}),
    ("vpt shallow (8 tok)", "vpt", {"n_ctx": 8, "prompt_depth": 1}),
    ("ivlp 2+2", "ivlp", {"n_ctx_text": 2, "n_ctx_vision": 2}),
    ("maple (2 ctx)", "maple", {"n_ctx": 2}),
    ("promptsrc 4+4", "promptsrc", {}),
    ("shared_separate", "shared_separate", {}),
    ("shared_attention", "shared_attention", {}),
]


def published_config() -> dict:
    """``CLIPSegConfig`` keywords of ``CIDAS/clipseg-rd64-refined``'s architecture (its config.json values; the
    rest are transformers' defaults, which match it)."""
    return {
        "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                        "num_attention_heads": 8, "max_position_embeddings": 77, "vocab_size": 49408},
        "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
        "projection_dim": 512, "extract_layers": [3, 6, 9], "reduce_dim": 64, "decoder_num_attention_heads": 4,
        "decoder_intermediate_size": 2048, "conditional_layer": 0, "use_complex_transposed_convolution": True,
    }


def _backbone(name: str, folder: str | None, precision: str):
    if name == "clipseg":
        from vlprompt.backbones.clipseg import CLIPSegBackbone

        return CLIPSegBackbone(folder, precision=precision), "random CLIPSeg rd64-refined size, 352 px"
    if name == "folder":
        from vlprompt.backbones.clipseg import CLIPSegBackbone

        return CLIPSegBackbone(folder, precision=precision), f"CLIPSeg folder {folder}"
    if name == "toy":
        from vlprompt.backbones.clipseg import TOY_VLSM_FOLDER, ToyVLSM

        if (TOY_VLSM_FOLDER / "config.json").is_file():
            return ToyVLSM(precision=precision), "embedded toy VLSM"
    from vlprompt.learners.testing import tiny_vlsm

    return tiny_vlsm(precision=precision), "tiny random VLSM (vlprompt.learners.testing.tiny_vlsm; toy VLSM not shipped)"


def one(spec: dict, steps: int, threads: int | None) -> dict:
    """Measure one (backbone, learner) in this process; returns a JSON-able dict."""
    import segmentation_models_pytorch as smp
    import torch

    from vlprompt.learners.registry import get_registry

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(spec["device"])
    bb, label = _backbone(spec["backbone"], spec.get("folder"), spec["precision"])
    bb = bb.to(device)
    batch = spec["batch"]
    torch.manual_seed(0)
    learner = get_registry("learners").get(spec["learner"])(**spec["kwargs"])
    learner.setup(bb, PROMPTS)
    learner.to(device)
    size = bb.preprocess.image_size
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, size, size, generator=gen).to(device)
    masks = (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float().to(device)
    index = (torch.arange(batch) % len(PROMPTS)).to(device)
    params = [p for p in learner.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    dice, bce = smp.losses.DiceLoss("binary", from_logits=True), smp.losses.SoftBCEWithLogitsLoss()
    base_rss = rss_kb()

    def step() -> None:
        learner.train()
        opt.zero_grad(set_to_none=True)
        learner.set_classnames(PROMPTS)
        with bb.record_activations() as rec:
            feats = learner.encode_images(images)
        logits = bb.decode_masks(rec, learner.paired_text_features(feats, index))[:, None]
        loss = dice(logits, masks) + 0.2 * bce(logits, masks)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    times.sort()
    cpu.sort()
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - start_mem) / 2**20
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {
        "sec_per_step": times[len(times) // 2],
        "cpu_sec_per_step": cpu[len(cpu) // 2],
        "peak_extra_mib": peak,
        "params": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(),
        "backbone": label,
        "vision_layers": bb.vision_layers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["toy", "clipseg"], choices=["toy", "tiny", "clipseg", "folder"])
    parser.add_argument("--folder", default=None, help="CLIPSeg folder for --backbones folder")
    parser.add_argument("--learners", nargs="+", default=None, help="row names' learners to run (default: all registered)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median printed) after one warm-up step")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one), args.steps, args.threads)))
        return

    import torch

    from vlprompt.learners.registry import get_registry

    registered = {e.name for e in get_registry("learners").entries()}
    print(f"# torch {torch.__version__}, device {args.device}, precision {args.precision}, threads "
          f"{args.threads or torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="vlprompt-seg-step-") as tmp:
        for backbone in args.backbones:
            folder = args.folder if backbone == "folder" else None
            if backbone == "folder" and not folder:
                parser.error("--backbones folder needs --folder PATH")
            if backbone == "clipseg":
                from vlprompt.learners.testing import save_random_clipseg

                folder = str(save_random_clipseg(Path(tmp) / "clipseg", published_config(), seed=0, image_size=352))
            print(f"\n## backbone {backbone}: batch {args.batch}, {args.steps} timed steps")
            print(f"{'learner':>22} {'params':>9} {'s/step':>8} {'x coop':>7} {'cpu s':>8} {'x coop':>7} "
                  f"{'peak MiB':>9} {'x coop':>7}")
            base = None
            for name, learner, kwargs in ROWS:
                if learner not in registered or (args.learners and learner not in args.learners):
                    continue
                spec = {"backbone": backbone, "folder": folder, "learner": learner, "kwargs": kwargs,
                        "batch": args.batch, "precision": args.precision, "device": args.device}
                cmd = [sys.executable, __file__, "--one", json.dumps(spec), "--steps", str(args.steps)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    err = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
                    print(f"{name:>22} failed: {err}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if base is None:
                    base = r
                    print(f"# {r['backbone']}; visual prompt depth cap (vision_layers) {r['vision_layers']}")
                print(
                    f"{name:>22} {r['params']:>9} {r['sec_per_step']:>8.3f} {r['sec_per_step'] / base['sec_per_step']:>7.2f} "
                    f"{r['cpu_sec_per_step']:>8.3f} {r['cpu_sec_per_step'] / base['cpu_sec_per_step']:>7.2f} "
                    f"{r['peak_extra_mib']:>9.1f} {r['peak_extra_mib'] / max(base['peak_extra_mib'], 1e-9):>7.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
