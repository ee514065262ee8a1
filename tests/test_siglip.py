"""SigLIP as a second backbone family: prompt learners on a tiny random open_clip SigLIP.

The tiny SigLIP (:func:`vlprompt.learners.testing.tiny_siglip`) has ``ViT-B-16-SigLIP.json``'s text tower at width
32 (no causal mask, pooled at the last of 64 positions, no start token, end token = padding id 1, projection with
bias) and timm's SigLIP ViT layout (no class token, attention-pool head), logit bias -10. Checked here: the adapter
gives open_clip's own text and image features and logits ``exp(logit_scale) cos + logit_bias``; CoOp's context sits
where the text starts (position 0, no start token) and CoOp from "a photo of a" is zero-shot before training; the
text and visual/multimodal learners pass the learner contract (training steps included); TMML, which reads patch
tokens, is refused at setup; the real-weights config fails fast offline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
import yaml

from vlprompt.backbones.base import BackboneError
from vlprompt.backbones.open_clip import OpenCLIPBackbone
from vlprompt.learners.base import LearnerError
from vlprompt.learners.coop import CoOp
from vlprompt.learners.registry import get_registry
from vlprompt.learners.testing import DEFAULT_CLASSNAMES, TINY_SIGLIP, check_learner, tiny_siglip, torch_threads
from vlprompt.learners.zero_shot import ZeroShot

ROOT = Path(__file__).resolve().parents[1]
#: learners run on SigLIP here: text (CoOp, CoCoOp, KgCoOp, DePT, TCP), visual (VPT), multimodal (IVLP, MaPLe,
#: PromptSRC, shared_*, CoPrompt, PromptKD), the plug-ins (DPC, DePT's head), the baselines and test-time methods
SUPPORTED = ("zero_shot", "coop", "cocoop", "kgcoop", "dept", "vpt", "ivlp", "maple", "promptsrc", "shared_separate",
             "shared_attention", "linear_probe", "tcp", "coprompt", "promptkd", "dpc", "dept_head",
             # test-time methods: ZERO's vote and TDA's caches read softmax / argmax of the logits, which SigLIP's one
             # logit bias for every class leaves unchanged
             "zero", "tda", "tpt")
#: learners whose layers go inside the vision tower's open_clip blocks, which SigLIP's timm tower does not have:
#: refused at setup, naming the backbone
NEEDS_OPEN_CLIP_VISION_BLOCKS = ("mma", "mmrl", "clip_lora")


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def siglip() -> OpenCLIPBackbone:
    return tiny_siglip()


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_tiny_siglip_is_a_siglip(siglip) -> None:
    text = siglip.clip.text
    assert text.attn_mask is None and text.pool_type == "last" and isinstance(text.text_projection, torch.nn.Linear)
    assert siglip.context_length == 64 and siglip.text_start == 0
    tokens = siglip.tokenize(["a photo of a red circle."])
    assert tokens[0, 0] != tokens[0, 6] == 1 and bool((tokens[0, 6:] == 1).all())  # no start token; end = padding
    assert int(siglip.text_end(tokens)[0]) == 6 and int(siglip.pool_index(tokens)[0]) == 63
    assert float(siglip.logit_bias) == -10.0 and siglip.supports_visual_prompts and not siglip.supports_dense_features


def test_features_and_logits_equal_open_clip(siglip) -> None:
    """(a) text and image features are open_clip's own; (b) logits are ``exp(s) img @ txt.T + b`` on unit features."""
    texts = [f"a photo of a {c}." for c in DEFAULT_CLASSNAMES]
    ref_txt = siglip.clip.encode_text(open_clip.get_tokenizer(TINY_SIGLIP)(texts))
    torch.testing.assert_close(siglip.encode_text(siglip.tokenize(texts)), ref_txt, rtol=0, atol=1e-6)
    images = _images()
    ref_img = siglip.clip.encode_image(siglip.normalize(images))
    torch.testing.assert_close(siglip.encode_image(images), ref_img, rtol=0, atol=1e-6)
    zs = ZeroShot(templates=["a photo of a {}."])
    zs.setup(siglip, list(DEFAULT_CLASSNAMES))
    with torch.no_grad():
        logits = zs(images)
    clip = siglip.clip
    ref = clip.logit_scale.exp() * F.normalize(ref_img, dim=-1) @ F.normalize(ref_txt, dim=-1).T + clip.logit_bias
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    assert float(logits.max()) < -5  # the bias is in: SigLIP's random-init logits sit near -10


def test_coop_context_starts_where_the_text_starts(siglip) -> None:
    """No start token: CoOp's prompt is ``[ctx, class tokens, end, padding]``, token for token the embedding of the
    full sentence; and (c) CoOp from "a photo of a" equals zero-shot before training."""
    coop = CoOp(n_ctx=None, ctx_init="a photo of a")
    coop.setup(siglip, list(DEFAULT_CLASSNAMES))
    sentences = [f"a photo of a {c}." for c in DEFAULT_CLASSNAMES]
    with torch.no_grad():
        torch.testing.assert_close(coop.prompts(coop.ctx), siglip.embed_tokens(siglip.tokenize(sentences)), rtol=0, atol=0)
        zs = ZeroShot(templates=["a photo of a {}."])
        zs.setup(siglip, list(DEFAULT_CLASSNAMES))
        images = _images()
        torch.testing.assert_close(coop(images), zs(images), rtol=1e-5, atol=1e-5)


