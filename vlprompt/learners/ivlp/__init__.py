"""IVLP: Independent Vision-Language Prompting (the deep baseline of Khattak et al., MaPLe, CVPR 2023, and
of PromptSRC, ICCV 2023).

Text tower: the prompt of class ``c`` is ``[SOS] ctx_1..ctx_n <rest of ctx_init> <class> . [EOS]``; the
context ``[n, Wt]`` starts from the first ``n`` tokens of ``ctx_init`` ("a photo of a": with ``n = 2``
"of a" stays fixed text, as in the reference) or N(0, 0.02^2). At layers ``1..J_t-1`` the hidden states at
positions ``1..n`` are replaced by learned deep prompts (MaPLe eq. 1-2 without coupling). Image tower:
VPT-deep tokens (:class:`~vlprompt.learners.prompts.vl_layers.VisualPrompts`), appended after the patch tokens and replaced at
layers ``1..J_v-1``. Both sets are learned independently; logits are ``scale * cos``. This follows
``trainers/independentVL.py`` and ``ResidualAttentionBlock_IVLP`` of muzairkhattak/multimodal-prompt-learning
(identical in muzairkhattak/PromptSRC), computed in fp32.

Deliberate differences: the reference silently falls back to random context when ``n_ctx > 4`` with a
``ctx_init``; here ``n_ctx`` larger than the words' token count is an error and ``ctx_init: null`` asks for
random context. ``None`` depths mean the paper's depth capped at the tower's layer count. ``n_ctx_vision=0``
is language-only deep prompting (the reference's ``4ctx_language_only`` config).
"""

from __future__ import annotations

import torch
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.layers import ClassPrompts, DeepPrompts, text_features
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
    text_context,
)


