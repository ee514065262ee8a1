"""KgCoOp: Knowledge-guided Context Optimization, a third-party vlprompt learner plugin.

Yao, Zhang, Xu. "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization", CVPR 2023.

CoOp's learnable context, trained with ``L = L_ce + lambda * L_kg`` (eq. 4), where
``L_kg = 1/Nc * sum_i ||w_i - w_i^clip||_2^2`` (eq. 3) is the squared distance between the normalised text
feature ``w_i`` of class ``i``'s learned prompt and the normalised feature ``w_i^clip`` of the hand-crafted
prompt (``"a photo of a {}."``) from the frozen text encoder. Keeping the learned classifier close to the
general CLIP knowledge reduces forgetting and helps on unseen (new) classes.

For unit vectors ``||w - w'||^2 = 2 (1 - cos(w, w'))``: the authors' code adds ``8.0 * (1 - mean cos)``,
which equals ``lambda = 4.0`` in the form used here (the paper's eq. 3 with its stated ``lambda = 8.0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlprompt.learners import ClassTokenPosition, LearnerError, template_features
from vlprompt.learners.coop import CoOp

__version__ = "0.1.0"


class KgCoOp(CoOp):
    """CoOp with a knowledge-guided regulariser towards the hand-crafted CLIP classifier.

    Args:
        n_ctx: number of context vectors (paper: 4); with ``ctx_init`` it must equal its token count or be ``None``.
        ctx_init: words initialising the context (paper: ``"a photo of a"``); ``None`` = random N(0, 0.02^2).
        class_token_position: ``end``, ``middle`` or ``front`` (as in CoOp).
        class_specific: one context per class (CSC); cannot score unseen classes.
        init_std: std of the random initialisation.
        kg_weight: lambda, the weight of ``L_kg`` (paper: 8.0); 0 gives plain CoOp.
        template: the hand-crafted prompt whose frozen features anchor the learned ones.
    """

    family = "text"

    def __init__(
        self,
        n_ctx: int | None = 4,
        *,
        ctx_init: str | None = "a photo of a",
        class_token_position: ClassTokenPosition = "end",
        class_specific: bool = False,
        init_std: float = 0.02,
        kg_weight: float = 8.0,
        template: str = "a photo of a {}.",
    ) -> None:
        super().__init__(
            n_ctx,
            ctx_init=ctx_init,
            class_token_position=class_token_position,
            class_specific=class_specific,
            init_std=init_std,
        )
        if kg_weight < 0:
            raise LearnerError(f"kg_weight={kg_weight} must be >= 0 (paper: 8.0; 0 disables the knowledge term)")
        if "{}" not in template:
            raise LearnerError(f"template={template!r} has no '{{}}' for the class name, e.g. 'a photo of a {{}}.'")
        self.kg_weight = float(kg_weight)
        self.template = template
        self._pending_text: torch.Tensor | None = None
        self.register_buffer("clip_text_features", torch.empty(0), persistent=False)

    def on_classnames_changed(self, classnames: list[str]) -> None:
        """Rebuild CoOp's class prompts and the frozen hand-crafted features ``[C, D]`` for ``classnames``."""
        super().on_classnames_changed(classnames)
        ref = template_features(self.backbone, classnames, [self.template])
        self.clip_text_features = ref.to(self.ctx.device)
        self._pending_text = None

    def text_features(self) -> torch.Tensor:
        """CoOp's class text features ``[C, D]``; kept for :meth:`loss` when computed with gradients."""
        feats = super().text_features()
        self._pending_text = feats if feats.requires_grad else None
        return feats

    def kg_loss(self, text_feats: torch.Tensor | None = None) -> torch.Tensor:
        """``L_kg`` (eq. 3): mean over classes of ``||norm(w_i) - w_i^clip||^2``; ``text_feats`` ``[C, D]`` or recomputed."""
        feats = self.text_features() if text_feats is None else text_feats
        ref = self.clip_text_features
        if feats.shape != ref.shape:
            raise LearnerError(
                f"text features {tuple(feats.shape)} do not match the hand-crafted features {tuple(ref.shape)}: "
                "were the class names changed without set_classnames()?"
            )
        return (F.normalize(feats, dim=-1) - ref.to(feats.dtype)).pow(2).sum(dim=-1).mean()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """``L_ce + kg_weight * L_kg`` (eq. 4), reusing the text features of the step's :meth:`logits` call."""
        ce = F.cross_entropy(logits, targets)
        feats, self._pending_text = self._pending_text, None
        if self.kg_weight == 0.0:
            return ce
        if feats is None or feats.shape[0] != logits.shape[1]:
            feats = self.text_features()
            self._pending_text = None
        return ce + self.kg_weight * self.kg_loss(feats)

    def train(self, mode: bool = True) -> "KgCoOp":
        self._pending_text = None
        return super().train(mode)


__all__ = ["KgCoOp"]
