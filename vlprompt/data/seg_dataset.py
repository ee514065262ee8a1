"""Shared item machinery of the segmentation sources: prompt selection, mask reading, joint transforms.

Every :class:`~vlprompt.data.segmentation.SegmentationSource` of vlprompt (the medvlsm/TuneVLSeg layout, the
original Kvasir-SEG and BUSI releases, the toy world) yields its items through :class:`SegmentationDataset`,
so prompt selection, preprocessing and augmentation are the same everywhere.

- **Prompts** (TuneVLSeg ``ImageTextMaskDataset.get_curr_prompt``, naamiinepal/tunevlseg): a record holds keys
  ``p0``..``p9``, each a string or a list of strings. ``prompt_index=k >= 0`` takes ``p{k}``; ``-1`` takes a
  random key other than the lowest-numbered one (``p0``), keys sorted by their number as TuneVLSeg sorts them;
  a list value then gives a random element. ``prompt`` (TuneVLSeg's ``override_prompt``) replaces all of
  this. Unlike TuneVLSeg (module-level ``random``), every draw comes from a generator seeded by
  ``(seed, epoch, item)``, so runs are reproducible whatever the number of loader workers; call
  :meth:`SegmentationDataset.set_epoch` at the start of each training epoch (as for a ``DistributedSampler``).
- **Masks**: read as 8-bit grey (PIL ``L``); a pixel is foreground when its value is at least
  :data:`MASK_THRESHOLD` (128). Values within :data:`MASK_TOLERANCE` of 0 or 255 are compression noise (the
  Kvasir-SEG masks are JPEGs); a mask with more than :data:`MAX_AMBIGUOUS` of its pixels in between, or whose
  largest value is below the threshold while not all zero (0/1 label maps), is not binary and is refused,
  naming the file. Several mask files of one image (BUSI ``_mask_1``) are merged by union.
- **Preprocessing** (TuneVLSeg / medvlsm eval transforms): the whole image is resized to ``S x S`` with the
  backbone's interpolation (no crop, so no mask pixel is lost: ``resize_mode`` ``squash``, what CLIPSeg's
  processor does; another ``resize_mode`` is not applied to segmentation), PIL-side for files exactly as the
  classification transforms do (tensors of the toy world: in float, bicubic when the mode is PIL-only); the mask is resized with nearest neighbour (PIL ``NEAREST``, medvlsm's
  ``NEAREST_EXACT``) and thresholded again. The one train augmentation is a horizontal flip (probability
  0.5) applied to image and mask together; it swaps the words ``left`` and ``right`` in the prompt, whose
  location phrases would otherwise become wrong (TuneVLSeg leaves flips off; its affine/brightness
  augmentations are not reproduced).

Deliberate differences from the references (TuneVLSeg ``configs/experiment/coop/clipseg.yaml`` and
``ImageTextMaskDataset``; medvlsm ``ImageTextMaskDataset``):

- TuneVLSeg resizes images with OpenCV ``INTER_CUBIC`` (albumentations) and masks with OpenCV nearest; medvlsm
  with torchvision on PIL images. vlprompt follows the backbone's own processor (PIL, its interpolation; the
  segmentation protocol's ``image_interpolation`` picks another, e.g. ``bicubic``), so
  image pixels differ slightly from TuneVLSeg's, and mask borders by up to one pixel (PIL's nearest samples
  pixel centres).
- TuneVLSeg feeds ``mask / 255`` (soft for JPEG masks; ``image_text_mask_dataset.py`` lines 65-70) to the loss
  and ``mask.long()`` (1 only where the value is exactly 255; ``image_text_mask_module.py`` line 107) to the
  metrics. With ``soft_targets`` (the segmentation protocol's option, on in ``configs/protocols/segmentation.yaml``)
  items carry that soft ``target`` (the grey mask resized with nearest neighbour, divided by 255; the union of
  several mask files is their maximum) and the loss uses it; the metrics always use the mask thresholded at 128,
  so a JPEG mask's 247..254 foreground pixels count as foreground there.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vlprompt.backbones.base import PreprocessConfig
from vlprompt.data.base import DataError

MASK_THRESHOLD = 128
MASK_TOLERANCE = 32
MAX_AMBIGUOUS = 0.005

PromptValue = str | Sequence[str]

_INTERP = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,  # PIL only (a CLIPSeg processor may ask for it)
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
}
_TENSOR_INTERP = {"bicubic", "bilinear", "nearest"}
#: the image interpolations a preprocessing may name (PIL-side for files; tensors fall back to bicubic)
INTERPOLATIONS = frozenset(_INTERP)
_KEY = re.compile(r"^p(\d+)$")


# --------------------------------------------------------------------------- prompts
def prompt_keys(prompts: Mapping[str, PromptValue]) -> list[str]:
    """The ``p<k>`` keys of a record sorted by ``k`` (other keys are ignored)."""
    return sorted((k for k in prompts if _KEY.match(k)), key=lambda k: int(k[1:]))


def check_prompt_index(records: Sequence, prompt_index: int, *, where: str) -> None:
    """:class:`DataError` naming the first record that ``prompt_index`` cannot serve (before any work)."""
    if prompt_index < -1:
        raise DataError(f"prompt_index={prompt_index}: use k >= 0 for prompt key p<k>, or -1 for a random key other "
                        f"than p0 (TuneVLSeg)")
    for i, rec in enumerate(records):
        keys = prompt_keys(rec.prompts)
        if prompt_index >= 0 and f"p{prompt_index}" not in rec.prompts:
            raise DataError(
                f"{where}: record {i} ({rec.name}) has no prompt p{prompt_index} (it has {keys or 'no p<k> keys'}): "
                f"pick a prompt_index among those keys, pass prompt= a fixed text, or regenerate the annotations "
                f"with `vlprompt data convert` (prompts p0..p9)")
        if prompt_index == -1 and len(keys) < 2:
            raise DataError(
                f"{where}: record {i} ({rec.name}) has prompt keys {keys}, so prompt_index=-1 (a random key other "
                f"than {keys[0] if keys else 'p0'}) has nothing to draw from: use prompt_index=0, or annotations "
                f"with several prompts (`vlprompt data convert`)")


def choose_prompt(prompts: Mapping[str, PromptValue], prompt_index: int, rng: random.Random) -> str:
    """The prompt of one record: key ``p{prompt_index}`` or, for ``-1``, a random key but the first; a list
    value gives a random element (TuneVLSeg ``get_curr_prompt``)."""
    if prompt_index >= 0:
        value = prompts[f"p{prompt_index}"]
    else:
        value = prompts[rng.choice(prompt_keys(prompts)[1:])]
    if isinstance(value, str):
        return value
    return rng.choice(list(value))


def validate_prompts(prompts: object, *, where: str) -> dict[str, PromptValue]:
    """The record's ``prompts`` mapping, or a :class:`DataError` saying what is wrong with it."""
    if not isinstance(prompts, Mapping) or not prompts:
        raise DataError(f"{where}: 'prompts' must be a non-empty mapping {{'p0': text, 'p1': [texts], ...}}, got "
                        f"{type(prompts).__name__}: fix the annotation file or regenerate it with `vlprompt data convert`")
    out: dict[str, PromptValue] = {}
    for key, value in prompts.items():
        ok = isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
        if not ok:
            raise DataError(f"{where}: prompt {key!r} must be a string or a non-empty list of strings, got {value!r}")
        out[str(key)] = value
    return out


