"""Tests for the frozen open_clip backbone adapter, on tiny random open_clip models (no downloads)."""

from __future__ import annotations

import json
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones import BackboneError, OpenCLIPBackbone, ToyCLIP
from vlprompt.backbones import open_clip as oc_module
from vlprompt.backbones.open_clip import resolve_quick_gelu
from vlprompt.backbones.toyclip import TOY_CARD, TOY_CHECKPOINT, embedded_card

TINY_VIT = "vlprompt-test-backbone-vit"
TINY_RN = "vlprompt-test-backbone-rn"
TEXT_CFG = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
CONFIGS = {
    TINY_VIT: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
        "text_cfg": TEXT_CFG,
    },
    # a ModifiedResNet image tower (open_clip's RN50 family), shrunk: 1 block per stage, stem width 8
    TINY_RN: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": TEXT_CFG,
    },
}


@pytest.fixture(scope="module")
def configs_registered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return folder


def _build(name: str, precision: str = "fp32") -> OpenCLIPBackbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return OpenCLIPBackbone(name, pretrained=None, precision=precision)


@pytest.fixture(scope="module")
def vit(configs_registered) -> OpenCLIPBackbone:
    return _build(TINY_VIT)


@pytest.fixture(scope="module")
def resnet(configs_registered) -> OpenCLIPBackbone:
    return _build(TINY_RN)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- interface and equivalence
def test_attributes(vit):
    assert vit.embed_dim == 32
    assert vit.text_width == 32 and vit.text_layers == 2 and vit.context_length == 32
    assert vit.vision_width == 32 and vit.vision_layers == 2 and vit.grid_size == (4, 4)
    assert vit.supports_visual_prompts
    assert vit.preprocess.image_size == 32
    assert vit.info.model == TINY_VIT and vit.info.pretrained is None and vit.info.checkpoint_sha256 is None
    assert vit.info.precision == "fp32"
    scale = vit.logit_scale
    assert scale.dim() == 0 and scale.dtype == torch.float32
    assert torch.allclose(scale, vit.clip.logit_scale.exp().float())


