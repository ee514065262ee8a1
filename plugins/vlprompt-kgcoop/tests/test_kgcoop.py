"""KgCoOp: the vlprompt learner contract, registration, and the knowledge-guided loss term."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from vlprompt.learners import LearnerError, get_registry
from vlprompt.learners.coop import CoOp
from vlprompt.learners.testing import check_learner, tiny_clip, torch_threads
from vlprompt.modules.testing import check_segmentation_learner
from vlprompt_kgcoop import KgCoOp

NAMES = ["red circle", "blue square", "green triangle", "striped_star"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny models and toy rendering are many small ops: one thread is fastest on a shared CPU."""
    with torch_threads(1):
        yield


@pytest.fixture
def learner() -> KgCoOp:
    torch.manual_seed(0)
    kg = KgCoOp()
    kg.setup(tiny_clip(), NAMES)
    return kg


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"n_ctx": 8, "ctx_init": None}, {"class_specific": True}, {"class_token_position": "middle"}, {"kg_weight": 0.0}],
    ids=["default", "random-ctx", "csc", "middle", "no-kg"],
)
def test_contract(kwargs) -> None:
    check_learner(KgCoOp, init_kwargs=kwargs)


def test_segmentation_contract() -> None:
    """KgCoOp inherits CoOp's tasks (classification and segmentation): it must also work under a VLSM."""
    check_segmentation_learner(KgCoOp)


def test_registered_as_plugin() -> None:
    info = get_registry("learners").info("kgcoop")
    assert info.obj is KgCoOp
    assert info.distribution == "vlprompt-kgcoop"
    assert info.family == "text"


def test_kg_loss_zero_at_init_and_positive_after_perturbing(learner: KgCoOp) -> None:
    with torch.no_grad():
        assert float(learner.kg_loss()) < 1e-8
        learner.ctx.add_(0.5 * torch.randn_like(learner.ctx))
        assert float(learner.kg_loss()) > 1e-3


def test_loss_is_cross_entropy_plus_weighted_kg(learner: KgCoOp) -> None:
    with torch.no_grad():
        learner.ctx.add_(0.5 * torch.randn_like(learner.ctx))
    learner.train()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 3])
    feats = learner.encode_images(images)
    logits = learner.logits(feats)
    loss = learner.loss(logits, targets, feats)
    with torch.no_grad():
        w = F.normalize(learner.text_features(), dim=-1)
        kg = ((w - learner.clip_text_features) ** 2).sum(-1).mean()
        expected = F.cross_entropy(logits, targets) + 8.0 * kg
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert learner.ctx.grad is not None and float(learner.ctx.grad.abs().sum()) > 0


def test_reference_follows_class_names(learner: KgCoOp) -> None:
    assert learner.clip_text_features.shape == (len(NAMES), learner.backbone.embed_dim)
    assert "clip_text_features" not in learner.state_dict()
    learner.set_classnames(["purple ring", "orange cross"])
    assert learner.clip_text_features.shape == (2, learner.backbone.embed_dim)
    assert learner.kg_loss().item() < 1e-8


def test_zero_weight_is_coop(learner: KgCoOp) -> None:
    torch.manual_seed(0)
    coop = CoOp(n_ctx=4, ctx_init="a photo of a")
    coop.setup(learner.backbone, NAMES)
    plain = KgCoOp(kg_weight=0.0)
    plain.setup(learner.backbone, NAMES)
    images = torch.rand(2, 3, 32, 32)
    targets = torch.tensor([0, 1])
    a, b = coop(images), plain(images)
    torch.testing.assert_close(coop.loss(a, targets, None), plain.loss(b, targets, None))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kg_weight": -1.0}, "kg_weight"), ({"template": "a photo"}, "template")],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(LearnerError, match=match):
        KgCoOp(**kwargs)
