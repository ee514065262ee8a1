"""Test doubles of the segmentation track: a fake VLSM over the tiny random CLIP and a tiny in-memory
segmentation source. They implement the interfaces of ``vlprompt/backbones/base.py`` (``record_activations``,
``decode_masks``) and ``vlprompt/data/segmentation.py`` only, so module/protocol tests do not depend on the
CLIPSeg adapter or the toy datasets."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vlprompt.backbones.base import ActivationRecord, PreprocessConfig
from vlprompt.backbones.open_clip import OpenCLIPBackbone
from vlprompt.data.segmentation import SegmentationSource
from vlprompt.learners.testing import TINY_MODEL, TINY_SEED, _register_tiny_config


class FakeVLSM(OpenCLIPBackbone):
    """The tiny CLIP plus a parameter-free 'decoder': mask logits = 8 * cos(patch token, text), upsampled."""

    tasks = ("classification", "segmentation")

    def __init__(self) -> None:
        _register_tiny_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            super().__init__(TINY_MODEL, pretrained=None, precision="fp32")

    @contextlib.contextmanager
    def record_activations(self):
        record = ActivationRecord()
        self._record = record
        try:
            yield record
        finally:
            self._record = None

    def encode_image(self, images, *, prompts=None, deep_prompts=None, dense=False):
        pooled, tokens = super().encode_image(images, prompts=prompts, deep_prompts=deep_prompts, dense=True)
        record = getattr(self, "_record", None)
        if record is not None and not record.activations:  # the first call is the learner's (as the CLIPSeg adapter)
            record.activations.append(tokens)
            record.image_size = tuple(images.shape[-2:])
        return (pooled, tokens) if dense else pooled

    def decode_masks(self, record, conditional, *, output_size=None):
        tokens = record.activations[-1]  # [B, HW, D]
        b, hw, _ = tokens.shape
        side = int(hw ** 0.5)
        cos = torch.einsum("bpd,bd->bp", F.normalize(tokens, dim=-1), F.normalize(conditional, dim=-1))
        grid = (8.0 * cos).view(b, 1, side, side)
        return F.interpolate(grid, size=output_size or record.image_size, mode="bilinear", align_corners=False)[:, 0]


def fake_vlsm() -> FakeVLSM:
    """The fake VLSM (the tiny CLIP's frozen weights, shared through the backbone's model cache)."""
    return FakeVLSM()


class _Items(Dataset):
    def __init__(self, n: int, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        names = ["red circle", "blue square"]
        for i in range(n):
            image = torch.rand(3, size, size, generator=g) * 0.2
            mask = torch.zeros(1, size, size)
            x, y = int(torch.randint(0, size // 2, (1,), generator=g)), int(torch.randint(0, size // 2, (1,), generator=g))
            mask[:, y:y + size // 2, x:x + size // 2] = 1
            image[i % 3] += 0.7 * mask[0]
            self.items.append({"image": image.clamp(0, 1), "mask": mask, "prompt": names[i % 2], "name": f"img{i}.png"})
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


class FakeSegSource(SegmentationSource):
    """Random squares on noise, prompts alternating between two phrases; 8/4/6 items per split."""

    name = "fake_seg"
    SIZES = {"train": 8, "val": 4, "test": 6}

    def size(self, split: str) -> int:
        return self.SIZES[split]

    def dataset(self, split, *, preprocess: PreprocessConfig, prompt_index=0, prompt=None, augment=False, seed=0):
        size = preprocess.image_size if preprocess is not None else 32
        ds = _Items(self.SIZES[split], size, {"train": 1, "val": 2, "test": 3}[split])
        if prompt is not None:
            for item in ds.items:
                item["prompt"] = prompt
        return ds

    def identity(self) -> dict:
        return {"kind": "fake", "name": self.name}