class IVLP(PromptLearner):
    """Independent deep prompts in both towers.

    Args:
        n_ctx_text: text context tokens per layer (MaPLe repo: 2; PromptSRC: 4).
        n_ctx_vision: visual prompt tokens per layer (2; 4); 0 = text only.
        ctx_init: words initialising the layer-0 text context (first ``n_ctx_text`` tokens); ``None`` = random.
        prompt_depth_text: text layers ``0..J-1`` with learned prompts (12 in the MaPLe repo, 9 in PromptSRC's);
            ``None`` = 9 capped at the tower's layers.
        prompt_depth_vision: likewise for the image tower.
        init_std: std of the N(0, std^2) initialisation of random prompts.
    """

    family = "multimodal"
    modifies_image_encoder = True
    paper_depth = 9
    reference_name = "ivlp"

    def __init__(
        self,
        n_ctx_text: int = 2,
        n_ctx_vision: int = 2,
        *,
        ctx_init: str | None = "a photo of a",
        prompt_depth_text: int | None = None,
        prompt_depth_vision: int | None = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if n_ctx_text < 1:
            raise LearnerError(f"n_ctx_text={n_ctx_text} must be at least 1 (use vpt for image-only prompts)")
        if n_ctx_vision < 0:
            raise LearnerError(f"n_ctx_vision={n_ctx_vision} must be >= 0 (0 = text prompts only)")
        self.n_ctx_text = n_ctx_text
        self.n_ctx_vision = n_ctx_vision
        self.ctx_init = ctx_init
        self.prompt_depth_text = prompt_depth_text
        self.prompt_depth_vision = prompt_depth_vision
        self.init_std = init_std
        self.prompts: ClassPrompts | None = None
        self._lead: str | None = None

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        owner = type(self).__name__.lower()
        try:
            self.depth_text = resolve_depth(
                self.prompt_depth_text, paper=self.paper_depth, layers=backbone.text_layers,
                name="prompt_depth_text", owner=owner,
            )
            self.depth_vision = resolve_depth(
                self.prompt_depth_vision, paper=self.paper_depth, layers=backbone.vision_layers,
                name="prompt_depth_vision", owner=owner,
            )
            ctx, self._lead = text_context(backbone, self.n_ctx_text, self.ctx_init, std=self.init_std)
        except PromptConfigError as exc:
            raise LearnerError(str(exc)) from exc
        self.ctx = nn.Parameter(ctx)
        self.text_deep = DeepPrompts(self.depth_text, self.n_ctx_text, backbone.text_width, std=self.init_std)
        self.visual = VisualPrompts(self.n_ctx_vision, backbone.vision_width, self.depth_vision, std=self.init_std)

    def on_classnames_changed(self, classnames: list[str]) -> None:
        device = self.ctx.device if hasattr(self, "ctx") else None
        try:
            self.prompts = ClassPrompts(self.backbone, classnames, self.n_ctx_text, lead_text=self._lead)
        except ValueError as exc:
            raise LearnerError(f"{type(self).__name__.lower()}: {exc}") from exc
        if device is not None:
            self.prompts.to(device)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual.encode(self.backbone, images)

    def text_features(self) -> torch.Tensor:
        return text_features(
            self.backbone, self.prompts(self.ctx), self.prompts.pool_index, deep_prompts=self.text_deep.as_layers()
        )

    # ------------------------------------------------------------------ reference checkpoints
    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a reference IVLP/PromptSRC state dict to :meth:`learned_state` names.

        Reference names: ``prompt_learner.ctx`` ``[n_t, Wt]``; ``text_encoder.transformer.resblocks.{i}.VPT_shallow``
        ``[n_t, Wt]`` (text layers ``1..J_t-1``); ``image_encoder.VPT`` ``[n_v, Wv]``;
        ``image_encoder.transformer.resblocks.{i}.VPT_shallow`` ``[n_v, Wv]`` (image layers ``1..J_v-1``).
        """
        owner = type(self).__name__.lower()
        ref = reference_keys(state)
        kind = guess_reference_learner(ref)
        if kind == "coop" and self.n_ctx_vision == 0 and self.depth_text == 1:
            kind = "ivlp"  # shallow, language-only IVLP saves only `ctx`, like CoOp
        if kind != "ivlp":
            raise LearnerError(
                f"{owner}: this state dict was saved by the reference {kind!r} trainer, not IVLP/PromptSRC: import it "
                "with that learner"
            )
        wt, wv = self.backbone.text_width, self.backbone.vision_width
        try:
            out = {
                "ctx": take_reference_tensor(
                    ref, "ctx", (self.n_ctx_text, wt), owner=owner, meaning="text context [n_ctx_text, text width]"
                )
            }
            deep_t = reference_deep_prompts(ref, "text_encoder")
            check_reference_depth(list(deep_t), list(range(1, self.depth_text)), owner=owner, what="text prompts")
            for i in deep_t:
                out[f"text_deep.prompts.{i - 1}"] = take_reference_tensor(
                    ref, f"text_encoder.transformer.resblocks.{i}.VPT_shallow", (self.n_ctx_text, wt), owner=owner,
                    meaning=f"layer {i} text prompts [n_ctx_text, text width]",
                )
            deep_v = reference_deep_prompts(ref, "image_encoder")
            if self.n_ctx_vision == 0:
                if "image_encoder.VPT" in ref or deep_v:
                    raise PromptConfigError(f"{owner}: the reference state has visual prompts but n_ctx_vision=0")
                return out
            out["visual.shallow"] = take_reference_tensor(
                ref, "image_encoder.VPT", (self.n_ctx_vision, wv), owner=owner, meaning="[n_ctx_vision, vision width]"
            )
            check_reference_depth(list(deep_v), list(range(1, self.depth_vision)), owner=owner, what="visual prompts")
            for i in deep_v:
                out[f"visual.deep.prompts.{i - 1}"] = take_reference_tensor(
                    ref, f"image_encoder.transformer.resblocks.{i}.VPT_shallow", (self.n_ctx_vision, wv), owner=owner,
                    meaning=f"layer {i} visual prompts [n_ctx_vision, vision width]",
                )
        except PromptConfigError as exc:
            raise LearnerError(str(exc)) from exc
        return out
