"""Loss, metrics and optimiser groups of the segmentation track, as pure functions (TuneVLSeg protocol).

Reference: TuneVLSeg (Adhikari et al., ACCV 2024), naamiinepal/tunevlseg ``src/models/image_text_mask_module.py``
and ``configs/model/*/clipseg.yaml``. Facts carried over:

- loss ``lambda_dice * Dice + lambda_ce * BCE`` on the mask logits with ``lambda_dice = 1``, ``lambda_ce = 0.2``
  (MONAI ``DiceCELoss(sigmoid=True)``: soft Dice per sample with smoothing 1e-5 in numerator and denominator,
  averaged over samples, plus ``BCEWithLogits`` averaged over pixels), on binary masks or on TuneVLSeg's soft
  targets ``mask / 255``. The Dice term is written out with MONAI's intersection ``sum(p * m)`` (smp 0.6's
  ``DiceLoss`` uses ``sum(min(p, m))``, which differs on soft targets); the BCE term is segmentation-models-pytorch's
  ``SoftBCEWithLogitsLoss``. **Deliberate difference** (kept from smp): on a sample whose target is empty the Dice
  term is 0 (MONAI's is ``1 - 1e-5 / (sum(sigmoid) + 1e-5)``); the BCE term still penalises false positives there.
  It changes nothing on datasets without empty masks (toy, Kvasir-SEG).
- metrics: Dice of the masks thresholded at 0.5, per sample, averaged over the samples of the evaluated split,
  with ``zero_division = 1`` (an empty prediction of an empty mask scores 1), as the reference's
  ``torchmetrics.Dice(average="samples", threshold=0.5, zero_division=1)``; IoU is the reference's
  ``JaccardIndex(task="binary", threshold=0.5, zero_division=1)``: one confusion matrix accumulated over all
  pixels of the split (dataset-level IoU, not a per-sample mean). Both come from torchmetrics
  (``dice_score`` samplewise, ``BinaryJaccardIndex``); reported in percent.
- boundary metrics (issue 29, not in TuneVLSeg's training module; its ``scripts/eval_metrics.py`` has MONAI's
  surface Dice and Hausdorff distance commented out): normalised surface Dice (NSD) at a tolerance in pixels of
  the evaluated mask (default :data:`NSD_TOLERANCE_PX`) and the 95th-percentile symmetric Hausdorff distance
  (HD95, pixels), per sample, from MONAI (``compute_surface_dice``, ``compute_hausdorff_distance``): the
  field's medical benchmarks report them through MONAI, and its edge extraction and distance transforms are
  maintained and tested there. MONAI leaves empty masks undefined (NaN); here both empty scores NSD 1 and HD95 0,
  and exactly one empty scores NSD 0 and HD95 = the image diagonal (the largest distance the image allows).
- weight decay: only weights of ``Linear``/``Conv`` layers (and tensors named ``*proj_weight``) decay; biases,
  norms, embeddings and raw prompt vectors do not (the reference's ``get_optim_groups``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from segmentation_models_pytorch.losses import SoftBCEWithLogitsLoss
from torch import nn
from torchmetrics.classification import BinaryJaccardIndex
from torchmetrics.functional.segmentation import dice_score

# torchmetrics warns about its default `average` even when it is given explicitly (as here: micro per sample)
warnings.filterwarnings("ignore", message=r"dice_score metric currently defaults to `average=micro`")
# MONAI 1.5-1.6 warn about an argument their own surface-distance code passes (not ours)
warnings.filterwarnings("ignore", message=r".*always_return_as_numpy.*", category=FutureWarning)

#: tolerance of the normalised surface Dice, in pixels of the evaluated mask
NSD_TOLERANCE_PX = 2.0
#: percentile of the Hausdorff distance reported as HD95
HD_PERCENTILE = 95.0

#: MONAI DiceLoss's default smooth_nr = smooth_dr (the reference's Dice smoothing)
DICE_SMOOTH = 1e-5

_BCE = SoftBCEWithLogitsLoss()


def _check(logits: torch.Tensor, masks: torch.Tensor) -> None:
    if logits.dim() != 3 or logits.shape != masks.shape:
        raise ValueError(f"expected mask logits and masks of the same shape [B, H, W], got {tuple(logits.shape)} "
                         f"and {tuple(masks.shape)}")


def dice_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss averaged over samples: ``mean_b (1 - (2 sum(p m) + s) / (sum p + sum m + s))`` with
    ``p = sigmoid(logits)``, ``s = 1e-5`` (MONAI ``DiceLoss(sigmoid=True)``); 0 for a sample whose target sums to 0
    (smp's rule). ``logits``/``masks`` ``[B, H, W]`` (masks float in ``[0, 1]``: binary, or soft ``mask / 255``)
    -> scalar.
    """
    _check(logits, masks)
    b = logits.shape[0]
    p = torch.sigmoid(logits.reshape(b, -1))
    m = masks.reshape(b, -1).to(p.dtype)
    target = m.sum(1)
    loss = 1 - (2 * (p * m).sum(1) + DICE_SMOOTH) / (p.sum(1) + target + DICE_SMOOTH)
    return (loss * (target > 0).to(loss.dtype)).mean()


