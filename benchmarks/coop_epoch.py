"""CoOp seconds per epoch, with and without the frozen image-feature cache, and the accuracy change.

Baseline (same run): one forward pass of the frozen image encoder over the same training images. Prints
seconds per epoch for CoOp on images and on cached features, the ratios to the baseline, and the speed-up
of the cache. Datasets: a toy dataset, and EuroSAT from ../shared/data when present.

    python benchmarks/coop_epoch.py [--dataset toy_mixtures] [--epochs 5] [--eurosat-root ../shared/data]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def _run(dataset_args: list[str], epochs: int, cache: bool, tmp: str) -> tuple[float, dict, int]:
    from vlprompt.runs.driver import run_experiment

    args = [
        "--config", str(REPO / "configs/protocols/base2new.yaml"), "--config", str(REPO / "configs/trainer/cpu.yaml"),
        "--config", str(REPO / "configs/backbones/toyclip.yaml"), *dataset_args,
        "--config", str(REPO / "configs/learners/coop/ctx4_init.yaml"),
        "--seeds", "[1]", "--trainer.max_epochs", str(epochs), "--results_dir", f"{tmp}/results",
        "--trainer.default_root_dir", f"{tmp}/runs", "--data.init_args.cache_dir", f"{tmp}/cache",
        "--data.init_args.feature_cache", str(cache).lower(),
    ]
    t0 = time.perf_counter()
    result = run_experiment("fit", args, show_summary=False)
    return time.perf_counter() - t0, result["per_seed"][0]["metrics"], len(result["task"]["label_spaces"]["base"])


def _baseline(n_images: int) -> float:
    from vlprompt.backbones.toyclip import ToyCLIP

    b = ToyCLIP()
    x = torch.rand(n_images, 3, b.preprocess.image_size, b.preprocess.image_size)
    with torch.no_grad():
        b.encode_image(x[:8])
        t0 = time.perf_counter()
        for chunk in x.split(32):
            b.encode_image(chunk)
    return time.perf_counter() - t0


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="toy_mixtures")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--eurosat-root", default=str(REPO.parent / "shared" / "data"))
    a = p.parse_args()
    cases = [(a.dataset, ["--config", str(REPO / f"configs/datasets/{a.dataset}.yaml")])]
    eurosat = REPO / "configs/datasets/eurosat.yaml"
    if Path(a.eurosat_root, "eurosat").is_dir() and eurosat.is_file():
        cases.append(("eurosat", ["--config", str(eurosat), "--data.init_args.dataset.init_args.root", a.eurosat_root]))
    for name, dargs in cases:
        with tempfile.TemporaryDirectory() as tmp:
            # epochs+1 vs 1 epoch isolates per-epoch time from set-up and testing
            t1_img, _, n_base = _run(dargs, 1, False, tmp)
            tn_img, m_img, _ = _run(dargs, a.epochs + 1, False, tmp)
            _run(dargs, 1, True, tmp)  # fills the cache
            t1_c, _, _ = _run(dargs, 1, True, tmp)
            tn_c, m_c, _ = _run(dargs, a.epochs + 1, True, tmp)
        per_img = (tn_img - t1_img) / a.epochs
        per_c = (tn_c - t1_c) / a.epochs
        n_train = 16 * n_base
        base = _baseline(n_train)
        print(f"{name}: baseline, frozen image-encoder forward over the epoch's {n_train} images: {base:.3f} s")  # noqa: T201
        print(f"{name}: CoOp s/epoch on images {per_img:.3f}  on cached features {per_c:.3f}  cache speed-up x{per_img / max(per_c, 1e-9):.1f}")  # noqa: T201
        print(f"{name}: ratio to baseline: images {per_img / base:.2f}  cached {per_c / base:.2f}")  # noqa: T201
        print(f"{name}: accuracy without cache {m_img}  with cache {m_c}")  # noqa: T201


if __name__ == "__main__":
    main()
