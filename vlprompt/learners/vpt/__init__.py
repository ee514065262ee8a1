"""VPT: Visual Prompt Tuning (Jia et al., ECCV 2022), as applied to CLIP in the MaPLe repository.

Image tower (Jia et al. eq. 4-5): ``n`` learned tokens ``P_0 [n, Wv]`` are appended after the patch tokens
at the first layer's input (after the class + patch embeddings and their positional embeddings, before
``ln_pre``); with depth ``J > 1`` the outputs of those ``n`` positions are replaced by fresh learned tokens
``P_i`` at the input of layers ``1..J-1`` (VPT-deep). Tokens start N(0, 0.02^2). The pooled class token
gives the image feature. The text side is the fixed hand-written template ``"a photo of a {}."``; logits are
``scale * cos`` (CLIP). This follows ``trainers/vpt.py`` and ``VisionTransformer``/``ResidualAttentionBlock_IVLP``
of muzairkhattak/multimodal-prompt-learning (fp32 here; the reference casts prompts to fp16).

Deliberate differences: ``prompt_depth=None`` means the paper's depth capped at the tower's layer count
(the reference only asserts ``depth >= 1``); ``n_ctx=0`` is the empty prompt set (zero-shot CLIP).
"""

from __future__ import annotations

import torch

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.layers import template_features
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.prompts.vl_layers import (
    PromptConfigError,
    VisualPrompts,
    check_reference_depth,
    guess_reference_learner,
    reference_deep_prompts,
    reference_keys,
    resolve_depth,
    take_reference_tensor,
)


class VPT(PromptLearner):
    """Visual prompt tokens in the image tower; fixed text template.

    Args:
        n_ctx: visual prompt tokens per layer (MaPLe repo's VPT-deep baseline: 8); 0 = none (zero-shot).
        prompt_depth: layers ``0..J-1`` that get learned tokens (1 = VPT-shallow; paper config 12);
            ``None`` = 12 capped at the tower's layers.
        template: the fixed text prompt (``{}`` = class name).
        init_std: std of the N(0, std^2) initialisation.
    """

    family = "visual"
    modifies_image_encoder = True
    paper_depth = 12

    def __init__(
        self,
        n_ctx: int = 8,
        *,
        prompt_depth: int | None = None,
        template: str = "a photo of a {}.",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if n_ctx < 0:
            raise LearnerError(f"n_ctx={n_ctx} must be >= 0 (0 = no visual prompts)")
        if "{}" not in template:
            raise LearnerError(f"template={template!r} has no '{{}}' for the class name, e.g. 'a photo of a {{}}.'")
        self.n_ctx = n_ctx
        self.prompt_depth = prompt_depth
        self.template = template
        self.init_std = init_std
        self._fixed_text: torch.Tensor | None = None

    @property
    def trainable(self) -> bool:  # type: ignore[override]
        return self.n_ctx > 0

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        try:
            self.depth = resolve_depth(
                self.prompt_depth, paper=self.paper_depth, layers=backbone.vision_layers, name="prompt_depth", owner="vpt"
            )
        except PromptConfigError as exc:
            raise LearnerError(str(exc)) from exc
        self.visual = VisualPrompts(self.n_ctx, backbone.vision_width, self.depth, std=self.init_std)

    def on_classnames_changed(self, classnames: list[str]) -> None:
        self._fixed_text = None

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual.encode(self.backbone, images)

    def text_features(self) -> torch.Tensor:
        # frozen: independent of learned tensors, so it is computed once per label space
        if self._fixed_text is None:
            self._fixed_text = template_features(self.backbone, self.classnames, [self.template])
        return self._fixed_text

    # ------------------------------------------------------------------ reference checkpoints
    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a ``trainers/vpt.py`` state dict (``image_encoder.VPT``,
        ``image_encoder.transformer.resblocks.{i}.VPT_shallow``) to :meth:`learned_state` names."""
        ref = reference_keys(state)
        kind = guess_reference_learner(ref)
        if kind != "vpt":
            raise LearnerError(
                f"vpt: this state dict was saved by the reference {kind!r} trainer, not VPT: import it with that learner"
            )
        try:
            width = self.backbone.vision_width
            out = {
                "visual.shallow": take_reference_tensor(
                    ref, "image_encoder.VPT", (self.n_ctx, width), owner="vpt", meaning="[n_ctx, vision width]"
                )
            }
            deep = reference_deep_prompts(ref, "image_encoder")
            check_reference_depth(list(deep), list(range(1, self.depth)), owner="vpt", what="visual prompts")
            for i in deep:
                out[f"visual.deep.prompts.{i - 1}"] = take_reference_tensor(
                    ref, f"image_encoder.transformer.resblocks.{i}.VPT_shallow", (self.n_ctx, width), owner="vpt",
                    meaning=f"layer {i} visual prompts [n_ctx, vision width]",
                )
        except PromptConfigError as exc:
            raise LearnerError(str(exc)) from exc
        return out
