"""ConES second stage: CoOp context initialised from searched concept embeddings (ConES, arXiv 2305.18993,
the searched embeddings "can be further utilized in the next stage").

The paper feeds its searched embeddings to a following fine-tuning stage; for CLIP classification we chose
(no public code): fit CoOp's unified context ``[M, Wt]`` (from ``ctx_init``) for ``fit_steps`` Adam steps at
``fit_lr`` so that the text encoder's features of ``[ctx] {class}.`` reproduce the concept embeddings
(loss ``mean_i 1 - cos(g(t_i), c_i)``, :func:`vlprompt.learners.cones.transform_fit_loss`), once, at set-up,
on the backbone's device at that moment; then the context trains like CoOp. ``concepts_from`` is the
``prompts.safetensors`` a ConES ``vlprompt fit`` run wrote (``runs/<protocol>/<dataset>/cones/seed<k>/``); every
training class of this run must be in it. Without a file the targets are the zero-shot features (the concepts
before search), which a context from ``"a photo of a"`` already reproduces: then this is plain CoOp.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.layers import ClassPrompts, ClassTokenPosition, template_features, text_features
from vlprompt.learners.base import LearnerError
from vlprompt.learners.cones import transform_fit_loss
from vlprompt.learners.coop import CoOp

log = logging.getLogger(__name__)


def load_concepts(path: str | Path, classnames: list[str]) -> torch.Tensor:
    """Concept embeddings ``[C, D]`` for ``classnames`` from a ConES ``prompts.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise LearnerError(f"concepts_from={str(path)!r} does not exist: give the prompts.safetensors of a ConES run")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    saved = json.loads(meta.get("classnames", "[]"))
    state = load_file(str(path))
    if "concepts" not in state:
        raise LearnerError(f"{str(path)!r} has no 'concepts' tensor (keys {sorted(state)}): was it written by a ConES run?")
    missing = [c for c in classnames if c not in saved]
    if missing:
        raise LearnerError(f"{str(path)!r} has no concept embedding for {missing[:5]!r}: use the ConES run of the same dataset")
    return state["concepts"][[saved.index(c) for c in classnames]].float()


class ConESPromptTuning(CoOp):
    """CoOp whose context is first fitted to reproduce ConES concept embeddings.

    Classification only (``tasks``): its targets are ConES's per-class concept embeddings (segmentation prompts
    are free phrases, see :class:`~vlprompt.learners.cones.ConES`); plain ``coop`` serves segmentation.

    Args (besides CoOp's ``n_ctx``, ``ctx_init``, ``class_token_position``, ``init_std``; unified context only):
        concepts_from: a ConES ``prompts.safetensors``; ``None`` = zero-shot features of ``template``.
        template: template of the zero-shot targets when ``concepts_from`` is ``None``.
        fit_steps: Adam steps of the fit (0 = no fit).
        fit_lr: Adam learning rate of the fit.
    """

    tasks = ("classification",)

    def __init__(
        self,
        n_ctx: int | None = 4,
        *,
        ctx_init: str | None = "a photo of a",
        class_token_position: ClassTokenPosition = "end",
        init_std: float = 0.02,
        concepts_from: str | None = None,
        template: str = "a photo of a {}.",
        fit_steps: int = 100,
        fit_lr: float = 0.01,
    ) -> None:
        super().__init__(n_ctx, ctx_init=ctx_init, class_token_position=class_token_position, init_std=init_std)
        if fit_steps < 0:
            raise LearnerError(f"fit_steps={fit_steps} must be >= 0")
        self.concepts_from = concepts_from
        self.template = template
        self.fit_steps = fit_steps
        self.fit_lr = fit_lr
        self.fit_cosine: float | None = None

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        super().build(backbone, classnames)
        if self.concepts_from:
            targets = load_concepts(self.concepts_from, classnames)
        else:
            targets = template_features(backbone, classnames, [self.template])
        prompts = ClassPrompts(backbone, classnames, int(self.n_ctx), position=self.class_token_position)
        ctx = self.ctx.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([ctx], lr=self.fit_lr)
        with torch.enable_grad():
            for _ in range(self.fit_steps):
                opt.zero_grad(set_to_none=True)
                loss = transform_fit_loss(text_features(backbone, prompts(ctx), prompts.pool_index), targets)
                loss.backward()
                opt.step()
        with torch.no_grad():
            feats = text_features(backbone, prompts(ctx), prompts.pool_index)
            self.fit_cosine = float(torch.nn.functional.cosine_similarity(feats, targets, dim=-1).mean())
            self.ctx.copy_(ctx.detach())
        log.info("ConES stage 2: context fitted in %d steps, mean cosine to the concepts %.4f", self.fit_steps, self.fit_cosine)
