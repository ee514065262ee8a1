"""Overlay PNGs of segmentation predictions: image | ground truth | prediction, side by side.

Each panel is the input image; the ground truth is tinted green and the prediction (probability >= threshold)
red. Small images are upscaled (nearest) so that a 48 px toy image stays readable. Files are written
atomically into the run folder and listed in the result JSON's ``artifacts``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlprompt.data.atomic import atomic_write_bytes

#: the artifact name of a seed's overlay PNGs (a list of paths): the result JSON lists them under
#: ``seed<k>/overlays`` and the leaderboard's gallery reads every ``artifacts`` key ending in ``/overlays``
OVERLAYS_ARTIFACT = "overlays"

#: panels are upscaled to at least this many pixels per side
MIN_SIDE = 160


def overlay_panels(image: torch.Tensor, mask: torch.Tensor, prob: torch.Tensor, *, threshold: float = 0.5,
                   alpha: float = 0.5) -> Image.Image:
    """One RGB picture ``[H, 3W]``: the image ``[3, H, W]`` in ``[0, 1]``, the image with the mask ``[H, W]``
    tinted green, the image with ``prob [H, W] >= threshold`` tinted red."""
    img = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    gt = (mask.detach().float().cpu().numpy() > 0.5)[..., None]
    pred = (prob.detach().float().cpu().numpy() >= threshold)[..., None]
    green, red = np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    tinted_gt = np.where(gt, (1 - alpha) * img + alpha * green, img)
    tinted_pred = np.where(pred, (1 - alpha) * img + alpha * red, img)
    strip = np.concatenate([img, tinted_gt, tinted_pred], axis=1)
    out = Image.fromarray((strip * 255).round().astype(np.uint8))
    h = img.shape[0]
    if h < MIN_SIDE:
        k = -(-MIN_SIDE // h)
        out = out.resize((out.width * k, out.height * k), Image.NEAREST)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "image"


def save_overlays(samples: Sequence[dict[str, Any]], folder: str | Path, *, threshold: float = 0.5) -> list[Path]:
    """Write one PNG per sample (``{"image", "mask", "prob", "name"}``) into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(samples):
        pic = overlay_panels(s["image"], s["mask"], s["prob"], threshold=threshold)
        buf = io.BytesIO()
        pic.save(buf, format="PNG")
        path = folder / f"{i:02d}-{_safe(Path(str(s.get('name', i))).stem)}.png"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def wandb_mask_images(samples: Sequence[dict[str, Any]], *, threshold: float = 0.5) -> list:
    """``wandb.Image`` objects of the samples' images with their ground truth and predicted masks as W&B mask
    layers (``ground_truth`` / ``prediction``, class 1 = the prompted object), captioned with the prompt."""
    import wandb  # deferred: wandb is slow to import (W&B runs only)

    labels = {0: "background", 1: "object"}
    out = []
    for s in samples:
        image = (s["image"].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
        gt = (s["mask"].detach().float().cpu().numpy() > 0.5).astype(np.uint8)
        pred = (s["prob"].detach().float().cpu().numpy() >= threshold).astype(np.uint8)
        out.append(wandb.Image(image, caption=f"{s.get('name', '')}: {s.get('prompt', '')}", masks={
            "ground_truth": {"mask_data": gt, "class_labels": labels},
            "prediction": {"mask_data": pred, "class_labels": labels},
        }))
    return out
