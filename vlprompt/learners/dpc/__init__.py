"""DPC: Dual-Prompt Collaboration (Li, Wang, Wang, Jiang, Peng, Long; CVPR 2025, "DPC: Dual-Prompt Collaboration
for Tuning Vision-Language Models", arXiv 2503.13443). Reference code: JREion/DPC @01e6b59 (``trainers/sple_coop.py``,
CoOp+DPC; ``trainers/sple_promptkd.py``, PromptKD+DPC).

DPC is a second fine-tuning stage on top of any prompt learner. It starts from the wrapped learner's *trained*
prompt ``P`` (``prompts``: the file ``vlprompt fit`` wrote for it), clones it into a parallel tensor ``theta`` (the
only thing that trains) and fine-tunes on the base classes with the Dynamic Hard Negative Optimizer
(:mod:`vlprompt.learners.dpc.hard_negatives`): for each training image, the classes the original prompt ``P`` ranks
in its top ``K`` (not yet in the mini-batch) join it with one training image each, and the enlarged batch is trained
with a symmetric image-text contrastive loss. The wrapped learner runs with
``decoupled_prompt(theta, P, weight, mix)`` (every trainable tensor of it, element-wise): ``mix = 1`` on the training
classes (training and base evaluation: ``(theta - (1 - w) P) / w``), ``mix = weight_for_new`` on any other label
space (``0``, the reference configs' value: exactly the original prompt). The label space is known generically:
it is the training space when :attr:`classnames` equals :attr:`train_classnames` (``set_classnames``).

Generic hooks only: the wrapped learner's tensors are substituted with :func:`torch.func.functional_call`, and its
own ``encode_images``, ``logits``, ``text_features`` and ``paired_text_features`` are called; nothing depends on
which learner it is.

Deliberate differences from the reference (each also written beside the code):

* The reference draws a hard negative's image from a JSON list of the base-class training images on disk
  (``SPLE.PIC_LIB``). A learner sees only its mini-batches, so DPC keeps a bank of the last ``bank_size`` training
  images of each class it has been shown (image features instead when the wrapped learner leaves the image encoder
  alone: then they are the same numbers); a negative class with nothing banked yet (early in the first epoch) is
  left out of that step. The reference also re-augments the drawn image; a banked image keeps the augmentation of
  the batch it came in.
* The rule applies to every trainable tensor of the wrapped learner. The CoOp reference has only ``ctx``; the
  PromptKD reference decouples only the text ``ctx`` and trains its visual and deep prompts directly.
* The wrapped learner's own training rules (its loss, epoch hooks such as PromptSRC's prompt averaging, gradient
  transforms) do not run in the DPC stage: the reference trains with ``L_cl`` alone (``forward_backward`` of both
  reference trainers).
* The reference's ImageNet-only exception for its ``all`` split (``sple_coop.py:699``) is not reproduced: every label
  space other than the training classes uses the new-class rule.
* fp32 throughout (the reference's ``amp`` branch trains a plain cross-entropy instead of ``L_cl``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.coop import CoOp
from vlprompt.learners.dpc.hard_negatives import decoupled_prompt, dual_contrastive_loss, select_negatives
from vlprompt.learners.wrapper import WrappedLearner

log = logging.getLogger(__name__)


class Call(nn.Module):
    """Holds the wrapped learner as ``inner`` so that :func:`torch.func.functional_call` can substitute its tensors
    (names ``inner.<name>``) while any of its methods runs."""

    def __init__(self, inner: PromptLearner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, fn: Callable[[], Any]) -> Any:
        return fn()


def set_nested(root: nn.Module, dotted: str, param: nn.Parameter) -> None:
    """Register ``param`` under the dotted name ``dotted`` below ``root``, creating empty containers on the way."""
    *path, leaf = dotted.split(".")
    node = root
    for part in path:
        if not hasattr(node, part):
            node.add_module(part, nn.Module())
        node = getattr(node, part)
    node.register_parameter(leaf, param)


class DPC(WrappedLearner):
    """A parallel prompt tuned on the base classes on top of ``inner``'s trained prompt.

    Args:
        inner: the learner to wrap (``class_path: coop``, ``maple``, ``promptsrc``, a third-party one); default
            ``CoOp()``. Its trainable tensors are the prompt.
        prompts: the inner learner's trained prompts (``prompts.safetensors`` written by ``vlprompt fit``) on the same
            training classes (``SPLE.BACK_CKPT_PATH``). ``None``: the inner learner's own initialisation (tests only;
            DPC assumes a tuned prompt).
        weight: ``w``, the reference's ``SPLE.STACK.WEIGHT`` (0.5 in the CoOp configs, 0.2 for PromptKD).
        weight_for_new: ``SPLE.STACK.WEIGHT_FOR_NEW`` for label spaces other than the training classes (0.0 in every
            reference config: new classes use the original prompt).
        top_k: ``SPLE.INFER_TOPK``, classes ranked by the original prompt per image (8 in most reference configs).
        bank_size: training images (or features) remembered per class as hard-negative candidates.
        seed: seed of the hard-negative draws; ``None`` draws one from torch's generator at set-up.
    """

    family = "text"
    #: classification only: the hard negatives are classes of an image-level classifier
    tasks = ("classification",)

    def __init__(
        self,
        inner: PromptLearner | None = None,
        prompts: str | None = None,
        *,
        weight: float = 0.5,
        weight_for_new: float = 0.0,
        top_k: int = 8,
        bank_size: int = 16,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if inner is None:
            inner = CoOp()
        if not isinstance(inner, PromptLearner):
            raise LearnerError(f"dpc: inner={inner!r} is not a prompt learner; give e.g. inner: {{class_path: coop}}")
        if isinstance(inner, DPC):
            raise LearnerError("dpc cannot wrap itself (inner is a dpc learner); wrap the prompt learner directly")
        if not inner.trainable:
            raise LearnerError(f"dpc cannot wrap {type(inner).__name__}: it has no prompt to clone (trainable=False); "
                               "wrap a prompt learner such as coop, maple or promptsrc")
        if not 0.0 < weight <= 1.0:
            raise LearnerError(f"dpc: weight={weight} must be in (0, 1] (the reference uses 0.5 or 0.2)")
        if not 0.0 <= weight_for_new <= 1.0:
            raise LearnerError(f"dpc: weight_for_new={weight_for_new} must be in [0, 1] (0.0: new classes use the original prompt)")
        if top_k < 1:
            raise LearnerError(f"dpc: top_k={top_k} must be at least 1 (the reference uses 2 to 8)")
        if bank_size < 1:
            raise LearnerError(f"dpc: bank_size={bank_size} must be at least 1 (images remembered per class)")
        if prompts is not None and not Path(prompts).is_file():
            raise LearnerError(f"dpc: prompts {prompts!r} does not exist; give the prompts.safetensors that `vlprompt "
                               "fit` wrote for the wrapped learner on the same base classes, or prompts: null")
        self.inner = inner
        self.prompts = None if prompts is None else str(prompts)
        self.weight = float(weight)
        self.weight_for_new = float(weight_for_new)
        self.top_k = int(top_k)
        self.bank_size = int(bank_size)
        self.seed = seed
        self.parallel = nn.Module()
        self.names: list[str] = []
        self.rng = random.Random(seed)
        self.bank: dict[int, list[torch.Tensor]] = {}
        self.bank_holds_images = False
        self.batch_images: torch.Tensor | None = None
        object.__setattr__(self, "call", Call(inner))  # not a submodule: the inner learner's tensors are saved once
        self.space_cache: tuple | None = None
        #: the classes of the last enlarged training batch, anchors and negatives in order (for inspection and tests)
        self.last_batch_labels: list[int] = []

    @property
    def wrapped(self) -> PromptLearner:
        return self.inner

    # ------------------------------------------------------------------ lifecycle
    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        self.inner.setup(backbone, classnames)
        if self.prompts is not None:
            self.inner.load_prompts(self.prompts)
            log.info("dpc: original prompt loaded from %s", self.prompts)
        else:
            log.warning("dpc: prompts is null, so the parallel prompt starts from %s's own initialisation, not from a "
                        "trained prompt (DPC is a second stage: fit the wrapped learner first)", type(self.inner).__name__)
        state = dict(self.inner.named_parameters())
        self.names = [k for k, p in state.items() if p.requires_grad]
        if not self.names:
            raise LearnerError(f"dpc cannot wrap {type(self.inner).__name__} with this config: it has no trainable "
                               "tensors to clone (e.g. n_ctx=0)")
        for k in self.names:  # the parallel prompt starts as the original one (SPLE_INIT, sple_coop.py:185)
            set_nested(self.parallel, k, nn.Parameter(state[k].detach().clone()))
            state[k].requires_grad_(False)
        if self.seed is None:
            self.rng.seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        self.bank_holds_images = bool(self.inner.modifies_image_encoder)
        self.bank = {}

    def on_classnames_changed(self, classnames: list[str]) -> None:
        if self.names:  # set up (build ran)
            self.inner.set_classnames(classnames)
        self.space_cache = None

    # ------------------------------------------------------------------ the two prompts
    def original_state(self) -> dict[str, torch.Tensor]:
        own = dict(self.inner.named_parameters())
        return {k: own[k] for k in self.names}

    def parallel_state(self) -> dict[str, nn.Parameter]:
        own = dict(self.parallel.named_parameters())
        return {k: own[k] for k in self.names}

    def prompt_tensors(self) -> dict[str, torch.Tensor]:
        """``inner.<name> -> tensor`` the wrapped learner runs with in the current label space (cached while
        evaluating without gradients, so that the wrapped learner's own text cache stays valid)."""
        mix = 1.0 if self.on_training_classes else self.weight_for_new
        theta, original = self.parallel_state(), self.original_state()
        if self.training or torch.is_grad_enabled():
            return {f"inner.{k}": decoupled_prompt(theta[k], original[k], self.weight, mix) for k in self.names}
        key = (mix, tuple((id(t), t.data_ptr(), t._version) for t in (*theta.values(), *original.values())))
        if self.space_cache is not None and self.space_cache[0] == key and all(
                torch.equal(t.detach(), v) for t, v in zip((*theta.values(), *original.values()), self.space_cache[1])):
            return self.space_cache[2]
        out = {f"inner.{k}": decoupled_prompt(theta[k], original[k], self.weight, mix) for k in self.names}
        self.space_cache = (key, [t.detach().clone() for t in (*theta.values(), *original.values())], out)
        return out

    def run(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` (a method of the wrapped learner) with its prompt tensors replaced by :meth:`prompt_tensors`."""
        return functional_call(self.call, self.prompt_tensors(), (fn,))

    # ------------------------------------------------------------------ forward: the wrapped learner's, re-parametrised
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.batch_images = images  # the hard-negative bank takes them in loss(), where their labels are known
        if not self.inner.modifies_image_encoder:
            return self.inner.encode_images(images)
        return self.run(lambda: self.inner.encode_images(images))

    def text_features(self) -> torch.Tensor:
        return self.run(self.inner.text_features)

    def cached_text_features(self) -> torch.Tensor:
        return self.run(self.inner.cached_text_features)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.run(lambda: self.inner.logits(image_features))

    def paired_text_features(self, image_features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.run(lambda: self.inner.paired_text_features(image_features, index))

    # ------------------------------------------------------------------ training: the Dynamic Hard Negative Optimizer
    @torch.no_grad()
    def original_scores(self, images: torch.Tensor | None, image_features: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` logits of the batch under the original prompt, in eval mode (the reference's separate
        ``CoOpStats`` model, ``sple_coop.py:513-525``)."""
        was_training = self.inner.training
        self.inner.eval()
        try:
            if self.inner.modifies_image_encoder and images is not None:
                image_features = self.inner.encode_images(images)
            return self.inner.logits(image_features)
        finally:
            self.inner.train(was_training)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """``L_cl`` over the batch enlarged with hard negatives; ``logits`` (the module's) are not used."""
        images = self.batch_images
        self.batch_images = None
        if images is not None and images.shape[0] != targets.shape[0]:
            images = None
        if self.bank_holds_images and images is None:
            raise LearnerError(f"dpc around {type(self.inner).__name__} (which prompts the image encoder) needs the "
                               "batch images: call encode_images(images) in training mode before loss()")
        labels = [int(t) for t in targets.tolist()]
        scores = self.original_scores(images, image_features.detach())
        in_batch = list(labels)
        order: list[int] = []  # per sample: the anchor (-1 - i), then its negatives' bank entries
        neg_labels: list[int] = []
        neg_items: list[torch.Tensor] = []
        for i, label in enumerate(labels):
            order.append(-1 - i)
            for c in select_negatives(scores[i], label, in_batch, self.top_k, self.rng):
                if not self.bank.get(c):
                    continue  # deliberate: nothing banked for class c yet (the reference reads any training image)
                order.append(len(neg_items))
                neg_items.append(self.rng.choice(self.bank[c]))
                neg_labels.append(c)
        self.remember(images if self.bank_holds_images else image_features, targets)
        if neg_items:
            stacked = torch.stack(neg_items).to(device=image_features.device, dtype=image_features.dtype)
            neg_features = self.encode_negatives(stacked)
            rows = [image_features[-1 - j] if j < 0 else neg_features[j] for j in order]
            all_features = torch.stack(rows)
            all_labels = [labels[-1 - j] if j < 0 else neg_labels[j] for j in order]
        else:
            all_features, all_labels = image_features, labels
        self.last_batch_labels = list(all_labels)
        index = torch.tensor(all_labels, device=image_features.device)
        text = self.paired_text_features(all_features, index)
        return dual_contrastive_loss(all_features, text, self.backbone.logit_scale)

    def encode_negatives(self, items: torch.Tensor) -> torch.Tensor:
        """Features of banked negatives: encoded with the parallel prompt when the wrapped learner prompts the image
        encoder (the reference re-encodes them), else the banked frozen features themselves."""
        if not self.bank_holds_images:
            return items
        return self.run(lambda: self.inner.encode_images(items))

    @torch.no_grad()
    def remember(self, items: torch.Tensor, targets: torch.Tensor) -> None:
        """Bank ``items`` (images ``[B, 3, H, W]`` or frozen image features ``[B, D]``) under their classes
        ``targets [B]``, keeping the last :attr:`bank_size` per class (on the CPU)."""
        for item, c in zip(items.detach().cpu(), targets.tolist()):
            slot = self.bank.setdefault(int(c), [])
            slot.append(item.clone())
            del slot[: max(0, len(slot) - self.bank_size)]

    def optimizer_groups(self) -> list[dict]:
        """The wrapped learner's groups (and their ``lr`` / ``lr_scale``), with each original tensor replaced by its
        parallel counterpart; tensors of no group go to a plain group."""
        inner_names = {id(p): k for k, p in self.inner.named_parameters()}
        theta = self.parallel_state()
        groups, used = [], set()
        for group in self.inner.optimizer_groups():
            params = [theta[inner_names[id(p)]] for p in group["params"] if inner_names.get(id(p)) in theta]
            used.update(id(p) for p in params)
            if params:
                groups.append({**group, "params": params})
        rest = [p for p in theta.values() if id(p) not in used]
        return groups + ([{"params": rest}] if rest else [])

    # ------------------------------------------------------------------ learned tensors: both prompts
    def learned_state(self) -> dict[str, torch.Tensor]:
        """``parallel.<name>`` (``theta``, the reference's saved "mixed" ``ctx``) and ``inner.<name>`` (the original
        prompt ``P``): both are needed to evaluate base and new classes."""
        out = {f"parallel.{k}": v.detach().cpu().contiguous() for k, v in self.parallel_state().items()}
        out.update({f"inner.{k}": v.detach().cpu().contiguous() for k, v in self.original_state().items()})
        return out

    def tunable_parameters(self) -> dict[str, nn.Parameter]:
        return PromptLearner.tunable_parameters(self)

    def load_prompts(self, path: str | Path, *, check_classnames: bool = True) -> None:
        PromptLearner.load_prompts(self, path, check_classnames=check_classnames)
        self.invalidate_text_cache()

    def invalidate_text_cache(self) -> None:
        super().invalidate_text_cache()
        self.space_cache = None

    def prompt_record(self) -> dict:
        return {**super().prompt_record(), "dpc_weight": self.weight, "dpc_weight_for_new": self.weight_for_new}
