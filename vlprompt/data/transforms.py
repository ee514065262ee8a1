"""Image transforms from a backbone's own preprocessing config (open_clip ``PreprocessCfg``).

Test: resize the shorter side to ``image_size`` (bicubic by default) and centre-crop. Train with
``flip_crop``: random resized crop (scale 0.08-1) and horizontal flip, as CoOp/Dassl. Outputs are float
``[3, S, S]`` in ``[0, 1]``; mean/std normalisation belongs to the backbone.

Order of operations depends on the input, so that each input follows the pipeline its reference had:

- **PIL images** (real data files) are resized and cropped *as PIL images* and only then converted to
  float, exactly like open_clip's validation transform (``image_transform(..., is_train=False)``) and
  Dassl/CoOp's ``Resize -> CenterCrop -> ToTensor`` (and ``RandomResizedCrop -> RandomFlip -> ToTensor``
  for training). The uint8 rounding and clipping of PIL's resampling is part of the reference pipeline;
  resizing float tensors instead differs by up to ~1.7e-2 in normalised pixels (issue 6).
- **Tensors** (the toy world renders float tensors; there is no PIL image in its reference pipeline) are
  converted to float first and resized/cropped in float, as before, so toy results are unchanged.
"""

from __future__ import annotations

import torch
from PIL import Image
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


class ImageTransform:
    """Geometric ops then float conversion for PIL images; float conversion then the same ops for tensors.

    Args:
        geometric: resize/crop/flip ops (torchvision ``v2``), applied to PIL images or float tensors.
    """

    def __init__(self, geometric: list) -> None:
        to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        self.pil = v2.Compose([*geometric, *to_float, v2.Lambda(_clamp01)])
        self.tensor = v2.Compose([*to_float, *geometric, v2.Lambda(_clamp01)])

    def __call__(self, image):
        return self.pil(image) if isinstance(image, Image.Image) else self.tensor(image)

    def __repr__(self) -> str:  # part of the feature-cache key: it must describe the whole pipeline
        return f"{type(self).__name__}(pil={self.pil!r}, tensor={self.tensor!r})"


def build_transform(preprocess: PreprocessConfig | None, *, train: bool, augment: str = "none") -> ImageTransform:
    """The transform for one split. ``preprocess=None`` keeps the input size (only converts to float)."""
    ops: list = []
    if preprocess is not None:
        size = preprocess.image_size
        interp = _INTERP.get(preprocess.interpolation, InterpolationMode.BICUBIC)
        if train and augment == "flip_crop":
            ops += [v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=interp, antialias=True), v2.RandomHorizontalFlip()]
        else:
            ops += [v2.Resize(size, interpolation=interp, antialias=True), v2.CenterCrop(size)]
    elif train and augment == "flip_crop":
        ops += [v2.RandomHorizontalFlip()]
    return ImageTransform(ops)
