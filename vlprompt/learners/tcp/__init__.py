"""TCP: Textual-based Class-aware Prompt tuning (Yao, Zhang, Xu; CVPR 2024).

CoOp's shared learnable context ``[V]_1..[V]_M`` plus class-aware prompt tokens: the Textual Knowledge Embedding
(TKE) maps the frozen, normalised CLIP text feature ``w_i^clip`` of class ``i``'s hand-written prompt
(``"a photo of a {}."``) to ``M`` tokens ``T_i = TKE(w_i^clip)`` ``[M, Wt]``, which replace the hidden states of
the ``M`` context positions at the input of one middle text-encoder layer (the paper's layer 8 of 12). The
context shapes the first layers, the class-aware tokens the rest. Training adds KgCoOp's knowledge term:
``L = CE + lambda * (1 - mean_i cos(w_i, w_i^clip))``.

Reference: htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec6bd4901baaf318e9e8f073f618d12066e,
``trainers/tcp.py`` (prompt learner and loss), ``trainers/clip_text/model.py`` (the text blocks that insert
the tokens). Faithfulness: ``tests/test_tcp_equivalence.py`` (logits and one SGD step against that code).

Deliberate differences from the reference, each also noted beside the code:

- fp32 throughout; the reference's default precision is fp16 (``train.py:98,104`` ``PREC = "fp16"``), and its
  frozen hand-written features come from a second CLIP copy built in fp16 (``tcp.py:156-166``).
- the TKE's output is ``n_ctx * Wt`` reshaped to ``[C, n_ctx, Wt]``; the reference writes ``4 * ctx_dim``
  reshaped with a literal ``512`` (``tcp.py:172,195``), which is the same for its ViT-B/16 and ``N_CTX 4``.
- the insertion layer is the argument ``tke_layer`` (the reference's literal ``layers=[8]``,
  ``model.py:268``); ``None`` = 8 capped at the text tower's last layer, so tiny test towers work.
- the reference's ``TRAINER.COOP.W`` reaches the text blocks but is overridden there by a literal weight 1.0
  (``model.py:269,277``: ``weight * T + (1 - weight) * h``), so the tokens always replace the states; this
  learner replaces them and has no such argument. Its knowledge weight is ``8.0`` (literal at ``tcp.py:257``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.prompts.layers import ClassPrompts, context_from_words, random_context, template_features, text_features
from vlprompt.learners.reference_import import import_context_state

#: the reference's insertion layer (``trainers/clip_text/model.py:268``, ``layers=[8]``)
PAPER_TKE_LAYER = 8
#: the reference's prompt-learner tensors besides ``ctx`` (``tcp.py:169-173``), under its names
TKE_NAMES = ("meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias")


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the TKE's activation (``tcp.py:109-111``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TCP(PromptLearner):
    """Shared learnable context plus class-aware tokens from the TKE, inserted at one text layer.

    Args:
        n_ctx: number of context vectors M, also the number of class-aware tokens (reference script: 4).
        ctx_init: words initialising the context (``None`` = random N(0, init_std^2), the reference config's
            ``CTX_INIT: False``); with words, ``n_ctx`` must equal their token count or be ``None``.
        init_std: std of the random context.
        tke_layer: text layer at whose input the class-aware tokens replace the context positions
            (paper/reference: 8); ``None`` = 8 capped at the tower's last layer.
        kg_weight: lambda of ``1 - mean cos(w_i, w_i^clip)`` (reference: 8.0); 0 = cross-entropy only.
        template: the hand-written prompt whose frozen features feed the TKE and anchor the loss (the
            reference's ``CUSTOM_TEMPLATES_ori`` per dataset, e.g. ``"a photo of a {}, a type of pet."``).
        prompt_template: the learnable prompt's text, its first ``n_ctx`` tokens the context slots (the
            reference's ``CUSTOM_TEMPLATES``, e.g. ``"X X X X {}, a type of pet."``); ``None`` =
            ``"X X X X {}."``.
        tke_reduction: the TKE's hidden width is ``D // tke_reduction`` (reference: 4).
    """

    family = "text"
    tasks = ("classification",)

    def __init__(
        self,
        n_ctx: int | None = 4,
        *,
        ctx_init: str | None = None,
        init_std: float = 0.02,
        tke_layer: int | None = None,
        kg_weight: float = 8.0,
        template: str = "a photo of a {}.",
        prompt_template: str | None = None,
        tke_reduction: int = 4,
    ) -> None:
        super().__init__()
        if ctx_init is None and (n_ctx is None or n_ctx < 1):
            raise LearnerError(f"tcp: n_ctx={n_ctx} must be a positive integer when ctx_init is not given (paper: 4)")
        if kg_weight < 0:
            raise LearnerError(f"tcp: kg_weight={kg_weight} must be >= 0 (reference: 8.0; 0 disables the knowledge term)")
        for key, value in (("template", template), ("prompt_template", prompt_template)):
            if value is not None and value.count("{}") != 1:
                raise LearnerError(f"tcp: {key}={value!r} needs exactly one '{{}}' for the class name, e.g. 'a photo of a {{}}.'")
        if tke_reduction < 1:
            raise LearnerError(f"tcp: tke_reduction={tke_reduction} must be a positive integer (reference: 4)")
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.init_std = init_std
        self.tke_layer = tke_layer
        self.kg_weight = float(kg_weight)
        self.template = template
        self.prompt_template = prompt_template
        self.tke_reduction = tke_reduction
        self.prompts: ClassPrompts | None = None
        self.layer = 0
        self._pending_text: torch.Tensor | None = None
        self.register_buffer("clip_text_features", torch.empty(0), persistent=False)

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        if self.ctx_init:
            ctx = context_from_words(backbone, self.ctx_init, self.n_ctx)
            self.n_ctx = ctx.shape[0]
        else:
            ctx = random_context(self.n_ctx, backbone.text_width, std=self.init_std)
        self.ctx = nn.Parameter(ctx)
        last = backbone.text_layers - 1
        if self.tke_layer is None:
            self.layer = min(PAPER_TKE_LAYER, last)
        elif not 1 <= self.tke_layer <= last:
            raise LearnerError(
                f"tcp: tke_layer={self.tke_layer} but the text tower has {backbone.text_layers} layers: set tke_layer "
                f"between 1 and {last} (paper: 8 of 12), or null for min(8, {last})"
            )
        else:
            self.layer = int(self.tke_layer)
        if self.layer < 1:
            raise LearnerError(f"tcp: the text tower has {backbone.text_layers} layer(s); TCP needs at least 2")
        d, wt = backbone.embed_dim, backbone.text_width
        hidden = max(1, d // self.tke_reduction)
        # tcp.py:169-173: Linear(D, D/4) -> QuickGELU -> Linear(D/4, 4 * ctx_dim); here n_ctx * Wt (see module doc)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(d, hidden)),
            ("relu", QuickGELU()),
            ("linear2", nn.Linear(hidden, int(self.n_ctx) * wt)),
        ]))

    def on_classnames_changed(self, classnames: list[str]) -> None:
        """Rebuild the prompts ``[C, L, Wt]`` and the frozen hand-written features ``[C, D]`` for ``classnames``."""
        device = self.ctx.device
        lead, suffix = None, None
        if self.prompt_template is not None:
            before, suffix = self.prompt_template.split("{}")
            lead = before.strip() or None
        try:
            self.prompts = ClassPrompts(self.backbone, classnames, int(self.n_ctx), suffix_text=suffix, lead_text=lead)
        except ValueError as exc:
            raise LearnerError(
                f"tcp with n_ctx={self.n_ctx}, prompt_template={self.prompt_template!r}: {exc} (context length "
                f"{self.backbone.context_length})"
            ) from None
        self.prompts.to(device)
        # tcp.py:159-166: the frozen encoder's normalised features of the hand-written prompts
        self.clip_text_features = template_features(self.backbone, classnames, [self.template]).to(device)
        self._pending_text = None

    def class_tokens(self) -> torch.Tensor:
        """The TKE's class-aware tokens ``[C, n_ctx, Wt]`` from the frozen hand-written features (``tcp.py:194-195``)."""
        ref = F.normalize(self.clip_text_features, dim=-1)  # already unit vectors; kept explicit for the TKE input
        return self.meta_net(ref).view(ref.shape[0], int(self.n_ctx), self.backbone.text_width)

    def text_features(self) -> torch.Tensor:
        """Class text features ``[C, D]``: context at layer 0, the class tokens from layer ``tke_layer`` on.

        The tokens replace the hidden states of positions ``1..n_ctx`` at that layer's input, one row per class
        (``model.py:270-278`` with its weight 1.0), through the backbone's per-prompt deep prompts ``[C, n, Wt]``.
        """
        deep: list[torch.Tensor | None] = [None] * self.layer + [self.class_tokens()]
        feats = text_features(self.backbone, self.prompts(self.ctx), self.prompts.pool_index, deep_prompts=deep)
        self._pending_text = feats if feats.requires_grad else None
        return feats

    def kg_loss(self, text_feats: torch.Tensor | None = None) -> torch.Tensor:
        """``1 - mean_i cos(w_i, w_i^clip)`` (``tcp.py:255-256``); ``text_feats`` ``[C, D]`` or recomputed."""
        feats = self.text_features() if text_feats is None else text_feats
        ref = self.clip_text_features
        if feats.shape != ref.shape:
            raise LearnerError(
                f"tcp: text features {tuple(feats.shape)} do not match the hand-written features {tuple(ref.shape)}: "
                "were the class names changed without set_classnames()?"
            )
        return 1.0 - F.cosine_similarity(F.normalize(feats, dim=-1), ref.to(feats.dtype), dim=-1, eps=1e-7).mean()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """``CE + kg_weight * (1 - mean cos)`` (``tcp.py:257``), reusing the text features of the step's logits."""
        ce = F.cross_entropy(logits, targets)
        feats, self._pending_text = self._pending_text, None
        if self.kg_weight == 0.0:
            return ce
        if feats is None or feats.shape[0] != logits.shape[1]:
            feats = self.text_features()
            self._pending_text = None
        return ce + self.kg_weight * self.kg_loss(feats)

    def train(self, mode: bool = True) -> "TCP":
        self._pending_text = None
        return super().train(mode)

    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference saves ``prompt_learner``'s ``ctx``, ``meta_net.*`` (the TKE) and the frozen
        ``token_prefix``/``token_suffix`` buffers, which are dropped (rebuilt from the class names)."""
        return import_context_state(self, state, frozen=("token_prefix", "token_suffix"), extra=TKE_NAMES)


__all__ = ["PAPER_TKE_LAYER", "QuickGELU", "TCP", "TKE_NAMES"]
