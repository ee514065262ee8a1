"""What a segmentation data source provides to the segmentation protocol; registered as ``vlprompt.datasets``.

A sample is one (image, prompt, binary mask) triple, the unit of referring / text-prompted segmentation
(TuneVLSeg, Adhikari et al. ACCV 2024). Images are float ``[3, S, S]`` in ``[0, 1]`` (never normalised: the
backbone does that), masks float ``[1, S, S]`` in ``{0, 1}``, both at the backbone's input size.
"""

from __future__ import annotations

import abc
from typing import TypedDict

import torch
from torch.utils.data import Dataset

from vlprompt.backbones.base import PreprocessConfig

SPLITS = ("train", "val", "test")


class SegSample(TypedDict):
    """One item of a segmentation dataset (collated by the default collate into batches)."""

    image: torch.Tensor  # [3, S, S] float in [0, 1]
    mask: torch.Tensor  # [1, S, S] float in {0, 1}
    prompt: str  # the text the mask answers
    name: str  # image identifier (file name), for overlays and error messages


class SegmentationSource(abc.ABC):
    """Images with binary masks and text prompts, in fixed ``train`` / ``val`` / ``test`` splits.

    ``prompt_index`` follows TuneVLSeg: ``k >= 0`` uses prompt key ``p{k}`` of every record (an error naming
    the record when it lacks it), ``-1`` draws a random key other than ``p0`` per item and epoch; ``prompt``
    overrides every record's prompt with one fixed text.
    """

    name: str = ""
    #: marks the source kind for protocols and ``vlprompt list datasets``
    task: str = "segmentation"
    #: the ``prompt_index`` a protocol uses when its config names none (TuneVLSeg's runs use p1, the class name)
    default_prompt_index: int = 1

    @abc.abstractmethod
    def size(self, split: str) -> int:
        """Number of samples of a split (cheap: no image decoding)."""

    @abc.abstractmethod
    def dataset(
        self,
        split: str,
        *,
        preprocess: PreprocessConfig,
        prompt_index: int = 0,
        prompt: str | None = None,
        augment: bool = False,
        seed: int = 0,
    ) -> Dataset:
        """A dataset of :class:`SegSample` dicts for ``split`` at ``preprocess.image_size``."""

    @abc.abstractmethod
    def identity(self) -> dict:
        """What identifies the data for provenance (name, root, annotation files and their sha256, ...)."""
