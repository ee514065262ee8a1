"""Instance-conditioned text prompts, shared by learners whose classifier depends on the image.

CoCoOp (Zhou et al., CVPR 2022, eq. 1-2) gives every image its own context ``v_m(x) = v_m + pi(x)``, hence
its own prompt for every class: ``B x C`` prompts per batch instead of ``C``. Encoding them at once is what
makes the reference need batch 1. :func:`encode_conditioned_prompts` encodes them in chunks of at most
``chunk_size`` prompts and, when gradients are needed, recomputes each chunk's text-encoder activations
in the backward pass (``torch.utils.checkpoint``), so only the small per-chunk inputs and the output
features are kept. Both are exact: the features equal a one-shot encoding up to float rounding.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.layers import ClassPrompts


def check_chunk_size(chunk_size: object, *, who: str = "chunk_size") -> int:
    """``chunk_size`` as a positive int, or a ValueError naming the value and the fix."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"{who}={chunk_size!r} must be a positive integer: the number of prompts (images x classes) "
            "encoded at once, e.g. 64 (lower it if memory runs out)"
        )
    return chunk_size


def _encode_rows(
    backbone: VLBackbone, prompts: ClassPrompts, ctx_rows: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Features ``[R, D]`` of prompts ``[SOS] ctx_rows[r] [CLASS classes[r]] . [EOS]`` (``ctx_rows [R, n, Wt]``)."""
    emb = torch.cat([prompts.prefix[classes], ctx_rows.to(prompts.prefix.dtype), prompts.suffix[classes]], dim=1)
    return backbone.encode_text_embeddings(emb, prompts.pool_index[classes])


def encode_conditioned_prompts(
    backbone: VLBackbone,
    prompts: ClassPrompts,
    ctx: torch.Tensor,
    *,
    chunk_size: int,
    recompute: bool = False,
) -> torch.Tensor:
    """Text features ``[B, C, D]`` of per-image contexts ``ctx [B, n, Wt]`` and the ``C`` classes of ``prompts``.

    Prompt ``(b, c)`` is ``[SOS] ctx[b] [CLASS c] . [EOS]`` (class token at the end, CoCoOp's layout). Prompts
    are encoded ``chunk_size`` at a time in row-major ``(b, c)`` order; ``recompute=True`` (training) keeps no
    text-encoder activations and recomputes them during backward.
    """
    check_chunk_size(chunk_size)
    if prompts.position != "end":
        raise ValueError(f"conditioned prompts put the class token at the end, not {prompts.position!r}")
    batch, n_cls = ctx.shape[0], prompts.n_cls
    rows = torch.arange(batch * n_cls, device=ctx.device)
    feats = []
    for chunk in rows.split(chunk_size):
        images, classes = chunk // n_cls, chunk % n_cls
        ctx_rows = ctx[images]
        if recompute and torch.is_grad_enabled():
            feats.append(_checkpoint(_encode_rows, backbone, prompts, ctx_rows, classes, use_reentrant=False))
        else:
            feats.append(_encode_rows(backbone, prompts, ctx_rows, classes))
    return torch.cat(feats).view(batch, n_cls, -1)


def encode_paired_prompts(
    backbone: VLBackbone,
    prompts: ClassPrompts,
    ctx: torch.Tensor,
    classes: torch.Tensor,
    *,
    chunk_size: int,
    recompute: bool = False,
) -> torch.Tensor:
    """Text features ``[B, D]`` of one prompt per image: ``[SOS] ctx[b] [CLASS classes[b]] . [EOS]`` for per-image
    contexts ``ctx [B, n, Wt]`` and class indices ``classes [B]`` into ``prompts``.

    Row ``b`` equals row ``(b, classes[b])`` of :func:`encode_conditioned_prompts` but only ``B`` prompts are
    encoded, not ``B x C`` (segmentation conditions each image's mask on its own prompt).
    """
    check_chunk_size(chunk_size)
    if prompts.position != "end":
        raise ValueError(f"conditioned prompts put the class token at the end, not {prompts.position!r}")
    if classes.shape != ctx.shape[:1]:
        raise ValueError(f"expected one class index per context, got {tuple(classes.shape)} for {tuple(ctx.shape)}")
    classes = classes.to(device=ctx.device)
    feats = []
    for rows in torch.arange(ctx.shape[0], device=ctx.device).split(chunk_size):
        if recompute and torch.is_grad_enabled():
            feats.append(_checkpoint(_encode_rows, backbone, prompts, ctx[rows], classes[rows], use_reentrant=False))
        else:
            feats.append(_encode_rows(backbone, prompts, ctx[rows], classes[rows]))
    return torch.cat(feats)
