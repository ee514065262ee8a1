"""TPT: Test-time Prompt Tuning (Shu, Nie, Huang, Yu, Goldstein, Anandkumar, Xiao; NeurIPS 2022).

For each test image alone, without labels: build ``N = 64`` views (the test-transformed original and 63 random
resized crops with flips; AugMix for the fine-grained datasets), keep the ``int(0.1 * N)`` views of lowest
prediction entropy (confidence selection, eq. 4), and take one AdamW step (lr 5e-3) on the entropy of their
averaged prediction (eq. 2-3) with respect to the prompt; then classify the original image with the tuned
prompt and reset the prompt before the next image. The prompt is that of any text learner wrapped here
(default CoOp context initialised from "a photo of a", which before tuning is zero-shot CLIP); prompts
trained by CoOp or others load with ``--prompts`` (the reference's ``--load``).

Faithful to azshue/TPT (``tpt_classification.py``: ``select_confident_samples``, ``avg_entropy``,
``test_time_tuning``; ``data/datautils.py``: ``AugMixAugmenter``). Deliberate differences:

- fp32 throughout (the reference uses CUDA autocast fp16 with a GradScaler, init scale 1000);
- the views' image features are computed once per image for learners that do not tune the image encoder
  (the reference re-encodes them at every step under ``no_grad``: same values);
- AugMix operations run on tensors (see :mod:`vlprompt.data.tta_views`);
- with ``text_chunk``, class prompts are encoded in chunks with activation checkpointing (same values).
"""

from __future__ import annotations

from typing import Any

import torch

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.coop import CoOp
from vlprompt.learners.prompts.layers import chunked_text_encoding
from vlprompt.learners.prompts.tta import (
    TTAError,
    TTAStep,
    check_views,
    confident_indices,
    tpt_step,
)
from vlprompt.learners.view_method import ViewTestTimeMethod


def default_prompt_learner() -> PromptLearner:
    """CoOp context initialised from "a photo of a" (TPT's default ``--ctx_init a_photo_of_a``)."""
    return CoOp(n_ctx=None, ctx_init="a photo of a")


class TPT(ViewTestTimeMethod):
    """Test-time prompt tuning on top of a prompt learner.

    Args:
        learner: the learner whose :meth:`~PromptLearner.tunable_parameters` are tuned (default CoOp with
            context "a photo of a"); a learner with nothing to tune is refused.
        views: views per image including the original (TPT: 64).
        selection: fraction of views kept by confidence selection (TPT: 0.1, i.e. 6 of 64).
        steps: optimiser steps per image (TPT: 1).
        lr: AdamW learning rate (TPT: 5e-3; other AdamW settings are torch's defaults, as the reference).
        augmix: mix crops with AugMix (reference: fine-grained datasets yes, ImageNet variants no).
        text_chunk: encode class prompts in chunks of this many classes while tuning (1000-class spaces).
    """

    family = "test-time"
    #: classification only: the test-time objective is the marginal entropy of class logits over augmented views,
    #: which has no counterpart for a mask decoder (TuneVLSeg has no test-time strategy). DiffTPT inherits this.
    tasks = ("classification",)
    #: ``vlprompt fit`` trains the wrapped learner's prompts as that learner would (e.g. CoOp); the
    #: per-image tuning itself runs only under ``vlprompt tta``
    trainable = True

    def __init__(
        self,
        learner: PromptLearner | None = None,
        *,
        views: int = 64,
        selection: float = 0.1,
        steps: int = 1,
        lr: float = 5e-3,
        augmix: bool = False,
        text_chunk: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(learner, TPT):
            raise LearnerError("TPT cannot wrap another test-time learner: give it a prompt learner such as coop")
        try:
            check_views(views, selection)
        except TTAError as exc:
            raise LearnerError(str(exc)) from exc
        if steps < 0:
            raise LearnerError(f"steps={steps} must be >= 0 (TPT: 1)")
        if lr <= 0:
            raise LearnerError(f"lr={lr} must be positive (TPT: 5e-3)")
        if text_chunk is not None and text_chunk < 1:
            raise LearnerError(f"text_chunk={text_chunk} must be a positive number of classes or null")
        self.learner = learner if learner is not None else default_prompt_learner()
        self.views = views
        self.selection = selection
        self.steps = steps
        self.lr = lr
        self.augmix = augmix
        self.text_chunk = text_chunk

    # ------------------------------------------------------------------ delegation to the tuned learner
    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        super().build(backbone, classnames)
        self.learner.tunable_parameters()  # fail now, before any image, if there is nothing to tune

    # ------------------------------------------------------------------ test-time method
    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.lr)

    def select(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Confidence selection (TPT eq. 4) on the first step's logits ``[N, C]``."""
        return confident_indices(logits, self.selection)

    def adapt(self, views: torch.Tensor, optimizer: torch.optim.Optimizer) -> TTAStep:
        with chunked_text_encoding(self.text_chunk):
            return tpt_step(self.learner, views, optimizer, selection=self.selection, steps=self.steps, selector=self.select)

    def tta_settings(self) -> dict[str, Any]:
        return {
            "method": "tpt", "views": self.views, "selection": self.selection,
            "selected_views": int(self.views * self.selection), "steps": self.steps, "optimizer": "AdamW",
            "lr": self.lr, "augmix": self.augmix, "tuned": sorted(self.learner.tunable_parameters()),
            "tuned_learner": type(self.learner).__name__, "resources": list(self.resources),
        }
