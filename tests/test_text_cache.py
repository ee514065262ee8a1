"""Cached class text features never go stale (issue 6): after an evaluation without gradients, every way of
changing a learner's tensors (load_state_dict, set_learned_state, in-place edits, writes through .data)
changes the next logits to those of a fresh computation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from vlprompt.learners.base import LearnerError
from vlprompt.learners.coop import CoOp
from vlprompt.learners.testing import tiny_clip, torch_threads

NAMES = ["red circle", "blue square", "green triangle"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _learner(seed: int = 0) -> CoOp:
    torch.manual_seed(seed)
    learner = CoOp(n_ctx=4)
    learner.setup(tiny_clip(), NAMES)
    return learner.eval()


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _eval(learner) -> torch.Tensor:
    with torch.no_grad():
        return learner(_images())


def _fresh(learner) -> torch.Tensor:
    with torch.enable_grad():
        return learner(_images()).detach()


def _edits():
    other = _learner(seed=1).learned_state()

    def load_state_dict(learner):
        learner.load_state_dict(other, strict=False)

    def set_learned_state(learner):
        learner.set_learned_state(other)

    def copy_in_place(learner):
        with torch.no_grad():
            learner.ctx.copy_(other["ctx"])

    def add_in_place(learner):
        with torch.no_grad():
            learner.ctx.add_(torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(3)))

    def write_data(learner):
        learner.ctx.data.copy_(other["ctx"])  # bypasses the version counter

    def optimiser_step(learner):
        learner.ctx.grad = torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(4))
        torch.optim.SGD([learner.ctx], lr=1.0).step()

    return [load_state_dict, set_learned_state, copy_in_place, add_in_place, write_data, optimiser_step]


@pytest.mark.parametrize("edit", _edits(), ids=lambda f: f.__name__)
def test_cached_text_features_follow_every_change(edit):
    learner = _learner()
    before = _eval(learner)
    assert torch.equal(before, _eval(learner))  # cached and stable
    edit(learner)
    after = _eval(learner)
    assert not torch.allclose(before, after, atol=1e-4), "stale text features: logits did not change"
    assert torch.allclose(after, _fresh(learner), atol=1e-5)


def test_load_state_dict_through_the_host_module_invalidates():
    """The learner nested in a bigger module (as in PromptClassifier) is refreshed by the parent's load."""
    learner = _learner()
    host = torch.nn.Module()
    host.learner = learner
    before = _eval(learner)
    host.load_state_dict({"learner." + k: v for k, v in _learner(seed=2).learned_state().items()}, strict=False)
    after = _eval(learner)
    assert not torch.allclose(before, after, atol=1e-4) and torch.allclose(after, _fresh(learner), atol=1e-5)


def test_set_learned_state_refuses_bad_input_before_changing_anything():
    learner = _learner()
    ctx = learner.ctx.detach().clone()
    with pytest.raises(LearnerError, match="unexpected tensors \\['prompt'\\]"):
        learner.set_learned_state({"ctx": ctx, "prompt": ctx})
    with pytest.raises(LearnerError, match="missing \\['ctx'\\]"):
        learner.set_learned_state({})
    with pytest.raises(LearnerError, match="tensor ctx has shape \\(5, 32\\), expected \\(4, 32\\)"):
        learner.set_learned_state({"ctx": torch.zeros(5, 32)})
    assert torch.equal(learner.ctx.detach(), ctx)
