"""The image transforms reproduce the reference preprocessing (open_clip validation transform, Dassl's
training augmentation) on real PIL images, and keep the float pipeline for rendered tensors."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torchvision.transforms as T
from open_clip.transform import image_transform
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from vlprompt.backbones.base import PreprocessConfig
from vlprompt.data.transforms import build_transform

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


def _eurosat_images(shared_data: Path, n: int = 8) -> list[Image.Image]:
    root = shared_data / "eurosat"
    split = json.loads((root / "split_zhou_EuroSAT.json").read_text())
    out = []
    for rel, _, _ in split["test"][:: max(1, len(split["test"]) // n)][:n]:
        with Image.open(root / "2750" / rel) as im:
            out.append(im.convert("RGB"))
    return out


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


@pytest.mark.parametrize("size", [224, 32])
def test_test_transform_matches_open_clip_validation_transform(shared_data, size):
    reference = image_transform(size, is_train=False, mean=MEAN, std=STD, interpolation="bicubic", resize_mode="shortest")
    ours = build_transform(PreprocessConfig(image_size=size, mean=MEAN, std=STD), train=False)
    for im in _eurosat_images(shared_data):
        x = ours(im)
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert float((_normalise(x) - reference(im)).abs().max()) < 1e-6


def test_train_augmentation_crops_the_pil_image_like_dassl(shared_data):
    size = 32
    reference = T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
    ])
    ours = build_transform(PreprocessConfig(image_size=size, mean=MEAN, std=STD), train=True, augment="flip_crop")
    for i, im in enumerate(_eurosat_images(shared_data, n=6)):
        torch.manual_seed(i)
        expected = reference(im)
        torch.manual_seed(i)
        assert float((ours(im) - expected).abs().max()) < 1e-6  # same crop and flip; /255 vs *1/255 rounding


def test_tensor_inputs_keep_the_float_pipeline():
    """Rendered float tensors (toy world) are resized in float, as before the PIL fix."""
    pre = PreprocessConfig(image_size=24, mean=MEAN, std=STD)
    x = torch.rand(3, 48, 40, generator=torch.Generator().manual_seed(0))
    expected = v2.CenterCrop(24)(v2.Resize(24, interpolation=InterpolationMode.BICUBIC, antialias=True)(x)).clamp(0, 1)
    assert torch.equal(build_transform(pre, train=False)(x), expected)
    same = PreprocessConfig(image_size=48, mean=MEAN, std=STD)
    y = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(1))
    assert torch.equal(build_transform(same, train=False)(y), y)  # toy images at the toy CLIP's size pass unchanged
    u8 = (y * 255).round().to(torch.uint8)
    assert torch.allclose(build_transform(None, train=False)(u8), u8.float() / 255)
    assert "pil=" in repr(build_transform(pre, train=False))  # the feature-cache key sees the whole pipeline
