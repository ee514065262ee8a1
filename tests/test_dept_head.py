"""DePT's decoupled head as a plug-in: it wraps coop, maple and a third-party learner written without DePT in mind
(all pass ``check_learner``), leaves new classes to the wrapped learner, trains the head at its staged rate, keeps
the wrapped learner's extra loss terms, and its pure pieces (CAT, paired head logits, loss rule, fusion) behave as
documented."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.coop import CoOp
from vlprompt.learners.dept_head import DePTHead
from vlprompt.learners.dept_head.head import (
    ChannelTransform,
    DecoupledHead,
    decoupled_loss,
    fused_logits,
    head_cross_entropy,
    head_targets,
    paired_head_logits,
)
from vlprompt.learners.maple import MaPLe
from vlprompt.learners.registry import get_registry
from vlprompt.learners.testing import check_learner, tiny_clip, torch_threads

NAMES = ["cat", "dog", "car", "tree", "boat", "lamp"]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


class ScaledTemplate(PromptLearner):
    """A third-party learner, never written for DePT: a hand-written template whose per-dimension text scale and
    image offset are learned (it changes the image features), trained with cross-entropy plus its own penalty."""

    family = "baseline"
    modifies_image_encoder = True
    penalty_weight = 3.0

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        self.scale = nn.Parameter(torch.ones(backbone.embed_dim))
        self.shift = nn.Parameter(torch.zeros(backbone.embed_dim))

    def on_classnames_changed(self, classnames: list[str]) -> None:
        with torch.no_grad():
            self.register_buffer("frozen", self.backbone.encode_text(self.backbone.tokenize([f"a photo of a {c}." for c in classnames])),
                                 persistent=False)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(images) + self.shift

    def text_features(self) -> torch.Tensor:
        return self.frozen * self.scale

    def penalty(self) -> torch.Tensor:
        return (self.scale - 1).pow(2).sum()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets) + self.penalty_weight * self.penalty()


def test_dept_head_is_registered() -> None:
    assert get_registry("learners").get("dept_head") is DePTHead


@pytest.mark.parametrize("inner", [
    pytest.param(lambda: CoOp(n_ctx=4, ctx_init="a photo of a"), id="coop"),
    pytest.param(lambda: MaPLe(n_ctx=2, prompt_depth=2), id="maple"),
    pytest.param(lambda: ScaledTemplate(), id="third_party"),
])
def test_dept_head_around_any_learner_passes_the_contract(inner) -> None:
    check_learner(DePTHead, init_kwargs={"inner": inner()}, classnames=NAMES[:4])


def test_wrapped_learner_is_never_named() -> None:
    """The plug-in never branches on the wrapped learner's class or name, and imports no learner but its default."""
    import ast
    import inspect

    import vlprompt.learners.dept_head as module

    tree = ast.parse(inspect.getsource(module))
    assert all("__name__" not in ast.dump(c) for c in ast.walk(tree) if isinstance(c, ast.Compare))
    learners = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                and n.module.startswith("vlprompt.learners.")}
    assert learners == {"vlprompt.learners.base", "vlprompt.learners.coop", "vlprompt.learners.dept_head.head",
                        "vlprompt.learners.wrapper"}


def trained(inner: PromptLearner, steps: int = 3, **kwargs) -> DePTHead:
    torch.manual_seed(0)
    learner = DePTHead(inner, **kwargs)
    learner.setup(tiny_clip(), NAMES[:4])
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    opt = torch.optim.SGD([p for g in learner.optimizer_groups() for p in g["params"]], lr=0.5)
    learner.train()
    for _ in range(steps):
        opt.zero_grad()
        feats = learner.encode_images(images)
        learner.loss(learner.logits(feats), targets, feats).backward()
        opt.step()
    learner.eval()
    return learner


def test_base_classes_fuse_the_head_and_new_classes_do_not() -> None:
    learner = trained(CoOp(n_ctx=4, ctx_init="a photo of a"))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = learner.encode_images(images)
        itm, head = learner.inner.logits(feats), learner.head(feats)
        assert torch.allclose(learner(images), 0.3 * itm + 0.7 * head, atol=1e-5)
        learner.fusion = False
        assert torch.allclose(learner(images), head, atol=1e-6)
        learner.set_classnames(NAMES[4:])
        assert torch.allclose(learner(images), learner.inner(images))  # new classes: the ITM logits alone
        learner.train()
        learner.set_classnames(NAMES[:4])
        assert torch.allclose(learner.logits(feats), learner.inner.logits(feats))  # training: the ITM logits


def test_training_on_other_classes_is_refused() -> None:
    learner = DePTHead(CoOp(n_ctx=4))
    learner.setup(tiny_clip(), NAMES[:4])
    learner.set_classnames(NAMES[4:])
    feats = torch.randn(2, learner.backbone.embed_dim)
    with pytest.raises(LearnerError, match="set_classnames"):
        learner.loss(learner.logits(feats), torch.tensor([0, 1]), feats)


