"""The segmentation protocol (TuneVLSeg, Adhikari et al. ACCV 2024): train on a dataset's train split of
(image, prompt, binary mask) triples, select on its val split, report Dice and IoU on its test split.

The protocol names its host Lightning module (:attr:`SegmentationProtocol.host_module`), so ``vlprompt fit``
builds :class:`~vlprompt.modules.segmentation.PromptSegmenter` for it and the classification module for
classification protocols, through the same run / result / seed machinery.

Reference facts (naamiinepal/tunevlseg ``configs/experiment/*/clipseg.yaml``): batch size 64 (their scripts
use 32), ``drop_last: false``, prompts chosen by ``prompt_index`` (``-1``: a random key other than ``p0``
per item and epoch). Optional seeded subsets (``shots`` training images, ``val_size`` / ``test_size``
evaluation images) keep small runs small; evaluation subsets are drawn with a fixed seed so that every seed
and learner is scored on the same images. ``label_fraction`` (issue 29's label-fraction protocol, as the 2026
medical benchmarks report 10/25/50/100% of the labels) trains on that fraction of the train split, rounded up,
drawn as a prefix of one seeded permutation so that the draws are nested: with the same seed the 10% images
are among the 25%, which are among the 50%.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from vlprompt.data.base import DataError
from vlprompt.data.seg_dataset import INTERPOLATIONS, SegmentationDataset
from vlprompt.data.segmentation import SegmentationSource

log = logging.getLogger(__name__)

#: seed of the fixed validation / test subsets (independent of the run seed)
EVAL_SUBSET_SEED = 0


class _Subset(Dataset):
    """Items ``indices`` of a dataset; forwards ``set_epoch`` (per-epoch random prompts) to it."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def set_epoch(self, epoch: int) -> None:
        fn = getattr(self.dataset, "set_epoch", None)
        if callable(fn):
            fn(epoch)


def subset_indices(n: int, size: int | None, seed: int | None) -> list[int] | None:
    """Sorted indices of a seeded random subset of ``size`` of ``range(n)``; ``None`` when all are kept."""
    if size is None or size >= n:
        return None
    return sorted(random.Random(seed).sample(range(n), size))


def nested_subset_indices(n: int, fraction: float, seed: int | None) -> list[int] | None:
    """Sorted indices of ``ceil(fraction * n)`` of ``range(n)``: the first ones of a permutation seeded by ``seed``,
    so a smaller fraction's draw is inside a larger one's with the same seed; ``None`` when all are kept."""
    if not 0 < fraction <= 1:
        raise DataError(f"label_fraction={fraction} must be in (0, 1] (e.g. 0.1 for 10% of the training images)")
    size = max(1, math.ceil(fraction * n - 1e-9))
    if size >= n:
        return None
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[:size])


