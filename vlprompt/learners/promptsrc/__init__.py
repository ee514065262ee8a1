"""PromptSRC: Self-regulating Prompts (Khattak, Wasim, Naseer, Khan, Yang, Khan; ICCV 2023).

Prompts: IVLP (:mod:`vlprompt.learners.ivlp`), 4 + 4 tokens, depth 9 in both towers, text context from
"a photo of a". Training loss (the paper's L_SCL terms, with the reductions of ``trainers/promptsrc.py`` in
muzairkhattak/PromptSRC)::

    L = CE(logits, y)
        + text_loss_weight  * L1(norm(prompted text feats), norm(frozen text feats))     # 25, L_SCL-text
        + image_loss_weight * L1(norm(prompted image feats), norm(frozen image feats))   # 10, L_SCL-image
        + kl_loss_weight    * KL(softmax(zero-shot logits) || softmax(logits)) / (B*C)   #  1, L_SCL-logits

with L1 the element-wise mean (:func:`vlprompt.metrics.losses.feature_l1_loss`) and the KL summed over batch and
classes and divided by their count (:func:`vlprompt.metrics.losses.logit_kl_loss`). The frozen text features of each
class are the mean of the frozen model's *unnormalised* features over the 60 ImageNet templates
(:data:`~vlprompt.learners.promptsrc.templates.IMAGENET_TEMPLATES`), then normalised; the frozen image
features come from the backbone without prompts; zero-shot logits = ``scale * cos`` between the two.
Gaussian prompt aggregation (GPA, "regulating prompts with self-ensembling"): at the end of each epoch
``e = 1..E`` the learned tensors are added with weight ``N(e; gpa_mean, gpa_std^2)`` (normalised over the
``E`` epochs); after the last epoch the aggregate replaces the prompts, so it is what is evaluated and saved
(base-to-new: mean 15, std 1, E = 20).

Deliberate differences: the reference aggregates the whole model state (frozen CLIP weights included,
which only changes them by float rounding since the weights sum to 1); only the learned prompts are
aggregated here. The running aggregate is part of the learner's state (``get_extra_state``), so resume
checkpoints carry it and a resumed run continues the same aggregate. Other differences: those of :class:`~vlprompt.learners.ivlp.IVLP`.
"""

from __future__ import annotations

import logging

import torch

from vlprompt.learners.prompts.layers import template_features
from vlprompt.learners.base import LearnerError, cosine_logits
from vlprompt.learners.ivlp import IVLP
from vlprompt.learners.promptsrc.templates import IMAGENET_TEMPLATES
from vlprompt.metrics.losses import feature_l1_loss, logit_kl_loss
from vlprompt.learners.prompts.vl_layers import GaussianPromptAggregation, gaussian_epoch_weights

log = logging.getLogger(__name__)


