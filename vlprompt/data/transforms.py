"""Image transforms from a backbone's own preprocessing config (open_clip ``PreprocessCfg``).

Test: resize the shorter side to ``image_size`` (bicubic by default) and centre-crop. Train with
``flip_crop``: random resized crop (scale 0.08-1) and horizontal flip, as CoOp/Dassl. Outputs are float
``[3, S, S]`` in ``[0, 1]``; mean/std normalisation belongs to the backbone. Works on PIL images and tensors.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from vlprompt.backbones.base import PreprocessConfig

_INTERP = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def _clamp01(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0)


def build_transform(preprocess: PreprocessConfig | None, *, train: bool, augment: str = "none") -> v2.Compose:
    """The transform for one split. ``preprocess=None`` keeps the input size (only converts to float)."""
    ops: list = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if preprocess is not None:
        size = preprocess.image_size
        interp = _INTERP.get(preprocess.interpolation, InterpolationMode.BICUBIC)
        if train and augment == "flip_crop":
            ops += [v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=interp, antialias=True), v2.RandomHorizontalFlip()]
        else:
            ops += [v2.Resize(size, interpolation=interp, antialias=True), v2.CenterCrop(size)]
    elif train and augment == "flip_crop":
        ops += [v2.RandomHorizontalFlip()]
    ops.append(v2.Lambda(_clamp01))
    return v2.Compose(ops)