class SegmentationProtocol(pl.LightningDataModule):
    """Train / val / test splits of a :class:`SegmentationSource`, at the backbone's input size.

    Args:
        dataset: a registered segmentation source (``class_path: kvasir_seg`` / a toy segmentation benchmark).
        prompt_index: prompt key ``p{k}`` of every record; ``-1`` draws a random key other than ``p0`` per item
            and epoch (TuneVLSeg); ``None`` uses the source's ``default_prompt_index`` (TuneVLSeg's runs: 1).
        prompt: one fixed prompt for every item (overrides ``prompt_index``).
        shots: training images, drawn with the run seed (``None``: the whole train split).
        label_fraction: train on this fraction of the train split instead (``0.1``, ``0.25``, ``0.5``, ``1.0``),
            nested draws with the run seed (see the module docstring); ``shots`` then records the number of
            training images it gave. Exclusive with ``shots``.
        val_size / test_size: evaluation images, a fixed subset (``None``: the whole split).
        seed: set per run by ``vlprompt fit``.
        batch_size / eval_batch_size / num_workers: loader settings (``eval_batch_size`` defaults to ``batch_size``).
        augment: training augmentation of the source (``False``: none).
        drop_last: drop the last incomplete training batch (TuneVLSeg: false).
        soft_targets: train on the soft target ``mask / 255`` as TuneVLSeg (its dataset divides the grey mask by 255
            and its loss takes that; ``false``: the mask thresholded at 128, which the metrics always use). Sources
            must yield :class:`~vlprompt.data.seg_dataset.SegmentationDataset` items.
        image_interpolation: resize images with this interpolation (``bilinear``, ``bicubic``, ...) instead of the
            backbone's processor (CLIPSeg: PIL bilinear, the default); TuneVLSeg resizes with OpenCV ``INTER_CUBIC``,
            whose nearest PIL-side equivalent is ``bicubic`` (antialiased, so not bit-identical).
    """

    name = "segmentation"
    #: the Lightning module that hosts this protocol (import path), read by ``vlprompt fit``
    host_module = "vlprompt.modules.segmentation.PromptSegmenter"

    def __init__(
        self,
        dataset: SegmentationSource,
        *,
        prompt_index: int | None = None,
        prompt: str | None = None,
        shots: int | None = None,
        label_fraction: float | None = None,
        val_size: int | None = None,
        test_size: int | None = None,
        seed: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: bool = False,
        drop_last: bool = False,
        soft_targets: bool = False,
        image_interpolation: str | None = None,
    ) -> None:
        super().__init__()
        if getattr(dataset, "task", None) != "segmentation":
            raise DataError(
                f"dataset {getattr(dataset, 'name', type(dataset).__name__)!r} is not a segmentation source (task "
                f"{getattr(dataset, 'task', 'classification')!r}): the segmentation protocol needs images with masks "
                "and prompts (e.g. class_path: kvasir_seg)"
            )
        for key, value in (("shots", shots), ("val_size", val_size), ("test_size", test_size)):
            if value is not None and value < 1:
                raise DataError(f"{key}={value} must be a positive number of images or null (all)")
        if label_fraction is not None:
            if shots is not None:
                raise DataError(f"shots={shots} and label_fraction={label_fraction} both choose the training images: "
                                "set one of them")
            nested_subset_indices(1, label_fraction, 0)  # range check, before any work
        if prompt_index is None:
            prompt_index = int(getattr(dataset, "default_prompt_index", 0))
        if prompt_index < -1:
            raise DataError(f"prompt_index={prompt_index} must be -1 (random key other than p0) or a key index >= 0")
        self.dataset = dataset
        self.prompt_index = prompt_index
        self.prompt = prompt
        self.shots = shots
        self.label_fraction = label_fraction
        self.val_size, self.test_size = val_size, test_size
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.drop_last = drop_last
        if image_interpolation is not None and image_interpolation not in INTERPOLATIONS:
            raise DataError(f"image_interpolation={image_interpolation!r} is not one of {sorted(INTERPOLATIONS)} "
                            "(null: the backbone's processor)")
        self.soft_targets = soft_targets
        self.image_interpolation = image_interpolation

    @property
    def task(self) -> dict[str, Any]:
        """What the host module needs: the kind, the prompts learners are built with, the evaluated splits."""
        return {"kind": "segmentation", "setup_prompts": [self.prompt or "object"],
                "val_sets": [["val", "val"]], "test_sets": [["test", "test"]]}

    # ------------------------------------------------------------------ data
    def _preprocess(self):
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        pre = getattr(getattr(module, "backbone", None), "preprocess", None)
        if pre is None:
            raise DataError("the segmentation protocol needs the backbone's preprocessing: run it through `vlprompt fit`")
        if self.image_interpolation is not None:
            pre = dataclasses.replace(pre, interpolation=self.image_interpolation)
        return pre

    def split_dataset(self, split: str) -> Dataset:
        """The :class:`SegSample` dataset of ``split`` (subset applied)."""
        train = split == "train"
        ds = self.dataset.dataset(
            split, preprocess=self._preprocess(), prompt_index=self.prompt_index, prompt=self.prompt,
            augment=bool(self.augment and train), seed=int(self.seed or 0),
        )
        if self.soft_targets:
            if not isinstance(ds, SegmentationDataset):
                raise DataError(f"soft_targets: true needs items from vlprompt's SegmentationDataset, but "
                                f"{self.dataset.name} gives {type(ds).__name__}: set soft_targets: false")
            ds.soft_targets = True
        if len(ds) == 0:
            raise DataError(f"split {split!r} of {self.dataset.name} is empty")
        if train and self.label_fraction is not None:
            idx = nested_subset_indices(len(ds), self.label_fraction, self.seed)
            self.shots = len(idx) if idx is not None else None  # what the result records as training images
        else:
            size = {"train": self.shots, "val": self.val_size, "test": self.test_size}[split]
            idx = subset_indices(len(ds), size, self.seed if train else EVAL_SUBSET_SEED)
        return _Subset(ds, idx if idx is not None else list(range(len(ds))))

    def _loader(self, ds: Dataset, *, train: bool) -> DataLoader:
        bs = self.batch_size if train or self.eval_batch_size is None else self.eval_batch_size
        return DataLoader(ds, batch_size=bs, shuffle=train, num_workers=self.num_workers,
                          drop_last=bool(train and self.drop_last and len(ds) >= bs))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("val"), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("test"), train=False)

    def preflight(self, *, full: bool, progress: bool) -> None:
        """Checks before training: every split is non-empty and builds with this ``prompt_index`` / ``prompt``
        (the source's record checks, e.g. a record lacking the prompt key), without decoding images."""
        for split in ("train", "val", "test"):
            if self.dataset.size(split) < 1:
                raise DataError(f"split {split!r} of {self.dataset.name} is empty; check the dataset's annotations")
            self.dataset.dataset(split, preprocess=None, prompt_index=self.prompt_index, prompt=self.prompt)

    def identity(self) -> dict:
        return {"protocol": self.name, "shots": self.shots, "seed": self.seed, "prompt_index": self.prompt_index,
                **({"label_fraction": self.label_fraction} if self.label_fraction is not None else {}),
                **({"soft_targets": True} if self.soft_targets else {}),
                **({"image_interpolation": self.image_interpolation} if self.image_interpolation else {}),
                "prompt": self.prompt, "val_size": self.val_size, "test_size": self.test_size,
                "dataset": self.dataset.identity()}