def test_encode_text_matches_open_clip(vit):
    tokens = vit.tokenize(["a red circle", "a blue square on a dark background", "x"])
    assert tokens.shape == (3, 32) and tokens.dtype == torch.long
    ours = vit.encode_text(tokens)
    with torch.no_grad():
        ref = vit.clip.encode_text(tokens)
    assert ours.shape == (3, 32) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_encode_image_matches_open_clip_on_normalised_images(vit, images):
    ours = vit.encode_image(images)
    with torch.no_grad():
        ref = vit.clip.encode_image(vit.normalize(images))
    mean = torch.tensor(vit.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(vit.preprocess.std).view(1, 3, 1, 1)
    torch.testing.assert_close(vit.normalize(images), (images - mean) / std)
    assert ours.shape == (3, 32) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_backbone_is_frozen_and_stays_in_eval(vit):
    params = list(vit.parameters())
    assert params and not any(p.requires_grad for p in params)
    returned = vit.train()
    assert returned is vit
    assert not vit.training
    assert not any(m.training for m in vit.modules())
    vit.train(True)
    assert not any(m.training for m in vit.modules())


# ----------------------------------------------------------------------------- visual prompts
def test_shallow_visual_prompts_change_the_output(vit, images):
    g = torch.Generator().manual_seed(1)
    plain = vit.encode_image(images)
    prompts = torch.randn(4, vit.vision_width, generator=g)
    prompted = vit.encode_image(images, prompts=prompts)
    assert prompted.shape == plain.shape
    assert not torch.allclose(prompted, plain, atol=1e-4)
    # a shared [n, Wv] prompt equals the same prompt given per image [B, n, Wv]
    per_image = vit.encode_image(images, prompts=prompts.expand(3, -1, -1))
    torch.testing.assert_close(per_image, prompted)


def test_deep_visual_prompts(vit, images):
    g = torch.Generator().manual_seed(2)
    prompts = torch.randn(4, vit.vision_width, generator=g)
    shallow = vit.encode_image(images, prompts=prompts)
    deep = vit.encode_image(images, prompts=prompts, deep_prompts=[None, torch.randn(4, vit.vision_width, generator=g)])
    assert not torch.allclose(deep, shallow, atol=1e-4)
    same = vit.encode_image(images, prompts=prompts, deep_prompts=[None, None])
    torch.testing.assert_close(same, shallow)


def test_deep_visual_prompts_of_wrong_length_raise(vit, images):
    w = vit.vision_width
    with pytest.raises(BackboneError, match="3 tokens.*4|4.*3"):
        vit.encode_image(images, prompts=torch.zeros(4, w), deep_prompts=[None, torch.zeros(3, w)])
    with pytest.raises(BackboneError, match="layers"):
        vit.encode_image(images, prompts=torch.zeros(4, w), deep_prompts=[None, torch.zeros(4, w), torch.zeros(4, w)])
    with pytest.raises(BackboneError, match="shallow"):
        vit.encode_image(images, deep_prompts=[None, torch.zeros(4, w)])


def test_dense_features(vit, images):
    pooled, tokens = vit.encode_image(images, dense=True)
    hw = vit.grid_size[0] * vit.grid_size[1]
    assert pooled.shape == (3, vit.embed_dim)
    assert tokens.shape == (3, hw, vit.embed_dim)
    assert tokens.dtype == torch.float32
    torch.testing.assert_close(pooled, vit.encode_image(images))
    # prompt tokens are removed from the dense output
    _, prompted_tokens = vit.encode_image(images, prompts=torch.randn(5, vit.vision_width), dense=True)
    assert prompted_tokens.shape == (3, hw, vit.embed_dim)


def test_gradients_reach_prompts_through_the_frozen_backbone(vit, images):
    g = torch.Generator().manual_seed(3)
    vp = torch.randn(2, vit.vision_width, generator=g).requires_grad_()
    deep_vp = torch.randn(2, vit.vision_width, generator=g).requires_grad_()
    tp = torch.randn(2, vit.text_width, generator=g).requires_grad_()
    tokens = vit.tokenize(["a red circle", "a blue square"])
    ctx = (vit.embed_tokens(tokens)).detach().requires_grad_()
    img = vit.encode_image(images, prompts=vp, deep_prompts=[None, deep_vp])
    txt = vit.encode_text_embeddings(ctx, vit.pool_index(tokens), deep_prompts=[None, tp])
    loss = (F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()).sum()
    loss.backward()
    for t in (vp, deep_vp, tp, ctx):
        assert t.grad is not None and bool(t.grad.abs().sum() > 0)
    assert all(p.grad is None for p in vit.parameters())


# ----------------------------------------------------------------------------- text deep prompts
def test_text_deep_prompts(vit):
    tokens = vit.tokenize(["a red circle", "a small dotted square"])
    emb, pool = vit.embed_tokens(tokens), vit.pool_index(tokens)
    assert emb.shape == (2, 32, vit.text_width) and emb.dtype == torch.float32
    torch.testing.assert_close(pool, tokens.argmax(dim=-1))
    base = vit.encode_text_embeddings(emb, pool)
    torch.testing.assert_close(base, vit.encode_text(tokens))
    g = torch.Generator().manual_seed(4)
    p = torch.randn(2, vit.text_width, generator=g)
    changed = vit.encode_text_embeddings(emb, pool, deep_prompts=[None, p])
    assert not torch.allclose(changed, base, atol=1e-4)
    # entry 0 is ignored: layer 0's prompts are part of the embeddings
    ignored = vit.encode_text_embeddings(emb, pool, deep_prompts=[p])
    torch.testing.assert_close(ignored, base)
    ignored = vit.encode_text_embeddings(emb, pool, deep_prompts=[p, None])
    torch.testing.assert_close(ignored, base)
    # per-sentence prompts [N, n, Wt] equal a shared one
    per = vit.encode_text_embeddings(emb, pool, deep_prompts=[None, p.expand(2, -1, -1)])
    torch.testing.assert_close(per, changed)
    with pytest.raises(BackboneError, match="layers"):
        vit.encode_text_embeddings(emb, pool, deep_prompts=[None, p, p])


# ----------------------------------------------------------------------------- precision
def test_bf16_outputs_float32_close_to_fp32(vit, configs_registered, images):
    half = _build(TINY_VIT, precision="bf16")
    assert half.info.precision == "bf16"
    assert all(p.dtype == torch.bfloat16 for p in half.clip.parameters())
    tokens = vit.tokenize(["a red circle", "a blue square"])
    for a, b in ((vit.encode_image(images), half.encode_image(images)), (vit.encode_text(tokens), half.encode_text(tokens))):
        assert b.dtype == torch.float32
        assert float(F.cosine_similarity(a, b, dim=-1).min()) > 0.98
        torch.testing.assert_close(b, a, rtol=0.1, atol=0.1)


def test_unknown_precision(configs_registered):
    with pytest.raises(BackboneError, match="precision"):
        OpenCLIPBackbone(TINY_VIT, pretrained=None, precision="int4")


# ----------------------------------------------------------------------------- errors while loading
def test_missing_checkpoint_names_the_path(configs_registered, tmp_path):
    missing = tmp_path / "no_such_weights.pt"
    with pytest.raises(BackboneError) as exc:
        OpenCLIPBackbone(TINY_VIT, pretrained=str(missing))
    assert str(missing) in str(exc.value)
    assert "does not exist" in str(exc.value)


def test_corrupt_checkpoint_names_the_file(configs_registered, tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(os.urandom(64) + b"definitely not a checkpoint")
    with pytest.raises(BackboneError) as exc:
        OpenCLIPBackbone(TINY_VIT, pretrained=str(bad))
    assert "corrupt.pt" in str(exc.value)
    assert TINY_VIT in str(exc.value)


def test_unknown_pretrained_tag_lists_the_tags(monkeypatch):
    monkeypatch.setattr(OpenCLIPBackbone, "_load", staticmethod(_no_load))
    with pytest.raises(BackboneError) as exc:
        OpenCLIPBackbone("ViT-B-16", pretrained="laion9000_nonsense")
    msg = str(exc.value)
    assert "laion9000_nonsense" in msg
    for tag in ("openai", "laion2b_s34b_b88k"):
        assert tag in msg


def _no_load(*args, **kwargs):
    raise AssertionError("the backbone tried to build/download a model")


def test_offline_tag_fails_fast_without_downloading(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setattr(OpenCLIPBackbone, "_load", staticmethod(_no_load))
    monkeypatch.setattr(open_clip, "create_model", _no_load)
    with pytest.raises(BackboneError) as exc:
        OpenCLIPBackbone("ViT-B-16", "laion2b_s34b_b88k")
    msg = str(exc.value)
    assert "offline" in msg.lower() and "HF_HUB_OFFLINE" in msg
    assert "laion2b_s34b_b88k" in msg
    assert "pretrained: /path/to" in msg


def test_offline_hf_hub_model_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(OpenCLIPBackbone, "_load", staticmethod(_no_load))
    with pytest.raises(BackboneError, match="local-dir:"):
        OpenCLIPBackbone("hf-hub:someone/some-clip", pretrained=None)


def test_unknown_model_name(configs_registered):
    with pytest.raises(BackboneError, match="unknown open_clip model"):
        OpenCLIPBackbone("no-such-model-xyz", pretrained=None)


# ----------------------------------------------------------------------------- QuickGELU
def test_resolve_quick_gelu():
    assert resolve_quick_gelu("ViT-B-16", "openai", None) is True
    with pytest.raises(BackboneError, match="quick_gelu=False"):
        resolve_quick_gelu("ViT-B-16", "openai", False)
    assert resolve_quick_gelu("ViT-B-16", "openai", True) is True
    assert resolve_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", None) is False
    with pytest.raises(BackboneError):
        resolve_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", True)
    assert resolve_quick_gelu("ViT-B-16-quickgelu", None, None) is True
    assert resolve_quick_gelu("ViT-B-16", None, None) is False
    assert resolve_quick_gelu("ViT-B-16", None, True) is True


def test_openai_jit_file_needs_quick_gelu(tmp_path):
    import zipfile

    jit = tmp_path / "ViT-B-16.pt"
    with zipfile.ZipFile(jit, "w") as zf:
        zf.writestr("ViT-B-16/constants.pkl", b"")
    assert resolve_quick_gelu("ViT-B-16", str(jit), None) is True
    with pytest.raises(BackboneError):
        resolve_quick_gelu("ViT-B-16", str(jit), False)


# ----------------------------------------------------------------------------- ResNet image tower
def test_resnet_tower_has_no_visual_prompts(resnet, images):
    assert not resnet.supports_visual_prompts
    assert resnet.vision_layers == 0 and resnet.grid_size == (0, 0)
    feats = resnet.encode_image(images)
    assert feats.shape == (3, 32) and feats.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(feats, resnet.clip.encode_image(resnet.normalize(images)), rtol=1e-5, atol=1e-5)
    for kwargs in ({"prompts": torch.zeros(2, 8)}, {"dense": True}, {"deep_prompts": [None, torch.zeros(2, 8)]}):
        with pytest.raises(BackboneError) as exc:
            resnet.encode_image(images, **kwargs)
        assert "ViT model" in str(exc.value)
    with pytest.raises(BackboneError, match="MyLearner.*ViT model"):
        resnet.require_visual_prompts("MyLearner")
    # the text tower still works
    assert resnet.encode_text(resnet.tokenize(["a red circle"])).shape == (1, 32)


def test_vit_accepts_visual_prompt_request(vit):
    vit.require_visual_prompts("MyLearner")  # no error


# ----------------------------------------------------------------------------- embedded toy CLIP
def test_embedded_toyclip_loads_with_the_card_sha256():
    card = embedded_card()
    assert TOY_CARD.is_file() and TOY_CHECKPOINT.is_file()
    model = ToyCLIP()
    assert model.info.checkpoint_sha256 == card["sha256"]
    assert model.info.name == "ToyCLIP" and model.info.model == "vlprompt-toyclip"
    assert model.preprocess.image_size == 48
    assert model.embed_dim == card["model_config"]["embed_dim"]
    assert model.supports_visual_prompts and model.grid_size == (8, 8)
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    assert model.encode_image(x).shape == (2, model.embed_dim)
    assert not any(p.requires_grad for p in model.parameters())


def test_embedded_toyclip_missing_checkpoint(monkeypatch, tmp_path):
    import vlprompt.backbones.toyclip as toy

    monkeypatch.setattr(toy, "TOY_CHECKPOINT", tmp_path / "gone.safetensors")
    with pytest.raises(BackboneError, match="gone.safetensors"):
        ToyCLIP()


def test_model_cache_is_shared(vit, configs_registered):
    again = OpenCLIPBackbone(TINY_VIT, pretrained=None)
    assert again.clip is vit.clip
    assert oc_module._MODEL_CACHE  # cached frozen models


def test_local_checkpoint_for_an_architecture_with_openai_releases_needs_an_explicit_quick_gelu(tmp_path):
    import torch
    from safetensors.torch import save_file

    plain = tmp_path / "open_clip_pytorch_model.safetensors"
    save_file({"visual.proj": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(BackboneError, match=r"ViT-B-16-quickgelu.*quick_gelu: true.*quick_gelu: false"):
        resolve_quick_gelu("ViT-B-16", str(plain), None)
    assert resolve_quick_gelu("ViT-B-16", str(plain), True) is True
    assert resolve_quick_gelu("ViT-B-16", str(plain), False) is False
    assert resolve_quick_gelu("ViT-B-16-quickgelu", str(plain), None) is True
    # OpenAI's original state-dict layout is recognised
    openai = tmp_path / "openai_layout.pt"
    torch.save({"visual.proj": torch.zeros(2, 2), "input_resolution": torch.tensor(224),
                "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}, openai)
    assert resolve_quick_gelu("ViT-B-16", str(openai), None) is True


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_openai_layout_state_dict_loads_strictly(configs_registered, tmp_path, images, suffix):
    """A state dict in OpenAI's original layout (open_clip's tensor names plus input_resolution, context_length and
    vocab_size) loads into the open_clip model with every tensor used; the extra integers are dropped."""
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        ref = open_clip.create_model(TINY_VIT, pretrained=None, force_quick_gelu=True).eval()
    state = {k: v.detach().clone().contiguous() for k, v in ref.state_dict().items()}
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(32), vocab_size=torch.tensor(49408))
    path = tmp_path / f"openai_layout{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    b = OpenCLIPBackbone(TINY_VIT, pretrained=str(path), precision="fp32")
    assert b.info.extra["quick_gelu"] is True
    with torch.no_grad():
        want = ref.encode_image(b.normalize(images))
        got = b.encode_image(images)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    state["visual.proj"] = torch.zeros(3, 3)  # a wrong shape is an error naming the file, not a silent partial load
    bad = tmp_path / f"bad{suffix}"
    save_file(state, str(bad)) if suffix == ".safetensors" else torch.save(state, bad)
    with pytest.raises(BackboneError, match="bad"):
        OpenCLIPBackbone(TINY_VIT, pretrained=str(bad), precision="fp32")


def test_openai_layout_safetensors_truncated_is_a_named_error(configs_registered, tmp_path):
    from safetensors.torch import save_file

    ref = open_clip.create_model(TINY_VIT, pretrained=None, force_quick_gelu=True)
    state = {k: v.detach().clone().contiguous() for k, v in ref.state_dict().items()}
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(32), vocab_size=torch.tensor(49408))
    path = tmp_path / "cut.safetensors"
    save_file(state, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BackboneError, match="cut.safetensors"):
        OpenCLIPBackbone(TINY_VIT, pretrained=str(path), precision="fp32")