_LR = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """``text`` with the words left and right exchanged (after a horizontal flip), keeping the case."""

    def swap(m: re.Match) -> str:
        word = m.group(0)
        new = "right" if word.lower() == "left" else "left"
        return new.capitalize() if word[0].isupper() else new

    return _LR.sub(swap, text)


# --------------------------------------------------------------------------- masks
def mask_value_problem(grey: np.ndarray) -> str | None:
    """``None`` when an 8-bit grey mask is binary (0/255 up to :data:`MASK_TOLERANCE`), else why not."""
    top = int(grey.max()) if grey.size else 0
    if 0 < top < MASK_THRESHOLD:
        values = np.unique(grey)[:6].tolist()
        return (f"its largest value is {top} (values {values}...), below the threshold {MASK_THRESHOLD}: it looks like "
                f"a label map (0/1/...); save the mask with 0 for background and 255 for foreground")
    ambiguous = float(((grey > MASK_TOLERANCE) & (grey < 255 - MASK_TOLERANCE)).mean())
    if ambiguous > MAX_AMBIGUOUS:
        return (f"{ambiguous:.1%} of its pixels lie between {MASK_TOLERANCE} and {255 - MASK_TOLERANCE} (threshold "
                f"{MASK_THRESHOLD}): it is not a binary 0/255 mask (a soft, colour or multi-class mask?); binarise it "
                f"(0 background, 255 foreground)")
    return None


