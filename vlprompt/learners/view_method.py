"""The base of test-time methods that work on augmented views of each test image around a wrapped learner.

TPT, ZERO and TDA each wrap a learner (``learner``, whose forward pass and tensors they use), build a
:class:`~vlprompt.data.tta_views.TPTViews` builder from the backbone's preprocessing when they are set up, and
hand the module ``views`` views of every test image (view 0 the test-transformed original; with ``views == 1`` the
original alone, as TDA's reference does on the fine-grained datasets). :class:`ViewTestTimeMethod` holds that
once; a method adds its own settings, optimiser and :meth:`~vlprompt.learners.prompts.tta.TestTimeMethod.adapt`.
"""

from __future__ import annotations

import torch

from vlprompt.backbones.base import VLBackbone
from vlprompt.data.tta_views import TPTViews
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.prompts.tta import TestTimeMethod
from vlprompt.learners.wrapper import WrappedLearner

__all__ = ["ViewTestTimeMethod"]


class ViewTestTimeMethod(WrappedLearner, TestTimeMethod):
    """A test-time method over ``views`` augmented views (AugMix with ``augmix``) of each test image, around the
    learner in ``self.learner``. Subclasses set ``learner``, ``views`` and ``augmix`` in their ``__init__``."""

    learner: PromptLearner
    views: int
    augmix: bool
    _view_builder: TPTViews | None = None

    @property
    def wrapped(self) -> PromptLearner:
        return self.learner

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        self.learner.setup(backbone, classnames)
        # TPTViews needs two views; with views == 1 only its test-transformed original is used (build_views)
        self._view_builder = TPTViews(backbone.preprocess, max(self.views, 2), augmix=self.augmix)
        self._view_builder.n_views = self.views

    def on_classnames_changed(self, classnames: list[str]) -> None:
        if self.learner.classnames != classnames:
            self.learner.set_classnames(classnames)

    def build_views(self, image: torch.Tensor) -> torch.Tensor:
        if self._view_builder is None:
            raise LearnerError(f"{type(self).__name__} is not set up: call setup(backbone, classnames) first")
        views = self._view_builder.original(image)[None] if self.views == 1 else self._view_builder(image)
        return views.to(self.backbone.logit_scale.device)
