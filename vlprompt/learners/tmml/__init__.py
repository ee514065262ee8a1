"""TMML: Task-Oriented Multi-Modal Mutual Learning (Long, Zhao, Yuan, Tan, Liu, Zhou, Wang, Wang; ICCV 2023,
arXiv 2303.17169), family ``multimodal``.

Three parts (the paper's method; it has no public code and we implemented from its description, not its
equations, which we could not consult: the forms below are our reading, all documented):

- **CTP, class-aware text prompts** (image -> text). CoCoOp adds one image-conditioned bias to every class's
  context; CTP conditions class ``i``'s context on the image information *related to label i*: the class's
  frozen zero-shot text feature ``z_i`` (``template``) attends over the image's projected patch tokens
  ``p_j`` (``a_i = sum_j softmax_j(cos(z_i, p_j) / attn_temperature) p_j``), and a CoCoOp-style meta-net
  (``D -> D/meta_ratio -> Wt``, ReLU) maps ``a_i`` to a bias ``pi_i`` added to each context vector:
  ``t_i(x) = [v_1 + pi_i(x), ..., v_M + pi_i(x), CLASS_i]``.
- **TFT, text-guided feature tuning** (text -> image). The image feature keeps the class-related part of the
  image: the prompted text feature ``w_i(x)`` attends over the same patch tokens and the result is added to the
  pooled image feature with a learnable gate ``beta``: ``v_i(x) = f(x) + beta * sum_j softmax_j(cos(w_i, p_j)/tau) p_j``.
  Logits: ``scale * cos(v_i(x), w_i(x))``.
- **Loss**: cross-entropy plus ``contrastive_weight`` times a symmetric image-text contrastive loss
  (:func:`contrastive_alignment_loss`) between the tuned image features ``v_{y_b}(x_b)`` and the prompted text
  features ``w_{y_b}(x_b)`` of the labelled class across the batch (pairs sharing a label are positives).

Choices where the paper is silent (config options): the query of CTP is the frozen zero-shot class feature
(parameter-free attention in CLIP's joint space, the patch tokens projected by the backbone); the meta-net's
last layer and ``beta`` start at zero, so an untrained TMML equals its base prompt (CoOp with ``ctx_init``;
tested); ``attn_temperature = 0.01``; contrastive temperature 0.07 and weight 1.0.

Memory: prompts are per image and per class (``B * C`` text-encoder sequences), as in CoCoOp; the text encoder
runs on ``image_chunk`` images at a time (default 1, CoCoOp's loop). Needs dense patch tokens
(``backbone.encode_image(dense=True)``: a ViT image tower); image features cannot be cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.conditional import encode_paired_prompts
from vlprompt.learners.prompts.layers import TEXT_CHUNK, ClassPrompts, context_from_words, random_context, template_features, text_features
from vlprompt.learners.base import LearnerError, PromptLearner


def contrastive_alignment_loss(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """Symmetric InfoNCE between ``image [B, D]`` and ``text [B, D]`` rows; rows with equal ``labels [B]`` are
    positives (the target distribution spreads evenly over them). Returns a scalar >= 0."""
    img, txt = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    sim = img @ txt.t() / temperature
    pos = (labels[:, None] == labels[None, :]).to(sim.dtype)
    targets = pos / pos.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(sim, targets) + F.cross_entropy(sim.t(), targets.t()))


def attend(queries: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-image attention pooling: ``queries [B, C, D]`` (or ``[C, D]``) over ``tokens [B, J, D]`` -> ``[B, C, D]``,
    weights ``softmax_j(cos(q, t_j) / temperature)``."""
    q = F.normalize(queries, dim=-1)
    k = F.normalize(tokens, dim=-1)
    scores = torch.einsum("cd,bjd->bcj", q, k) if q.dim() == 2 else torch.einsum("bcd,bjd->bcj", q, k)
    return torch.einsum("bcj,bjd->bcd", torch.softmax(scores / temperature, dim=-1), tokens)


