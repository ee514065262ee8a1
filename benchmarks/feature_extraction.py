"""Frozen feature extraction with the embedded ToyCLIP: image features/s at fp32 vs bf16, text per class.

Baseline, measured in the same run: fp32. bf16 is reported as images/s and as ``bf16 / fp32`` speed ratio,
together with the agreement of its features with fp32 (largest ``1 - cosine similarity`` over the batch). Text encoding is
reported as milliseconds per class name (``a photo of a {}.``, all classes of every toy dataset in one
batch), again fp32 vs bf16. Torch threads are left at torch's default unless ``--threads`` is given.

Run (well under a minute on 2 cores)::

    python benchmarks/feature_extraction.py
    OMP_WAIT_POLICY=passive python benchmarks/feature_extraction.py   # idle OpenMP threads sleep
    python benchmarks/feature_extraction.py --batch-size 256 --batches 5 --threads 1

No asserts: the script prints figures only.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
import torch.nn.functional as F

from _timing import timeit  # noqa: E402 - benchmarks/ helper
from vlprompt.backbones import ToyCLIP
from vlprompt.data.toyworld.datasets import TOY_DATASETS
from vlprompt.data.toyworld.render import render, sample_scene




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per precision (median)")
    parser.add_argument("--text-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"# ToyCLIP feature extraction  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"cpus {os.cpu_count()}  {platform.processor() or platform.machine()}")
    print(f"# OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}  "
          f"load average {os.getloadavg()[0]:.2f} (other processes share these cores when > 0)")
    g = torch.Generator().manual_seed(0)
    images, _ = render(sample_scene(args.batch_size, generator=g), generator=g, style="clean")
    classnames = [c for cls in TOY_DATASETS.values() for c in cls(per_class=(1, 1, 1)).classnames]
    texts = [f"a photo of a {c}." for c in classnames]

    models = {p: ToyCLIP(precision=p) for p in ("fp32", "bf16")}
    rows = {}
    with torch.inference_mode():
        feats = {p: m.encode_image(images) for p, m in models.items()}
        tokens = models["fp32"].tokenize(texts)
        tfeats = {p: m.encode_text(tokens) for p, m in models.items()}
        for p, m in models.items():
            img_s = timeit(lambda: m.encode_image(images), args.batches)
            txt_s = timeit(lambda: m.encode_text(m.tokenize(texts)), args.text_repeats)
            rows[p] = (args.batch_size / img_s, 1000 * txt_s / len(texts))
    img_cos = float(F.cosine_similarity(feats["fp32"], feats["bf16"], dim=-1).min())
    txt_cos = float(F.cosine_similarity(tfeats["fp32"], tfeats["bf16"], dim=-1).min())

    print(f"\n## image features: batch {args.batch_size} of 48px toy images, {args.batches} timed batches (median)")
    print(f"{'precision':>9} {'images/s':>9} {'ratio vs fp32':>14} {'max 1-cos vs fp32':>18}")
    for p, (ips, _) in rows.items():
        gap = 0.0 if p == "fp32" else 1.0 - img_cos
        print(f"{p:>9} {ips:>9.0f} {ips / rows['fp32'][0]:>14.2f} {gap:>18.1e}")

    print(f"\n## text features: {len(texts)} class prompts ('a photo of a {{}}.') in one batch, incl. tokenizing")
    print(f"{'precision':>9} {'ms/class':>9} {'ratio vs fp32':>14} {'max 1-cos vs fp32':>18}")
    for p, (_, ms) in rows.items():
        gap = 0.0 if p == "fp32" else 1.0 - txt_cos
        # speed ratio: fp32 time / this time (> 1 is faster)
        print(f"{p:>9} {ms:>9.3f} {rows['fp32'][1] / ms:>14.2f} {gap:>18.1e}")


if __name__ == "__main__":
    main()
