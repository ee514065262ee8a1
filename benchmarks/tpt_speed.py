"""TPT seconds per test image (64 views, 1 step) and peak memory with a 1000-class label space.

Per backbone and precision: the baseline, measured in the same run, is zero-shot inference on the original
view only (text features cached); TPT is reported as seconds per image (view building + encoding the 64
views + selection + one AdamW step + prediction; median over ``--images`` images after one warm-up) and as
a ratio to that baseline. bf16 is compared with fp32 on identical views: overlap of the selected views and
the absolute loss difference. Peak memory runs one TPT image in a fresh process per setting and reports
the peak resident memory above the level reached after loading the model and building the views
(``ru_maxrss``), with and without chunked text encoding.

Backbones: the embedded toy CLIP (toy_mixtures' 24 classes) and a randomly initialised open_clip ViT-B-16
(``OpenCLIPBackbone(model="ViT-B-16", pretrained=None)``, ``--classes`` synthetic class names; speed does not
depend on the weights).

Run::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/tpt_speed.py --images 2
    OMP_WAIT_POLICY=PASSIVE python benchmarks/tpt_speed.py --skip-speed --memory-classes 1000 --chunk 50
    OMP_WAIT_POLICY=PASSIVE python benchmarks/tpt_speed.py --breakdown --classes 10 --images 2 --threads 1

No asserts: the script prints figures only.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from _timing import timeit  # noqa: E402 - benchmarks/ helper

_T0 = time.perf_counter()

ADJ = ["red", "small", "striped", "wooden", "spotted", "electric", "golden", "northern", "giant", "common"]
NOUN = ["fox", "teapot", "warbler", "sports car", "mountain bike", "jellyfish", "espresso machine", "beagle",
        "garden spider", "fire truck", "snorkel", "lighthouse", "grand piano", "hermit crab", "volcano",
        "triumphal arch", "space shuttle", "sea anemone", "rain barrel", "wall clock", "park bench",
        "pomegranate", "bell pepper", "acorn squash", "soup bowl", "trilobite", "axolotl", "tree frog",
        "lorikeet", "flamingo", "tarantula", "chainsaw", "hammerhead shark", "gondola", "ski mask", "yurt",
        "toucan", "lawn mower", "baseball player", "scuba diver", "pretzel", "broccoli", "cauliflower",
        "mushroom", "hot dog", "pizza", "burrito", "cheeseburger", "banana", "strawberry", "pineapple",
        "lemon", "orange", "fig", "coral reef", "cliff", "geyser", "lakeshore", "seashore", "valley",
        "alp", "sandbar", "promontory", "bubble", "pickup truck", "steam locomotive", "tractor", "canoe",
        "catamaran", "trimaran", "container ship", "airliner", "airship", "balloon", "parachute", "kite",
        "bald eagle", "vulture", "great grey owl", "goldfish", "great white shark", "tiger shark", "hen",
        "ostrich", "brambling", "goldfinch", "house finch", "junco", "indigo bunting", "robin", "bulbul",
        "jay", "magpie", "chickadee", "water ouzel", "kite bird", "mud turtle", "terrapin", "box turtle",
        "banded gecko"]


def classnames(n: int) -> list[str]:
    names = [f"{a} {b}" for b, a in itertools.product(NOUN, ADJ)]
    return names[:n] if n <= len(names) else names + [f"thing number {i}" for i in range(n - len(names))]


def make_backbone(kind: str, precision: str):
    if kind == "toyclip":
        from vlprompt.backbones import ToyCLIP

        return ToyCLIP(precision=precision)
    from vlprompt.backbones import OpenCLIPBackbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return OpenCLIPBackbone(model="ViT-B-16", pretrained=None, precision=precision)


def make_learner(backbone, names, *, views: int = 64, chunk: int | None = None):
    from vlprompt.learners.tpt import TPT

    learner = TPT(views=views, steps=1, text_chunk=chunk)
    learner.setup(backbone, names)
    learner.eval()
    return learner


def one_image(learner, image, snap, opt, state):
    learner.restore_tunable(snap)
    opt.load_state_dict(state)
    return learner.adapt(learner.build_views(image), opt)


def speed(kind: str, n_classes: int, images: int) -> None:
    from vlprompt.data.toyworld.datasets import ToyMixtures

    if kind == "toyclip":
        ds = ToyMixtures(style="clean", test_style="noise")
        names = ds.classnames
        pool = [ds.dataset("test", [i])[0][0] for i in range(images + 1)]
    else:
        names = classnames(n_classes)
        g = torch.Generator().manual_seed(0)
        pool = [torch.rand(3, 256, 320, generator=g) for _ in range(images + 1)]
    results = {}
    for precision in ("fp32", "bf16"):
        bb = make_backbone(kind, precision)
        learner = make_learner(bb, names)
        snap = learner.snapshot_tunable()
        opt = learner.make_optimizer(list(learner.tunable_parameters().values()))
        state = {k: v for k, v in opt.state_dict().items()}
        orig = learner._view_builder.original(pool[0])[None]
        with torch.no_grad():
            learner.cached_text_features()
            base = timeit(lambda: learner.logits(learner.encode_images(orig)), repeats=3)
        times = []
        for i, img in enumerate(pool):
            t0 = time.perf_counter()
            one_image(learner, img, snap, opt, state)
            if i:
                times.append(time.perf_counter() - t0)
        times.sort()
        sec = times[len(times) // 2]
        torch.manual_seed(0)
        views = learner.build_views(pool[0])
        learner.restore_tunable(snap)
        opt.load_state_dict(state)
        out = learner.adapt(views, opt)
        results[precision] = (views, out)
        print(f"{kind} {precision} C={len(names)}: zero-shot baseline {base:.4f} s/image  TPT {sec:.3f} s/image  "
              f"ratio x{sec / base:.1f}", flush=True)
    f32, b16 = results["fp32"][1], results["bf16"][1]
    overlap = len(set(f32.selected.tolist()) & set(b16.selected.tolist()))
    print(f"{kind} bf16 vs fp32 on identical views: selected overlap {overlap}/{f32.selected.numel()}  "
          f"|loss diff| {abs(float(f32.loss) - float(b16.loss)):.4f} (fp32 loss {float(f32.loss):.4f})", flush=True)


def peak(kind: str, n_classes: int, chunk: int | None, precision: str) -> None:
    bb = make_backbone(kind, precision)
    learner = make_learner(bb, classnames(n_classes), chunk=chunk)
    opt = learner.make_optimizer(list(learner.tunable_parameters().values()))
    views = learner.build_views(torch.rand(3, 256, 320))
    with torch.no_grad():
        feats = learner.encode_images(views)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    from vlprompt.learners.prompts.layers import chunked_text_encoding
    from vlprompt.learners.prompts.tta import tpt_step

    with chunked_text_encoding(chunk):
        tpt_step(learner.learner, views, opt, selection=0.1, steps=1, features=feats)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{kind} {precision} C={n_classes} text_chunk={chunk}: peak RSS {after:.0f} MiB, {after - before:.0f} MiB above "
          f"model+views ({before:.0f} MiB); text step {time.perf_counter() - t0:.1f} s", flush=True)


def breakdown(kind: str, n_classes: int, images: int, precision: str = "fp32") -> None:
    """Seconds per part of one TPT image (median over ``images`` images after one warm-up): building the 64
    views, the image forward of all views (no grad), the text step (logits with grad, selection, marginal
    entropy, backward, AdamW step) and the prediction (text forward after the step, logits of view 0); then
    the whole image through ``learner.adapt`` for comparison, and the zero-shot baseline."""
    import statistics

    from vlprompt.learners.prompts.tta import confident_indices, marginal_entropy

    names = classnames(n_classes)
    bb = make_backbone(kind, precision)
    learner = make_learner(bb, names)
    inner = learner.learner
    snap = learner.snapshot_tunable()
    opt = learner.make_optimizer(list(learner.tunable_parameters().values()))
    state = opt.state_dict()
    g = torch.Generator().manual_seed(0)
    pool = [torch.rand(3, 256, 320, generator=g) for _ in range(images + 1)]
    parts: dict[str, list[float]] = {"views": [], "image forward": [], "text step": [], "prediction": [], "whole (adapt)": []}
    for i, img in enumerate(pool):
        learner.restore_tunable(snap)
        opt.load_state_dict(state)
        t = [time.perf_counter()]
        views = learner.build_views(img)
        t.append(time.perf_counter())
        with torch.no_grad():
            feats = inner.encode_images(views)
        t.append(time.perf_counter())
        with torch.enable_grad():
            logits = inner.logits(feats)
            sel = confident_indices(logits.detach(), learner.selection)
            loss = marginal_entropy(logits[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        inner.invalidate_text_cache()
        t.append(time.perf_counter())
        with torch.no_grad():
            inner.logits(feats[:1])
        inner.invalidate_text_cache()
        t.append(time.perf_counter())
        learner.restore_tunable(snap)
        opt.load_state_dict(state)
        t0 = time.perf_counter()
        learner.adapt(views, opt)
        whole = time.perf_counter() - t0
        if i:
            for k, a, b in zip(parts, t[:-1], t[1:]):
                parts[k].append(b - a)
            parts["whole (adapt)"].append(whole)
    orig = learner._view_builder.original(pool[0])[None]
    learner.restore_tunable(snap)
    with torch.no_grad():
        learner.cached_text_features()
        base = timeit(lambda: learner.logits(learner.encode_images(orig)), repeats=3)
    med = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(v for k, v in med.items() if k != "whole (adapt)")
    print(f"{kind} {precision} C={n_classes} views={learner.views} steps=1, median of {images} image(s):", flush=True)
    for k, v in med.items():
        share = f"  ({100 * v / total:.0f}% of the parts)" if k != "whole (adapt)" else f"  (parts sum {total:.2f} s)"
        print(f"  {k:<16} {v:8.3f} s{share}", flush=True)
    print(f"  zero-shot baseline (original view, cached text) {base:.3f} s; TPT/zero-shot x{med['whole (adapt)'] / base:.1f}", flush=True)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        inner.encode_images(orig)
    gflop = counter.get_total_flops() / 1e9
    rate = gflop * learner.views / med["image forward"]
    print(f"  image encoder {gflop:.1f} GFLOP per view (torch FlopCounterMode); the {learner.views}-view forward ran at "
          f"{rate:.1f} GFLOP/s; {learner.views} views in 5 s need {gflop * learner.views / 5:.0f} GFLOP/s for that forward alone",
          flush=True)
    print(f"  cpu capability {torch.backends.cpu.get_cpu_capability()}; process CPU time / wall so far "
          f"{(time.process_time()) / (time.perf_counter() - _T0):.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="timed images per setting (median, after 1 warm-up)")
    parser.add_argument("--classes", type=int, default=200, help="classes for ViT-B-16 speed (ImageNet-A/-R: 200)")
    parser.add_argument("--memory-classes", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=50, help="text_chunk for the chunked memory run")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--breakdown", action="store_true",
                        help="only time the parts of one TPT image (views, image forward, text step, prediction) on "
                             "random ViT-B-16 fp32 with --classes classes, median over --images images")
    parser.add_argument("--_peak", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._peak:
        kind, c, chunk, prec = args._peak
        peak(kind, int(c), None if chunk == "none" else int(chunk), prec)
        return
    print(f"# TPT speed  torch {torch.__version__}  threads {torch.get_num_threads()}  cpus {os.cpu_count()}  "
          f"{platform.processor() or platform.machine()}  load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.breakdown:
        breakdown("vitb16", args.classes, args.images)
        return
    if not args.skip_speed:
        speed("toyclip", 24, args.images)
        speed("vitb16", args.classes, args.images)
    if not args.skip_memory:
        extra = ["--threads", str(args.threads)] if args.threads else []
        for c, chunk in ((args.classes, "none"), (args.classes, str(args.chunk)), (args.memory_classes, str(args.chunk))):
            subprocess.run([sys.executable, __file__, "--_peak", "vitb16", str(c), chunk, "fp32", *extra], check=False)


if __name__ == "__main__":
    main()