def test_deep_text_prompts_replace_the_context_positions(siglip) -> None:
    """Deep prompts at layer 1 go to positions ``text_start : text_start + n`` (0 on SigLIP): a deep prompt equal to
    what layer 0 made of the context leaves the features unchanged; shifted by one position it changes them."""
    tokens = siglip.tokenize(["x x red circle."])
    emb, pool = siglip.embed_tokens(tokens), siglip.pool_index(tokens)
    text = siglip.clip.text
    with torch.no_grad():
        h0 = text.transformer.resblocks[0](emb + text.positional_embedding)
        plain = siglip.encode_text_embeddings(emb, pool)
        same = siglip.encode_text_embeddings(emb, pool, deep_prompts=[None, h0[0, :2]])
        moved = siglip.encode_text_embeddings(emb, pool, deep_prompts=[None, h0[0, :2]], deep_prompt_start=1)
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-6)
    assert not torch.allclose(moved, plain, atol=1e-4)


def test_visual_prompts_on_the_timm_tower(siglip) -> None:
    """Visual prompts are appended after the patch tokens of timm's ViT and dropped before the attention pool:
    they change the feature, and a deep prompt equal to layer 0's output of the shallow ones changes nothing."""
    images = _images(2)
    trunk = siglip.clip.visual.trunk
    p = torch.randn(3, siglip.vision_width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain, shallow = siglip.encode_image(images), siglip.encode_image(images, prompts=p)
        x = trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(siglip.normalize(images))))
        h0 = trunk.blocks[0](torch.cat([x, p.expand(2, -1, -1)], dim=1))[:, -3:]
        deep = siglip.encode_image(images, prompts=p, deep_prompts=[None, h0])
    assert shallow.shape == plain.shape == (2, siglip.embed_dim) and not torch.allclose(shallow, plain, atol=1e-4)
    torch.testing.assert_close(deep, shallow, rtol=0, atol=1e-6)
    with pytest.raises(BackboneError, match="vlprompt-tiny-siglip.*ViT-B-16"):
        siglip.encode_image(images, dense=True)


@pytest.mark.parametrize("name", SUPPORTED)
def test_learner_runs_on_siglip(name, siglip) -> None:
    """(d) the learner contract on the tiny SigLIP: setup, logits, caching, label-space switch, SGD steps that move
    the learner and never the backbone, save/load."""
    check_learner(get_registry("learners").get(name), backbone=siglip)


@pytest.mark.parametrize("name", NEEDS_OPEN_CLIP_VISION_BLOCKS)
def test_learners_inside_the_vision_blocks_are_refused_at_setup(name, siglip) -> None:
    learner = get_registry("learners").get(name)()
    with pytest.raises(LearnerError, match="vlprompt-tiny-siglip"):
        learner.setup(siglip, list(DEFAULT_CLASSNAMES))


def test_patch_token_learner_is_refused_at_setup(siglip) -> None:
    tmml = get_registry("learners").get("tmml")()
    with pytest.raises(LearnerError, match=r"vlprompt-tiny-siglip.*patch tokens|patch tokens.*vlprompt-tiny-siglip"):
        tmml.setup(siglip, list(DEFAULT_CLASSNAMES))


def test_real_siglip_config_fails_fast_offline(monkeypatch, tmp_path) -> None:
    import huggingface_hub.constants as hf_constants

    cfg = yaml.safe_load((ROOT / "configs/backbones/siglip_vit_b16.yaml").read_text())["model"]["backbone"]["init_args"]
    assert (cfg["model"], cfg["pretrained"]) == ("ViT-B-16-SigLIP", "webli")
    assert cfg["pretrained"] in open_clip.list_pretrained_tags_by_model(cfg["model"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))

    def no_load(*args, **kwargs):
        raise AssertionError("the backbone tried to build/download a model")

    monkeypatch.setattr(OpenCLIPBackbone, "_load", staticmethod(no_load))
    with pytest.raises(BackboneError, match=r"'webli'.*HF_HUB_OFFLINE=1.*pretrained: /path/to"):
        OpenCLIPBackbone(cfg["model"], cfg["pretrained"], precision="fp32")
    ckpt = tmp_path / "open_clip_model.safetensors"
    ckpt.write_bytes(b"")  # a local file: the weights need no download, the tokenizer still does
    with pytest.raises(BackboneError, match=r"tokenizer 'timm/ViT-B-16-SigLIP'.*HF_HUB_OFFLINE=1"):
        OpenCLIPBackbone(cfg["model"], str(ckpt), precision="fp32")
