"""Test-time views of one image, as TPT builds them (Shu et al., NeurIPS 2022, Sec. 4; reference azshue/TPT at
63ecbac, ``data/datautils.py`` ``AugMixAugmenter`` and ``data/augmix_ops.py``, ``tpt_classification.py`` for the
test transform).

View 0 is the test-transformed original (resize the shorter side to ``S`` with bicubic interpolation, centre
crop ``S``). Each of the other ``n - 1`` views is a random resized crop of the *raw* image (torchvision
defaults: scale 0.08-1, ratio 3/4-4/3, bilinear) to ``S`` plus a horizontal flip with probability 0.5. With
``augmix`` (the reference uses it for the fine-grained datasets, not for ImageNet and its variants) the crop is
mixed with 3 chains of 1-3 random operations at severity 1 (AugMix, Hendrycks et al. ICLR 2020): chain
weights ~ Dirichlet(1, 1, 1), the mixing weight ~ Beta(1, 1), the 9 operations of the reference's
``augmentations`` list with its parameter ranges (``level ~ U(0.1, severity)``).

Resampling follows the references exactly: they open each test image (and DiffTPT each generated image,
``difftpt_utils.py`` ``diffuData`` / ``get_data_loader`` at chunmeifeng/DiffTPT 03f1169) as a PIL RGB image and
resize it with PIL (``Resize`` + ``CenterCrop`` for view 0, ``RandomResizedCrop`` + ``RandomHorizontalFlip`` for
the others, then ``ToTensor``). Here the image is rounded to ``uint8`` once (a no-op for images decoded from
8-bit files), resampled by PIL through torchvision's PIL path, and scaled back to float by ``/ 255`` as
``ToTensor`` does, so views equal the references' bit for bit (``tests/test_tta.py``). torchvision's own
``uint8``-tensor antialiased bicubic resize was measured 2 levels off PIL on real images and its float resize up
to 9 levels, so neither is used.

Deliberate differences: an image that is not on the 8-bit grid (a float image not decoded from a file) is
quantised to it before resampling (at most half a level); the AugMix operations run on ``uint8`` tensors with
torchvision / ``grid_sample`` instead of PIL, so AugMix chains differ slightly from PIL's; random numbers come
from torch (the crop and flip from torch's global generator, as torchvision's transforms draw them; AugMix from
the ``generator`` argument), not numpy's. Images are ``[3, H, W]``, ``uint8`` or float in ``[0, 1]``;
normalisation belongs to the backbone (mixing before normalising equals the reference's mixing after, since the
weights sum to one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vlprompt.backbones.base import PreprocessConfig

_INTERP = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g))


def _level(severity: float, g) -> float:
    return _uniform(0.1, severity, g)  # augmix_ops.sample_level


def _int_param(level: float, maxval: float) -> int:
    return int(level * maxval / 10)


def _float_param(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _sign(g) -> int:
    return -1 if float(torch.rand((), generator=g)) > 0.5 else 1


def _pil_affine(img: torch.Tensor, coeffs: tuple[float, float, float, float, float, float]) -> torch.Tensor:
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR)`` on a uint8 ``[3, H, W]``: output pixel
    ``(x, y)`` samples input ``(a x + b y + c, d x + e y + f)``; outside pixels are black."""
    a, b, c, d, e, f = coeffs
    _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
    sx = a * xs + b * ys + c
    sy = d * xs + e * ys + f
    grid = torch.stack([sx / w * 2 - 1, sy / h * 2 - 1], dim=-1)[None]
    out = F.grid_sample(img[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def _autocontrast(img, severity, g):
    return TF.autocontrast(img)


def _equalize(img, severity, g):
    return TF.equalize(img)


def _posterize(img, severity, g):
    return TF.posterize(img, 4 - _int_param(_level(severity, g), 4))


def _rotate(img, severity, g):
    degrees = _int_param(_level(severity, g), 30) * _sign(g)
    return TF.rotate(img, float(degrees), interpolation=InterpolationMode.BILINEAR)


def _solarize(img, severity, g):
    return TF.solarize(img, 256 - _int_param(_level(severity, g), 256))


def _shear_x(img, severity, g):
    level = _float_param(_level(severity, g), 0.3) * _sign(g)
    return _pil_affine(img, (1, level, 0, 0, 1, 0))


def _shear_y(img, severity, g):
    level = _float_param(_level(severity, g), 0.3) * _sign(g)
    return _pil_affine(img, (1, 0, 0, level, 1, 0))


def _translate_x(img, severity, g):
    level = _int_param(_level(severity, g), img.shape[-1] / 3) * _sign(g)
    return _pil_affine(img, (1, 0, level, 0, 1, 0))


def _translate_y(img, severity, g):
    level = _int_param(_level(severity, g), img.shape[-2] / 3) * _sign(g)
    return _pil_affine(img, (1, 0, 0, 0, 1, level))


#: the reference's ``augmix_ops.augmentations`` (the ImageNet-C-overlapping colour ops are excluded there too)
AUGMIX_OPS = (_autocontrast, _equalize, _posterize, _rotate, _solarize, _shear_x, _shear_y, _translate_x, _translate_y)


def augmix(crop: torch.Tensor, *, severity: float = 1.0, width: int = 3, generator: torch.Generator | None = None) -> torch.Tensor:
    """AugMix of a float crop ``[3, S, S]`` in ``[0, 1]``: ``m * crop + (1 - m) * sum_i w_i chain_i(crop)``."""
    g = generator
    u8 = (crop * 255).round().clamp(0, 255).to(torch.uint8)
    w = -torch.log(torch.rand(width, generator=g).clamp_min(1e-12))
    w = w / w.sum()  # Dirichlet(1, ..., 1)
    m = float(torch.rand((), generator=g))  # Beta(1, 1)
    mix = torch.zeros_like(crop)
    for i in range(width):
        x = u8.clone()
        for _ in range(int(torch.randint(1, 4, (), generator=g))):
            op = AUGMIX_OPS[int(torch.randint(len(AUGMIX_OPS), (), generator=g))]
            x = op(x, severity, g)
        mix += w[i] * (x.float() / 255.0)
    return m * crop + (1 - m) * mix


def to_pil(image: torch.Tensor) -> Image.Image:
    """A PIL RGB image of ``image`` ``[3, H, W]`` (``uint8``, or float in ``[0, 1]`` rounded to the nearest level)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image of shape {tuple(image.shape)}: test-time views need one RGB image [3, H, W] (convert grey images to RGB)")
    if image.dtype != torch.uint8:
        if not image.is_floating_point():
            raise ValueError(f"image of dtype {image.dtype}: pass uint8 or float in [0, 1]")
        image = (image.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(image.cpu().permute(1, 2, 0).contiguous().numpy())


def from_pil(image: Image.Image, device: torch.device | str = "cpu") -> torch.Tensor:
    """Float ``[3, H, W]`` in ``[0, 1]`` of a PIL RGB image, divided by 255 as torchvision's ``ToTensor`` does."""
    # pil_to_tensor returns a channels-last view; contiguous keeps AugMix and the encoder on their fast path
    return TF.pil_to_tensor(image).contiguous().to(device=device, dtype=torch.float32).div(255)


class TPTViews:
    """``n_views`` views ``[n, 3, S, S]`` of a raw image ``[3, H, W]`` (view 0 = original, test-transformed).

    Args:
        preprocess: the backbone's preprocessing config (``S`` and the test interpolation).
        n_views: total views including the original (TPT: 64).
        augmix: mix each crop with AugMix chains (reference: fine-grained datasets only).
        severity: AugMix severity (reference: 1).
    """

    def __init__(self, preprocess: PreprocessConfig, n_views: int = 64, *, augmix: bool = False, severity: float = 1.0) -> None:
        if n_views < 2:
            raise ValueError(f"views={n_views}: TPT needs the original and at least one augmented view (views >= 2)")
        size = preprocess.image_size
        self.n_views = n_views
        self.augmix = augmix
        self.severity = severity
        # applied to PIL images: torchvision dispatches to PIL's resize and crop, the references' own resampling
        self.test = v2.Compose([v2.Resize(size, interpolation=_INTERP.get(preprocess.interpolation, InterpolationMode.BICUBIC), antialias=True), v2.CenterCrop(size)])
        self.pre = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])

    def original(self, image: torch.Tensor) -> torch.Tensor:
        """The test-transformed original ``[3, S, S]`` (float in ``[0, 1]``, on ``image``'s device)."""
        return from_pil(self.test(to_pil(image)), image.device)

    def augmented(self, image: torch.Tensor, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` augmented views ``[n, 3, S, S]`` (crop + flip, then AugMix if enabled)."""
        pil = to_pil(image)
        out = []
        for _ in range(n):
            crop = from_pil(self.pre(pil), image.device)
            out.append(augmix(crop, severity=self.severity, generator=generator) if self.augmix else crop)
        return torch.stack(out) if out else torch.zeros((0, 3, *self.original(image).shape[-2:]), device=image.device)

    def __call__(self, image: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.cat([self.original(image)[None], self.augmented(image, self.n_views - 1, generator=generator)])
