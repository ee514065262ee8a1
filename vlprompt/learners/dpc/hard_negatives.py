"""DPC's Dynamic Hard Negative Optimizer: which classes join a sample as hard negatives, the contrastive loss over
the enlarged mini-batch, and the rule that mixes the two prompts.

Facts carried over from the reference (JREion/DPC @01e6b59, ``trainers/sple_coop.py``): hard negatives are the
classes the *original* (backbone-tuned) prompt ranks in its top ``K`` for an image
(``StackSPLE_CoOp.parse_sple_batch_train``), each class at most once per mini-batch, one training image of each such
class is drawn, and the enlarged batch is trained with a symmetric image-text contrastive loss whose targets are the
diagonal (``StackSPLE_CoOp.forward_backward``). How the two prompts meet (``PromptLearner.forward`` and
``StackSPLE_CoOp.load_model``) is :func:`decoupled_prompt`.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def decoupled_prompt(parallel: torch.Tensor, original: torch.Tensor, weight: float, mix: float = 1.0) -> torch.Tensor:
    """The prompt tensor the wrapped learner runs with (any shape; ``parallel`` and ``original`` alike).

    What the reference computes, not what its comments say. Its tunable ``ctx`` (``theta``) is built as
    ``nn.Parameter(pretuned_ctx)`` (``sple_coop.py:203, 210``), which shares storage with the ``pretuned_ctx`` its
    "converse" forward subtracts, ``(ctx - (1 - w) * pretuned_ctx) * (1 / w)`` (``sple_coop.py:246``). The two hold the
    same numbers at every step, so the prompt that runs is ``theta`` itself and the only effect of ``w`` is on the
    gradient, ``d/dtheta = (1/w) d/dprompt`` (the aliased tensor carries no gradient). For another label space
    ``load_model`` writes ``m theta + (1 - m) P`` into that aliased parameter (``sple_coop.py:716-717``, ``P`` read again
    from the backbone's checkpoint), so new classes run with ``m theta + (1 - m) P``: the original prompt at the
    configs' ``m = 0``. Here the alias is ``mixed.detach()``, with the reference's order of operations.

    Args:
        parallel: ``theta``, the tuned tensor. original: ``P``, the backbone-tuned tensor (same shape).
        weight: ``w`` in ``(0, 1]`` (``SPLE.STACK.WEIGHT``). mix: ``m`` in ``[0, 1]`` (1 on the training classes,
            ``SPLE.STACK.WEIGHT_FOR_NEW`` elsewhere).
    Returns:
        a tensor of the same shape, equal to ``m theta + (1 - m) P`` up to rounding, whose gradient to ``theta`` is
        ``m / w`` times the prompt's.
    """
    mixed = parallel if mix == 1.0 else mix * parallel + (1 - mix) * original
    return (mixed - (1 - weight) * mixed.detach()) * (1 / weight)


def select_negatives(scores: torch.Tensor, label: int, in_batch: list[int], top_k: int, rng: random.Random) -> list[int]:
    """Hard-negative classes for one image, as the reference picks them; ``in_batch`` is updated in place.

    Args:
        scores: ``[C]`` the original prompt's scores of the image (any monotone map of its logits).
        label: the image's class. in_batch: classes already in the mini-batch (every image's label first).
        top_k: ``SPLE.INFER_TOPK``. rng: the random source of the fallback draw (Python's ``random`` in the reference).
    Returns:
        the classes, in the order they join the batch.

    Kept from the reference: its cap of ``K - 1`` negatives tests the (still empty) output list, so every top-``K``
    class other than the label is a candidate (``sple_coop.py:556``); when fewer than 2 survive, classes are
    drawn with ``randint(1, C - 2)``, ``C - 2`` times at most, until 2 are found (so the first and last class are
    never drawn, ``sple_coop.py:566-576``). ``top_k`` larger than ``C`` is clamped (the reference would fail).
    """
    n_cls = int(scores.shape[0])
    ranked = scores.topk(min(int(top_k), n_cls)).indices.tolist()
    chosen: list[int] = []
    for c in (c for c in ranked if c != label):
        if c not in in_batch:
            chosen.append(c)
            in_batch.append(c)
    if len(chosen) < 2:
        for _ in range(n_cls - 2):
            c = rng.randint(1, n_cls - 2)
            if c not in in_batch and len(chosen) < 2:
                chosen.append(c)
                in_batch.append(c)
            elif len(chosen) >= 2:
                break
    return chosen


def dual_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """DPC's loss ``L_cl`` over the enlarged mini-batch (``sple_coop.py:360-371, 476-484``).

    Args:
        image_features: ``[M, D]`` (normalised here). text_features: ``[M, D]``, row ``i`` the prompt feature of
            image ``i``'s class (normalised here). scale: the backbone's (exponentiated) logit scale.
    Returns:
        the 0-d mean of the image-to-text and text-to-image cross-entropies with targets ``0..M-1``.
    """
    if image_features.shape != text_features.shape or image_features.dim() != 2:
        raise ValueError(f"dual_contrastive_loss: image features {tuple(image_features.shape)} and text features "
                         f"{tuple(text_features.shape)} must both be [M, D]")
    logits = scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
