"""CoOp on a random ViT-B/16 with the EuroSAT subset: per training image, per test image, cache break-even.

Setting of issue 13: base-to-new, 5 base classes, 16 shots (80 training images, 3 steps of batch 32),
CoOp with 4 context vectors initialised from "a photo of a", random ``ViT-B-16`` weights. Every figure is
a component measured in this run, interleaved ``before`` (``open_clip`` blocks called directly:
``vlprompt.backbones.open_clip._FAST_BLOCKS = False``) and ``after`` (the adapter's block forward),
median of ``--repeats``:

- ``text step``: CoOp text features of the 5 base classes, forward + backward (once per training step);
- ``image fwd``: image features of a batch of training images with autograd on (as in a training step);
- ``quickgelu image fwd``: the same without autograd on a QuickGELU ViT-B/16 (as OpenAI weights use);
- ``test image``: image features without autograd at the evaluation batch picked from memory.

Derived (printed with their formula): ms per training image = image fwd / B + text step / 32, seconds per
epoch uncached = 80 * image + 3 * text step, cached = 3 * text step, cache build and break-even epochs,
and ratios against the reference figures of issue 13 (KaiyangZhou/CoOp on Dassl, fp32, measured by the
issue author on a quiet 2-core machine: 167 ms per training image, 10.7 s per epoch, 158 ms per test
image, 2.5 GiB peak). Those reference figures come from another run, the before/after ratios from this one.

    python benchmarks/vitb16_speed.py --root /work/shared/data [--precision fp32] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import resource
import statistics
import time

import torch

REF_TRAIN_MS, REF_EPOCH_S, REF_TEST_MS, REF_PEAK_GIB = 167.0, 10.7, 158.0, 2.5


CPU_TIMES: dict[str, tuple[float, float]] = {}


def _median_pair(fn_before, fn_after, repeats: int, name: str = "") -> tuple[float, float, float]:
    """Interleaved medians (wall seconds) of two callables after one warm-up each, and the max/min spread.

    The medians of process CPU seconds (all threads) go to ``CPU_TIMES[name]``: on a CPU shared with
    other processes they vary much less than wall time."""
    fn_before(), fn_after()
    tb, ta, cb, ca = [], [], [], []
    for _ in range(repeats):
        for fn, acc, cpu in ((fn_before, tb, cb), (fn_after, ta, ca)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            acc.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    CPU_TIMES[name] = (statistics.median(cb), statistics.median(ca))
    spread = max(max(tb) / min(tb), max(ta) / min(ta))
    return statistics.median(tb), statistics.median(ta), spread


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.environ.get("VLPROMPT_DATA", "/work/shared/data"))
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-batch", type=int, default=8, help="images per timed training forward (scaled per image)")
    p.add_argument("--test-images", type=int, default=32, help="images per timed test forward")
    p.add_argument("--views", type=int, default=8, help="augmented views per training image in the feature cache")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)

    from vlprompt.backbones import open_clip as oc
    from vlprompt.data.batching import activation_bytes_per_image, eval_batch_size
    from vlprompt.data.coop import EuroSAT
    from vlprompt.data.transforms import build_transform
    from vlprompt.learners.coop import CoOp
    from vlprompt.protocols.base2new import sample_few_shot, split_base_new

    load = os.getloadavg()
    print(f"# ViT-B/16 (random) CoOp on EuroSAT  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"{platform.processor() or platform.machine()}  bf16 native: {oc._cpu_runs_natively('bf16')}")
    print(f"# OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}  load average at start {load[0]:.2f}")

    torch.manual_seed(0)
    b = oc.OpenCLIPBackbone("ViT-B-16", pretrained=None, precision=a.precision)
    print(f"# backbone precision used: {b.info.precision} (requested {a.precision})")
    source = EuroSAT(root=a.root)
    base, _ = split_base_new(len(source.classnames))
    train_idx = [i for i in sample_few_shot(source.labels("train"), 16, random.Random(1)) if source.labels("train")[i] in base]
    n_train = len(train_idx)
    steps = -(-n_train // 32)
    n_val = len([i for i in sample_few_shot(source.labels("val"), 4, random.Random(1), keep_all_if_short=True) if source.labels("val")[i] in base])
    n_test = len([y for y in source.labels("test") if y in base])
    train_ds = source.dataset("train", train_idx, build_transform(b.preprocess, train=True, augment="flip_crop"))
    t0 = time.perf_counter()
    train_imgs = torch.stack([train_ds[i][0] for i in range(max(a.train_batch, a.test_images))])
    decode_ms = 1000 * (time.perf_counter() - t0) / len(train_imgs)

    learner = CoOp(n_ctx=4, ctx_init="a photo of a")
    learner.setup(b, [source.classnames[i] for i in base])
    learner.train()

    def fast(flag: bool):
        def wrap(fn):
            def run():
                oc._FAST_BLOCKS = flag
                try:
                    return fn()
                finally:
                    oc._FAST_BLOCKS = True
            return run
        return wrap

    def text_step():
        learner.zero_grad()
        learner.text_features().square().sum().backward()

    def image_fwd():
        b.encode_image(train_imgs[: a.train_batch])  # autograd on, nothing requires grad (training step)

    qg = oc.OpenCLIPBackbone("ViT-B-16", pretrained=None, precision=a.precision, quick_gelu=True)

    def qg_fwd():
        with torch.no_grad():
            qg.encode_image(train_imgs[: a.train_batch])

    rows = []
    for name, fn in (("text step (5 classes, fwd+bwd)", text_step), (f"image fwd, autograd on (batch {a.train_batch})", image_fwd),
                     (f"quickgelu image fwd, no grad (batch {a.train_batch})", qg_fwd)):
        tb, ta, spread = _median_pair(fast(False)(fn), fast(True)(fn), a.repeats, name)
        rows.append((name, tb, ta, spread))
    print(f"\n## components, interleaved before/after, median of {a.repeats} (max/min spread of the wall repeats)")
    print(f"{'component':>48} {'before s':>9} {'after s':>9} {'speed-up':>9} {'spread':>7} {'CPU-s before':>12} {'after':>7} {'CPU speed-up':>12}")
    for name, tb, ta, spread in rows:
        cb, ca = CPU_TIMES[name]
        print(f"{name:>48} {tb:>9.3f} {ta:>9.3f} {tb / ta:>9.2f} {spread:>7.2f} {cb:>12.3f} {ca:>7.3f} {cb / ca:>12.2f}")

    auto = eval_batch_size(b)
    per_img_mb = activation_bytes_per_image(b) / 2**20
    test_n = min(a.test_images, auto)
    with torch.no_grad():
        b.encode_image(train_imgs[:2])
        t0, c0 = time.perf_counter(), time.process_time()
        b.encode_image(train_imgs[:test_n])
        test_ms = 1000 * (time.perf_counter() - t0) / test_n
        test_cpu_ms = 1000 * (time.process_time() - c0) / test_n
    print(f"\n## evaluation batch from memory: {auto} (activations ~{per_img_mb:.1f} MiB/image -> "
          f"~{auto * per_img_mb / 1024:.2f} GiB; batch 256 would be ~{256 * per_img_mb / 1024:.2f} GiB)")

    text_b, text_a = rows[0][1], rows[0][2]
    img_b, img_a = rows[1][1] / a.train_batch, rows[1][2] / a.train_batch
    print("\n## derived (decode excluded; decode+flip_crop of one 224 px image in the main process: "
          f"{decode_ms:.1f} ms, off the critical path with num_workers)")
    print(f"{'figure':>44} {'before':>9} {'after':>9} {'ratio':>7} {'reference':>10} {'after vs ref':>12}")
    tr_b, tr_a = 1000 * (img_b + text_b / 32), 1000 * (img_a + text_a / 32)
    print(f"{'ms per training image (img + text/32)':>44} {tr_b:>9.1f} {tr_a:>9.1f} {tr_b / tr_a:>7.2f} {REF_TRAIN_MS:>10.1f} {REF_TRAIN_MS / tr_a:>11.2f}x")
    ep_b, ep_a = n_train * img_b + steps * text_b, n_train * img_a + steps * text_a
    print(f"{f's per epoch uncached ({n_train} img, {steps} steps)':>44} {ep_b:>9.2f} {ep_a:>9.2f} {ep_b / ep_a:>7.2f} {REF_EPOCH_S:>10.1f} {REF_EPOCH_S / ep_a:>11.2f}x")
    c_b, c_a = steps * text_b, steps * text_a
    print(f"{'s per epoch on cached features':>44} {c_b:>9.2f} {c_a:>9.2f} {c_b / c_a:>7.2f} {REF_EPOCH_S:>10.1f} {REF_EPOCH_S / c_a:>11.2f}x")
    print(f"{f'ms per test image (batch {test_n}, no grad)':>44} {'':>9} {test_ms:>9.1f} {'':>7} {REF_TEST_MS:>10.1f} {REF_TEST_MS / test_ms:>11.2f}x")
    # CPU-seconds / threads: what the figures would be on these cores without other processes (an estimate)
    th = torch.get_num_threads()
    (ctb, cta), (cib, cia) = CPU_TIMES[rows[0][0]], CPU_TIMES[rows[1][0]]
    ctr_b, ctr_a = 1000 * (cib / a.train_batch + ctb / 32) / th, 1000 * (cia / a.train_batch + cta / 32) / th
    print(f"{'same from CPU time / threads: train ms/img':>44} {ctr_b:>9.1f} {ctr_a:>9.1f} {ctr_b / ctr_a:>7.2f} {REF_TRAIN_MS:>10.1f} {REF_TRAIN_MS / ctr_a:>11.2f}x")
    print(f"{'same: s per epoch on cached features':>44} {steps * ctb / th:>9.2f} {steps * cta / th:>9.2f} {ctb / cta:>7.2f} {REF_EPOCH_S:>10.1f} {REF_EPOCH_S / (steps * cta / th):>11.2f}x")
    print(f"{'same: test ms/img':>44} {'':>9} {test_cpu_ms / th:>9.1f} {'':>7} {REF_TEST_MS:>10.1f} {REF_TEST_MS / (test_cpu_ms / th):>11.2f}x")
    build_train = (a.views * n_train + n_val) * test_ms / 1000
    build_test = n_test * test_ms / 1000
    gain = ep_a - c_a
    print(f"\n## feature cache (after): train entry {a.views} views x {n_train} + {n_val} val images = {build_train:.1f} s, "
          f"test entry {n_test} images = {build_test:.1f} s (the same cost as one uncached test pass)")
    print(f"break-even: {build_train / gain:.1f} epochs with {a.views} views; {(n_train + n_val) * test_ms / 1000 / gain:.1f} "
          f"epochs with 1 view (augment none); the test entry pays off at its first reuse")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak resident memory of this process (two ViT-B/16 models loaded): {peak:.2f} GiB "
          f"(reference {REF_PEAK_GIB} GiB); load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
