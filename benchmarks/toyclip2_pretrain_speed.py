"""Pretraining speed of the toy CLIPs on this CPU: data stream batches/s and training steps/s.

Measures, at one batch size, (1) how fast each caption stream makes batches (render + captions + tokenizer):
the first world's ``CaptionStream`` (baseline) and the second world's ``SpeciesCaptionStream``; (2) how fast
one contrastive training step runs (encode both towers, open_clip ``ClipLoss``, backward, AdamW) on a fixed
batch, in fp32 and in bf16 autocast. The two toy CLIPs share one architecture, so (2) holds for both.

In ``vlprompt pretrain`` with ``num_workers >= 1`` the stream runs in a worker process beside the training
loop, so on 2 cores the run's pace is about the slower of (1) and (2); with ``num_workers 0`` they add up.

Run (one thread, as the pretraining's training loop)::

    OMP_NUM_THREADS=1 python benchmarks/toyclip2_pretrain_speed.py --batch-size 256 --steps 10
    OMP_NUM_THREADS=1 python benchmarks/toyclip2_pretrain_speed.py --batch-size 128 --steps 10 --no-bf16

No asserts: the script prints figures only.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

import open_clip
import torch

from vlprompt.backbones.toyclip import TOY2_MODEL, TOY_MODEL
from vlprompt.toyworld.pretrain import CaptionStream
from vlprompt.toyworld.pretrain_clip2 import SpeciesCaptionStream


def stream_rate(stream, batches: int) -> float:
    """Batches per second of an endless stream (after one warm-up batch)."""
    it = iter(stream)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def step_rate(images: torch.Tensor, tokens: torch.Tensor, steps: int, bf16: bool) -> float:
    """Training steps per second of the toy CLIP on one fixed batch (after one warm-up step)."""
    torch.manual_seed(0)
    clip = open_clip.create_model(TOY2_MODEL, pretrained=None)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(clip.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    x = (images - mean) / std

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            img = clip.encode_image(x, normalize=True)
            txt = clip.encode_text(tokens, normalize=True)
            loss = loss_fn(img.float(), txt.float(), clip.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--batches", type=int, default=5, help="timed stream batches")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast step")
    args = parser.parse_args()
    b = args.batch_size
    print(f"# toy CLIP pretraining speed  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"cpus {os.cpu_count()}  {platform.processor() or platform.machine()}  batch {b}  "
          f"load average {os.getloadavg()[0]:.2f}")
    v1 = CaptionStream(TOY_MODEL, b, seed=0, hard_negative_fraction=0.5)
    v2 = SpeciesCaptionStream(TOY2_MODEL, b, seed=0, hard_negative_fraction=0.5, sibling_share=0.4,
                              species_fraction=0.6, distractor_rate=0.3)
    print(f"{'what':<44} {'per s':>8} {'samples/s':>10}")
    for name, stream in (("stream, first world (baseline)", v1), ("stream, second world", v2)):
        r = stream_rate(stream, args.batches)
        print(f"{name:<44} {r:>8.3f} {r * b:>10.1f}")
    images, texts = v2.batch(torch.Generator().manual_seed(0), random.Random(0))
    tokens = open_clip.get_tokenizer(TOY2_MODEL)(texts)
    for bf16 in (False,) if args.no_bf16 else (False, True):
        r = step_rate(images, tokens, args.steps, bf16)
        print(f"{'train step, ' + ('bf16 autocast' if bf16 else 'fp32'):<44} {r:>8.3f} {r * b:>10.1f}")


if __name__ == "__main__":
    main()
