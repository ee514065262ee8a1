"""What a classification data source provides to protocols; registered as ``vlprompt.datasets`` plugins."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """Bad data input: the message names the file or value and the fix."""


DATA_ENV = "VLPROMPT_DATA"


def resolve_data_root(root: str | None) -> Path:
    """The data root: ``root`` if given, else ``$VLPROMPT_DATA`` (the folder holding ``eurosat/``, ``imagenet/``...)."""
    value = root if root else os.environ.get(DATA_ENV)
    if not value:
        raise DataError(
            f"no data root: pass root: /path/to/DATA (the folder that holds eurosat/, imagenet/, ...) or set {DATA_ENV}"
        )
    return Path(value).expanduser()


class ClassificationSource(abc.ABC):
    """A labelled image collection with fixed ``train`` / ``val`` / ``test`` splits.

    Labels are integers ``0..C-1`` indexing :attr:`classnames`. Images from :meth:`dataset` are float
    tensors ``[3, H, W]`` in ``[0, 1]`` (after ``transform``), never normalised: the backbone does that.
    """

    name: str = ""
    #: the train augmentation a protocol uses when asked for ``augment: auto`` ("none" or "flip_crop")
    default_augment: str = "flip_crop"

    @property
    @abc.abstractmethod
    def classnames(self) -> list[str]:
        """Class names, indexed by label."""

    @abc.abstractmethod
    def labels(self, split: str) -> list[int]:
        """Labels of every item of a split, in item order (cheap: no image decoding)."""

    @abc.abstractmethod
    def dataset(
        self, split: str, indices: Sequence[int] | None = None, transform: Callable | None = None
    ) -> Dataset:
        """A dataset of ``(image, label)`` over the items ``indices`` (all when ``None``) of a split."""

    @abc.abstractmethod
    def identity(self) -> dict:
        """What identifies the data for provenance (name, root, split file and its sha256, ...)."""


class TensorImageDataset(Dataset):
    """In-memory ``uint8`` images ``[N, 3, H, W]`` with labels ``[N]``; yields float ``[0, 1]`` images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i].float() / 255.0
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])
