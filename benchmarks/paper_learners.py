"""Training-step time and memory of DePT, EPT and ConES against CoOp with 16 context vectors (same budget).

Baseline (same run): CoOp with 16 random context vectors (``configs/learners/coop/ctx16_rand.yaml``). Each
learner is built from its YAML, and a training step (text side + cosine logits + loss + backward + SGD step)
runs on a fixed batch of image features (the frozen image encoder is identical for all of them and cacheable,
so it is left out). Printed per learner: trainable parameters, median step ms, step-time ratio to CoOp-16,
bytes saved for backward (autograd's saved tensors, a device-independent measure of training activation
memory) and its ratio; on CUDA also the peak allocated memory.

Two text-encoder modes, both printed:
- ``full``: the backbone as it is: CLIP's text encoder always runs the whole context (77 tokens for ViT-B/16,
  32 for the toy CLIP), so a shorter prompt only moves the end token;
- ``trimmed``: the sequence cut after the longest prompt's end token (exact under CLIP's causal mask; the script
  prints the max feature difference to ``full``). This is where DePT's shorter prompt saves time, as for the
  paper's T5 inputs; the backbone does not do it yet.

    python benchmarks/paper_learners.py                         # toy CLIP, 24 classes, batch 32
    python benchmarks/paper_learners.py --vitb16 --classes 10   # random-weight ViT-B/16 (timing only)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]


def _learner(path: Path):
    from vlprompt.learners.registry import get_registry

    cfg = yaml.safe_load(path.read_text())["model"]["learner"]
    return get_registry("learners").get(cfg["class_path"])(**cfg.get("init_args", {}))


@contextlib.contextmanager
def trimmed_text(backbone):
    """Run the text encoder only up to the longest prompt's end token (``positional_embedding[:T]``, mask ``[:T, :T]``)."""
    from vlprompt.backbones.open_clip import _run_blocks

    text = backbone._text

    def encode(embeddings, pool_index, *, deep_prompts=None, deep_prompt_start=1):
        t = int(pool_index.max()) + 1
        x = embeddings[:, :t].to(backbone.dtype) + text.positional_embedding[:t].to(backbone.dtype)
        mask = text.attn_mask[:t, :t].to(backbone.dtype) if text.attn_mask is not None else None
        x = text.ln_final(_run_blocks(text.transformer, x, mask, None, None))
        x = x[torch.arange(x.shape[0], device=x.device), pool_index.to(x.device)]
        proj = text.text_projection
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return x.float()

    backbone.encode_text_embeddings = encode
    try:
        yield
    finally:
        del backbone.encode_text_embeddings


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while running ``fn`` (each storage counted once)."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.device.type)
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def measure(learner, backbone, names, feats, targets, repeats: int, device) -> dict:
    from _timing import timeit  # benchmarks/ helper (the script directory is on sys.path)

    torch.manual_seed(0)
    learner.setup(backbone, names)
    learner.to(device).train()
    opt = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=1e-3)
    holder = {}

    def forward():
        logits = learner.logits(feats)
        holder["loss"] = learner.loss(logits, targets, feats)

    def step():
        opt.zero_grad(set_to_none=True)
        forward()
        holder["loss"].backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    params = sum(p.numel() for p in learner.parameters() if p.requires_grad)
    mem = saved_bytes(forward)
    holder.clear()
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated()
    ms = 1000 * timeit(step, repeats=repeats, warmup=2)
    with torch.no_grad():
        learner.eval()
        text = learner.text_features()
    return {"params": params, "ms": ms, "saved": mem, "peak": peak, "text": text.detach().float().cpu()}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vitb16", action="store_true", help="random-weight open_clip ViT-B-16 instead of the toy CLIP")
    p.add_argument("--classes", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.vitb16:
        from vlprompt.backbones.open_clip import OpenCLIPBackbone

        backbone, suffix = OpenCLIPBackbone("ViT-B-16", pretrained=None), "vitb16"
    else:
        from vlprompt.backbones.toyclip import ToyCLIP

        backbone, suffix = ToyCLIP(), "toy"
    backbone.to(device)
    names = [f"{c} {s}" for s in SHAPES for c in COLORS][: a.classes]
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(a.batch_size, backbone.embed_dim, generator=gen).to(device)
    targets = (torch.arange(a.batch_size) % len(names)).to(device)
    cfgs = REPO / "configs" / "learners"
    rows = [
        ("coop ctx16 (baseline)", cfgs / "coop" / "ctx16_rand.yaml"),
        (f"dept {suffix}_budget16", cfgs / "dept" / f"{suffix}_budget16.yaml"),
        (f"ept {suffix}_budget16", cfgs / "ept" / f"{suffix}_budget16.yaml"),
        ("cones default", cfgs / "cones" / "default.yaml"),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(  # noqa: T201
        f"# backbone {backbone.info.model} (text width {backbone.text_width}, context {backbone.context_length}), "
        f"{len(names)} classes, batch {a.batch_size}, device {device}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load {load:.2f}"
    )
    for mode in ("full", "trimmed"):
        ctx = trimmed_text(backbone) if mode == "trimmed" else contextlib.nullcontext()
        with ctx:
            results = {label: measure(_learner(path), backbone, names, feats, targets, a.repeats, device) for label, path in rows}
        if mode == "trimmed":
            for label, _ in rows:
                diff = float((results[label]["text"] - full[label]["text"]).abs().max())
                print(f"# trimmed vs full text features, {label}: max |diff| {diff:.2e}")  # noqa: T201
        full = results if mode == "full" else full  # noqa: F841
        base = results[rows[0][0]]
        print(f"\n## text encoder: {mode}")  # noqa: T201
        print(f"{'learner':>24} {'params':>7} {'step ms':>8} {'x CoOp16':>8} {'speed-up':>8} {'saved MiB':>9} {'x CoOp16':>8}" + ("  peak MiB" if device.type == "cuda" else ""))  # noqa: T201
        for label, _ in rows:
            r = results[label]
            line = (
                f"{label:>24} {r['params']:>7} {r['ms']:>8.1f} {r['ms'] / base['ms']:>8.2f} {base['ms'] / r['ms']:>8.1f} "
                f"{r['saved'] / 2**20:>9.2f} {r['saved'] / base['saved']:>8.2f}"
            )
            if r["peak"] is not None:
                line += f"  {r['peak'] / 2**20:>8.1f}"
            print(line)  # noqa: T201


if __name__ == "__main__":
    main()
