"""Emulated half precision on a CPU without native kernels: image features/s, bf16 vs fp32 (random ViT-B/16).

Baseline (same run): fp32. Shows the slowdown that ``resolve_precision`` refuses to make silently (bf16
falls back to fp32 with a warning unless ``VLPROMPT_ALLOW_EMULATED_PRECISION=1``, which this script sets to
measure it). On a CPU with AVX-512 BF16 / AMX, bf16 is the fast one.

    python benchmarks/precision_fallback.py [--images 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2)
    a = p.parse_args()
    os.environ["VLPROMPT_ALLOW_EMULATED_PRECISION"] = "1"
    from vlprompt.backbones.open_clip import OpenCLIPBackbone, _cpu_runs_natively

    print(f"# native bf16 kernels: {_cpu_runs_natively('bf16')}  threads {torch.get_num_threads()}  "
          f"load average {os.getloadavg()[0]:.2f}")
    x = torch.rand(a.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        b = OpenCLIPBackbone("ViT-B-16", pretrained=None, precision=precision)
        with torch.no_grad():
            b.encode_image(x[:1])
            t0 = time.perf_counter()
            b.encode_image(x)
            rows[precision] = (time.perf_counter() - t0) / a.images
    for precision, s in rows.items():
        print(f"{precision}: {1000 * s:.0f} ms per image, {rows['fp32'] / s:.3f}x the speed of fp32")


if __name__ == "__main__":
    main()
