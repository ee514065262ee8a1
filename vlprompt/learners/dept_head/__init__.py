"""DePT's decoupled head as a plug-in (Zhang, Zhang, Wang, Li, Yu, Shen; CVPR 2024, "DePT: Decoupled Prompt Tuning",
arXiv 2309.07439). Reference code: Koorye/DePT @d4ff416 (``trainers/elp_coop.py``: CoOp+DePT; ``elp_cocoop.py``,
``elp_kgcoop.py``, ``elp_maple.py``: the same head on CoCoOp, KgCoOp and MaPLe; defaults in ``train.py``).

Not vlprompt's ``dept`` learner, which is Shi & Lipani's *Decomposed* Prompt Tuning (ICLR 2024).

DePT keeps the wrapped learner's image-text matching (ITM) classifier untouched and adds a second, decoupled head
on the training (base) classes: a channel-wise feature transformation (CAT, ``x * scale + bias``) for image
features and one for text features, then a linear classifier over the base classes, all on the raw features
(:mod:`vlprompt.learners.dept_head.head`). In training, the head classifies both each image and the text feature
of its own class, and the loss moves weight ``w`` (``LINEAR_PROBE.WEIGHT`` 0.7) of the ITM cross-entropy to the
head's cross-entropy. At test time, on the base classes, logits are ``(1 - w) ITM + w head``; on any other label
space (new classes) the head is not used: the wrapped learner's logits alone. The label space is known
generically: it is the training space when :attr:`classnames` equals :attr:`train_classnames`. The head trains
at ``head_lr_scale`` (``OPTIM.LR_EXP`` 6.5) times the configured learning rate (the reference's staged rate).

Generic hooks only: the wrapped learner's ``encode_images``, ``logits``, ``paired_text_features`` (the text
feature of each image's own class; an instance-conditioned learner such as CoCoOp encodes only those prompts),
``loss``, ``optimizer_groups`` and training hooks; nothing depends on which learner it is.

Deliberate differences from the reference (each also written beside the code):

* The reference's rule for the base space is its split name (``SUBSAMPLE_CLASSES == 'base'``, or ``'all'`` on an
  ImageNet dataset, for cross-dataset runs trained on ImageNet); here it is "the label space is the training
  classes", which covers both.
* ``inner_loss="cross_entropy"`` (default) re-computes the ITM cross-entropy from the logits the wrapped learner
  returned, to move its weight ``w`` to the head; this equals every reference trainer's loss (KgCoOp's extra term
  keeps its weight). ``inner_loss="whole"`` scales the wrapped learner's whole loss by ``1 - w`` instead, for
  learners whose loss is not cross-entropy-based.
* In training, :meth:`DePTHead.logits` returns the ITM logits (the ones the wrapped learner's loss expects; the
  logged training accuracy is theirs); the head's logits are computed in :meth:`DePTHead.loss`.
* The text features of the batch's classes are taken from ``paired_text_features``, which for a shared classifier
  (CoOp, MaPLe) runs the text encoder a second time in each training step (the reference indexes the features of
  its ITM forward): the same numbers, more compute.
* fp32 throughout (the reference's CoOp configs leave ``PREC`` at its ``fp16`` default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.coop import CoOp
from vlprompt.learners.dept_head.head import (
    INNER_LOSS_RULES,
    DecoupledHead,
    InnerLossRule,
    decoupled_loss,
    fused_logits,
    head_cross_entropy,
    paired_head_logits,
)
from vlprompt.learners.wrapper import WrappedLearner


class DePTHead(WrappedLearner):
    """The decoupled CAT + linear head on the base classes, on top of ``inner``'s ITM classifier.

    Args:
        inner: the learner to wrap (``class_path: coop``, ``cocoop``, ``maple``, ``promptsrc``, a third-party one);
            default ``CoOp()`` (16 random context vectors, the reference's CoOp+DePT setting).
        weight: ``w`` (``TRAINER.LINEAR_PROBE.WEIGHT``, 0.7): the head's share of the loss and of the base-class
            logits.
        head_lr_scale: the head's learning rate over the configured one (``OPTIM.LR_EXP``, 6.5; the wrapped
            learner's groups keep their own rates, the reference's ``BASE_LR_MULT`` 1.0).
        fusion: base-class logits are ``(1 - w) ITM + w head`` (``LINEAR_PROBE.TEST_TIME_FUSION``, True); False:
            the head's logits alone.
        inner_loss: ``cross_entropy`` (the reference: ``w`` of the ITM cross-entropy moves to the head, the wrapped
            learner's other loss terms keep their weights) or ``whole`` (the wrapped learner's whole loss is
            weighted ``1 - w``).
    """

    family = "text"
    #: classification only: the head is a linear classifier over image-level classes
    tasks = ("classification",)

    def __init__(
        self,
        inner: PromptLearner | None = None,
        *,
        weight: float = 0.7,
        head_lr_scale: float = 6.5,
        fusion: bool = True,
        inner_loss: InnerLossRule = "cross_entropy",
    ) -> None:
        super().__init__()
        if inner is None:
            inner = CoOp()
        if not isinstance(inner, PromptLearner):
            raise LearnerError(f"dept_head: inner={inner!r} is not a prompt learner; give e.g. inner: {{class_path: coop}}")
        if isinstance(inner, DePTHead):
            raise LearnerError("dept_head cannot wrap itself (inner is a dept_head learner); wrap the prompt learner directly")
        if getattr(inner, "unlabeled_pool", None) is not None:
            raise LearnerError(f"dept_head cannot wrap {type(inner).__name__}: it trains on the unlabeled pool "
                               f"{inner.unlabeled_pool!r}, and the head needs labelled base-class images")
        if not 0.0 <= weight <= 1.0:
            raise LearnerError(f"dept_head: weight={weight} must be in [0, 1] (the reference uses 0.7)")
        if head_lr_scale <= 0:
            raise LearnerError(f"dept_head: head_lr_scale={head_lr_scale} must be > 0 (the reference uses 6.5)")
        if inner_loss not in INNER_LOSS_RULES:
            raise LearnerError(f"dept_head: inner_loss={inner_loss!r} must be one of {INNER_LOSS_RULES}")
        self.inner = inner
        self.weight = float(weight)
        self.head_lr_scale = float(head_lr_scale)
        self.fusion = bool(fusion)
        self.inner_loss = inner_loss
        self.head: DecoupledHead | None = None

    @property
    def wrapped(self) -> PromptLearner:
        return self.inner

    # ------------------------------------------------------------------ lifecycle
    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        self.inner.setup(backbone, classnames)
        # after the wrapped learner, as the reference builds its prompt learner before the head
        self.head = DecoupledHead(backbone.embed_dim, len(classnames))
        anchor = next(iter(backbone.parameters()), None)  # on the backbone's device, as the wrapped learner's tensors
        if anchor is not None:
            self.head.to(anchor.device)

    def on_classnames_changed(self, classnames: list[str]) -> None:
        if self.head is not None:  # set up (build ran)
            self.inner.set_classnames(classnames)

    # ------------------------------------------------------------------ forward
    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """The wrapped learner's ITM logits in training and on other label spaces; on the base classes at
        evaluation, their fusion with the head's (or the head's alone when ``fusion`` is False)."""
        if self.training or not self.on_training_classes:
            return self.inner.logits(image_features)
        head = self.required_head()(image_features)
        if not self.fusion:
            return head
        return fused_logits(self.inner.logits(image_features), head, self.weight)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """``logits``: the ITM logits of :meth:`logits` in training. The wrapped learner's loss with ``w`` of its
        cross-entropy moved to the head's (:func:`~vlprompt.learners.dept_head.head.decoupled_loss`)."""
        if not self.on_training_classes:
            raise LearnerError(f"dept_head trains its head on the training classes ({len(self.train_classnames)}), "
                               f"but the label space is {len(self.classnames)} other classes: call "
                               "set_classnames(train_classnames) before training")
        inner_loss = self.inner.loss(logits, targets, image_features)
        text = self.inner.paired_text_features(image_features, targets)  # raw text feature of each image's class
        head_ce = head_cross_entropy(paired_head_logits(self.required_head(), text, image_features), targets)
        itm_ce = F.cross_entropy(logits, targets) if self.inner_loss == "cross_entropy" else logits.new_zeros(())
        return decoupled_loss(inner_loss, itm_ce, head_ce, self.weight, self.inner_loss)

    def required_head(self) -> DecoupledHead:
        if self.head is None:
            raise LearnerError("dept_head is not set up: call learner.setup(backbone, classnames) first")
        return self.head

    # ------------------------------------------------------------------ training hooks: the wrapped learner's
    def on_train_epoch_end(self, epoch: int, max_epochs: int) -> None:
        self.inner.on_train_epoch_end(epoch, max_epochs)

    def on_fit_end(self) -> None:
        self.inner.on_fit_end()

    def transform_gradients(self) -> None:
        self.inner.transform_gradients()

    def optimizer_groups(self) -> list[dict]:
        """The wrapped learner's groups, then the head's at ``head_lr_scale`` times the configured rate (the
        reference's staged rate: ``LR * LR_EXP`` for ``linear_probe*`` and ``film*``, ``LR`` for the rest)."""
        return [*self.inner.optimizer_groups(),
                {"params": list(self.required_head().parameters()), "lr_scale": self.head_lr_scale}]

    # ------------------------------------------------------------------ learned tensors: the prompt and the head
    def learned_state(self) -> dict[str, torch.Tensor]:
        """``inner.<name>`` (the wrapped learner's trainable tensors) and ``head.<name>`` (CAT and classifier)."""
        return PromptLearner.learned_state(self)

    def tunable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return PromptLearner.tunable_parameters(self)

    def load_prompts(self, path, *, check_classnames: bool = True) -> None:
        PromptLearner.load_prompts(self, path, check_classnames=check_classnames)
        self.invalidate_text_cache()

    def prompt_record(self) -> dict:
        return {**super().prompt_record(), "dept_head_weight": self.weight, "dept_head_fusion": self.fusion}


__all__ = ["DePTHead"]
