"""ConES: Concept Embedding Search (Yi, Qin, Xu, Guo, Wang, Zhang, Li, Lao; arXiv 2305.18993, 2023).

Instead of learning prompt tokens that pass through the text encoder at every step, ConES optimises the
class "concept embeddings" directly in the joint space: the classifier of class ``i`` is a free
vector ``c_i [D]``, initialised from the text encoder's feature of ``template.format(class_i)`` (the
zero-shot classifier), and trained with the task loss (here cross-entropy on ``scale * cos(f(x), c_i)``).
A training step therefore costs no text-encoder pass (the paper: about an hour down to ten minutes on its
personalised-generation task, reported); ``benchmarks/paper_learners.py`` measures the per-step speed-up
against CoOp.

Source: we could read the paper's abstract and public summaries, not its full text; equation numbers are
therefore not cited, and every form below that the abstract does not fix is marked as our choice.

Classes without a searched embedding (new classes in base-to-new) are the paper's open question for
classification; the fallback is a config choice, ``new_class_fallback``:
- ``zero_shot`` (default): the class's zero-shot text feature, i.e. ConES changes only the trained classes;
- ``transform``: a learned linear map ``T`` (identity at init) applied to the zero-shot feature; ``T`` is fitted
  on the training classes with ``transform_weight * mean(1 - cos(T(z_i), sg(c_i)))`` added to the loss, so it
  learns how the search moved the zero-shot features;
- ``none``: refuse: switching to a label space with unseen classes raises :class:`LearnerError`.
A known class keeps its searched embedding in every label space.

Second stage (the paper: the searched embeddings initialise a following tuning run): the
``cones_stage2`` learner (:class:`vlprompt.learners.cones.stage2.ConESPromptTuning`) fits a CoOp context so that
the text encoder reproduces the concept embeddings saved by a ConES run, then trains it like CoOp.

Invariant (tested): at initialisation (concepts = zero-shot features) ConES's logits are zero-shot CLIP's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.layers import template_features
from vlprompt.learners.base import LearnerError, PromptLearner

Fallback = Literal["zero_shot", "transform", "none"]


class ConES(PromptLearner):
    """Concept embeddings ``[C, D]`` searched directly, no text encoder in the training loop.

    Args:
        template: words around the class name for the initial (and fallback) features.
        templates: several templates (their normalised mean is used, as a prompt ensemble); overrides ``template``.
        new_class_fallback: ``zero_shot``, ``transform`` or ``none`` (see the module docstring).
        transform_weight: weight of the transform-fitting term (``transform`` fallback only).
    """

    family = "text"
    #: classification only: concept embeddings are searched per training class name, whereas segmentation
    #: prompts are free phrases that change per image (and per epoch with prompt_index -1), so a segmentation
    #: run would search embeddings for placeholder names and train nothing that its test prompts use.
    tasks = ("classification",)

    def __init__(
        self,
        *,
        template: str = "a photo of a {}.",
        templates: list[str] | None = None,
        new_class_fallback: Fallback = "zero_shot",
        transform_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if new_class_fallback not in ("zero_shot", "transform", "none"):
            raise LearnerError(f"new_class_fallback={new_class_fallback!r} must be 'zero_shot', 'transform' or 'none'")
        self.templates = list(templates) if templates else [template]
        if any("{}" not in t for t in self.templates):
            raise LearnerError(f"templates {self.templates!r} each need a '{{}}' for the class name")
        self.new_class_fallback = new_class_fallback
        self.transform_weight = transform_weight
        self._zs_cache: dict[str, torch.Tensor] = {}

    @property
    def transfers_to_new_classes(self) -> bool:  # type: ignore[override]
        return self.new_class_fallback != "none"

    def _zero_shot(self, classnames: Sequence[str]) -> torch.Tensor:
        """Normalised zero-shot features ``[C, D]`` (one text-encoder pass per class name, cached)."""
        todo = [c for c in dict.fromkeys(classnames) if c not in self._zs_cache]
        if todo:
            feats = template_features(self.backbone, todo, self.templates)
            self._zs_cache.update({c: f.detach().cpu() for c, f in zip(todo, feats)})
        return torch.stack([self._zs_cache[c] for c in classnames])

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        self._zs_cache = {}  # features of another backbone must not leak in
        zs = self._zero_shot(classnames)
        self.concepts = nn.Parameter(zs.clone())
        self.register_buffer("train_zero_shot", zs.clone(), persistent=False)
        if self.new_class_fallback == "transform":
            self.transform = nn.Linear(zs.shape[1], zs.shape[1])
            with torch.no_grad():
                self.transform.weight.copy_(torch.eye(zs.shape[1]))
                self.transform.bias.zero_()

    def set_classnames(self, classnames: Sequence[str]) -> None:
        unknown = [c for c in classnames if c not in self.train_classnames]
        if self.new_class_fallback == "none" and self.train_classnames and unknown:
            raise LearnerError(
                f"ConES has no searched concept embedding for {len(unknown)} class(es) such as {unknown[:3]!r} and "
                "new_class_fallback is 'none'; set new_class_fallback: zero_shot (or transform) to score new classes"
            )
        super().set_classnames(classnames)

    def on_classnames_changed(self, classnames: list[str]) -> None:
        device = self.concepts.device if hasattr(self, "concepts") else None
        index = torch.tensor([self.train_classnames.index(c) if c in self.train_classnames else -1 for c in classnames])
        self.register_buffer("class_index", index.to(device) if device else index, persistent=False)
        zs = self._zero_shot(classnames)
        self.register_buffer("zero_shot", zs.to(device) if device else zs, persistent=False)

    def text_features(self) -> torch.Tensor:
        known = self.class_index >= 0
        searched = self.concepts[self.class_index.clamp(min=0)]
        if bool(known.all()):
            return searched
        fallback = self.transform(self.zero_shot) if self.new_class_fallback == "transform" else self.zero_shot
        return torch.where(known[:, None], searched, fallback.to(searched.dtype))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets)
        if self.new_class_fallback == "transform" and self.transform_weight:
            loss = loss + self.transform_weight * transform_fit_loss(
                self.transform(self.train_zero_shot), self.concepts.detach()
            )
        return loss


def transform_fit_loss(mapped: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """``mean_i (1 - cos(mapped_i, concepts_i))`` over ``mapped [C, D]`` and ``concepts [C, D]``; a scalar in [0, 2]."""
    return (1.0 - F.cosine_similarity(mapped, concepts, dim=-1)).mean()
