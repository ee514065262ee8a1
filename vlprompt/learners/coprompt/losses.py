"""CoPrompt's consistency losses and feature adapters (pure functions and one small module).

Reference: ShuvenduRoy/CoPrompt @ a2a6c12e3622cfe4b3a127f4ba0c4f3eb841418c, ``trainers/coprompt.py``
(``Adapter``, lines 259-272; the distillation terms of ``CustomCLIP.forward``, lines 342-362).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: the reference's ``CosineSimilarity(dim=1, eps=1e-07)`` (``coprompt.py:343``)
COSINE_EPS = 1e-7


def cosine_consistency(trained: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """``1 - mean_i cos(trained_i, frozen_i)``: rows ``[N, D]`` and ``[N, D]`` -> a 0-d tensor.

    Row ``i`` of one is compared with row ``i`` of the other (class ``i``'s text feature with the frozen feature of
    one of its descriptions; image ``i`` of the batch with the frozen encoding of its other view).
    """
    if trained.shape != frozen.shape or trained.dim() != 2:
        raise ValueError(f"cosine_consistency needs two [N, D] tensors of one shape, got {tuple(trained.shape)} "
                         f"and {tuple(frozen.shape)}")
    return 1.0 - F.cosine_similarity(trained, frozen.to(trained.dtype), dim=1, eps=COSINE_EPS).mean()


def mse_consistency(trained: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of ``[N, D]`` and ``[N, D]`` (the reference's ``DISTILL`` other than ``cosine``)."""
    if trained.shape != frozen.shape or trained.dim() != 2:
        raise ValueError(f"mse_consistency needs two [N, D] tensors of one shape, got {tuple(trained.shape)} "
                         f"and {tuple(frozen.shape)}")
    return F.mse_loss(trained, frozen.to(trained.dtype))


CONSISTENCY = {"cosine": cosine_consistency, "mse": mse_consistency}


class Adapter(nn.Module):
    """Bottleneck ``Linear(D, D/r, no bias) -> ReLU -> Linear(D/r, D, no bias) -> ReLU`` on features ``[N, D]``.

    The layers sit in ``fc`` at indices 0 and 2, as the reference's ``Adapter.fc`` (``coprompt.py:259-272``), so its
    state-dict names map one to one. :func:`blend` mixes its output into the features.
    """

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def blend(features: torch.Tensor, adapted: torch.Tensor, ratio: float) -> torch.Tensor:
    """``ratio * adapted + (1 - ratio) * features`` (``[N, D]`` each; the reference's image ratio 0.1, text 0.2)."""
    return ratio * adapted + (1.0 - ratio) * features


__all__ = ["COSINE_EPS", "CONSISTENCY", "Adapter", "blend", "cosine_consistency", "mse_consistency"]
