"""check_segmentation_learner: the segmentation half of the contract check that plugin authors run."""

from __future__ import annotations

import pytest
import torch

from vlprompt.learners import PromptLearner
from vlprompt.learners.coop import CoOp
from vlprompt.learners.testing import torch_threads
from vlprompt.learners.tpt import TPT
from vlprompt.learners.vpt import VPT
from vlprompt.learners.zero_shot import ZeroShot
from vlprompt.modules.testing import check_segmentation_learner


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with torch_threads(1):
        yield


@pytest.mark.parametrize("cls", [CoOp, VPT, ZeroShot], ids=lambda c: c.__name__)
def test_built_in_learners_pass(cls) -> None:
    check_segmentation_learner(cls)


def test_a_learner_without_the_task_is_refused() -> None:
    with pytest.raises(AssertionError, match="does not declare 'segmentation'"):
        check_segmentation_learner(TPT)


class FrozenCoOp(CoOp):
    """A broken plugin: says it trains, but its context never receives a gradient."""

    def build(self, backbone, classnames) -> None:
        super().build(backbone, classnames)
        self.ctx.requires_grad_(False)

    def learned_state(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.ctx}


def test_a_learner_that_learns_nothing_fails() -> None:
    assert issubclass(FrozenCoOp, PromptLearner)
    with pytest.raises(AssertionError, match="received a gradient|changed no learned tensor"):
        check_segmentation_learner(FrozenCoOp)
