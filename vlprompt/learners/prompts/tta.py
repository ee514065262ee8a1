"""Test-time prompt tuning: selection rules, the marginal-entropy loss and one tuning episode.

- :func:`view_entropy`, :func:`confident_indices`: TPT's confidence selection (Shu et al., NeurIPS 2022,
  eq. 3-4): keep the ``int(rho * N)`` views with the lowest prediction entropy (``rho = 0.1``).
- :func:`marginal_entropy`: TPT's loss (eq. 2-4), the entropy of the mean of the selected views'
  probabilities, computed in log space as the reference does (``logsumexp`` of log-probabilities minus
  ``log N``, clamped at the dtype's minimum).
- :func:`similarity_indices`, :func:`difftpt_indices`: DiffTPT's cosine-similarity filtration (Feng et al.,
  ICCV 2023, Sec. 3.3, eq. 6) followed by entropy selection over the kept views.
- :func:`tpt_step`: one episode on an already built views tensor: encode, select, ``steps`` optimiser steps
  on the loss, predict the original view (view 0).

Every function is pure apart from :func:`tpt_step`, which updates the learner's tunable tensors through the
optimiser it is given (the caller resets them per image: :mod:`vlprompt.modules.test_time`).
"""

from __future__ import annotations

import abc

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from vlprompt.learners.base import LearnerError, PromptLearner, cosine_logits


class TTAError(ValueError):
    """Bad test-time settings; the message names the value and the fix."""


def check_views(n_views: int, ratio: float, *, what: str = "selection") -> int:
    """Number of views ``int(ratio * n_views)`` a selection keeps; an error when ``n_views < 2`` or none is kept."""
    if n_views < 2:
        raise TTAError(f"views={n_views}: test-time tuning needs the original and at least one augmented view (views >= 2)")
    if not 0.0 < ratio <= 1.0:
        raise TTAError(f"{what} ratio {ratio} must be in (0, 1]")
    k = int(n_views * ratio)
    if k < 1:
        raise TTAError(
            f"{what} ratio {ratio} keeps int({ratio} * {n_views}) = 0 of {n_views} views: raise the ratio to at least "
            f"{math.ceil(1 / n_views * 1000) / 1000} or use more views"
        )
    return k