def test_the_wrapped_learners_extra_loss_terms_keep_their_weight() -> None:
    """The reference's KgCoOp+DePT rule: (1 - w) CE + w CE_head + the wrapped learner's own terms at full weight;
    ``inner_loss='whole'`` scales the whole wrapped loss instead."""
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 1, 2, 0])
    for rule in ("cross_entropy", "whole"):
        learner = DePTHead(ScaledTemplate(), weight=0.7, inner_loss=rule)
        learner.setup(tiny_clip(), NAMES[:3])
        with torch.no_grad():
            learner.inner.scale.add_(0.1)
        learner.train()
        feats = learner.encode_images(images)
        logits = learner.logits(feats)
        ce = F.cross_entropy(logits, targets)
        text = learner.inner.text_features()[targets]
        head_ce = head_cross_entropy(paired_head_logits(learner.head, text, feats), targets)
        extra = ScaledTemplate.penalty_weight * learner.inner.penalty()
        want = 0.3 * ce + 0.7 * head_ce + (extra if rule == "cross_entropy" else 0.3 * extra)
        assert torch.allclose(learner.loss(logits, targets, feats), want, atol=1e-5), rule


def test_the_head_trains_at_its_staged_rate() -> None:
    class TwoRates(ScaledTemplate):
        def optimizer_groups(self) -> list[dict]:
            return [{"params": [self.scale]}, {"params": [self.shift], "lr_scale": 0.1}]

    learner = DePTHead(TwoRates(), head_lr_scale=6.5)
    learner.setup(tiny_clip(), NAMES[:3])
    groups = learner.optimizer_groups()
    assert [g.get("lr_scale") for g in groups] == [None, 0.1, 6.5]
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in learner.head.parameters()}
    assert sorted(learner.learned_state()) == sorted(
        ["inner.scale", "inner.shift", "head.image_transform.scale", "head.image_transform.bias",
         "head.text_transform.scale", "head.text_transform.bias", "head.classifier.weight", "head.classifier.bias"])


def test_bad_settings_name_the_value() -> None:
    with pytest.raises(LearnerError, match="weight=1.5"):
        DePTHead(weight=1.5)
    with pytest.raises(LearnerError, match="head_lr_scale=0"):
        DePTHead(head_lr_scale=0.0)
    with pytest.raises(LearnerError, match="inner_loss='sum'"):
        DePTHead(inner_loss="sum")  # type: ignore[arg-type]
    with pytest.raises(LearnerError, match="cannot wrap itself"):
        DePTHead(inner=DePTHead())
    with pytest.raises(LearnerError, match="not a prompt learner"):
        DePTHead(inner=nn.Linear(2, 2))  # type: ignore[arg-type]

    class Unlabeled(ScaledTemplate):
        unlabeled_pool = "train_all_classes"

    with pytest.raises(LearnerError, match="unlabeled pool"):
        DePTHead(inner=Unlabeled())


# ------------------------------------------------------------------------------------ pure pieces
def test_channel_transform_starts_at_the_identity_and_scales_per_channel() -> None:
    cat = ChannelTransform(5)
    x = torch.randn(3, 5)
    assert torch.equal(cat(x), x)
    with torch.no_grad():
        cat.scale.copy_(torch.arange(5.0))
        cat.bias.fill_(1.0)
    assert torch.allclose(cat(x), x * torch.arange(5.0) + 1.0)


def test_paired_head_logits_put_text_rows_first() -> None:
    torch.manual_seed(0)
    head = DecoupledHead(6, 3)
    text, img = torch.randn(2, 6), torch.randn(2, 6)
    out = paired_head_logits(head, text, img)
    assert out.shape == (4, 3)
    assert torch.allclose(out[:2], head.classifier(head.text_transform(text)))
    assert torch.allclose(out[2:], head(img))
    assert torch.equal(head_targets(torch.tensor([2, 0])), torch.tensor([2, 0, 2, 0]))
    assert torch.allclose(head_cross_entropy(out, torch.tensor([2, 0])), F.cross_entropy(out, torch.tensor([2, 0, 2, 0])))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        paired_head_logits(head, text[:1], img)


def test_decoupled_loss_and_fusion() -> None:
    inner, ce, head = torch.tensor(5.0), torch.tensor(2.0), torch.tensor(1.0)
    assert torch.isclose(decoupled_loss(inner, ce, head, 0.7), torch.tensor(5.0 - 1.4 + 0.7))
    assert torch.isclose(decoupled_loss(ce, ce, head, 0.7), 0.3 * ce + 0.7 * head)  # CoOp: (1 - w) CE + w CE_head
    assert torch.isclose(decoupled_loss(inner, ce, head, 0.7, "whole"), 0.3 * inner + 0.7 * head)
    with pytest.raises(ValueError, match="rule='sum'"):
        decoupled_loss(inner, ce, head, 0.7, "sum")  # type: ignore[arg-type]
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose(fused_logits(a, b, 0.7), 0.3 * a + 0.7 * b)
