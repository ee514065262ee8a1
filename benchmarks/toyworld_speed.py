"""Toy-world generation speed: rendering images/s per batch size and style, and toy dataset build time.

Baseline, measured in the same run: allocating and copying an image tensor of the same size
(``torch.empty(B, 3, S, S).copy_(src)``), the least any renderer must do per image. Rendering is reported
as images/s and as its slowdown against that baseline (``baseline / render``). Dataset build times are
reported per toy dataset for the given ``per_class`` and against the time of rendering the same number of
images in one batch (``build / one-batch``), which shows the cost of rendering class by class.

Run (seconds on 2 idle cores; about a minute when other processes share the cores, see README)::

    python benchmarks/toyworld_speed.py
    python benchmarks/toyworld_speed.py --per-class 32,8,40          # the datasets' default size
    OMP_WAIT_POLICY=passive python benchmarks/toyworld_speed.py     # idle OpenMP threads sleep
    python benchmarks/toyworld_speed.py --threads 1 --sizes 64 256 --styles clean blur

No asserts: the script prints figures only.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from _timing import timeit  # noqa: E402 - benchmarks/ helper
from vlprompt.data.toyworld.datasets import TOY_DATASETS
from vlprompt.data.toyworld.render import IMAGE_SIZE, STYLES, render, sample_scene




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="render batch sizes")
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--per-class", default="8,2,8",
                        help="train,val,test images per class of each dataset (the datasets' default is 32,8,40)")
    parser.add_argument("--datasets", nargs="*", default=list(TOY_DATASETS), choices=list(TOY_DATASETS))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    per_class = tuple(int(v) for v in args.per_class.split(","))

    print(f"# toy-world generation speed  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"cpus {os.cpu_count()}  {platform.processor() or platform.machine()}  image {IMAGE_SIZE}px")
    print(f"# OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}  load average {os.getloadavg()[0]:.2f}  "
          f"repeats {args.repeats} (median)")

    print("\n## rendering (sample_scene + render, 1 object)")
    print(f"{'batch':>6} {'style':>13} {'render img/s':>13} {'baseline img/s':>15} {'slowdown x':>11}")
    for b in args.sizes:
        src = torch.rand(b, 3, IMAGE_SIZE, IMAGE_SIZE)
        base_s = timeit(lambda: torch.empty(b, 3, IMAGE_SIZE, IMAGE_SIZE).copy_(src), max(args.repeats, 5))
        for style in args.styles:
            g = torch.Generator().manual_seed(0)

            def step() -> None:
                render(sample_scene(b, generator=g), generator=g, style=style)

            s = timeit(step, args.repeats)
            print(f"{b:>6} {style:>13} {b / s:>13.0f} {b / base_s:>15.0f} {s / base_s:>11.0f}")

    print(f"\n## dataset build (all three splits, per_class={per_class})")
    print(f"{'dataset':>14} {'classes':>7} {'images':>7} {'build s':>8} {'img/s':>7} {'one-batch s':>11} {'build/one-batch':>15}")
    for name in args.datasets:
        cls = TOY_DATASETS[name]
        t0 = time.perf_counter()
        ds = cls(per_class=per_class)
        for split in ("train", "val", "test"):
            ds.labels(split)
        build = time.perf_counter() - t0
        n = len(ds.classnames) * sum(per_class)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        render(sample_scene(n, generator=g), generator=g, style=cls.native_style)
        one = time.perf_counter() - t0
        print(f"{name:>14} {len(ds.classnames):>7} {n:>7} {build:>8.2f} {n / build:>7.0f} {one:>11.2f} {build / one:>15.2f}")


if __name__ == "__main__":
    main()
