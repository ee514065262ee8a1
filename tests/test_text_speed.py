"""Text side: chunked prompt encoding, hand-crafted classifiers cached across seeds, one text pass per step."""

from __future__ import annotations

import torch

from vlprompt.learners.prompts import layers
from vlprompt.learners.prompts.layers import ClassPrompts, deep_prompt_list, template_features, text_features
from vlprompt.learners.testing import tiny_clip

NAMES = [f"class {i}" for i in range(7)]


def _prompts(b):
    prompts = ClassPrompts(b, NAMES, 4)
    ctx = (0.02 * torch.randn(4, b.text_width, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    return prompts, ctx


def test_chunked_text_features_equal_one_pass_with_gradients() -> None:
    b = tiny_clip()
    prompts, ctx = _prompts(b)
    g = torch.Generator().manual_seed(1)
    shared = (0.02 * torch.randn(4, b.text_width, generator=g)).requires_grad_(True)
    per = (0.02 * torch.randn(len(NAMES), 4, b.text_width, generator=g)).requires_grad_(True)
    for deep in (None, deep_prompt_list([shared]), deep_prompt_list([per])):
        outs, grads = [], []
        for chunk in (None, 3):
            ctx.grad = None
            f = text_features(b, prompts(ctx), prompts.pool_index, deep, chunk_size=chunk)
            f.square().sum().backward()
            outs.append(f.detach())
            grads.append(ctx.grad.clone())
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)  # sum over chunks: fp32 order
    with torch.no_grad():
        torch.testing.assert_close(
            text_features(b, prompts(ctx), prompts.pool_index, chunk_size=2),
            text_features(b, prompts(ctx), prompts.pool_index, chunk_size=None), rtol=1e-5, atol=1e-6,
        )
    # at or below chunk_size the call is exactly the unchunked one
    assert torch.equal(
        text_features(b, prompts(ctx), prompts.pool_index, chunk_size=len(NAMES)).detach(),
        text_features(b, prompts(ctx), prompts.pool_index, chunk_size=None).detach(),
    )


def test_template_features_are_cached_per_model_classes_and_templates(monkeypatch) -> None:
    b = tiny_clip()
    calls = []
    original = type(b).encode_text
    monkeypatch.setattr(type(b), "encode_text", lambda self, tokens: calls.append(len(tokens)) or original(self, tokens))
    templates = ["a photo of a {}.", "art of the {}."]
    first = template_features(b, NAMES, templates, cache=False)
    n = len(calls)
    cached_once = template_features(b, NAMES, templates)
    again = template_features(b, NAMES, templates)
    assert len(calls) == 2 * n  # computed once for the cache, then served from it
    assert torch.equal(first, cached_once) and torch.equal(first, again)
    again.zero_()  # callers get a copy
    assert torch.equal(template_features(b, NAMES, templates), first)
    template_features(b, NAMES[:3], templates)
    template_features(b, NAMES, templates[:1])
    assert len(calls) == 4 * n
    # another model object (different random weights) never shares an entry
    other = object.__new__(type(b))
    assert layers._TEMPLATE_CACHE.get(getattr(other, "clip", other)) is None


def test_coop_encodes_text_once_per_step(monkeypatch) -> None:
    from vlprompt.learners.coop import CoOp

    b = tiny_clip()
    learner = CoOp(n_ctx=4)
    learner.setup(b, NAMES)
    calls = []
    original = type(b).encode_text_embeddings
    monkeypatch.setattr(
        type(b), "encode_text_embeddings",
        lambda self, emb, pool, **kw: calls.append(emb.shape[0]) or original(self, emb, pool, **kw),
    )
    feats = b.encode_image(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    learner.train()
    loss = learner.loss(learner.logits(feats), torch.arange(8) % len(NAMES), feats)
    loss.backward()
    assert calls == [len(NAMES)]  # one text pass for the whole batch of 8 images
