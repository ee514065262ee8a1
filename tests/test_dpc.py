"""DPC as a plug-in: it wraps coop, maple and a third-party learner written without DPC in mind (all pass
``check_learner``), starts from the wrapped learner's trained prompts, uses the original prompt on new classes, and
its pure pieces (prompt rule, hard-negative choice, contrastive loss) behave as documented."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.coop import CoOp
from vlprompt.learners.dpc import DPC
from vlprompt.learners.dpc.hard_negatives import decoupled_prompt, dual_contrastive_loss, select_negatives
from vlprompt.learners.maple import MaPLe
from vlprompt.learners.registry import get_registry
from vlprompt.learners.testing import check_learner, tiny_clip, torch_threads

NAMES = ["cat", "dog", "car", "tree", "boat", "lamp"]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


class ScaledTemplate(PromptLearner):
    """A third-party learner, never written for DPC: a hand-written template whose per-dimension text scale and
    image offset are learned (it prompts the image features, so DPC must re-encode images through it)."""

    family = "baseline"
    modifies_image_encoder = True

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


def test_dpc_is_registered() -> None:
    assert get_registry("learners").get("dpc") is DPC


@pytest.mark.parametrize("inner", [
    pytest.param(lambda: CoOp(n_ctx=4, ctx_init="a photo of a"), id="coop"),
    pytest.param(lambda: MaPLe(n_ctx=2, prompt_depth=2), id="maple"),
    pytest.param(lambda: ScaledTemplate(), id="third_party"),
])
def test_dpc_around_any_learner_passes_the_contract(inner) -> None:
    check_learner(DPC, init_kwargs={"inner": inner(), "top_k": 3, "seed": 0}, classnames=NAMES[:4])


def test_wrapped_learner_is_never_named() -> None:
    """The plug-in never branches on the wrapped learner's class or name, and imports no learner but its default."""
    import ast
    import inspect

    import vlprompt.learners.dpc as module

    tree = ast.parse(inspect.getsource(module))
    names = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(tree)
             if isinstance(n, (ast.Attribute, ast.Name))}
    assert "__name__" not in names or all(
        not isinstance(c, ast.Compare) or "__name__" not in ast.dump(c) for c in ast.walk(tree))
    learners = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                and n.module.startswith("vlprompt.learners.")}
    assert learners == {"vlprompt.learners.base", "vlprompt.learners.coop", "vlprompt.learners.dpc.hard_negatives",
                        "vlprompt.learners.wrapper"}


def fitted_coop(tmp_path, backbone) -> tuple[CoOp, str]:
    torch.manual_seed(0)
    coop = CoOp(n_ctx=4, ctx_init="a photo of a")
    coop.setup(backbone, NAMES[:4])
    with torch.no_grad():
        coop.ctx.add_(0.3 * torch.randn_like(coop.ctx))
    return coop, str(coop.save_prompts(tmp_path / "coop.safetensors"))


def train_steps(learner: DPC, images: torch.Tensor, targets: torch.Tensor, steps: int) -> None:
    opt = torch.optim.SGD([g for group in learner.optimizer_groups() for g in group["params"]], lr=0.5)
    learner.train()
    for _ in range(steps):
        opt.zero_grad()
        feats = learner.encode_images(images)
        learner.loss(learner.logits(feats), targets, feats).backward()
        opt.step()
    learner.eval()


def test_starts_from_the_trained_prompt_and_new_classes_keep_it(tmp_path) -> None:
    bb = tiny_clip()
    coop, path = fitted_coop(tmp_path, bb)
    dpc = DPC(CoOp(n_ctx=4, ctx_init="a photo of a"), prompts=path, top_k=3, seed=1)
    dpc.setup(bb, NAMES[:4])
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    coop.eval()
    dpc.eval()
    with torch.no_grad():
        assert torch.allclose(dpc(images), coop(images), atol=1e-5)  # theta starts at P
    train_steps(dpc, images, targets, 1)  # every class banked once
    train_steps(dpc, images[:2], targets[:2], 3)  # a batch of two classes: the others join as hard negatives
    assert set(dpc.last_batch_labels) - {0, 1}, dpc.last_batch_labels
    with torch.no_grad():
        assert not torch.allclose(dpc(images), coop(images), atol=1e-4)  # base classes: the parallel prompt
        coop.set_classnames(NAMES[4:])
        dpc.set_classnames(NAMES[4:])
        assert torch.allclose(dpc(images), coop(images), atol=1e-5)  # new classes: the original prompt
        assert torch.equal(dpc.inner.ctx, coop.ctx)  # the original prompt never trains