def read_mask(
    paths: Sequence[Path | str], *, size: tuple[int, int] | None = None, image: str = "", grey: bool = False
) -> np.ndarray:
    """Boolean mask ``[H, W]``: the union of the binary masks ``paths`` (thresholded at :data:`MASK_THRESHOLD`);
    with ``grey=True`` the uint8 grey values instead (the union is their maximum; thresholding it gives the same
    boolean mask), from which :func:`prepare_pair` derives both the binary mask and the soft target.

    Raises :class:`DataError` naming the file when a mask cannot be read, is not binary, or its size differs
    from ``size`` (``(width, height)`` of the image ``image``).
    """
    want_grey = grey
    out: np.ndarray | None = None
    for path in paths:
        try:
            with Image.open(path) as im:
                grey = np.asarray(im.convert("L"))
        except Exception as exc:  # noqa: BLE001 - any failure makes the file unusable
            raise DataError(f"mask {path} cannot be read ({type(exc).__name__}: {exc}): replace it with an intact "
                            f"copy from the original archive") from exc
        if size is not None and (grey.shape[1], grey.shape[0]) != tuple(size):
            raise DataError(f"mask {path} is {grey.shape[1]}x{grey.shape[0]} px but its image {image} is "
                            f"{size[0]}x{size[1]}: a mask must have its image's size; export the mask at the image "
                            f"size (or pair it with the right image)")
        problem = mask_value_problem(grey)
        if problem is not None:
            raise DataError(f"mask {path} is not binary: {problem}")
        binary = grey.copy() if want_grey else grey >= MASK_THRESHOLD
        if out is None:
            out = binary
        elif out.shape != binary.shape:
            raise DataError(f"mask {path} is {binary.shape[1]}x{binary.shape[0]} px, unlike the other mask(s) of "
                            f"{image or 'the same image'} ({out.shape[1]}x{out.shape[0]}): re-export it at the image size")
        else:
            out = np.maximum(out, binary) if want_grey else out | binary
    if out is None:
        raise DataError(f"no mask file given for {image}")
    return out


