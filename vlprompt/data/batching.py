"""Evaluation batch size from memory, not a constant.

Rule (documented in ``benchmarks/README.md``): ``batch = clamp(budget // per_image, 1, 256)`` where
``per_image`` is :func:`activation_bytes_per_image` of the backbone's image tower and ``budget`` is
``min(1 GiB, 1/4 of the available memory)`` (CPU: ``MemAvailable``; CUDA: free device memory). On CPU,
batches beyond ~100 ViT-B/16 images buy no speed (measured 14% slower at 256 than at 100 in fp32) and cost
~10 MB of activations per image, so the cap keeps the peak near "weights + 1 GiB". Per image features of a
frozen encoder do not depend on the batch they are computed in, beyond float rounding of the kernels.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

MAX_EVAL_BATCH = 256
ACTIVATION_BUDGET = 1 << 30


def activation_bytes_per_image(backbone) -> int:
    """Estimated peak activation bytes of one image in an inference forward of the image tower.

    ViT with ``T`` tokens, width ``W``, ``H = W/64`` heads: ``14*T*W + H*T^2`` elements live at once in a
    block (residual, two LayerNorm outputs, qkv, attention output, MLP hidden and activation, attention
    scores). ViT-B/16 at 224 px: 2.6M elements, 10.3 MB in fp32, which matches the 1.6 GiB measured between
    batch 256 and 100 (10.7 MB/image). Other towers: ``256 * image_size^2`` elements (a ResNet stem's width).
    """
    dtype = getattr(backbone, "dtype", torch.float32)
    itemsize = torch.finfo(dtype).bits // 8
    width = int(getattr(backbone, "vision_width", 0) or 0)
    grid = tuple(getattr(backbone, "grid_size", (0, 0)) or (0, 0))
    if width and grid[0]:
        tokens = grid[0] * grid[1] + 1
        heads = max(1, width // 64)
        elems = 14 * tokens * width + heads * tokens * tokens
    else:
        size = int(backbone.preprocess.image_size)
        elems = 256 * size * size
    return int(elems * itemsize)


def available_memory(device: torch.device | None = None) -> int | None:
    """Free bytes on ``device`` (CUDA: ``mem_get_info``; CPU: ``MemAvailable`` of ``/proc/meminfo``), or None."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def eval_batch_size(backbone, *, budget: int | None = None, max_batch: int = MAX_EVAL_BATCH) -> int:
    """Images per evaluation batch for ``backbone``: ``clamp(budget // per_image, 1, max_batch)``."""
    if budget is None:
        tensor = next(iter(backbone.buffers()), None)
        device = tensor.device if tensor is not None else None
        free = available_memory(device)
        budget = ACTIVATION_BUDGET if free is None else min(ACTIVATION_BUDGET, free // 4)
    return int(max(1, min(max_batch, budget // max(1, activation_bytes_per_image(backbone)))))
