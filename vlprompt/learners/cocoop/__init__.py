"""CoCoOp: Conditional Context Optimization (Zhou, Yang, Loy, Liu; CVPR 2022, "Conditional Prompt Learning
for Vision-Language Models").

A lightweight meta-net ``pi = Linear(D -> D/16) - ReLU - Linear(D/16 -> Wt)`` maps the (L2-normalised) image
feature ``x`` to a token ``pi(x)`` that shifts every context vector, ``v_m(x) = v_m + pi(x)`` (eq. 1); the
prompt of class ``i`` for image ``x`` is ``t_i(x) = {v_1(x), ..., v_M(x), c_i}`` and
``p(y|x) = exp(cos(g(t_y(x)), f(x)) / tau) / sum_i exp(cos(g(t_i(x)), f(x)) / tau)`` (eq. 2): one prompt set,
hence one classifier, per image. Trained with cross-entropy; both encoders stay frozen.

Matches the reference (KaiyangZhou/CoOp ``trainers/cocoop.py``) in fp32: the meta-net input is the image
feature divided by its norm; ``ctx`` starts from the token embeddings of ``ctx_init`` ("a photo of a", 4
vectors) or N(0, 0.02^2); the meta-net has PyTorch's default Linear initialisation and the reference's
parameter names (``meta_net.linear1``, ``meta_net.linear2``); logits are ``exp(logit_scale) * cos``.

Deliberate differences (none changes the computed logits):
- the ``B x C`` prompts are encoded in chunks of ``chunk_size`` prompts, with activations recomputed in the
  backward pass (``recompute``), instead of one text-encoder call per image: batch 32 fits where the
  reference needs batch 1;
- with ``ctx_init``, ``n_ctx`` is the number of *tokens* of the words (the reference counts words split on
  spaces; the two agree for "a photo of a" and any words that are single tokens);
- the reference's fp16 default (``PREC: fp16``) is not reproduced: vlprompt computes prompts in fp32.

TuneVLSeg's CoCoOp (Adhikari et al. ACCV 2024; naamiinepal/tunevlseg @7956bcd ``CoCoOpContextLearner`` on
``BaseProjectorLearner``, ``configs/model/cocoop/clipseg.yaml``) uses another meta-net, offered as options:
``intermediate_dim`` (config 64) makes it :func:`~vlprompt.learners.prompts.vl_layers.mlp_projection` from the
image feature width to the text width with the reference's ``use_final_bias=False``:
``Linear(D, 64) -> ReLU -> Linear(64, Wt, no bias) -> LayerNorm(Wt, no bias)`` with ``proj_norm`` (config true;
``lora_proj`` = its low-rank variant, config false); ``norm_image_features: false`` feeds the raw projected
image feature (config ``norm_image_features: false``). ``configs/learners/cocoop/tunevlseg.yaml`` sets them.
TuneVLSeg's deep CoCoOp (``prompt_depth > 1``) is not offered (its configs use depth 1).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.conditional import check_chunk_size, encode_conditioned_prompts, encode_paired_prompts
from vlprompt.learners.prompts.layers import ClassPrompts, context_from_words, random_context
from vlprompt.learners.base import LearnerError, PromptLearner, cosine_logits
from vlprompt.learners.prompts.vl_layers import PromptConfigError, mlp_projection
from vlprompt.learners.reference_import import import_context_state

META_NET_NAMES = ("meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias")


class CoCoOp(PromptLearner):
    """Context vectors shifted per image by a meta-net on the image feature.

    Args:
        n_ctx: number of context vectors M (paper: 4); with ``ctx_init`` it must equal its token count or be None.
        ctx_init: words whose embeddings initialise the context (paper: ``"a photo of a"``); ``None`` = random.
        chunk_size: prompts (images x classes) encoded per text-encoder call; lower it if memory runs out.
        recompute: recompute text-encoder activations in backward (``torch.utils.checkpoint``) while training.
        meta_reduction: hidden width of the meta-net is ``D // meta_reduction`` (paper: 16).
        init_std: std of the random context initialisation.
        intermediate_dim: hidden width(s) of TuneVLSeg's meta-net (config 64); ``None`` = CoCoOp's
            ``D // meta_reduction`` meta-net (``meta_reduction`` is then unused otherwise).
        proj_norm: LayerNorm (no bias) after TuneVLSeg's meta-net (config true; needs ``intermediate_dim``).
        lora_proj: TuneVLSeg's low-rank meta-net of rank ``intermediate_dim`` (config false).
        norm_image_features: divide the image feature by its norm before the meta-net (CoCoOp: true;
            TuneVLSeg's config: false).
    """

    family = "text"

    def __init__(
        self,
        n_ctx: int | None = 4,
        *,
        ctx_init: str | None = "a photo of a",
        chunk_size: int = 64,
        recompute: bool = True,
        meta_reduction: int = 16,
        init_std: float = 0.02,
        intermediate_dim: int | list[int] | None = None,
        proj_norm: bool = False,
        lora_proj: bool = False,
        norm_image_features: bool = True,
    ) -> None:
        super().__init__()
        if ctx_init is None and (n_ctx is None or n_ctx < 1):
            raise LearnerError(f"n_ctx={n_ctx} must be a positive integer when ctx_init is not given")
        try:
            self.chunk_size = check_chunk_size(chunk_size)
        except ValueError as exc:
            raise LearnerError(f"CoCoOp: {exc}") from None
        if meta_reduction < 1:
            raise LearnerError(f"meta_reduction={meta_reduction} must be a positive integer (paper: 16)")
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.recompute = recompute
        self.meta_reduction = meta_reduction
        self.init_std = init_std
        if intermediate_dim is None and (proj_norm or lora_proj):
            raise LearnerError(
                f"CoCoOp: proj_norm={proj_norm} / lora_proj={lora_proj} shape TuneVLSeg's meta-net, which needs "
                "intermediate_dim (its config: 64); set intermediate_dim, or leave both false for CoCoOp's meta-net")
        self.intermediate_dim = intermediate_dim
        self.proj_norm = proj_norm
        self.lora_proj = lora_proj
        self.norm_image_features = norm_image_features
        self.prompts: ClassPrompts | None = None

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        if self.ctx_init:
            try:
                ctx = context_from_words(backbone, self.ctx_init, self.n_ctx)
            except ValueError as exc:
                raise LearnerError(str(exc)) from None
            self.n_ctx = ctx.shape[0]
        else:
            ctx = random_context(int(self.n_ctx), backbone.text_width, std=self.init_std)
        self.ctx = nn.Parameter(ctx)
        if self.intermediate_dim is not None:  # TuneVLSeg's meta-net (BaseProjectorLearner, use_final_bias=False)
            try:
                self.meta_net = mlp_projection(
                    backbone.embed_dim, backbone.text_width, intermediate_dim=self.intermediate_dim,
                    final_norm=self.proj_norm, final_bias=False, lora=self.lora_proj)
            except PromptConfigError as exc:
                raise LearnerError(f"CoCoOp: {exc}") from None
            return
        hidden = backbone.embed_dim // self.meta_reduction
        if hidden < 1:
            raise LearnerError(
                f"meta-net hidden width embed_dim // meta_reduction = {backbone.embed_dim} // {self.meta_reduction} is 0: "
                f"lower meta_reduction to at most {backbone.embed_dim}"
            )
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(backbone.embed_dim, hidden)),
            ("relu", nn.ReLU()),
            ("linear2", nn.Linear(hidden, backbone.text_width)),
        ]))

    def on_classnames_changed(self, classnames: list[str]) -> None:
        try:
            prompts = ClassPrompts(self.backbone, classnames, int(self.n_ctx), position="end")
        except ValueError as exc:
            raise LearnerError(
                f"CoCoOp with n_ctx={self.n_ctx}: {exc} (context length {self.backbone.context_length}; lower n_ctx "
                "or use shorter class names)"
            ) from None
        self.prompts = prompts.to(self.ctx.device) if hasattr(self, "ctx") else prompts

    def conditioned_context(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image context ``[B, n, Wt]`` = ``ctx + meta_net(normalised image features [B, D])`` (eq. 1; the
        features unnormalised with ``norm_image_features: false``)."""
        x = F.normalize(image_features, dim=-1) if self.norm_image_features else image_features
        bias = self.meta_net(x.to(self.ctx.dtype))
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]``: each image scored against its own class prompts (eq. 2)."""
        ctx = self.conditioned_context(image_features)
        texts = encode_conditioned_prompts(
            self.backbone, self.prompts, ctx, chunk_size=self.chunk_size, recompute=self.recompute and self.training
        )
        return cosine_logits(image_features, texts, self.backbone.logit_scale, self.backbone.logit_bias)

    def paired_text_features(self, image_features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Text feature ``[B, D]`` of each image's own prompt ``t_{index[b]}(x_b)`` (eq. 1), for segmentation:
        only the ``B`` needed prompts are encoded (row ``b`` equals ``logits``' prompt ``(b, index[b])``)."""
        ctx = self.conditioned_context(image_features)
        return encode_paired_prompts(self.backbone, self.prompts, ctx, index, chunk_size=self.chunk_size,
                                     recompute=self.recompute and self.training)

    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference's ``prompt_learner`` state: ``ctx``, ``meta_net.linear{1,2}.{weight,bias}`` (kept under
        the same names) and the frozen ``token_prefix``/``token_suffix`` buffers (dropped)."""
        if self.intermediate_dim is not None:
            raise LearnerError(
                f"CoCoOp: reference CoCoOp checkpoints hold CoCoOp's meta-net, but this learner has TuneVLSeg's "
                f"(intermediate_dim={self.intermediate_dim!r}): set intermediate_dim: null to import one")
        return import_context_state(self, state, frozen=("token_prefix", "token_suffix"), extra=META_NET_NAMES)