class PromptSRC(IVLP):
    """IVLP prompts trained with self-regulating consistency losses and Gaussian prompt aggregation.

    Args:
        n_ctx_text, n_ctx_vision, ctx_init, prompt_depth_text, prompt_depth_vision, init_std: as
            :class:`~vlprompt.learners.ivlp.IVLP` (paper: 4, 4, "a photo of a", 9, 9).
        text_loss_weight: weight of L_SCL-text (25).
        image_loss_weight: weight of L_SCL-image (10).
        kl_loss_weight: weight of L_SCL-logits (1 in the reference, not configurable there).
        gpa: aggregate the prompts over epochs (GPA); ``False`` keeps the last epoch's prompts.
        gpa_mean: mean (1-based epoch) of the Gaussian weights (base-to-new 15).
        gpa_std: its standard deviation (base-to-new 1).
        templates: templates averaged for the frozen text features (default: the 60 ImageNet templates).
    """

    paper_depth = 9

    def __init__(
        self,
        n_ctx_text: int = 4,
        n_ctx_vision: int = 4,
        *,
        ctx_init: str | None = "a photo of a",
        prompt_depth_text: int | None = None,
        prompt_depth_vision: int | None = None,
        init_std: float = 0.02,
        text_loss_weight: float = 25.0,
        image_loss_weight: float = 10.0,
        kl_loss_weight: float = 1.0,
        gpa: bool = True,
        gpa_mean: float = 15.0,
        gpa_std: float = 1.0,
        templates: list[str] | None = None,
    ) -> None:
        super().__init__(
            n_ctx_text, n_ctx_vision, ctx_init=ctx_init, prompt_depth_text=prompt_depth_text,
            prompt_depth_vision=prompt_depth_vision, init_std=init_std,
        )
        if min(text_loss_weight, image_loss_weight, kl_loss_weight) < 0:
            raise LearnerError("promptsrc: loss weights must be >= 0 (0 turns a regulariser off)")
        if gpa and not gpa_std > 0:
            raise LearnerError(f"promptsrc: gpa_std={gpa_std} must be positive (or gpa: false)")
        templates = list(templates) if templates is not None else list(IMAGENET_TEMPLATES)
        if not templates or any("{}" not in t for t in templates):
            raise LearnerError("promptsrc: templates must be a non-empty list of strings with '{}' for the class name")
        self.text_loss_weight = float(text_loss_weight)
        self.image_loss_weight = float(image_loss_weight)
        self.kl_loss_weight = float(kl_loss_weight)
        self.gpa = gpa
        self.gpa_mean = float(gpa_mean)
        self.gpa_std = float(gpa_std)
        self.templates = templates
        self.aggregation = GaussianPromptAggregation(self.gpa_mean, self.gpa_std)
        self._frozen_text: torch.Tensor | None = None
        self._frozen_text_names: list[str] | None = None
        self._stash_images: tuple[torch.Tensor, torch.Tensor] | None = None  # (prompted, frozen) image features
        self._stash_text: torch.Tensor | None = None

    @property
    def _regularised(self) -> bool:
        return self.text_loss_weight > 0 or self.image_loss_weight > 0 or self.kl_loss_weight > 0

    # ------------------------------------------------------------------ forward with stashes for the loss
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        feats = super().encode_images(images)
        if self.training and torch.is_grad_enabled() and self._regularised:
            with torch.no_grad():
                frozen = self.backbone.encode_image(images)
            self._stash_images = (feats, frozen)
        return feats

    def text_features(self) -> torch.Tensor:
        feats = super().text_features()
        if self.training and torch.is_grad_enabled():
            self._stash_text = feats
        return feats

    def frozen_text_features(self) -> torch.Tensor:
        """Normalised frozen text features ``[C, D]`` of the current classes (template mean of raw features)."""
        if self._frozen_text is None or self._frozen_text_names != self.classnames:
            self._frozen_text = template_features(self.backbone, self.classnames, self.templates, normalize_each=False)
            self._frozen_text_names = list(self.classnames)
        return self._frozen_text

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """CE + weighted L_SCL-text, L_SCL-image and L_SCL-logits (see the module docstring)."""
        loss = torch.nn.functional.cross_entropy(logits, targets)
        if not self._regularised:
            return loss
        if self._stash_images is None or self._stash_images[0] is not image_features or self._stash_text is None:
            raise LearnerError(
                "promptsrc.loss needs the image features of this step from learner.encode_images(images) and the text "
                "features from learner.logits() in training mode (with gradients); call them first"
            )
        frozen_img = self._stash_images[1]
        frozen_txt = self.frozen_text_features()
        if self.text_loss_weight > 0:
            loss = loss + self.text_loss_weight * feature_l1_loss(self._stash_text, frozen_txt)
        if self.image_loss_weight > 0:
            loss = loss + self.image_loss_weight * feature_l1_loss(image_features, frozen_img)
        if self.kl_loss_weight > 0:
            zs_logits = cosine_logits(frozen_img, frozen_txt, self.backbone.logit_scale, self.backbone.logit_bias)
            loss = loss + self.kl_loss_weight * logit_kl_loss(logits, zs_logits)
        self._stash_images = None
        self._stash_text = None
        return loss

    # ------------------------------------------------------------------ Gaussian prompt aggregation
    def epoch_weights(self, max_epochs: int) -> torch.Tensor:
        """GPA weights ``[max_epochs]`` (:func:`vlprompt.learners.prompts.vl_layers.gaussian_epoch_weights`)."""
        return gaussian_epoch_weights(max_epochs, self.gpa_mean, self.gpa_std)

    def on_train_epoch_end(self, epoch: int, max_epochs: int) -> None:
        if self.gpa:
            self.aggregation.update(dict(self.named_parameters()), epoch, max_epochs)

    def get_extra_state(self) -> dict:
        """The running GPA aggregate travels with the learner's state (and so with resume checkpoints)."""
        return {"gpa": self.aggregation.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.aggregation.load_state_dict(state.get("gpa", {}))

    def on_fit_end(self) -> None:
        if not self.gpa:
            return
        aggregate = self.aggregation.result()
        if aggregate is None:
            log.warning("promptsrc: training stopped before its last epoch; keeping the last prompts, not the GPA aggregate")
            return
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name in aggregate:
                    param.copy_(aggregate[name].to(param.device, param.dtype))
        self.aggregation.reset()
        self._text_cache = None
        log.info("promptsrc: prompts replaced by their Gaussian aggregate over the training epochs")