def test_prompts_of_other_classes_are_refused(tmp_path) -> None:
    _, path = fitted_coop(tmp_path, tiny_clip())
    dpc = DPC(CoOp(n_ctx=4, ctx_init="a photo of a"), prompts=path)
    with pytest.raises(LearnerError, match="other classes"):
        dpc.setup(tiny_clip(), NAMES[2:])


def test_bad_settings_name_the_value() -> None:
    with pytest.raises(LearnerError, match="weight=0"):
        DPC(weight=0.0)
    with pytest.raises(LearnerError, match="weight_for_new=2"):
        DPC(weight_for_new=2.0)
    with pytest.raises(LearnerError, match="top_k=0"):
        DPC(top_k=0)
    with pytest.raises(LearnerError, match="does not exist"):
        DPC(prompts="/nonexistent/prompts.safetensors")
    with pytest.raises(LearnerError, match="cannot wrap itself"):
        DPC(inner=DPC())


def test_optimizer_groups_follow_the_wrapped_learners() -> None:
    class TwoRates(ScaledTemplate):
        def optimizer_groups(self) -> list[dict]:
            return [{"params": [self.scale]}, {"params": [self.shift], "lr_scale": 0.1}]

    dpc = DPC(TwoRates())
    dpc.setup(tiny_clip(), NAMES[:3])
    groups = dpc.optimizer_groups()
    assert [g.get("lr_scale") for g in groups] == [None, 0.1]
    assert groups[0]["params"][0] is dpc.parallel.scale and groups[1]["params"][0] is dpc.parallel.shift


# ------------------------------------------------------------------------------------ pure pieces
def test_decoupled_prompt_value_and_gradient() -> None:
    theta = torch.randn(4, 8, requires_grad=True)
    original = torch.randn(4, 8)
    out = decoupled_prompt(theta, original, 0.2)
    assert torch.allclose(out, theta, atol=1e-6)
    out.sum().backward()
    assert torch.allclose(theta.grad, torch.full_like(theta, 5.0))  # 1 / w
    new = decoupled_prompt(theta.detach(), original, 0.2, mix=0.25)
    assert torch.allclose(new, 0.25 * theta.detach() + 0.75 * original, atol=1e-6)
    assert torch.allclose(decoupled_prompt(theta.detach(), original, 0.5, mix=0.0), original, atol=1e-6)


def test_select_negatives_follows_the_reference_rules() -> None:
    scores = torch.tensor([0.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    in_batch = [0, 2]
    # top 4 = [1, 2, 3, 4]: 2 is already in the batch; up to K candidates (the reference's K-1 cap never bites)
    assert select_negatives(scores, 0, in_batch, 4, random.Random(0)) == [1, 3, 4]
    assert in_batch == [0, 2, 1, 3, 4]
    # nothing new in the top 2: two classes are drawn from 1..C-2 outside the batch
    rng = random.Random(0)
    drawn = select_negatives(scores, 1, [1, 2], 2, rng)
    assert len(drawn) == 2 and all(1 <= c <= 4 and c not in (1, 2) for c in drawn)
    assert select_negatives(scores, 0, list(range(6)), 8, random.Random(0)) == []  # K > C is clamped


def test_dual_contrastive_loss_is_symmetric_cross_entropy() -> None:
    img, txt = torch.randn(5, 8), torch.randn(5, 8)
    logits = 10.0 * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    target = torch.arange(5)
    want = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    assert torch.allclose(dual_contrastive_loss(img, txt, 10.0), want)
    assert torch.allclose(dual_contrastive_loss(img, txt, 10.0), dual_contrastive_loss(txt, img, 10.0))
    with pytest.raises(ValueError, match=r"\[M, D\]"):
        dual_contrastive_loss(img, txt[:3], 10.0)
