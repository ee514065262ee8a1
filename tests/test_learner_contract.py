"""Every registered learner (built-in or installed plugin) honours the PromptLearner contract.

Also: :func:`vlprompt.learners.testing.check_learner` catches deliberately broken learners, the tiny test CLIP is
deterministic, and CoOp initialised from "a photo of a" equals zero-shot CLIP before training.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from vlprompt.backbones import OpenCLIPBackbone, ToyCLIP
from vlprompt.learners.prompts.layers import text_features
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.coop import CoOp
from vlprompt.learners.zero_shot import ZeroShot
from vlprompt.learners.registry import get_registry
from vlprompt.learners.testing import TINY_MODEL, check_learner, tiny_clip, tiny_clip_config, torch_threads

LEARNERS = get_registry("learners").entries()


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny models and toy rendering are many small ops: one thread is fastest on a shared CPU."""
    with torch_threads(1):
        yield


@pytest.fixture
def backbone() -> Iterator[OpenCLIPBackbone]:
    """The tiny CLIP; its shared cached weights are restored and refrozen after a test that breaks them."""
    bb = tiny_clip()
    state = {k: v.clone() for k, v in bb.clip.state_dict().items()}
    yield bb
    bb.clip.load_state_dict(state)
    for p in bb.parameters():
        p.grad = None
    bb.freeze()


# ------------------------------------------------------------------------------------ tiny CLIP


def test_tiny_clip_shape_and_determinism() -> None:
    bb = tiny_clip()
    cfg = tiny_clip_config()
    assert bb.info.model == TINY_MODEL and bb.info.pretrained is None
    assert (bb.embed_dim, bb.text_width, bb.text_layers, bb.context_length) == (32, 32, 2, 32)
    assert (bb.vision_width, bb.vision_layers, bb.grid_size) == (32, 2, (4, 4))
    assert bb.preprocess.image_size == cfg["vision_cfg"]["image_size"] == 32
    assert bb.supports_visual_prompts
    assert not any(p.requires_grad for p in bb.parameters())
    # a second precision is a fresh model built from the same seed: the same weights, rounded
    rng = torch.get_rng_state()
    half = tiny_clip(precision="bf16")
    assert torch.equal(rng, torch.get_rng_state()), "tiny_clip() must not move the global RNG"
    for (k, a), b in zip(bb.clip.state_dict().items(), half.clip.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16), b), k
    assert tiny_clip().clip is bb.clip


# ------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("info", LEARNERS, ids=[i.name for i in LEARNERS])
def test_registered_learner_honours_contract(info, backbone) -> None:
    check_learner(info.obj, backbone=backbone)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_ctx": 4, "class_token_position": "end"},
        {"n_ctx": 4, "class_token_position": "middle"},
        {"n_ctx": 3, "class_token_position": "front"},
        {"n_ctx": 4, "class_specific": True},
        {"n_ctx": 4, "class_specific": True, "class_token_position": "middle"},
        {"n_ctx": None, "ctx_init": "a photo of a"},
        {"n_ctx": 4, "ctx_init": "a photo of a", "class_token_position": "front"},
    ],
    ids=["end", "middle", "front", "csc", "csc-middle", "init", "init-front"],
)
def test_coop_variants_honour_contract(kwargs, backbone) -> None:
    check_learner(CoOp, init_kwargs=kwargs, backbone=backbone)


def test_check_learner_restores_global_rng(backbone) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_learner(CoOp, init_kwargs={"n_ctx": 2}, backbone=backbone, steps=1)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------------------ broken learners


class BadFamily(ZeroShot):
    """Declares a family that does not exist."""

    family = "prompting"


class NotALearner(nn.Module):
    """A module that does not derive from PromptLearner."""


class LeakyCoOp(CoOp):
    """Turns gradients on for a backbone parameter."""

    def build(self, backbone, classnames) -> None:
        super().build(backbone, classnames)
        backbone.clip.positional_embedding.requires_grad_(True)