def view_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Prediction entropy ``[N]`` of logits ``[N, C]``: ``-sum_c p log p``."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def confident_indices(logits: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices ``[int(ratio * N)]`` of the lowest-entropy views of logits ``[N, C]``, most confident first
    (TPT eq. 4; ties keep ``argsort``'s order, as the reference)."""
    k = check_views(logits.shape[0], ratio)
    return torch.argsort(view_entropy(logits), descending=False)[:k]


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (scalar) of the averaged probabilities of logits ``[N, C]`` (TPT eq. 2-3).

    ``log p_bar = logsumexp_n(log_softmax(logits_n)) - log N``, clamped at ``finfo.min``;
    loss ``= -sum_c p_bar log p_bar``.
    """
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)
    avg = logp.logsumexp(dim=0) - math.log(logp.shape[0])
    avg = torch.clamp(avg, min=torch.finfo(avg.dtype).min)
    return -(avg * torch.exp(avg)).sum(dim=-1)


def similarity_indices(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices (into rows ``1..N-1``, i.e. already ``+1``) of the ``int(ratio * (N-1))`` rows of ``scores [N, K]``
    most cosine-similar to row 0, most similar first (DiffTPT's filtration; ``scores`` are logits in the public
    code, image features in the paper)."""
    others = scores[1:]
    if not 0.0 < ratio <= 1.0:
        raise TTAError(f"similarity ratio {ratio} must be in (0, 1]")
    k = int(others.shape[0] * ratio)
    if k < 1:
        raise TTAError(f"similarity ratio {ratio} keeps none of the {others.shape[0]} candidate views: raise it or add views")
    cos = F.cosine_similarity(scores[:1].float(), others.float(), dim=-1)
    return torch.argsort(cos, descending=True)[:k] + 1


def difftpt_indices(
    logits: torch.Tensor,
    *,
    similarity_ratio: float = 0.8,
    entropy_ratio: float = 0.3,
    scores: torch.Tensor | None = None,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """DiffTPT's selection: indices into the ``N`` views of logits ``[N, C]``.

    1. Among ``candidates`` (view indices ``>= 1`` eligible for filtering; default all of ``1..N-1``, as the
       public code), keep the ``int(similarity_ratio * len)`` most cosine-similar to view 0 under ``scores``
       (``[N, K]``; default the logits). Views outside ``candidates`` are kept unfiltered.
    2. Over view 0 plus every kept view, keep the ``int(entropy_ratio * M)`` lowest-entropy ones.
    """
    n = logits.shape[0]
    scores = logits if scores is None else scores
    zero = torch.zeros(1, dtype=torch.long)
    cand = torch.arange(1, n) if candidates is None else candidates.to(torch.long).cpu()
    kept = cand[similarity_indices(scores[torch.cat([zero, cand])], similarity_ratio) - 1]
    is_cand = torch.zeros(n, dtype=torch.bool)
    is_cand[cand] = True
    is_cand[0] = True
    others = torch.nonzero(~is_cand).flatten()
    pool = torch.cat([zero, kept, others])
    return pool[confident_indices(logits[pool], entropy_ratio)]


Selector = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TTAStep:
    """What :func:`tpt_step` returns.

    Attributes:
        selected: view indices ``[k]`` the loss used (chosen at the first step, kept for later steps).
        loss: the loss of the first step (detached scalar), as the reference minimises it.
        losses: the loss of every step.
        logits: logits ``[1, C]`` of the original view (view 0) after tuning.
        features: image features ``[N, D]`` of the views (detached; ``None`` if the image encoder is tuned).
    """

    selected: torch.Tensor
    loss: torch.Tensor
    logits: torch.Tensor
    losses: list[float] = field(default_factory=list)
    features: torch.Tensor | None = None


def tpt_step(
    learner: PromptLearner,
    views: torch.Tensor,
    optimizer: torch.optim.Optimizer | None,
    *,
    selection: float = 0.1,
    steps: int = 1,
    selector: Selector | None = None,
    features: torch.Tensor | None = None,
    text_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TTAStep:
    """One test-time tuning episode (TPT, Shu et al. 2022, Sec. 3.2) on views ``[N, 3, H, W]`` (view 0 = original).

    Images pass through the frozen image encoder once when ``learner.modifies_image_encoder`` is False (their
    features do not change between steps; ``features [N, D]`` may also be given), else at every step. The
    first step's logits choose the views (``selector(logits, features)``, default :func:`confident_indices`
    with ``selection``); each of ``steps`` steps minimises :func:`marginal_entropy` of the chosen views'
    logits with ``optimizer`` (which must hold ``learner.tunable_parameters()``); cached text features are
    invalidated after every step. ``steps=0`` only predicts. Returns a :class:`TTAStep`.

    ``text_loss`` (C-TPT) adds a term on the class text features ``[C, D]`` of each step: they are then computed
    once per step with ``learner.text_features()`` and the logits are their cosine logits (the default
    :meth:`PromptLearner.logits`; the caller checks that the learner does not override it).
    """
    if views.dim() != 4:
        raise TTAError(f"views must be [N, 3, H, W], got shape {tuple(views.shape)}")
    n = views.shape[0] if features is None else features.shape[0]
    if selector is None:
        check_views(n, selection)
        selector = lambda logits, feats: confident_indices(logits, selection)  # noqa: E731
    if steps < 0:
        raise TTAError(f"steps={steps} must be >= 0")
    if steps > 0 and optimizer is None:
        raise TTAError("tpt_step needs an optimizer over learner.tunable_parameters() when steps > 0")
    frozen_images = not learner.modifies_image_encoder
    if features is None and frozen_images:
        with torch.no_grad():
            features = learner.encode_images(views)
    selected: torch.Tensor | None = None
    losses: list[float] = []
    first_loss = torch.tensor(float("nan"))
    with torch.enable_grad():
        for _ in range(steps):
            feats = features if frozen_images else learner.encode_images(views)
            if text_loss is None:
                logits = learner.logits(feats)
            else:
                text = learner.text_features()
                logits = cosine_logits(feats, text, learner.backbone.logit_scale, learner.backbone.logit_bias)
            if selected is None:
                selected = selector(logits.detach(), feats.detach())
            loss = marginal_entropy(logits[selected])
            if text_loss is not None:
                loss = loss + text_loss(text)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            learner.invalidate_text_cache()
            losses.append(float(loss.detach()))
            if len(losses) == 1:
                first_loss = loss.detach()
    with torch.no_grad():
        feats0 = features[:1] if frozen_images else learner.encode_images(views[:1])
        logits0 = learner.logits(feats0)
        if selected is None:  # steps == 0: report the selection the first step would make
            all_feats = features if frozen_images else learner.encode_images(views)
            all_logits = learner.logits(all_feats)
            selected = selector(all_logits, all_feats)
            first_loss = marginal_entropy(all_logits[selected])
    learner.invalidate_text_cache()
    return TTAStep(selected=selected, loss=first_loss, logits=logits0, losses=losses, features=features if frozen_images else None)


class TestTimeMethod(abc.ABC):
    """What a test-time learner adds to :class:`PromptLearner` (mixed into its class).

    The tuned tensors are the learner's :meth:`PromptLearner.tunable_parameters`; the module snapshots them
    once and restores them (and the optimiser state) before every image.
    """

    __test__ = False  # not a pytest class

    #: the resource track: what the method consumes at test time beyond the wrapped learner's own training data,
    #: recorded in the result JSON (``test_time.resources``). Episodic methods see each ``test image`` alone;
    #: TDA also keeps ``earlier test images`` of the stream (an online track, not comparable with episodic rows).
    resources: ClassVar[tuple[str, ...]] = ("test image",)

    @abc.abstractmethod
    def build_views(self, image: torch.Tensor) -> torch.Tensor:
        """Views ``[N, 3, S, S]`` of a raw image ``[3, H, W]`` in ``[0, 1]``; view 0 is the test-transformed original."""

    @abc.abstractmethod
    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
        """The optimiser over the tunable tensors (reset per image from its initial state); ``None`` for a
        training-free method, whose :meth:`PromptLearner.tunable_parameters` is then empty."""

    @abc.abstractmethod
    def adapt(self, views: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> TTAStep:
        """Select views, tune, and return the tuned logits of view 0 (see :func:`vlprompt.learners.prompts.tta.tpt_step`)."""

    def start_test_set(self, name: str) -> None:
        """Hook: called before the first image of each test set ``name``. A method that carries state from one
        test image to the next (TDA's caches) starts it afresh here; episodic methods need nothing."""

    def tta_settings(self) -> dict[str, Any]:
        """Settings written into the result JSON (views, steps, selection...)."""
        return {}
