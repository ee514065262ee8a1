"""Images/s of decode + transform for the real datasets in ../shared/data (EuroSAT, Caltech-101 subsets).

Baseline (same run): reading the same files' bytes without decoding. Prints images/s for the default
data-loader worker count (0, as in configs/protocols/*.yaml) and for 2 workers, at the toy CLIP's 48 px
and at CLIP ViT-B/16's 224 px, test transform (resize + centre crop) and train transform (flip_crop).

    python benchmarks/decode_speed.py [--root ../shared/data] [--images 600]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from torch.utils.data import DataLoader

from vlprompt.backbones.base import PreprocessConfig
from vlprompt.data.coop import Caltech101, EuroSAT
from vlprompt.data.transforms import build_transform

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--images", type=int, default=600)
    a = p.parse_args()
    for cls in (EuroSAT, Caltech101):
        source = cls(root=a.root)
        n = min(a.images, len(source.labels("train")))
        idx = list(range(n))
        paths = [source.paths("train")[i] for i in idx] if hasattr(source, "paths") else []
        t0 = time.perf_counter()
        for path in paths:
            Path(path).read_bytes()
        base = n / (time.perf_counter() - t0)
        print(f"{source.name}: baseline raw file reads {base:,.0f} files/s ({n} files)")  # noqa: T201
        for size in (48, 224):
            cfg = PreprocessConfig(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
            for train, augment in ((False, "none"), (True, "flip_crop")):
                for workers in (0, 2):
                    ds = source.dataset("train", idx, build_transform(cfg, train=train, augment=augment))
                    t0 = time.perf_counter()
                    for _ in DataLoader(ds, batch_size=64, num_workers=workers):
                        pass
                    rate = n / (time.perf_counter() - t0)
                    print(f"{source.name}: {size}px {augment:9s} workers={workers}: {rate:,.0f} images/s "  # noqa: T201
                          f"(x{rate / base:.3f} of raw reads)")


if __name__ == "__main__":
    main()
