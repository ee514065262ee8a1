"""Training losses shared by prompt learners: pure functions with shapes in their docstrings.

PromptSRC's self-regulating consistency losses (Khattak et al., "Self-regulating Prompts: Foundational
Model Adaptation without Forgetting", ICCV 2023, "mutual agreement maximization": L_SCL-image,
L_SCL-text, L_SCL-logits), with the reductions of the reference code (muzairkhattak/PromptSRC,
``trainers/promptsrc.py``): L1 with ``mean`` reduction between *normalised* features, and a KL divergence
summed and divided by the number of logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["feature_l1_loss", "logit_kl_loss"]


def feature_l1_loss(prompted: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between L2-normalised features (PromptSRC ``L_SCL-text`` / ``L_SCL-image``).

    Args:
        prompted: features of the prompted model ``[N, D]`` (normalised here).
        frozen: features of the frozen model ``[N, D]`` (normalised here; no gradient flows into them).

    Returns:
        a 0-d tensor, ``mean(|norm(prompted) - norm(frozen)|)`` over all ``N * D`` entries.
    """
    if prompted.shape != frozen.shape:
        raise ValueError(f"feature_l1_loss: shapes differ, prompted {tuple(prompted.shape)} vs frozen {tuple(frozen.shape)}")
    return F.l1_loss(F.normalize(prompted, dim=-1), F.normalize(frozen, dim=-1).detach(), reduction="mean")


def logit_kl_loss(logits: torch.Tensor, frozen_logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(frozen/T) || softmax(logits/T)) * T^2 / (B * C)`` (PromptSRC ``L_SCL-logits``).

    The reference calls ``F.kl_div(log_softmax(logits/T), log_softmax(frozen/T), reduction='sum',
    log_target=True) * T * T / logits.numel()``: the zero-shot distribution is the target, the sum runs over
    the batch and the classes, and it is divided by the number of logits (not ``batchmean``).

    Args:
        logits: prompted logits ``[B, C]``.
        frozen_logits: zero-shot logits ``[B, C]`` of the same images (no gradient flows into them).
        temperature: ``T`` (1 in the reference).
    """
    if logits.shape != frozen_logits.shape:
        raise ValueError(f"logit_kl_loss: shapes differ, {tuple(logits.shape)} vs {tuple(frozen_logits.shape)}")
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(logits / t, dim=-1),
        F.log_softmax(frozen_logits.detach() / t, dim=-1),
        reduction="sum",
        log_target=True,
    )
    return kl * (t * t) / logits.numel()
