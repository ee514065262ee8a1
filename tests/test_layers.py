"""Tests for the shared prompt machinery (vlprompt.learners.prompts.layers) on a tiny random open_clip model."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones import OpenCLIPBackbone
from vlprompt.learners.base import cosine_logits
from vlprompt.learners.prompts.layers import (
    ClassPrompts,
    DeepPrompts,
    context_from_words,
    count_tokens,
    deep_prompt_list,
    random_context,
    template_features,
    text_features,
)

TINY = "vlprompt-test-layers-tiny"
CLASSNAMES = ["red shape", "large dotted shape", "shape in the top_left", "cat"]


@pytest.fixture(scope="module")
def bb(tmp_path_factory) -> OpenCLIPBackbone:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (folder / f"{TINY}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return OpenCLIPBackbone(TINY, pretrained=None)


def _embed(bb, texts):
    tokens = bb.tokenize(texts)
    return bb.embed_tokens(tokens), bb.pool_index(tokens)


# ----------------------------------------------------------------------------- context
def test_count_tokens(bb):
    assert count_tokens(bb, "a photo of a") == 4
    assert count_tokens(bb, "") == 0


def test_context_from_words(bb):
    ctx = context_from_words(bb, "a photo of a")
    assert ctx.shape == (4, bb.text_width)
    emb, _ = _embed(bb, ["a photo of a"])
    assert torch.equal(ctx, emb[0, 1:5])
    assert not ctx.requires_grad
    # underscores are spaces; n_ctx equal to the token count is fine
    assert torch.equal(context_from_words(bb, "a_photo_of_a", n_ctx=4), ctx)


def test_context_from_words_token_count_mismatch(bb):
    with pytest.raises(ValueError) as exc:
        context_from_words(bb, "a photo of a", n_ctx=3)
    msg = str(exc.value)
    assert "4 tokens" in msg and "n_ctx=3" in msg and "n_ctx: 4" in msg
    with pytest.raises(ValueError, match="no tokens"):
        context_from_words(bb, "   ")


def test_random_context():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        shared = random_context(4, 16)
        specific = random_context(4, 16, n_cls=3)
        big = random_context(64, 64, std=0.02)
    assert shared.shape == (4, 16) and specific.shape == (3, 4, 16)
    assert 0.015 < float(big.std()) < 0.025
    assert abs(float(big.mean())) < 0.005
    with pytest.raises(ValueError, match="n_ctx"):
        random_context(0, 16)


# ----------------------------------------------------------------------------- ClassPrompts
def test_class_prompts_end_reproduces_the_hand_written_prompt(bb):
    prompts = ClassPrompts(bb, CLASSNAMES, n_ctx=4, position="end")
    assert prompts.n_cls == len(CLASSNAMES)
    ctx = context_from_words(bb, "a photo of a")
    out = prompts(ctx)
    names = [c.replace("_", " ") for c in CLASSNAMES]
    ref, pool = _embed(bb, [f"a photo of a {c}." for c in names])
    assert out.shape == (len(CLASSNAMES), bb.context_length, bb.text_width)
    assert torch.equal(out, ref)
    assert torch.equal(prompts.pool_index, pool)
    # and therefore the same text features as the tokenized template
    feats = text_features(bb, out, prompts.pool_index)
    torch.testing.assert_close(feats, bb.encode_text(bb.tokenize([f"a photo of a {c}." for c in names])))


@pytest.mark.parametrize(
    ("position", "template"),
    [("end", "a photo of a {}."), ("middle", "a photo {} of a."), ("front", "{} a photo of a.")],
)
def test_class_token_positions(bb, position, template):
    prompts = ClassPrompts(bb, CLASSNAMES, n_ctx=4, position=position)
    out = prompts(context_from_words(bb, "a photo of a"))
    names = [c.replace("_", " ") for c in CLASSNAMES]
    ref, pool = _embed(bb, [template.format(c) for c in names])
    assert out.shape == (len(CLASSNAMES), bb.context_length, bb.text_width)
    assert torch.equal(out, ref)
    assert torch.equal(prompts.pool_index, pool)


def test_class_specific_context(bb):
    prompts = ClassPrompts(bb, CLASSNAMES, n_ctx=2, position="middle")
    ctx = random_context(2, bb.text_width, n_cls=len(CLASSNAMES))
    out = prompts(ctx)
    assert out.shape == (len(CLASSNAMES), bb.context_length, bb.text_width)
    for i in range(len(CLASSNAMES)):
        assert torch.equal(out[i, 1], ctx[i, 0])  # first half of the context right after the start token


def test_class_prompts_buffers(bb):
    prompts = ClassPrompts(bb, CLASSNAMES, n_ctx=3)
    c, l, w = len(CLASSNAMES), bb.context_length, bb.text_width
    assert prompts.prefix.shape == (c, 1, w)
    assert prompts.suffix.shape == (c, l - 1 - 3, w)
    assert prompts.tokens.shape == (c, l)
    assert prompts.name_lens.tolist() == [count_tokens(bb, n.replace("_", " ")) for n in CLASSNAMES]
    assert not list(prompts.parameters())
    # buffers are not saved with a learner's state dict
    assert prompts.state_dict() == {}


def test_gradient_reaches_the_context(bb):
    prompts = ClassPrompts(bb, CLASSNAMES, n_ctx=4, position="front")
    ctx = torch.nn.Parameter(random_context(4, bb.text_width))
    feats = text_features(bb, prompts(ctx), prompts.pool_index)
    feats.sum().backward()
    assert ctx.grad is not None and bool(ctx.grad.abs().sum() > 0)


def test_prompt_too_long_for_the_context(bb):
    with pytest.raises(ValueError, match="context length 32"):
        ClassPrompts(bb, ["a very long class name indeed"], n_ctx=26)
    with pytest.raises(ValueError, match="class_token_position"):
        ClassPrompts(bb, CLASSNAMES, n_ctx=4, position="side")


# ----------------------------------------------------------------------------- classifiers
def test_template_features(bb):
    feats = template_features(bb, CLASSNAMES, ["a photo of a {}.", "a drawing of a {}."])
    assert feats.shape == (len(CLASSNAMES), bb.embed_dim)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(len(CLASSNAMES)))
    single = template_features(bb, CLASSNAMES, ["a photo of a {}."])
    names = [c.replace("_", " ") for c in CLASSNAMES]
    ref = F.normalize(bb.encode_text(bb.tokenize([f"a photo of a {c}." for c in names])), dim=-1)
    torch.testing.assert_close(single, ref)
    with pytest.raises(ValueError, match="template"):
        template_features(bb, CLASSNAMES, [])


def test_cosine_logits_shapes_and_values():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(5, 8, generator=g)
    txt = torch.randn(3, 8, generator=g)
    logits = cosine_logits(img, txt, 10.0)
    assert logits.shape == (5, 3)
    ref = 10.0 * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    torch.testing.assert_close(logits, ref)
    assert float(logits.abs().max()) <= 10.0 + 1e-5
    per_image = cosine_logits(img, txt.expand(5, -1, -1), torch.tensor(10.0))
    assert per_image.shape == (5, 3)
    torch.testing.assert_close(per_image, logits)
    # scale-invariant in the feature norms
    torch.testing.assert_close(cosine_logits(3 * img, 0.5 * txt, 10.0), logits)


# ----------------------------------------------------------------------------- deep prompts
def test_deep_prompts_as_layers():
    deep = DeepPrompts(depth=3, n_ctx=2, width=8)
    layers = deep.as_layers()
    assert len(layers) == 3 and layers[0] is None
    assert layers[1] is deep.prompts[0] and layers[2] is deep.prompts[1]
    assert all(p.shape == (2, 8) and p.requires_grad for p in layers[1:])
    assert len(list(deep.parameters())) == 2
    assert DeepPrompts(depth=1, n_ctx=2, width=8).as_layers() == [None]
    with pytest.raises(ValueError, match="depth"):
        DeepPrompts(depth=0, n_ctx=2, width=8)
    a, b = torch.zeros(1), torch.ones(1)
    assert deep_prompt_list([a, b]) == [None, a, b]


def test_deep_prompts_drive_the_text_tower(bb):
    deep = DeepPrompts(depth=bb.text_layers, n_ctx=2, width=bb.text_width, std=1.0)
    prompts = ClassPrompts(bb, CLASSNAMES, n_ctx=2)
    emb = prompts(random_context(2, bb.text_width))
    plain = text_features(bb, emb, prompts.pool_index)
    deep_feats = text_features(bb, emb, prompts.pool_index, deep_prompts=deep.as_layers())
    assert not torch.allclose(plain, deep_feats, atol=1e-4)
    deep_feats.sum().backward()
    assert all(p.grad is not None for p in deep.prompts)
