"""ZERO: test-time adaptation with zero temperature (Farina, Franchi, Iacca, Mancini, Ricci; NeurIPS 2024).

For each test image alone, without labels and without any backward pass: build ``N = 64`` views (the
test-transformed original and 63 random resized crops with flips), keep the ``int(0.3 * N)`` views of lowest
prediction entropy, and predict by majority vote over them: each kept view's softmax at zero temperature (its
arg-max as a one-hot vector) is summed, ties are broken by the arg-max of the discarded views, most confident
first. It stacks on any classification learner (default zero-shot CLIP "a photo of a {}."; CoOp's trained
prompts with ``learner: coop`` and ``--prompts``, MaPLe's with ``learner: maple``...): only the learner's
logits on the views are used.

Faithful to FarinaMatteo/zero @c609f7c (``ttas/zero.py`` ``Zero.zero`` lines 59-98, ``ttas/base.py``
``confidence_filter`` lines 58-64, ``utils/tools.py`` ``greedy_break`` / ``break_sample_tie`` lines 205-218;
``data/augs.py`` ``MultiViewCropAndFlip`` for the views; ``set_hyperparams``: 64 views, gamma 0.3); compared
with the reference's own ``Zero.zero`` in ``tests/test_tta_methods.py``. Deliberate differences:

- fp32 (the reference runs under CUDA autocast, fp16);
- the unscaled similarities are the learner's logits divided by the backbone's logit scale (the reference
  reads the cosine similarities before scaling; equal up to rounding);
- the entropy uses ``torch.special.entr`` (``-p log p`` with ``0 log 0 = 0``): the reference's
  ``-(p * p.log())`` is NaN where a probability underflows to 0 and equal elsewhere;
- the prediction is returned as logits ``log(votes)`` so that the module's softmax (accuracy, ECE) reads the
  vote fractions (the reference returns the votes; the arg-max is the same);
- view transforms run on tensors (:mod:`vlprompt.data.tta_views`, as TPT's).
"""

from __future__ import annotations

from typing import Any

import torch

from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.prompts.tta import TestTimeMethod, TTAError, TTAStep, check_views, marginal_entropy
from vlprompt.learners.view_method import ViewTestTimeMethod
from vlprompt.learners.zero_shot import ZeroShot


def zero_votes(logits: torch.Tensor, logit_scale: torch.Tensor | float, gamma: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """ZERO's prediction: votes ``[C]`` over classes and the kept view indices ``[int(gamma * N)]``.

    ``logits [N, C]`` are the learner's logits of the ``N`` views (``logit_scale * cos``). The views are sorted
    by the entropy of ``softmax(logits)`` (ascending; ``ttas/base.py:58-64``); the first ``k = int(gamma * N)``
    vote with ``softmax(cos / eps)`` (``eps`` = the dtype's machine epsilon: a one-hot arg-max unless two
    classes are equal to within ``eps``), summed (``ttas/zero.py:78-83``). If several classes share the top
    count, the first discarded view (in entropy order) whose arg-max is one of them wins
    (``utils/tools.py:212-218``); if none is, the reference's fallback ``break_sample_tie``
    (``utils/tools.py:205-209``) takes the arg-max of the first discarded view after setting the entries at
    ``~t`` (a bitwise not: index ``C - 1 - t``) of each tied class ``t`` to ``-inf``, reproduced as written. The
    winner's count is raised by 1 (``ttas/zero.py:93``).
    """
    if logits.dim() != 2:
        raise TTAError(f"zero_votes needs view logits [N, C], got shape {tuple(logits.shape)}")
    k = check_views(logits.shape[0], gamma, what="gamma")
    cos = logits / logit_scale
    entropy = torch.special.entr(logits.softmax(1)).sum(1)
    order = torch.argsort(entropy, descending=False)
    kept = order[:k]
    votes = (cos[kept] / torch.finfo(cos.dtype).eps).softmax(1).sum(0)
    top, pred = torch.max(votes, dim=-1)
    ties = [int(pred)] + [i for i in range(votes.shape[0]) if i != int(pred) and votes[i] == top]
    if len(ties) > 1:
        rest = cos[order][k:]
        tied = torch.tensor(ties, dtype=torch.long, device=cos.device)
        winner = next((int(p) for p in rest.argmax(dim=1) if bool((tied == p).any())), None)
        if winner is None and rest.shape[0] > 0:  # the reference's fallback, bitwise not included
            first = rest[0].clone()
            first[torch.bitwise_not(tied)] = -torch.inf
            winner = int(first.argmax())
        # deliberate difference: with gamma = 1 nothing is discarded and the reference fails (rest[0]); the
        # first maximum is kept
        votes[int(pred) if winner is None else winner] += 1
    return votes, kept


class ZERO(ViewTestTimeMethod):
    """Zero-temperature voting over confident augmented views, on top of any classification learner.

    Args:
        learner: the learner whose logits vote (default zero-shot CLIP, "a photo of a {}.", as the reference's
            ``--ctx_init a_photo_of_a``); its tensors are never changed.
        views: views per image including the original (ZERO: 64).
        gamma: fraction of views kept by confidence (ZERO: 0.3, i.e. 19 of 64).
        augmix: mix crops with AugMix (the reference: no, on every dataset).
    """

    family = "test-time"
    #: the vote is over class logits; a mask decoder has no counterpart
    tasks = ("classification",)
    #: training-free: ``vlprompt fit`` only evaluates; the wrapped learner's prompts load with ``--prompts``
    trainable = False

    def __init__(self, learner: PromptLearner | None = None, *, views: int = 64, gamma: float = 0.3, augmix: bool = False) -> None:
        super().__init__()
        if isinstance(learner, TestTimeMethod):
            raise LearnerError("ZERO cannot wrap another test-time learner: give it a classification learner such as zero_shot or coop")
        try:
            check_views(views, gamma, what="gamma")
        except TTAError as exc:
            raise LearnerError(f"{exc} (ZERO: views 64, gamma 0.3)") from exc
        self.learner = learner if learner is not None else ZeroShot("a photo of a {}.")
        self.views = views
        self.gamma = gamma
        self.augmix = augmix

    def tunable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Nothing: ZERO is training-free."""
        return {}

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> None:
        return None

    def adapt(self, views: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> TTAStep:
        """Vote over the views ``[N, 3, S, S]``; the step's ``loss`` is the marginal entropy of the kept views
        (reported only: nothing is minimised) and its ``logits`` ``[1, C]`` are ``log(votes)``."""
        with torch.no_grad():
            features = self.learner.encode_images(views)
            logits = self.learner.logits(features)
            votes, kept = zero_votes(logits, self.backbone.logit_scale, self.gamma)
            loss = marginal_entropy(logits[kept])
        return TTAStep(selected=kept, loss=loss, logits=votes.log()[None], features=features)

    def tta_settings(self) -> dict[str, Any]:
        return {
            "method": "zero", "views": self.views, "gamma": self.gamma, "selected_views": int(self.views * self.gamma),
            "steps": 0, "augmix": self.augmix, "learner": type(self.learner).__name__, "resources": list(self.resources),
        }