class NarrowCoOp(CoOp):
    """Drops the last class from its logits."""

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return super().logits(image_features)[:, :-1]


class DetachedCoOp(CoOp):
    """Claims to be trainable but cuts its context out of the graph."""

    def text_features(self) -> torch.Tensor:
        return text_features(self.backbone, self.prompts(self.ctx.detach()), self.prompts.pool_index)


class ImageShiftCoOp(CoOp):
    """Changes image features while declaring modifies_image_encoder=False."""

    def build(self, backbone, classnames) -> None:
        super().build(backbone, classnames)
        self.shift = nn.Parameter(torch.full((backbone.embed_dim,), 0.1))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return super().encode_images(images) + self.shift


class MutatingCoOp(CoOp):
    """Edits the frozen backbone's temperature in place while training."""

    def loss(self, logits, targets, image_features) -> torch.Tensor:
        with torch.no_grad():
            self.backbone.clip.logit_scale.add_(0.5)
        return super().loss(logits, targets, image_features)


class UnsavedStateCoOp(CoOp):
    """Keeps a random projection outside its parameters, so saved prompts do not reproduce it."""

    def build(self, backbone, classnames) -> None:
        super().build(backbone, classnames)
        self.register_buffer("mix", torch.eye(backbone.embed_dim) + torch.randn(backbone.embed_dim, backbone.embed_dim))

    def text_features(self) -> torch.Tensor:
        return super().text_features() @ self.mix


class UnseededCoOp(CoOp):
    """Initialises its context from an unseeded private generator."""

    def build(self, backbone, classnames) -> None:
        gen = torch.Generator()
        gen.seed()
        self.ctx = nn.Parameter(torch.randn(int(self.n_ctx), backbone.text_width, generator=gen) * 0.02)


class UntrainedParamCoOp(CoOp):
    """Has a trainable parameter that the loss never reaches."""

    def build(self, backbone, classnames) -> None:
        super().build(backbone, classnames)
        self.unused = nn.Parameter(torch.zeros(3))


BROKEN = [
    (BadFamily, r"family='prompting'"),
    (NotALearner, "not a subclass of .*PromptLearner"),
    (LeakyCoOp, "backbone parameters require grad"),
    (NarrowCoOp, r"shape \(4, 3\), expected \[B, C\] = \(4, 4\)"),
    (DetachedCoOp, "does not depend on any trainable parameter"),
    (ImageShiftCoOp, "modifies_image_encoder=False"),
    (MutatingCoOp, "backbone tensors changed"),
    (UnsavedStateCoOp, "save_prompts/load_prompts"),
    (UnseededCoOp, r"manual_seed\(0\)"),
    (UntrainedParamCoOp, r"no \(non-zero\) gradient reached .*unused"),
]


@pytest.mark.parametrize(("cls", "match"), BROKEN, ids=[cls.__name__ for cls, _ in BROKEN])
def test_check_learner_catches_broken_learners(cls, match, backbone) -> None:
    kwargs = {} if issubclass(cls, ZeroShot) or not issubclass(cls, PromptLearner) else {"n_ctx": 4}
    with pytest.raises(AssertionError, match=match):
        check_learner(cls, init_kwargs=kwargs, backbone=backbone, steps=2)


# ------------------------------------------------------------------------------------ CoOp == zero-shot


def test_coop_from_words_equals_zero_shot_on_toyclip() -> None:
    bb = ToyCLIP()
    names = ["red circle", "blue square", "green triangle", "striped_star", "dotted hexagon"]
    size = bb.preprocess.image_size
    images = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(0))
    coop, zs = CoOp(n_ctx=4, ctx_init="a photo of a"), ZeroShot(template="a photo of a {}.")
    coop.setup(bb, names)
    zs.setup(bb, names)
    coop.eval()
    zs.eval()
    with torch.no_grad():
        torch.testing.assert_close(coop(images), zs(images), rtol=1e-5, atol=1e-4)
