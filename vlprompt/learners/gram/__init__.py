"""GRAM: Gradient-RegulAted Meta-prompt learning (Li, Gao, Wei, Tang, Zhang, Li, Ji, Tian, Chua, Zhuang;
ICCV 2023, "Gradient-Regulated Meta-Prompt Learning for Generalizable Vision-Language Models", arXiv 2303.06571).

GRAM is model-agnostic: it wraps any prompt learner (CoOp, VPT, MaPLe, ...). From unlabelled image-text data it
meta-learns (1) an initialisation of the inner learner's prompts and (2) a lightweight gradient regulating function
psi; when the wrapped learner is then fitted on a downstream task it starts from the meta-learned prompts and each
optimiser step uses ``psi(grad)`` instead of ``grad`` (the paper's regulated update, Sec. 3).
Meta-training is :mod:`vlprompt.learners.gram.meta` (``vlprompt meta-train``); this learner only *uses* its artifact.

This is a re-implementation from the paper: no official code was found. Deliberate choices where the paper is
silent (see also :mod:`vlprompt.learners.gram.meta` and :mod:`.regulator`):

* psi's exact form: per-tensor gate ``2*sigmoid(w0*g_hat + w1*|g_hat| + w2)`` (3 scalars per tuned tensor),
  exactly the identity at ``w = 0``.
* psi is applied to the raw gradient of the loss, before the optimiser's weight decay, momentum and clipping
  (through the generic :meth:`PromptLearner.transform_gradients` hook); psi is frozen during downstream fitting.
* ``meta: null`` means the inner learner's own initialisation and the identity regulator: then GRAM trains
  bit-identically to the inner learner (tested).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.coop import CoOp
from vlprompt.learners.gram.artifact import MetaArtifact, load_artifact
from vlprompt.learners.gram.regulator import identity_regulator, regulate
from vlprompt.learners.wrapper import WrappedLearner

log = logging.getLogger(__name__)


class GRAM(WrappedLearner):
    """Wraps ``inner``: meta-learned prompt initialisation + regulated gradients.

    Args:
        inner: the prompt learner to wrap (``class_path: coop`` ...); it must have trainable tensors. Default:
            ``CoOp()`` with its defaults (the paper's main host method).
        meta: a meta artifact written by ``vlprompt meta-train`` (safetensors), or ``None`` (identity regulator,
            the inner learner's own initialisation).
        use_init: start from the artifact's prompt initialisation (``False``: only regulate gradients).
        use_regulator: regulate gradients with the artifact's psi (``False``: only the initialisation).
    """

    family = "meta-learned"
    #: classification only: the meta-learned prompt initialisation and gradient regulator are learned on
    #: image-text classification episodes (vlprompt.learners.gram.meta) and have not been meta-learned for a mask decoder.
    tasks = ("classification",)

    def __init__(
        self,
        inner: PromptLearner | None = None,
        meta: str | None = None,
        *,
        use_init: bool = True,
        use_regulator: bool = True,
    ) -> None:
        super().__init__()
        if inner is None:
            inner = CoOp()
        if not isinstance(inner, PromptLearner):
            raise LearnerError(f"gram: inner={inner!r} is not a prompt learner; give e.g. inner: {{class_path: coop}}")
        if isinstance(inner, GRAM):
            raise LearnerError("gram cannot wrap itself (inner is a gram learner); wrap the prompt learner directly, e.g. inner: {class_path: coop}")
        if not inner.trainable:
            raise LearnerError(
                f"gram cannot wrap {type(inner).__name__}: it has nothing to tune (trainable=False). Wrap a prompt "
                "learner such as coop, vpt or maple."
            )
        if meta is not None and not Path(meta).is_file():
            raise LearnerError(f"gram: meta artifact {meta!r} does not exist; give the file `vlprompt meta-train` wrote, or meta: null")
        self.inner = inner
        self.meta = None if meta is None else str(meta)
        self.use_init = use_init
        self.use_regulator = use_regulator
        self.regulator: dict[str, torch.Tensor] = {}
        self.artifact: MetaArtifact | None = None

    # ------------------------------------------------------------------ properties of the inner learner
    @property
    def wrapped(self) -> PromptLearner:
        return self.inner

    def resource_track(self) -> tuple[str, ...]:
        """The inner learner's track, plus ``image-text corpus`` when a meta artifact (meta-learned on unlabelled
        image-text pairs by ``vlprompt meta-train``) is used."""
        extra = ("image-text corpus",) if self.meta is not None else ()
        return tuple(dict.fromkeys((*self.inner.resource_track(), *extra)))

    # ------------------------------------------------------------------ lifecycle
    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        self.inner.setup(backbone, classnames)
        state = self.inner.learned_state()
        if not state:
            raise LearnerError(
                f"gram cannot wrap {type(self.inner).__name__} with this config: it has no trainable tensors "
                "(e.g. n_ctx=0). Give the inner learner prompts to tune."
            )
        self.regulator = identity_regulator(list(state))
        if self.meta is None:
            return
        art = load_artifact(self.meta)
        art.check(backbone, self.inner)
        self.artifact = art
        if self.use_init:
            self.inner.set_learned_state(art.init)
        if self.use_regulator:
            self.regulator = {k: v.clone() for k, v in art.regulator.items()}
        log.info("gram: loaded meta artifact %s (init=%s, regulator=%s)", self.meta, self.use_init, self.use_regulator)

    def on_classnames_changed(self, classnames: list[str]) -> None:
        if self.inner._backbone is not None:
            self.inner.set_classnames(classnames)

    # ------------------------------------------------------------------ loss: the inner learner's
    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        return self.inner.loss(logits, targets, image_features)

    # ------------------------------------------------------------------ training hooks
    def transform_gradients(self) -> None:
        """Replace each tuned tensor's gradient ``g`` by ``psi(g)`` (after the inner learner's own transform)."""
        self.inner.transform_gradients()
        params = dict(self.inner.named_parameters())
        with torch.no_grad():
            for name, weights in self.regulator.items():
                p = params[name]
                if p.grad is not None:
                    p.grad.copy_(regulate(p.grad, weights))

    def on_train_epoch_end(self, epoch: int, max_epochs: int) -> None:
        self.inner.on_train_epoch_end(epoch, max_epochs)

    def on_fit_end(self) -> None:
        self.inner.on_fit_end()

    def optimizer_groups(self) -> list[dict]:
        return self.inner.optimizer_groups()

    # ------------------------------------------------------------------ learned tensors: the inner learner's names
    def set_learned_state(self, state: dict[str, torch.Tensor], *, strict: bool = True) -> None:
        self.inner.set_learned_state(state, strict=strict)
        self.invalidate_text_cache()

    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.inner.import_reference_state(state)