def read_image(path: Path | str) -> Image.Image:
    """The RGB image at ``path`` (decoded now), or a :class:`DataError` naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"image {path} cannot be read ({type(exc).__name__}: {exc}): replace it with an intact copy "
                        f"from the original archive") from exc


# --------------------------------------------------------------------------- joint transform
def prepare_pair(
    image: Image.Image | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    *,
    preprocess: PreprocessConfig | None,
    flip: bool = False,
    target: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Image ``[3, S, S]`` float in ``[0, 1]`` and mask ``[1, S, S]`` float in ``{0, 1}`` at the backbone size; with
    ``target=True`` also the soft target ``[1, S, S]`` = resized grey mask / 255 (TuneVLSeg's loss target).

    ``image`` is a PIL image (files: resized as a PIL image, then converted) or a uint8/float tensor
    ``[3, H, W]`` (the toy world: converted to float, then resized); ``mask`` is boolean ``[H, W]`` (0/255) or uint8
    grey ``[H, W]`` (:func:`read_mask` with ``grey=True``). ``preprocess=None`` keeps the input size.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.cpu().numpy()
    if mask.dtype == np.bool_:
        grey = np.where(mask, 255, 0).astype(np.uint8)
    elif mask.dtype == np.uint8:
        grey = mask
    else:
        raise DataError(f"a mask must be boolean or uint8 grey, got {mask.dtype}: the source's loader returns "
                        "something else (read masks with read_mask)")
    mask_img = Image.fromarray(grey, mode="L")
    if flip:
        mask_img = mask_img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if isinstance(image, Image.Image):
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if preprocess is not None:
            size = [preprocess.image_size, preprocess.image_size]
            image = TF.resize(image, size, interpolation=_INTERP.get(preprocess.interpolation,
                                                                      InterpolationMode.BICUBIC), antialias=True)
        img = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    else:
        img = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        if flip:
            img = img.flip(-1)
        if preprocess is not None and tuple(img.shape[-2:]) != (preprocess.image_size,) * 2:
            mode = preprocess.interpolation if preprocess.interpolation in _TENSOR_INTERP else "bicubic"
            img = TF.resize(img, [preprocess.image_size] * 2, interpolation=_INTERP[mode], antialias=True)
    if preprocess is not None and mask_img.size != (preprocess.image_size,) * 2:
        mask_img = mask_img.resize((preprocess.image_size,) * 2, Image.Resampling.NEAREST)
    values = np.asarray(mask_img)
    out_mask = torch.from_numpy(values >= MASK_THRESHOLD).float()[None]
    if target:
        return img.clamp(0.0, 1.0), out_mask, torch.from_numpy(values.astype(np.float32) / 255.0)[None]
    return img.clamp(0.0, 1.0), out_mask


# --------------------------------------------------------------------------- the dataset
class SegmentationDataset(Dataset):
    """:class:`~vlprompt.data.segmentation.SegSample` items over a source's records.

    Args:
        records: objects with ``name`` and ``prompts`` (one per item).
        load: ``load(i) -> (image, mask)``: a PIL image or uint8 tensor ``[3, H, W]``, and a boolean mask ``[H, W]``.
        preprocess: the backbone's preprocessing (size and interpolation); ``None`` keeps the native size.
        prompt_index / prompt: TuneVLSeg prompt selection (see the module docstring).
        augment: joint random horizontal flip (train only).
        seed: seed of the per-item draws (prompt and flip), combined with the epoch and the item index.
        stop_at_end: append ``.`` to non-empty prompts lacking it (TuneVLSeg ``insert_stop_at_last``).
        soft_targets: items also carry ``target``, the soft mask ``grey / 255`` TuneVLSeg's loss trains on.
    """

    def __init__(
        self,
        records: Sequence,
        load: Callable[[int], tuple[Image.Image | torch.Tensor, np.ndarray | torch.Tensor]],
        *,
        preprocess: PreprocessConfig | None,
        prompt_index: int = 0,
        prompt: str | None = None,
        augment: bool = False,
        seed: int = 0,
        stop_at_end: bool = False,
        soft_targets: bool = False,
    ) -> None:
        self.records = list(records)
        self.soft_targets = soft_targets
        self.load = load
        self.preprocess = preprocess
        self.prompt_index = prompt_index
        self.prompt = prompt
        self.augment = augment
        self.seed = seed
        self.stop_at_end = stop_at_end
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the per-item prompts and flips of training epoch ``epoch`` (same epoch, same draws)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def item_rng(self, i: int) -> random.Random:
        """The generator of item ``i`` in the current epoch (a string seed: stable across processes)."""
        return random.Random(f"vlprompt-seg/{self.seed}/{self.epoch}/{i}")

    def prompt_of(self, i: int, rng: random.Random | None = None) -> str:
        """The prompt item ``i`` gets in the current epoch (before a flip swaps left and right)."""
        rng = self.item_rng(i) if rng is None else rng
        if self.prompt is not None:
            text = self.prompt
        else:
            text = choose_prompt(self.records[i].prompts, self.prompt_index, rng)
        if self.stop_at_end and text and not text.endswith("."):
            text += "."
        return text

    def __getitem__(self, i: int) -> dict:
        rng = self.item_rng(i)
        text = self.prompt_of(i, rng)
        flip = self.augment and rng.random() < 0.5
        image, mask = self.load(i)
        img, msk, *soft = prepare_pair(image, mask, preprocess=self.preprocess, flip=flip, target=self.soft_targets)
        if flip:
            text = swap_left_right(text)
        item = {"image": img, "mask": msk, "prompt": text, "name": str(self.records[i].name)}
        if soft:
            item["target"] = soft[0]
        return item
