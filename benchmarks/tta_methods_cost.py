"""Seconds per test image of TPT, C-TPT, ZERO and TDA, and each as a ratio to TPT measured in the same run.

Every method goes through the test-time module's own per-image path (``TestTimeClassifier.predict_image``:
restore the tuned tensors and the optimiser, build the views, adapt, predict) on the same raw images, with
its reference settings (64 views; TPT / C-TPT: 1 AdamW step on CoOp "a photo of a", C-TPT with AugMix as its
reference; ZERO: no backward pass; TDA: one view as on ImageNet, and 64 AugMix views as on ImageNet-A/V2/R/
Sketch). Zero-shot on the original view is the floor. Median over ``--images`` images after one warm-up
image; view building is included (it is part of each method's cost) and also shown alone.

Backbones: the embedded toy CLIP (toy_mixtures' 24 classes) or a randomly initialised open_clip ViT-B-16
(``--backbone vitb16``, ``--classes`` synthetic class names; speed does not depend on the weights).

Run::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/tta_methods_cost.py --images 4
    OMP_WAIT_POLICY=PASSIVE python benchmarks/tta_methods_cost.py --backbone vitb16 --classes 1000 --images 3 --device cuda

No asserts: the script prints figures only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlprompt.backbones import OpenCLIPBackbone, ToyCLIP
from vlprompt.data.toyworld.datasets import ToyMixtures
from vlprompt.learners.coop import CoOp
from vlprompt.learners.ctpt import CTPT
from vlprompt.learners.tda import TDA
from vlprompt.learners.tpt import TPT
from vlprompt.learners.zero import ZERO
from vlprompt.learners.zero_shot import ZeroShot
from vlprompt.modules.test_time import TestTimeClassifier


def entrants(text_chunk: int | None) -> dict[str, object]:
    coop = lambda: CoOp(n_ctx=None, ctx_init="a photo of a")  # noqa: E731
    return {
        "zero-shot (original view)": ZeroShot(),
        "TPT (64 views, 1 step)": TPT(coop(), text_chunk=text_chunk),
        "C-TPT (64 AugMix views, 1 step)": CTPT(coop(), augmix=True, text_chunk=text_chunk),
        "ZERO (64 views, no backward)": ZERO(),
        "TDA (1 view)": TDA(views=1),
        "TDA (64 AugMix views)": TDA(views=64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=["toyclip", "vitb16"], default="toyclip")
    parser.add_argument("--classes", type=int, default=1000, help="synthetic class names for vitb16")
    parser.add_argument("--images", type=int, default=4, help="timed images per method (after one warm-up image)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--text-chunk", type=int, default=None, help="TPT / C-TPT text_chunk (e.g. 100 for 1000 classes)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.backbone == "toyclip":
        backbone = ToyCLIP()
        ds = ToyMixtures(style="clean")
        names = list(ds.classnames)
        size = 48
    else:
        backbone = OpenCLIPBackbone(model="ViT-B-16", pretrained=None)
        names = [f"class number {i}" for i in range(args.classes)]
        size = 320
    backbone = backbone.to(args.device)
    images = torch.rand(args.images + 1, 3, size, size, generator=torch.Generator().manual_seed(1))
    rows = {}
    for name, learner in entrants(args.text_chunk).items():
        module = TestTimeClassifier(backbone, learner, task={"label_spaces": {"s": names}, "train_space": "s",
                                                             "test_sets": [("t", "s")]}).to(args.device)
        module.on_test_epoch_start()
        if module.adapts:
            learner.start_test_set("t")
        times = []
        for i, image in enumerate(images):
            t0 = time.perf_counter()
            module.predict_image(image.to(args.device))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        view_times = []
        for image in images[1:] if module.adapts else []:
            t0 = time.perf_counter()
            learner.build_views(image.to(args.device))
            view_times.append(time.perf_counter() - t0)
        rows[name] = (statistics.median(times), statistics.median(view_times) if view_times else 0.0)
    tpt = rows["TPT (64 views, 1 step)"][0]
    print(f"backbone {args.backbone}, {len(names)} classes, device {args.device}, {args.images} timed images, "  # noqa: T201
          f"torch threads {torch.get_num_threads()}")
    print(f"{'method':34s} {'s/image':>9s} {'x TPT':>7s} {'of which views':>15s}")  # noqa: T201
    for name, (seconds, views) in rows.items():
        print(f"{name:34s} {seconds:9.4f} {seconds / tpt:7.3f} {views:15.4f}")  # noqa: T201


if __name__ == "__main__":
    main()