def bce_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy from logits, averaged over all pixels: ``[B, H, W]`` x2 -> scalar (smp; masks in
    ``[0, 1]``, soft targets allowed)."""
    _check(logits, masks)
    return _BCE(logits, masks.to(logits.dtype))


def dice_bce_loss(
    logits: torch.Tensor, masks: torch.Tensor, *, lambda_dice: float = 1.0, lambda_ce: float = 0.2
) -> torch.Tensor:
    """TuneVLSeg's training loss ``lambda_dice * dice_loss + lambda_ce * bce_loss`` (defaults 1 and 0.2).

    ``logits [B, H, W]`` mask logits, ``masks [B, H, W]`` float in ``[0, 1]`` (binary, or TuneVLSeg's soft targets
    ``mask / 255``) -> scalar; equals MONAI ``DiceCELoss(sigmoid=True, lambda_dice, lambda_ce)`` on targets that are
    not all zero (tested against MONAI's values).
    """
    return lambda_dice * dice_loss(logits, masks) + lambda_ce * bce_loss(logits, masks)


def dice_per_sample(logits: torch.Tensor, masks: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Dice ``[B]`` (in ``[0, 1]``) of ``sigmoid(logits) >= threshold`` against ``masks``, one per sample;
    1 where both prediction and mask are empty (the reference's ``zero_division = 1``).

    ``logits`` and ``masks`` ``[B, H, W]``. torchmetrics ``dice_score`` (samplewise, one foreground class).
    """
    _check(logits, masks)
    preds = (torch.sigmoid(logits.float()) >= threshold).long().unsqueeze(1)
    target = (masks > 0.5).long().unsqueeze(1)
    scores = dice_score(preds, target, num_classes=1, average="micro", aggregation_level="samplewise",
                        input_format="one-hot")
    return torch.nan_to_num(scores.reshape(-1).float(), nan=1.0)


def binary_iou(logits: torch.Tensor, masks: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Dataset-level IoU (scalar in ``[0, 1]``) of ``sigmoid(logits) > threshold``: intersection over union of all
    pixels of all samples (``[B, H, W]`` x2); 1 when both are empty. torchmetrics ``BinaryJaccardIndex``."""
    _check(logits, masks)
    metric = BinaryJaccardIndex(threshold=threshold, zero_division=1.0).to(logits.device)
    return metric(torch.sigmoid(logits.float()), (masks > 0.5).long())


def boundary_scores(
    logits: torch.Tensor, masks: torch.Tensor, *, threshold: float = 0.5,
    tolerance_px: float = NSD_TOLERANCE_PX, percentile: float = HD_PERCENTILE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample normalised surface Dice and percentile Hausdorff distance of ``sigmoid(logits) >= threshold``.

    ``logits``, ``masks`` ``[B, H, W]`` -> ``(nsd [B] in [0, 1], hd [B] in pixels)``. NSD: the fraction of both
    masks' boundary pixels that lie within ``tolerance_px`` of the other mask's boundary (Nikolov et al. 2021);
    HD: the ``percentile`` of the symmetric boundary-to-boundary distances (95: HD95). MONAI computes both (8-
    connected boundaries, Euclidean distance transforms, unit pixel spacing). Empty masks: both empty give
    ``(1, 0)``, exactly one empty ``(0, sqrt(H^2 + W^2))``.
    """
    _check(logits, masks)
    if tolerance_px < 0 or not 0 <= percentile <= 100:
        raise ValueError(f"tolerance_px={tolerance_px} must be >= 0 and percentile={percentile} in [0, 100]")
    preds = (torch.sigmoid(logits.detach().float()) >= threshold).unsqueeze(1).cpu()
    target = (masks.detach() > 0.5).unsqueeze(1).cpu()
    b, _, h, w = preds.shape
    nsd, hd = torch.zeros(b), torch.zeros(b)
    has_pred, has_target = preds.flatten(1).any(1), target.flatten(1).any(1)
    both = has_pred & has_target
    nsd[~has_pred & ~has_target] = 1.0
    hd[has_pred ^ has_target] = math.hypot(h, w)
    if both.any():
        p, t = preds[both], target[both]
        nsd[both] = compute_surface_dice(p, t, class_thresholds=[float(tolerance_px)], include_background=True).reshape(-1).float()
        hd[both] = compute_hausdorff_distance(p, t, include_background=True, percentile=percentile).reshape(-1).float()
    return nsd, hd


class SegmentationScores(nn.Module):
    """Streaming Dice (mean over samples) and IoU (dataset-level) over batches; equals
    ``dice_per_sample(all).mean()`` and ``binary_iou(all)`` on the concatenated split (tested). With
    ``boundary=True`` also the mean over samples of NSD (at ``tolerance_px``) and HD95 (:func:`boundary_scores`)."""

    def __init__(self, *, threshold: float = 0.5, boundary: bool = False,
                 tolerance_px: float = NSD_TOLERANCE_PX) -> None:
        super().__init__()
        self.threshold = threshold
        self.boundary = boundary
        self.tolerance_px = tolerance_px
        self.iou = BinaryJaccardIndex(threshold=threshold, zero_division=1.0)
        self.reset()

    def reset(self) -> None:
        self.dice_sum = 0.0
        self.nsd_sum = 0.0
        self.hd_sum = 0.0
        self.count = 0
        self.iou.reset()

    def update(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Add a batch (``[B, H, W]`` x2); returns its per-sample Dice ``[B]``."""
        dice = dice_per_sample(logits, masks, threshold=self.threshold)
        self.dice_sum += float(dice.sum())
        self.count += int(dice.numel())
        self.iou.to(logits.device).update(torch.sigmoid(logits.detach().float()), (masks > 0.5).long())
        if self.boundary:
            nsd, hd = boundary_scores(logits, masks, threshold=self.threshold, tolerance_px=self.tolerance_px)
            self.nsd_sum += float(nsd.sum())
            self.hd_sum += float(hd.sum())
        return dice

    def compute(self) -> dict[str, float]:
        """``{"dice": %, "iou": %}`` (percent, as classification accuracies); with ``boundary`` also
        ``"nsd"`` (%) and ``"hd95"`` (pixels)."""
        if self.count == 0:
            raise ValueError("no samples were scored")
        out = {"dice": 100.0 * self.dice_sum / self.count, "iou": 100.0 * float(self.iou.compute())}
        if self.boundary:
            out.update(nsd=100.0 * self.nsd_sum / self.count, hd95=self.hd_sum / self.count)
        return out


def weight_decay_groups(
    module: nn.Module, groups: Sequence[dict], weight_decay: float
) -> list[dict]:
    """Split each optimiser group (``{"params": [...], ...}``, e.g. from ``learner.optimizer_groups()``) of
    ``module``'s parameters into a decayed and a non-decayed group (other keys such as ``lr`` kept).

    Decayed: the ``weight`` of ``nn.Linear`` / convolution modules and tensors whose name ends in
    ``proj_weight``; not decayed: everything else (biases, norm and embedding weights, prompt vectors), as the
    reference's ``get_optim_groups``. Empty groups are dropped.
    """
    decay: set[int] = set()
    for mod in module.modules():
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and getattr(mod, "weight", None) is not None:
            decay.add(id(mod.weight))
    for name, p in module.named_parameters():
        if name.endswith("proj_weight"):
            decay.add(id(p))
    out = []
    for group in groups:
        rest = {k: v for k, v in group.items() if k != "params"}
        params = list(group["params"])
        yes = [p for p in params if id(p) in decay]
        no = [p for p in params if id(p) not in decay]
        if yes:
            out.append({**rest, "params": yes, "weight_decay": weight_decay})
        if no:
            out.append({**rest, "params": no, "weight_decay": 0.0})
    return out
