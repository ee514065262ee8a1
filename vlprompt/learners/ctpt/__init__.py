"""C-TPT: calibrated test-time prompt tuning (Yoon, Yoon, Tee, Hasegawa-Johnson, Li, Yoo; ICLR 2024).

TPT (:mod:`vlprompt.learners.tpt`) with one more term in the loss: the average text feature dispersion (ATFD),
the mean L2 distance of the normalised class text features to their centroid. The loss of each step is
``marginal_entropy(selected views) - lambda * ATFD``: spreading the class prompts apart lowers TPT's
calibration error at about the same accuracy (the paper's Table 1: ECE 11.6 -> 5.1 on average for CLIP
ViT-B/16 fine-grained sets). Everything else (views, confidence selection, AdamW step, episodic reset) is TPT's.

Faithful to hee-suk-yoon/C-TPT @085e6c2 (``clip/custom_clip.py`` ``ClipTestTimeTuning.inference`` lines 312-337
for the ATFD of the normalised text features; ``tpt_classification.py`` ``test_time_tuning`` lines 123-176 for
``loss += -lambda * l2_norm_mean_training``; ``scripts/test_tpt_ctpt_fg.sh``: lambda 50 on the fine-grained
sets, ``scripts/test_tpt_ctpt_ds.sh``: lambda 20 with ``--I_augmix`` on ImageNet and its variants, 64 views,
ctx "a_photo_of_a", lr 5e-3, 1 step). One optimisation step is compared with the reference's own
``test_time_tuning`` on its own ``ClipTestTimeTuning`` in ``tests/test_tta_methods.py``. Deliberate
differences: TPT's (fp32 instead of autocast fp16 with a GradScaler; views on tensors). The class text features
of a step are computed once and shared by the logits and the ATFD, so the tuned learner must use the default
cosine logits (instance-conditioned learners such as CoCoOp are refused; the reference tunes CoOp's context).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.prompts.layers import chunked_text_encoding
from vlprompt.learners.prompts.tta import TTAStep, tpt_step
from vlprompt.learners.tpt import TPT


def text_feature_dispersion(text_features: torch.Tensor) -> torch.Tensor:
    """ATFD (scalar): mean over classes of ``||t_c - mean_c t_c||_2`` for the normalised text features
    ``[C, D]`` (C-TPT eq. 4; ``clip/custom_clip.py:320-324``)."""
    if text_features.dim() != 2:
        raise LearnerError(f"text_feature_dispersion needs class text features [C, D], got shape {tuple(text_features.shape)}")
    t = F.normalize(text_features, dim=-1)
    return torch.linalg.norm(t - t.mean(0), dim=-1).mean()


class CTPT(TPT):
    """TPT whose loss also rewards dispersed class text features (C-TPT).

    Args:
        learner: the prompt learner tuned (default CoOp with context "a photo of a", as the reference).
        views: views per image including the original (64). selection: fraction kept by entropy (0.1).
        steps: AdamW steps per image (1). lr: AdamW learning rate (5e-3).
        augmix: AugMix on the views (reference: yes, on every set; ``--I_augmix`` for ImageNet and variants).
        lambda_term: weight of the dispersion term (reference: 50 fine-grained, 20 ImageNet and variants).
        text_chunk: encode class prompts in chunks while tuning (1000-class spaces).
    """

    def __init__(
        self,
        learner: PromptLearner | None = None,
        *,
        views: int = 64,
        selection: float = 0.1,
        steps: int = 1,
        lr: float = 5e-3,
        augmix: bool = True,
        lambda_term: float = 50.0,
        text_chunk: int | None = None,
    ) -> None:
        super().__init__(learner, views=views, selection=selection, steps=steps, lr=lr, augmix=augmix, text_chunk=text_chunk)
        if lambda_term < 0:
            raise LearnerError(f"lambda_term={lambda_term} must be >= 0 (C-TPT: 50 fine-grained, 20 ImageNet; 0 is TPT)")
        self.lambda_term = float(lambda_term)

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        if type(self.learner).logits is not PromptLearner.logits:
            raise LearnerError(
                f"C-TPT needs class text features shared by all images (the dispersion term is computed on them), but "
                f"{type(self.learner).__name__} computes its own logits (instance-conditioned). Tune a learner with "
                "shared class prompts, e.g. coop (ctx_init: 'a photo of a'), or use tpt."
            )
        super().build(backbone, classnames)

    def dispersion_loss(self, text_features: torch.Tensor) -> torch.Tensor:
        """The added term ``-lambda * ATFD`` of text features ``[C, D]`` (scalar)."""
        return -self.lambda_term * text_feature_dispersion(text_features)

    def adapt(self, views: torch.Tensor, optimizer: torch.optim.Optimizer) -> TTAStep:
        with chunked_text_encoding(self.text_chunk):
            return tpt_step(self.learner, views, optimizer, selection=self.selection, steps=self.steps, selector=self.select,
                            text_loss=self.dispersion_loss)

    def tta_settings(self) -> dict[str, Any]:
        return {**super().tta_settings(), "method": "ctpt", "lambda_term": self.lambda_term}
