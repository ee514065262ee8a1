"""CLIP-LoRA (Zanella & Ben Ayed, CVPR Workshops 2024): low-rank adapters on the q/k/v projections of both towers.

Faithful to MaxZanella/CLIP-LoRA at commit 358f0d7361f59e66c0b2d0b672a3dafb143a759b:

- every projection ``p`` of ``q, k, v`` (``run_utils.py`` ``--params`` default) of every layer (``--position all``) of
  both towers (``--encoder both``) gets ``p(x) + s * dropout(x) @ (B A)^T`` with ``A [r, W]`` Kaiming-uniform
  (``a = sqrt(5)``) and ``B [W, r]`` zero (``loralib/layers.py`` ``init_lora_param``, l. 63-68), scaling
  ``s = alpha / sqrt(r)`` (l. 42, not LoRA's ``alpha / r``), dropout on the adapter's input only, drawn separately
  for q, k and v (``LinearLoRA.forward``, l. 186-207); rank 2, alpha 1, dropout 0.25 (``run_utils.py``);
- the class text features are recomputed through the adapted text tower at every step from the dataset's template
  (``lora.py`` ``run_lora``); logits ``scale * cos``; cross-entropy (``lora.py`` l. 105-106).

Implementation: a small LoRA layer of vlprompt's own, not PEFT. The backbone is shared and frozen, and the deltas
must live in the learner: they are applied through the backbone's generic
:meth:`~vlprompt.backbones.base.VLBackbone.attention_adapter` hook (an additive term on the packed q/k/v projection),
which PEFT cannot target without wrapping (and so modifying) the backbone's modules; and the reference's math
(``alpha / sqrt(r)``, dropout per projection) is a few lines. ``tests/test_clip_lora.py`` checks the logits and one
AdamW step against the reference's ``PlainMultiheadAttentionLoRA`` on a tiny random CLIP.

Deliberate differences: fp32 (the reference trains under fp16 autocast with a GradScaler); the logit scale is the
backbone's (the reference hard-codes 100, which is OpenAI ViT-B/16's ``exp(logit_scale)``); in eval mode the
reference merges ``s B A`` into the weights (same math, other rounding); only ``q, k, v`` (the reference's ``o``
option, LoRA on the output projection, is refused with the fix); the reference's per-iteration cosine schedule
becomes the host module's per-epoch one (``configs/learners/clip_lora/``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner

PROJECTIONS = ("q", "k", "v")
ENCODERS = {"both": ("text", "vision"), "text": ("text",), "vision": ("vision",)}


class LoRAQKV(nn.Module):
    """LoRA on the q/k/v projections of one attention layer of width ``W``: ``forward(x [B, L, W])`` is the
    ``[B, L, 3W]`` term added to the packed q/k/v projection (zeros for projections without an adapter)."""

    def __init__(self, width: int, rank: int, alpha: float, dropout: float, params: Sequence[str]) -> None:
        super().__init__()
        self.width, self.params, self.scaling = width, tuple(params), alpha / math.sqrt(rank)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for p in self.params:
            a = torch.empty(rank, width)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[p] = nn.Parameter(a)
            self.lora_B[p] = nn.Parameter(torch.zeros(width, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for p in PROJECTIONS:
            if p in self.lora_A:  # the reference: matmul(dropout(x), (B @ A)^T) * scaling, a fresh dropout per projection
                parts.append(torch.matmul(self.dropout(x), (self.lora_B[p] @ self.lora_A[p]).t()) * self.scaling)
            else:
                parts.append(x.new_zeros(*x.shape[:-1], self.width))
        return torch.cat(parts, dim=-1)


class CLIPLoRA(PromptLearner):
    """LoRA adapters on the frozen towers' attention (q, k, v), hand-written text classifier.

    Args:
        rank: LoRA rank ``r`` (reference 2).
        alpha: LoRA alpha; the scaling is ``alpha / sqrt(r)`` as in the reference (1).
        dropout: dropout on the adapters' input during training (0.25).
        encoder: ``both`` (reference), ``text`` or ``vision``.
        params: projections with an adapter, among ``q``, ``k``, ``v`` (reference ``q k v``).
        layers: layer indices with adapters (``None``: all, the reference's ``--position all``); the reference's
            other positions for ViT-B/16: bottom ``[0, 1, 2, 3]``, mid ``[4..7]``, up ``[8..11]``, half-up ``[6..11]``,
            half-bottom ``[0..5]`` (``loralib/utils.py`` l. 10-44).
        template: the text prompt (``{}`` = class name); the reference uses the dataset's first template.
    """

    family = "multimodal"
    tasks = ("classification",)
    modifies_image_encoder = True

    def __init__(
        self,
        rank: int = 2,
        alpha: float = 1.0,
        dropout: float = 0.25,
        *,
        encoder: str = "both",
        params: Sequence[str] = PROJECTIONS,
        layers: Sequence[int] | None = None,
        template: str = "a photo of a {}.",
    ) -> None:
        super().__init__()
        if rank < 1:
            raise LearnerError(f"clip_lora: rank={rank} must be >= 1 (reference: 2)")
        if not 0 <= dropout < 1:
            raise LearnerError(f"clip_lora: dropout={dropout} must be in [0, 1) (reference: 0.25)")
        if encoder not in ENCODERS:
            raise LearnerError(f"clip_lora: encoder={encoder!r} must be one of {sorted(ENCODERS)} (reference: both)")
        bad = [p for p in params if p not in PROJECTIONS]
        if bad or not params:
            raise LearnerError(f"clip_lora: params={list(params)!r}: give some of {list(PROJECTIONS)} (the reference's "
                               "'o', LoRA on the output projection, is not supported)")
        if "{}" not in template:
            raise LearnerError(f"clip_lora: template={template!r} has no '{{}}' for the class name")
        self.rank, self.alpha, self.dropout, self.encoder = rank, alpha, dropout, encoder
        self.params, self.layers, self.template = tuple(params), None if layers is None else list(layers), template

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        towers = backbone.attention_layers()
        widths = {"text": backbone.text_width, "vision": backbone.vision_width}
        self.lora = nn.ModuleDict()
        for tower in ENCODERS[self.encoder]:
            if tower not in towers:
                raise LearnerError(
                    f"clip_lora: encoder={self.encoder!r} needs LoRA in the {tower} tower, but backbone "
                    f"{backbone.info.name!r} (model {backbone.info.model!r}) takes attention adapters only in "
                    f"{sorted(towers) or 'no tower'}. Use an open_clip CLIP ViT (e.g. model: ViT-B-16)"
                    + (" or encoder: text" if "text" in towers else "") + "."
                )
            n = towers[tower]
            chosen = range(n) if self.layers is None else self.layers
            wrong = [i for i in chosen if not 0 <= i < n]
            if wrong:
                raise LearnerError(f"clip_lora: layers {wrong} are outside the {tower} tower's 0..{n - 1}")
            self.lora[tower] = nn.ModuleDict({
                str(i): LoRAQKV(widths[tower], self.rank, self.alpha, self.dropout, self.params) for i in chosen
            })

    def on_classnames_changed(self, classnames: list[str]) -> None:
        texts = [self.template.format(c.replace("_", " ")) for c in classnames]
        self.register_buffer("tokens", self.backbone.tokenize(texts), persistent=False)

    def _delta(self, tower: str, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        adapters = self.lora[tower] if tower in self.lora else None
        return adapters[str(layer)](x) if adapters is not None and str(layer) in adapters else None

    def text_features(self) -> torch.Tensor:
        with self.backbone.attention_adapter(self._delta):
            return self.backbone.encode_text(self.tokens.to(self.backbone.logit_scale.device))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if "vision" not in self.lora:
            return self.backbone.encode_image(images)
        with self.backbone.attention_adapter(self._delta):
            return self.backbone.encode_image(images)
