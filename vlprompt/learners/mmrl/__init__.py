"""MMRL: Multi-Modal Representation Learning (Guo & Gu, CVPR 2025).

A shared learnable representation space ``R [K, d_r]`` (``K = n_rep_tokens`` tokens, ``d_r = rep_dim``) is mapped
to each tower by one linear map per representation layer (``r2t_j``, ``r2v_j``). From the first representation
layer on (paper/reference: layers 6..12 of 12), the mapped tokens enter both encoders right after the start /
class token, and each later representation layer replaces them with its own map of ``R``. Two heads read the
image tower: the class token (CLIP's frozen ``proj``) and the mean of the representation tokens' final states,
through a trainable projection ``proj_rep [Wv, D]``. With text features ``w`` of the hand-written prompt encoded
with the text representation tokens, the logits are ``100 cos(f_cls, w)`` and ``100 cos(f_rep, w)``; training::

    L = alpha CE(logits_cls) + (1 - alpha) CE(logits_rep)
        + reg_weight (1 - mean cos(f_cls, f_cls^clip)) + reg_weight (1 - mean_c cos(w_c, w_c^clip))

with ``f^clip`` / ``w^clip`` the frozen CLIP's image / hand-written-prompt features. Inference: the fused logits
``alpha logits_cls + (1 - alpha) logits_rep`` on the classes the learner was trained on (base classes, few-shot,
the cross-dataset source); on any other label space (new classes, cross-dataset targets) the class-token logits
only. The learner tells the two apart from the label space its host module set (:meth:`set_classnames`)
against the one it was trained on (:attr:`train_classnames`), the generic way every learner sees label spaces;
``eval_head`` can force one head.

Reference: yunncheng/MMRL @ 27d8821f6ac135a1d0c8e4c5ed78af14df0cd82e: ``trainers/mmrl.py`` (the representation
learner, ``CustomCLIP.forward``, ``MMRL_Loss``, ``MMRL.test``'s rule per task) and ``clip/model_mmrl.py`` (the
blocks inserting the tokens, ``VisionTransformer.forward``'s two heads, the text mask growing by ``K``).
Faithfulness: ``tests/test_mmrl_equivalence.py`` (logits on base and new classes and one SGD step against that
code).

Deliberate differences from the reference, each also noted beside the code:

- fp32 throughout; the reference trains with ``PREC: "amp"`` (``configs/trainers/MMRL/vit_b16.yaml``).
- the visual representation tokens are appended after the patch tokens; the reference inserts them right after
  the class token (``model_mmrl.py``, the ``not self.text_layer`` branch). The image tower has no mask and its
  position embeddings are added before, so only the order of floating-point sums differs.
- the text tower runs only up to the last end-of-text token (the backbone's exact causal shortcut); the reference
  runs all 77 positions plus ``K``.
- ``rep_layers`` are 1-based as in the reference's ``REP_LAYERS``; layer 1 is refused (the backbone's layer-0
  prompts are part of the input embeddings, and the reference's setting never uses it). ``None`` = the paper's
  6..12 on a 12-layer tower, else the last ``min(7, L - 1)`` layers of the shallower tower.
- the logit scale is the reference's literal 100 (``CustomCLIP.forward``); ``logit_scale: null`` uses the
  backbone's own (equal to 100 for OpenAI's CLIP).
- a label space that holds the training classes plus others ("all") counts as not the training one: class-token
  logits (the reference has no such protocol).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.prompts.layers import template_features, text_features

#: the reference's representation layers (``configs/trainers/MMRL/vit_b16.yaml``, ``REP_LAYERS``), 1-based
PAPER_REP_LAYERS = (6, 7, 8, 9, 10, 11, 12)
#: the reference's literal logit scale (``trainers/mmrl.py``, ``CustomCLIP.forward``)
REFERENCE_LOGIT_SCALE = 100.0
EVAL_HEADS = ("auto", "fusion", "class")


def mmrl_loss(
    logits_cls: torch.Tensor,
    logits_rep: torch.Tensor,
    targets: torch.Tensor,
    image_features: torch.Tensor,
    frozen_image_features: torch.Tensor,
    text_features: torch.Tensor,
    frozen_text_features: torch.Tensor,
    *,
    alpha: float,
    reg_weight: float,
) -> torch.Tensor:
    """MMRL's training loss (``trainers/mmrl.py``, ``MMRL_Loss.forward``), a scalar.

    ``alpha CE(logits_cls, y) + (1 - alpha) CE(logits_rep, y) + reg_weight (1 - mean_b cos(f_b, f_b^clip))
    + reg_weight (1 - mean_c cos(w_c, w_c^clip))``.

    Args:
        logits_cls, logits_rep: class-token and representation-token logits ``[B, C]``.
        targets: labels ``[B]`` (long).
        image_features, frozen_image_features: class-token features of the prompted and frozen image tower ``[B, D]``.
        text_features, frozen_text_features: class text features with the representation tokens and of the
            frozen tower ``[C, D]``.
        alpha: weight of the class-token cross-entropy (reference 0.7).
        reg_weight: weight of each consistency term (reference 1.0, per dataset 0.01..7).
    """
    ce = alpha * F.cross_entropy(logits_cls, targets) + (1.0 - alpha) * F.cross_entropy(logits_rep, targets)
    reg_img = 1.0 - F.cosine_similarity(image_features, frozen_image_features.to(image_features.dtype), dim=1).mean()
    reg_txt = 1.0 - F.cosine_similarity(text_features, frozen_text_features.to(text_features.dtype), dim=1).mean()
    return ce + reg_weight * reg_img + reg_weight * reg_txt


class MMRL(PromptLearner):
    """Shared representation tokens mapped into both towers from a middle layer, with a second image head.

    Args:
        n_rep_tokens: ``K``, representation tokens per layer (reference ``N_REP_TOKENS`` 5).
        rep_layers: 1-based layers whose input receives the tokens (reference ``REP_LAYERS`` 6..12); the first
            inserts them, the others replace them. ``None``: see the module docstring.
        rep_dim: ``d_r``, width of the shared representation space (reference ``REP_DIM`` 512; EuroSAT 2048).
        alpha: weight of the class-token head, in the loss and in the fused logits (reference ``ALPHA`` 0.7).
        reg_weight: weight of each consistency term to the frozen CLIP features (reference ``REG_WEIGHT`` 1.0 in
            the config, per dataset in ``trainers/config.py``: ImageNet 0.5, StanfordCars 7, ...).
        template: the hand-written prompt encoded with the tokens, and by the frozen tower for the text
            consistency term (reference ``CUSTOM_TEMPLATES`` per dataset, e.g. ``"a photo of a {}, a type of pet."``).
        init_std: std of the representation tokens' normal initialisation (reference 0.02).
        logit_scale: the logit scale (reference literal 100); ``None`` = the backbone's.
        eval_head: ``auto`` (fused logits on the training label space, class-token logits elsewhere: the
            reference's base-to-new, few-shot and cross-dataset rule), ``fusion`` or ``class`` everywhere.
    """

    family = "multimodal"
    tasks = ("classification",)
    modifies_image_encoder = True
    #: the frozen CLIP features of the consistency terms come from the same frozen backbone: standard track
    resources: tuple[str, ...] = ()

    def __init__(
        self,
        n_rep_tokens: int = 5,
        *,
        rep_layers: Sequence[int] | None = None,
        rep_dim: int = 512,
        alpha: float = 0.7,
        reg_weight: float = 1.0,
        template: str = "a photo of a {}.",
        init_std: float = 0.02,
        logit_scale: float | None = REFERENCE_LOGIT_SCALE,
        eval_head: str = "auto",
    ) -> None:
        super().__init__()
        if n_rep_tokens < 1:
            raise LearnerError(f"mmrl: n_rep_tokens={n_rep_tokens} must be a positive integer (reference: 5)")
        if rep_dim < 1:
            raise LearnerError(f"mmrl: rep_dim={rep_dim} must be a positive integer (reference: 512)")
        if not 0.0 <= alpha <= 1.0:
            raise LearnerError(f"mmrl: alpha={alpha} must lie in [0, 1] (reference: 0.7)")
        if reg_weight < 0:
            raise LearnerError(f"mmrl: reg_weight={reg_weight} must be >= 0 (reference: 1.0; 0 turns the consistency off)")
        if template.count("{}") != 1:
            raise LearnerError(f"mmrl: template={template!r} needs exactly one '{{}}' for the class name, e.g. 'a photo of a {{}}.'")
        if eval_head not in EVAL_HEADS:
            raise LearnerError(f"mmrl: eval_head={eval_head!r} is not one of {EVAL_HEADS}")
        if logit_scale is not None and not logit_scale > 0:
            raise LearnerError(f"mmrl: logit_scale={logit_scale} must be positive, or null for the backbone's")
        if rep_layers is not None:
            rep_layers = [int(v) for v in rep_layers]
            if not rep_layers or any(b <= a for a, b in zip(rep_layers, rep_layers[1:])):
                raise LearnerError(f"mmrl: rep_layers={rep_layers} must be a non-empty, strictly increasing list of "
                                   "1-based layers (reference: [6, 7, 8, 9, 10, 11, 12])")
        self.n_rep_tokens = int(n_rep_tokens)
        self.rep_layers_arg = rep_layers
        self.rep_layers: list[int] = []
        self.rep_dim = int(rep_dim)
        self.alpha = float(alpha)
        self.reg_weight = float(reg_weight)
        self.template = template
        self.init_std = float(init_std)
        self.logit_scale = logit_scale
        self.eval_head = eval_head
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (this step's image features, frozen ones)
        self._pending_text: torch.Tensor | None = None
        self.register_buffer("frozen_text", torch.empty(0), persistent=False)
        self.register_buffer("prompt_embeddings", torch.empty(0), persistent=False)
        self.register_buffer("prompt_pool", torch.empty(0, dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------ parameters
    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        if not getattr(backbone, "supports_inserted_prompts", False):
            raise LearnerError(
                f"mmrl inserts representation tokens at a middle layer of both towers, which backbone "
                f"{backbone.info.name!r} (model {backbone.info.model!r}) cannot do: use an open_clip CLIP ViT "
                "(e.g. model: ViT-B-16) or the toy CLIP")
        depth = min(backbone.text_layers, backbone.vision_layers)
        if depth < 2:
            raise LearnerError(f"mmrl: the towers have {depth} layer(s); representation tokens need at least 2")
        if self.rep_layers_arg is None:
            # the paper's 6..12 are the last 7 layers of 12; shallower towers keep the last min(7, L-1)
            self.rep_layers = list(PAPER_REP_LAYERS) if depth >= 12 else list(range(max(2, depth - 6), depth + 1))
        else:
            bad = [v for v in self.rep_layers_arg if not 2 <= v <= depth]
            if bad:
                raise LearnerError(
                    f"mmrl: rep_layers={self.rep_layers_arg} has layer(s) {bad} outside 2..{depth} (the towers have "
                    f"{backbone.text_layers} text and {backbone.vision_layers} image layers; layer 1 is the input, "
                    "which the tokens never enter in the reference): set layers in 2..{depth}, or null")
            self.rep_layers = list(self.rep_layers_arg)
        n = len(self.rep_layers)
        # trainers/mmrl.py, MultiModalRepresentationLearner: tokens N(0, 0.02^2); one Linear per layer, all clones
        # (deep copies) of one initial Linear, as the reference's _get_clones gives
        self.compound_rep_tokens = nn.Parameter(torch.randn(self.n_rep_tokens, self.rep_dim) * self.init_std)
        r2v, r2t = nn.Linear(self.rep_dim, backbone.vision_width), nn.Linear(self.rep_dim, backbone.text_width)
        self.compound_rep_tokens_r2vproj = nn.ModuleList([copy.deepcopy(r2v) for _ in range(n)])
        self.compound_rep_tokens_r2tproj = nn.ModuleList([copy.deepcopy(r2t) for _ in range(n)])
        # clip/model_mmrl.py, VisionTransformer.__init__: proj_rep = Wv^-0.5 * randn(Wv, D); absent from CLIP's
        # weights, so it keeps this random start (the state dict is loaded with strict=False)
        self.proj_rep = nn.Parameter(backbone.vision_width ** -0.5 * torch.randn(backbone.vision_width, backbone.embed_dim))

    def on_classnames_changed(self, classnames: list[str]) -> None:
        """Token embeddings ``[C, L, Wt]`` of the hand-written prompts and the frozen features ``[C, D]`` of them."""
        device = self.compound_rep_tokens.device
        texts = [self.template.format(c.replace("_", " ")) for c in classnames]  # trainers/mmrl.py's tokenisation
        tokens = self.backbone.tokenize(texts)
        self.prompt_embeddings = self.backbone.embed_tokens(tokens).to(device)
        self.prompt_pool = self.backbone.pool_index(tokens).to(device)
        self.frozen_text = template_features(self.backbone, classnames, [self.template]).to(device)
        self._pending_text = None

    def deep_tokens(self, maps: nn.ModuleList, layers: int) -> list[torch.Tensor | None]:
        """Per-layer list (0-based, ``layers`` long) of the mapped tokens ``[K, W]`` at each representation layer."""
        out: list[torch.Tensor | None] = [None] * layers
        for layer, proj in zip(self.rep_layers, maps):
            out[layer - 1] = proj(self.compound_rep_tokens)  # 1-based layer l enters block l - 1
        return out

    # ------------------------------------------------------------------ forward
    def text_features(self) -> torch.Tensor:
        """Class text features ``[C, D]``: the hand-written prompts with the text representation tokens."""
        deep = self.deep_tokens(self.compound_rep_tokens_r2tproj, self.backbone.text_layers)
        feats = text_features(self.backbone, self.prompt_embeddings, self.prompt_pool, deep, insert_deep_prompts=True)
        self._pending_text = feats if feats.requires_grad else None
        return feats

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Class-token and representation-token features packed as ``[B, 2, D]`` (row 0: class token)."""
        deep = self.deep_tokens(self.compound_rep_tokens_r2vproj, self.backbone.vision_layers)
        pooled, states = self.backbone.encode_image(images, deep_prompts=deep, prompt_states=True, insert_deep_prompts=True)
        rep = states.mean(dim=1) @ self.proj_rep  # model_mmrl.py: ln_post per token, mean, then proj_rep
        feats = torch.stack([pooled, rep], dim=1)
        if self.training and torch.is_grad_enabled() and self.reg_weight > 0:
            with torch.no_grad():
                frozen = self.backbone.encode_image(images)
            self._pending = (feats, frozen)
        return feats

    def scale(self) -> torch.Tensor | float:
        return self.backbone.logit_scale if self.logit_scale is None else self.logit_scale

    def head_logits(self, image_features: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-token and representation-token logits ``[B, C]`` of features ``[B, 2, D]`` and texts ``[C, D]``."""
        if image_features.dim() != 3 or image_features.shape[1] != 2:
            raise LearnerError(
                f"mmrl needs class- and representation-token features [B, 2, D] from its encode_images(), got shape "
                f"{tuple(image_features.shape)}; cached pooled features cannot be used (feature_cache: false)")
        txt = F.normalize(text, dim=-1)
        img = F.normalize(image_features, dim=-1)
        scale = self.scale()
        return scale * img[:, 0] @ txt.t(), scale * img[:, 1] @ txt.t()

    def fused(self) -> bool:
        """Whether the fused logits are evaluated now (``eval_head``; ``auto``: on the training label space)."""
        if self.eval_head != "auto":
            return self.eval_head == "fusion"
        return self.on_training_classes

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Fused logits in training and on the training label space, class-token logits elsewhere (``auto``)."""
        logits_cls, logits_rep = self.head_logits(image_features, self.cached_text_features())
        if self.training or self.fused():
            return self.alpha * logits_cls + (1.0 - self.alpha) * logits_rep
        return logits_cls

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """:func:`mmrl_loss` of this step (its text features reused from :meth:`logits`); ``logits`` (the fused
        ones) are not needed, the two heads are recomputed from ``image_features`` ``[B, 2, D]``."""
        text, self._pending_text = self._pending_text, None
        if text is None or text.shape[0] != len(self.classnames):
            text = self.text_features()
            self._pending_text = None
        logits_cls, logits_rep = self.head_logits(image_features, text)
        pending, self._pending = self._pending, None
        if self.reg_weight == 0.0:  # the consistency terms are off: no frozen features were encoded
            cls = image_features[:, 0].detach()
            return mmrl_loss(logits_cls, logits_rep, targets, cls, cls, text.detach(), text.detach(),
                             alpha=self.alpha, reg_weight=0.0)
        if pending is None or pending[0] is not image_features:
            raise LearnerError(
                "mmrl.loss needs this step's image features from learner.encode_images(images) in training mode (with "
                "gradients), which also encodes the frozen features of its consistency term; call it first")
        return mmrl_loss(logits_cls, logits_rep, targets, image_features[:, 0], pending[1], text, self.frozen_text,
                         alpha=self.alpha, reg_weight=self.reg_weight)

    def train(self, mode: bool = True) -> "MMRL":
        self._pending, self._pending_text = None, None
        return super().train(mode)

    def prompt_record(self) -> dict:
        return {"template": self.template, "n_rep_tokens": self.n_rep_tokens, "rep_layers": list(self.rep_layers),
                "learned": True}

    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference saves the whole ``CustomCLIP``; its learned tensors are ``representation_learner.*`` and
        ``image_encoder.proj_rep`` (``trainers/mmrl.py``, ``names_to_update``); everything else is dropped."""
        out = {}
        for k, v in state.items():
            k = k.removeprefix("module.")
            if k.startswith("representation_learner."):
                out[k.removeprefix("representation_learner.")] = v
            elif k == "image_encoder.proj_rep":
                out["proj_rep"] = v
        own = self.learned_state()
        missing = sorted(set(own) - set(out))
        if missing:
            raise LearnerError(f"mmrl: the reference state lacks {missing}: is it an MMRL checkpoint (not MMRLpp)?")
        wrong = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in out.items() if k in own and v.shape != own[k].shape}
        if wrong or set(out) - set(own):
            raise LearnerError(f"mmrl: reference tensors do not fit (name: (theirs, ours)) {wrong}, unknown "
                               f"{sorted(set(out) - set(own))}: set n_rep_tokens, rep_dim and rep_layers as it was trained")
        return {k: v.float() for k, v in out.items()}


__all__ = ["EVAL_HEADS", "MMRL", "PAPER_REP_LAYERS", "REFERENCE_LOGIT_SCALE", "mmrl_loss"]
