"""The pieces of DePT's decoupled head (Zhang et al., CVPR 2024), as in Koorye/DePT @d4ff416.

* :class:`ChannelTransform`: the channel-wise feature transformation (CAT; the reference's ``FiLM`` in
  ``trainers/elp_maple.py``): ``x * scale + bias`` per channel, starting at the identity.
* :class:`DecoupledHead`: a CAT for image features, one for text features, and a linear classifier over the
  training classes (``linear_probe_proj`` in ``trainers/elp_coop.py``), all on the *raw* (unnormalised) features.
* :func:`paired_head_logits`: the head's training logits; the text feature of each image's own class and the image
  feature are both rows to classify (``_forward_logits_linear_probe`` with labels).
* :func:`decoupled_loss` / :func:`fused_logits`: the loss weighting and the base-class test-time fusion
  (``_loss`` / ``_forward_base``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

#: which part of the wrapped learner's loss the weight ``1 - w`` applies to (see :func:`decoupled_loss`)
InnerLossRule = Literal["cross_entropy", "whole"]
INNER_LOSS_RULES = ("cross_entropy", "whole")


class ChannelTransform(nn.Module):
    """CAT: ``y = x * scale + bias`` over the last dimension ``D`` (``scale`` starts at 1, ``bias`` at 0)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., D]`` -> ``[..., D]``."""
        return x * self.scale + self.bias


class DecoupledHead(nn.Module):
    """CAT on image and text features, then a linear classifier ``D -> C`` (the training classes)."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.image_transform = ChannelTransform(dim)
        self.text_transform = ChannelTransform(dim)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Test-time head logits ``[B, C]`` of raw image features ``[B, D]``."""
        return self.classifier(self.image_transform(image_features))


def paired_head_logits(head: DecoupledHead, text_features: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
    """Training logits ``[2B, C]`` of the head: rows ``0..B-1`` classify the text feature of each image's own class
    ``text_features [B, D]``, rows ``B..2B-1`` the image features ``[B, D]`` (both raw; the reference concatenates
    text rows first). Their targets are the batch's labels twice (:func:`head_targets`)."""
    if text_features.shape != image_features.shape:
        raise ValueError(f"text features {tuple(text_features.shape)} and image features "
                         f"{tuple(image_features.shape)} must both be [B, D]")
    rows = torch.cat([head.text_transform(text_features), head.image_transform(image_features)])
    return head.classifier(rows)


def head_targets(targets: torch.Tensor) -> torch.Tensor:
    """Targets ``[2B]`` of :func:`paired_head_logits`: ``targets [B]`` for the text rows, then again for the images."""
    return torch.cat([targets, targets])


def decoupled_loss(inner_loss: torch.Tensor, itm_cross_entropy: torch.Tensor, head_cross_entropy: torch.Tensor,
                   weight: float, rule: InnerLossRule = "cross_entropy") -> torch.Tensor:
    """DePT's training loss (scalars in, a scalar out).

    ``rule="cross_entropy"``: ``inner_loss - w * itm_ce + w * head_ce``: the wrapped learner's cross-entropy on its
    image-text matching (ITM) logits is weighted ``1 - w`` and the head's cross-entropy ``w``, while the wrapped
    learner's other terms keep their own weights. This is what every reference trainer computes: CoOp, CoCoOp and
    MaPLe (``(1 - w) CE + w CE_head``) and KgCoOp (``(1 - w) CE + w CE_head + 8 L_kg``, ``elp_kgcoop.py``).
    It assumes ``inner_loss`` contains ``itm_ce`` once (true of every learner trained with cross-entropy).
    ``rule="whole"``: ``(1 - w) * inner_loss + w * head_ce`` (for a wrapped learner whose loss is not
    cross-entropy-based).
    """
    if rule == "cross_entropy":
        return inner_loss - weight * itm_cross_entropy + weight * head_cross_entropy
    if rule == "whole":
        return (1.0 - weight) * inner_loss + weight * head_cross_entropy
    raise ValueError(f"rule={rule!r} must be one of {INNER_LOSS_RULES}")


def fused_logits(itm_logits: torch.Tensor, head_logits: torch.Tensor, weight: float) -> torch.Tensor:
    """Base-class test-time logits ``[B, C]``: ``(1 - w) * itm_logits + w * head_logits`` (both ``[B, C]``)."""
    return (1.0 - weight) * itm_logits + weight * head_logits


def head_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the head's paired logits ``[2B, C]`` against ``targets [B]`` (each label twice)."""
    return F.cross_entropy(logits, head_targets(targets))


__all__ = [
    "INNER_LOSS_RULES",
    "ChannelTransform",
    "DecoupledHead",
    "InnerLossRule",
    "decoupled_loss",
    "fused_logits",
    "head_cross_entropy",
    "head_targets",
    "paired_head_logits",
]
