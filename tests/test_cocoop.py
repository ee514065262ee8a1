"""CoCoOp (Zhou et al., CVPR 2022): contract, invariants, equivalence with the reference's computation,
chunked/recomputed encoding, bad input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from vlprompt.learners.prompts.conditional import check_chunk_size, encode_conditioned_prompts
from vlprompt.learners.base import LearnerError
from vlprompt.learners.cocoop import CoCoOp
from vlprompt.learners.coop import CoOp
from vlprompt.learners.testing import check_learner, tiny_clip, torch_threads

NAMES = ["red circle", "blue square", "green_triangle", "yellow star", "purple ring"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _images(b: int = 3) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _cocoop(seed: int = 0, **kwargs) -> CoCoOp:
    torch.manual_seed(seed)
    learner = CoCoOp(**kwargs)
    learner.setup(tiny_clip(), NAMES)
    return learner


def test_contract_with_small_chunks():
    check_learner(CoCoOp, init_kwargs={"chunk_size": 3}, steps=2)
    check_learner(CoCoOp, init_kwargs={"n_ctx": 2, "ctx_init": None, "recompute": False, "meta_reduction": 4}, steps=1)


def test_shapes_and_names():
    learner = _cocoop()
    bb = tiny_clip()
    state = learner.learned_state()
    hidden = bb.embed_dim // 16
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "ctx": (4, bb.text_width),
        "meta_net.linear1.weight": (hidden, bb.embed_dim), "meta_net.linear1.bias": (hidden,),
        "meta_net.linear2.weight": (bb.text_width, hidden), "meta_net.linear2.bias": (bb.text_width,),
    }
    # initialised from "a photo of a": the token embeddings of those words
    tokens = bb.tokenize(["a photo of a"])
    assert torch.equal(state["ctx"], bb.embed_tokens(tokens)[0, 1:5])


def test_zero_meta_net_output_equals_coop_with_the_same_context():
    learner = _cocoop().eval()
    with torch.no_grad():
        learner.meta_net.linear2.weight.zero_()
        learner.meta_net.linear2.bias.zero_()
    coop = CoOp(n_ctx=4, ctx_init="a photo of a")
    coop.setup(tiny_clip(), NAMES)
    coop.set_learned_state({"ctx": learner.ctx.detach() + 0.01 * torch.randn(4, tiny_clip().text_width)})
    learner.set_learned_state({**learner.learned_state(), "ctx": coop.ctx.detach()})
    with torch.no_grad():
        a, b = learner(_images()), coop.eval()(_images())
    assert float((a - b).abs().max()) < 1e-5


def _reference_logits(learner: CoCoOp, images: torch.Tensor) -> torch.Tensor:
    """A line-by-line re-statement of the reference's CustomCLIP.forward (trainers/cocoop.py), fp32."""
    bb = learner.backbone
    image_features = bb.encode_image(images)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    prefix, suffix = learner.prompts.prefix, learner.prompts.suffix
    bias = learner.meta_net(image_features).unsqueeze(1)  # (batch, 1, ctx_dim)
    ctx_shifted = learner.ctx.unsqueeze(0) + bias  # (batch, n_ctx, ctx_dim)
    n_cls = prefix.shape[0]
    logits = []
    for ctx_i, imf_i in zip(ctx_shifted, image_features):
        pts_i = torch.cat([prefix, ctx_i.unsqueeze(0).expand(n_cls, -1, -1), suffix], dim=1)
        text_features = bb.encode_text_embeddings(pts_i, learner.prompts.tokens.argmax(dim=-1))
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits.append(bb.logit_scale * imf_i @ text_features.t())
    return torch.stack(logits)


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_logits_and_gradients_equal_the_reference_computation(chunk_size):
    learner = _cocoop(chunk_size=chunk_size)
    with torch.no_grad():
        learner.meta_net.linear2.weight.normal_(0, 0.5)  # a visible image-conditioned shift
    images, targets = _images(), torch.tensor([0, 3, 4])
    learner.train()
    loss = F.cross_entropy(learner(images), targets)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in learner.named_parameters()}
    learner.zero_grad()
    ref = _reference_logits(learner, images)
    F.cross_entropy(ref, targets).backward()
    for k, p in learner.named_parameters():
        assert torch.allclose(grads[k], p.grad, atol=1e-6, rtol=1e-4), k
    learner.eval()
    with torch.no_grad():
        assert float((learner(images) - ref.detach()).abs().max()) < 1e-5


def test_recompute_changes_nothing_but_memory():
    bb = tiny_clip()
    learner = _cocoop()
    ctx = learner.ctx.detach().unsqueeze(0).repeat(3, 1, 1) + 0.1 * torch.randn(3, 4, bb.text_width)
    outs = []
    for recompute in (False, True):
        c = ctx.clone().requires_grad_(True)
        feats = encode_conditioned_prompts(bb, learner.prompts, c, chunk_size=2, recompute=recompute)
        feats.square().sum().backward()
        outs.append((feats.detach(), c.grad))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6) and torch.allclose(outs[0][1], outs[1][1], atol=1e-6)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "8", None])
def test_chunk_size_must_be_a_positive_integer(bad):
    with pytest.raises(LearnerError, match=rf"chunk_size={bad!r} must be a positive integer"):
        CoCoOp(chunk_size=bad)
    with pytest.raises(ValueError, match="positive integer"):
        check_chunk_size(bad)


def test_context_that_does_not_fit_the_class_name_is_refused():
    with pytest.raises(LearnerError, match=r"n_ctx=28: prompt .* does not fit the context length 32"):
        CoCoOp(n_ctx=28, ctx_init=None).setup(tiny_clip(), ["a very long class name indeed"])
    with pytest.raises(LearnerError, match=r"CoOp with n_ctx=28: prompt .* does not fit the context length 32"):
        CoOp(n_ctx=28).setup(tiny_clip(), ["a very long class name indeed"])
    with pytest.raises(LearnerError, match="is 4 tokens but n_ctx=3"):
        CoCoOp(n_ctx=3).setup(tiny_clip(), NAMES)
