"""Which exact kernels make the frozen ViT-B/16 towers fastest on this CPU: the image tower without autograd and
the text tower's CoOp step, each variant timed in alternating rounds against vlprompt's default path.

Image tower variants (``--batch`` random images at 224 px, fp32): ``default`` (vlprompt's path: open_clip's
``nn.MultiheadAttention`` fast path, in-place QuickGELU, under ``torch.no_grad``), ``inference_mode`` (the same
under ``torch.inference_mode``), ``sdpa`` (attention as packed projection + ``F.scaled_dot_product_attention`` +
out projection, the path the attention adapters use), ``channels_last`` (the input image in channels-last memory
format, for the patch-embedding convolution) and ``open_clip`` (open_clip's own forward, without vlprompt's block
loop). Text variants (a CoOp context step over ``--classes`` synthetic class names, forward + backward):
``default`` and ``sdpa``. Each variant's output is compared with the default's (max abs difference): a variant is a
candidate only if it agrees to 1e-5 relative.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/tower_kernels.py --weights /dev/shm/vitb16-random.safetensors --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

import vlprompt.backbones.open_clip as oc
from vlprompt.backbones.open_clip import OpenCLIPBackbone
from vlprompt.learners.coop import CoOp


@contextlib.contextmanager
def sdpa_blocks():
    """vlprompt's block loop with attention through ``F.scaled_dot_product_attention`` (no adapter term)."""
    original = oc._attention
    oc._attention = lambda attn, x, mask: oc._adapted_attention(attn, x, mask, None)
    try:
        yield
    finally:
        oc._attention = original


@contextlib.contextmanager
def open_clip_blocks():
    """open_clip's residual blocks called as they are (vlprompt's block forward off)."""
    oc._FAST_BLOCKS = False
    try:
        yield
    finally:
        oc._FAST_BLOCKS = True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="OpenAI-layout ViT-B/16 safetensors (random open_clip weights without)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    b = OpenCLIPBackbone("ViT-B-16-quickgelu", pretrained=a.weights, precision="fp32")
    torch.manual_seed(0)
    x = torch.rand(a.batch, 3, 224, 224)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    image_variants = {
        "default": (torch.no_grad, x, contextlib.nullcontext),
        "inference_mode": (torch.inference_mode, x, contextlib.nullcontext),
        "sdpa": (torch.no_grad, x, sdpa_blocks),
        "channels_last": (torch.no_grad, x_cl, contextlib.nullcontext),
        "open_clip": (torch.no_grad, x, open_clip_blocks),
    }
    learner = CoOp(n_ctx=4, ctx_init="a photo of a")
    learner.setup(b, [f"class number {i}" for i in range(a.classes)])

    def text_step() -> torch.Tensor:
        learner.zero_grad(set_to_none=True)
        feats = learner.text_features()
        feats.square().sum().backward()
        return feats.detach()

    text_variants = {"default": contextlib.nullcontext, "sdpa": sdpa_blocks}
    times: dict[str, list[float]] = {}
    outs: dict[str, torch.Tensor] = {}
    for r in range(a.rounds + 1):  # round 0 warms up
        for name, (mode, inp, ctx) in image_variants.items():
            with ctx(), mode():
                t0 = time.perf_counter()
                out = b.encode_image(inp)
                dt = time.perf_counter() - t0
            outs[f"image {name}"] = out.clone()
            if r:
                times.setdefault(f"image {name}", []).append(dt)
        for name, ctx in text_variants.items():
            with ctx():
                t0 = time.perf_counter()
                out = text_step()
                dt = time.perf_counter() - t0
            outs[f"text {name}"] = out
            if r:
                times.setdefault(f"text {name}", []).append(dt)
    print(f"# frozen-tower kernels: ViT-B/16 fp32, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load {os.getloadavg()[0]:.2f}, "
          f"image batch {a.batch}, text {a.classes} classes, {a.rounds} alternating rounds (median)")
    print(f"{'variant':>22} {'s':>8} {'vs default':>10} {'max |diff|':>11} {'rel':>9}")
    for key, ts in times.items():
        tower = key.split()[0]
        base = statistics.median(times[f"{tower} default"])
        ref = outs[f"{tower} default"]
        diff = float((outs[key] - ref).abs().max())
        print(f"{key:>22} {statistics.median(ts):>8.3f} {base / statistics.median(ts):>9.3f}x {diff:>11.2e} "
              f"{diff / float(ref.abs().max()):>9.1e}")


if __name__ == "__main__":
    main()
