"""The backbone hook for prompt tokens that enter at a middle layer (``supports_inserted_prompts``): text tokens
inserted after the start token (the sequence and its causal mask grow), image tokens appended at a middle layer, and
the prompt tokens' final states. Checked against a plain layer-by-layer run of the open_clip blocks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from vlprompt.backbones.base import BackboneError
from vlprompt.learners.testing import tiny_clip, tiny_siglip, torch_threads


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def test_text_tokens_inserted_at_a_middle_layer_match_a_plain_run() -> None:
    bb = tiny_clip()
    text = bb.clip
    tokens = bb.tokenize(["a photo of a cat.", "a dog"])
    emb, pool = bb.embed_tokens(tokens), bb.pool_index(tokens)
    g = torch.Generator().manual_seed(3)
    p = torch.randn(3, bb.text_width, generator=g)
    out = bb.encode_text_embeddings(emb, pool, deep_prompts=[None, p], insert_deep_prompts=True)
    with torch.no_grad():  # by hand: layer 0, insert after the start token, layer 1 with a causal mask of L + 3
        x = emb + text.positional_embedding
        blocks = text.transformer.resblocks
        x = blocks[0](x, attn_mask=text.attn_mask)
        x = torch.cat([x[:, :1], p.expand(2, -1, -1), x[:, 1:]], dim=1)
        mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu_(1)
        x = text.ln_final(blocks[1](x, attn_mask=mask))
        ref = x[torch.arange(2), pool + 3] @ text.text_projection
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    plain = bb.encode_text_embeddings(emb, pool)
    assert not torch.allclose(out, plain, atol=1e-3)


def test_image_tokens_appended_at_a_middle_layer_and_their_states_match_a_plain_run() -> None:
    bb = tiny_clip()
    visual = bb.clip.visual
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(4)
    p = torch.randn(2, bb.vision_width, generator=g)
    pooled, states = bb.encode_image(images, deep_prompts=[None, p], prompt_states=True, insert_deep_prompts=True)
    with torch.no_grad():  # by hand, with the tokens right after the class token (MMRL's reference position)
        x = visual._embeds(bb.normalize(images))
        blocks = visual.transformer.resblocks
        x = blocks[0](x)
        x = torch.cat([x[:, :1], p.expand(2, -1, -1), x[:, 1:]], dim=1)
        x = visual.ln_post(blocks[1](x))
        ref_pooled, ref_states = x[:, 0] @ visual.proj, x[:, 1:3]
    assert torch.allclose(pooled, ref_pooled, atol=1e-5, rtol=1e-4)
    assert torch.allclose(states, ref_states, atol=1e-5, rtol=1e-4)
    dense = bb.encode_image(images, deep_prompts=[None, p], dense=True, prompt_states=True,
                           insert_deep_prompts=True)
    assert len(dense) == 3 and dense[1].shape == (2, 16, bb.embed_dim) and torch.allclose(dense[2], states)


def test_shallow_prompts_give_their_states_too() -> None:
    bb = tiny_clip()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    p = torch.randn(4, bb.vision_width, generator=torch.Generator().manual_seed(2))
    pooled, states = bb.encode_image(images, prompts=p, prompt_states=True)
    assert states.shape == (1, 4, bb.vision_width) and torch.allclose(pooled, bb.encode_image(images, prompts=p))


def test_insertion_needs_a_deep_prompt_and_a_capable_backbone() -> None:
    bb = tiny_clip()
    assert bb.supports_inserted_prompts
    tokens = bb.tokenize(["a cat"])
    with pytest.raises(BackboneError, match="needs a deep prompt at some layer >= 1"):
        bb.encode_text_embeddings(bb.embed_tokens(tokens), bb.pool_index(tokens), insert_deep_prompts=True)
    with pytest.raises(BackboneError, match="need shallow `prompts` too .* or insert_deep_prompts=True"):
        bb.encode_image(torch.rand(1, 3, 32, 32), deep_prompts=[None, torch.zeros(2, bb.vision_width)])
    with pytest.raises(BackboneError, match="insert_deep_prompts=True needs deep prompts"):
        bb.encode_image(torch.rand(1, 3, 32, 32), insert_deep_prompts=True)
    siglip = tiny_siglip()
    assert not siglip.supports_inserted_prompts
    with pytest.raises(BackboneError, match="prompt_states=True or insert_deep_prompts=True"):
        siglip.encode_image(torch.rand(1, 3, 32, 32), prompt_states=True)
