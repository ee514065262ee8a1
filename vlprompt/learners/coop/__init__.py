"""CoOp: Context Optimization (Zhou, Yang, Loy, Liu; IJCV 2022, "Learning to Prompt for Vision-Language Models").

The prompt of class ``i`` is ``t_i = [V]_1 ... [V]_M [CLASS_i]`` (eq. 2) with ``M`` learnable context
vectors shared by all classes (unified) or one set per class (class-specific, CSC); the class token may sit
at the end, in the middle or at the front (eq. 3). Logits are ``cos(g(t_i), f(x)) / tau`` (eq. 4), trained
with cross-entropy; the encoders stay frozen. Context starts from the embeddings of words such as
``"a photo of a"`` (then, before training, CoOp equals zero-shot CLIP with that template) or N(0, 0.02^2).
"""

from __future__ import annotations

import torch
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.layers import ClassPrompts, ClassTokenPosition, context_from_words, random_context, text_features
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.reference_import import import_context_state


class CoOp(PromptLearner):
    """Learnable context vectors for the text encoder.

    Args:
        n_ctx: number of context vectors M (CoOp default 16); with ``ctx_init`` it must equal its token
            count or be ``None``.
        ctx_init: words whose embeddings initialise the context (e.g. ``"a photo of a"``); ``None`` = random.
        class_token_position: ``end``, ``middle`` or ``front``.
        class_specific: one context per class (CSC); cannot score classes unseen in training.
        init_std: std of the random initialisation.
    """

    family = "text"

    def __init__(
        self,
        n_ctx: int | None = 16,
        *,
        ctx_init: str | None = None,
        class_token_position: ClassTokenPosition = "end",
        class_specific: bool = False,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if ctx_init is None and (n_ctx is None or n_ctx < 1):
            raise LearnerError(f"n_ctx={n_ctx} must be a positive integer when ctx_init is not given")
        if class_token_position not in ("end", "middle", "front"):
            raise LearnerError(f"class_token_position={class_token_position!r} must be 'end', 'middle' or 'front'")
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.class_token_position = class_token_position
        self.class_specific = class_specific
        self.init_std = init_std
        self.prompts: ClassPrompts | None = None

    @property
    def transfers_to_new_classes(self) -> bool:  # type: ignore[override]
        return not self.class_specific

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        if self.ctx_init:
            ctx = context_from_words(backbone, self.ctx_init, self.n_ctx)
            self.n_ctx = ctx.shape[0]
            if self.class_specific:
                ctx = ctx.unsqueeze(0).repeat(len(classnames), 1, 1)
        else:
            ctx = random_context(
                self.n_ctx, backbone.text_width, n_cls=len(classnames) if self.class_specific else None, std=self.init_std
            )
        self.ctx = nn.Parameter(ctx)

    def on_classnames_changed(self, classnames: list[str]) -> None:
        device = self.ctx.device if hasattr(self, "ctx") else None
        try:
            self.prompts = ClassPrompts(self.backbone, classnames, int(self.n_ctx), position=self.class_token_position)
        except ValueError as exc:
            raise LearnerError(
                f"{type(self).__name__} with n_ctx={self.n_ctx}: {exc} (context length {self.backbone.context_length}; "
                "lower n_ctx or use shorter class names)"
            ) from None
        if device is not None:
            self.prompts.to(device)

    def text_features(self) -> torch.Tensor:
        embeddings = self.prompts(self.ctx)
        return text_features(self.backbone, embeddings, self.prompts.pool_index)

    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CoOp's reference (KaiyangZhou/CoOp ``trainers/coop.py``) saves ``ctx`` plus the frozen
        ``token_prefix``/``token_suffix`` buffers, which are dropped (rebuilt from the class names)."""
        return import_context_state(self, state, frozen=("token_prefix", "token_suffix"))