class TMML(PromptLearner):
    """Class-aware, image-conditioned text prompts + text-guided image features + contrastive loss.

    Args:
        n_ctx: context length ``M`` (with ``ctx_init`` its token count or ``None``).
        ctx_init: words initialising the context (CoCoOp's ``"a photo of a"``) or ``None`` (random).
        template: template of the frozen class features that query the patch tokens.
        meta_ratio: bottleneck ratio of the CTP meta-net (``D -> D // meta_ratio -> Wt``).
        attn_temperature: temperature of both patch attentions.
        tft_init: initial TFT gate ``beta``.
        contrastive_weight: weight of the contrastive term (0 = cross-entropy only).
        contrastive_temperature: its temperature.
        image_chunk: images whose ``C`` prompts go through the text encoder together.
        init_std: std of a random context.
    """

    family = "multimodal"
    modifies_image_encoder = True

    def __init__(
        self,
        n_ctx: int | None = 4,
        *,
        ctx_init: str | None = "a photo of a",
        template: str = "a photo of a {}.",
        meta_ratio: int = 16,
        attn_temperature: float = 0.01,
        tft_init: float = 0.0,
        contrastive_weight: float = 1.0,
        contrastive_temperature: float = 0.07,
        image_chunk: int = 1,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if ctx_init is None and (n_ctx is None or n_ctx < 1):
            raise LearnerError(f"n_ctx={n_ctx} must be a positive integer when ctx_init is not given")
        if image_chunk < 1:
            raise LearnerError(f"image_chunk={image_chunk} must be at least 1")
        if attn_temperature <= 0 or contrastive_temperature <= 0:
            raise LearnerError("attn_temperature and contrastive_temperature must be positive")
        self.n_ctx, self.ctx_init, self.template = n_ctx, ctx_init, template
        self.meta_ratio, self.attn_temperature, self.tft_init = meta_ratio, attn_temperature, tft_init
        self.contrastive_weight, self.contrastive_temperature = contrastive_weight, contrastive_temperature
        self.image_chunk, self.init_std = image_chunk, init_std
        self.prompts: ClassPrompts | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def setup(self, backbone: VLBackbone, classnames) -> None:
        if not backbone.supports_dense_features:
            raise LearnerError(
                f"TMML attends over the image's dense patch tokens, but backbone {backbone.info.name!r} (model "
                f"{backbone.info.model!r}) cannot return them (encode_image(dense=True) needs a CLIP ViT image tower; "
                "SigLIP's attention-pooled tower has none). Use a CLIP ViT model (e.g. model: ViT-B-16) or a learner "
                "without patch attention (e.g. coop, cocoop, kgcoop, vpt, maple, ivlp, promptsrc)."
            )
        super().setup(backbone, classnames)

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        if self.ctx_init:
            ctx = context_from_words(backbone, self.ctx_init, self.n_ctx)
            self.n_ctx = ctx.shape[0]
        else:
            ctx = random_context(int(self.n_ctx), backbone.text_width, std=self.init_std)
        self.ctx = nn.Parameter(ctx)
        hidden = max(1, backbone.embed_dim // self.meta_ratio)
        self.meta_net = nn.Sequential(nn.Linear(backbone.embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, backbone.text_width))
        nn.init.zeros_(self.meta_net[2].weight)
        nn.init.zeros_(self.meta_net[2].bias)
        self.tft_gate = nn.Parameter(torch.tensor(float(self.tft_init)))

    def on_classnames_changed(self, classnames: list[str]) -> None:
        device = self.ctx.device if hasattr(self, "ctx") else None
        self.prompts = ClassPrompts(self.backbone, classnames, int(self.n_ctx))
        queries = template_features(self.backbone, classnames, [self.template])
        self.register_buffer("class_queries", queries, persistent=False)
        if device is not None:
            self.prompts.to(device)
            self.class_queries = self.class_queries.to(device)

    # ------------------------------------------------------------------ forward
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled feature and patch tokens packed as ``[B, 1 + HW, D]`` (row 0: the pooled feature)."""
        pooled, tokens = self.backbone.encode_image(images, dense=True)
        return torch.cat([pooled.unsqueeze(1), tokens], dim=1)

    def prompted_text_features(self, patches: torch.Tensor) -> torch.Tensor:
        """CTP: per-image, per-class prompted text features ``[B, C, D]`` from patch tokens ``[B, HW, D]``."""
        related = attend(self.class_queries, patches, self.attn_temperature)  # [B, C, D]
        bias = self.meta_net(related)  # [B, C, Wt]
        pool = self.prompts.pool_index
        out = []
        for chunk in bias.split(self.image_chunk):
            ctx = self.ctx.unsqueeze(0).unsqueeze(0) + chunk.unsqueeze(2)  # [b, C, M, Wt]
            emb = torch.cat([self.prompts(c) for c in ctx])  # [b*C, L, Wt]
            feats = text_features(self.backbone, emb, pool.repeat(ctx.shape[0]))
            out.append(feats.view(ctx.shape[0], ctx.shape[1], -1))
        return torch.cat(out)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        if image_features.dim() != 3:
            raise LearnerError(
                f"TMML needs pooled features and patch tokens [B, 1+HW, D] from its encode_images(), got shape "
                f"{tuple(image_features.shape)}; cached pooled features cannot be used (feature_cache: false)"
            )
        pooled, patches = image_features[:, 0], image_features[:, 1:]
        text = self.prompted_text_features(patches)  # [B, C, D]
        image = pooled.unsqueeze(1) + self.tft_gate * attend(text, patches, self.attn_temperature)  # TFT, [B, C, D]
        logits = self.backbone.logit_scale * torch.einsum(
            "bcd,bcd->bc", F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        )
        self._last = (image, text) if self.training else None
        return logits

    def paired_text_features(self, image_features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """CTP text feature ``[B, D]`` of each image's own prompt ``w_{index[b]}(x_b)``, for segmentation: only the
        ``B`` needed prompts are encoded (row ``b`` equals :meth:`prompted_text_features` ``[b, index[b]]``).
        ``image_features`` is :meth:`encode_images`' ``[B, 1 + HW, D]``. TFT and the contrastive loss tune the
        image feature of the classifier and do not enter the mask decoder, which reads the image encoder's
        activations."""
        if image_features.dim() != 3:
            raise LearnerError(
                f"TMML needs pooled features and patch tokens [B, 1+HW, D] from its encode_images(), got shape "
                f"{tuple(image_features.shape)}"
            )
        index = index.to(device=image_features.device)
        queries = self.class_queries[index].unsqueeze(1)  # [B, 1, D]
        related = attend(queries, image_features[:, 1:], self.attn_temperature)[:, 0]  # [B, D]
        ctx = self.ctx.unsqueeze(0) + self.meta_net(related).unsqueeze(1)  # [B, M, Wt]
        return encode_paired_prompts(self.backbone, self.prompts, ctx, index, chunk_size=TEXT_CHUNK)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets)
        if self.contrastive_weight and self._last is not None:
            image, text = self._last
            rows = torch.arange(targets.shape[0], device=targets.device)
            loss = loss + self.contrastive_weight * contrastive_alignment_loss(
                image[rows, targets], text[rows, targets], targets, self.contrastive_temperature
            )
        self._last = None
        return loss
