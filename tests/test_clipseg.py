"""The CLIPSeg adapter (vlprompt/backbones/clipseg.py) on tiny random CLIPSeg folders.

Faithfulness is pinned against ``transformers.CLIPSegForImageSegmentation`` itself: without prompts the adapter's
text/image features and mask logits equal HF's; with prompts they equal HF's own forward with the prompts inserted
by hooks the way TuneVLSeg (naamiinepal/tunevlseg, base_multimodal_clipseg.py / base_clipseg.py) and the open_clip
adapter insert them (text: replace positions ``1:1+n`` at the input of layer ``i >= 1``; vision: tokens appended
before ``pre_layrnorm``, replaced in place after each layer, decoder sees them and drops them before the
transposed convolution).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch

from vlprompt.backbones.base import BackboneError
from vlprompt.backbones.clipseg import (
    DEFAULT_PREPROCESS,
    CLIPSegBackbone,
    ToyVLSM,
    TOY_VLSM_FOLDER,
    write_clip_tokenizer,
)
from vlprompt.learners.base import LearnerError
from vlprompt.learners.vpt import VPT
from vlprompt.learners.registry import get_registry
from vlprompt.learners.testing import (
    check_learner,
    save_random_clipseg,
    tiny_vlsm,
    tiny_vlsm_config,
    tiny_vlsm_folder,
    torch_threads,
)

LEARNERS = get_registry("learners").entries()
#: learners whose adapters go into open_clip's attention blocks (VLBackbone.attention_adapter, residual_adapter)
#: or whose tokens are inserted at a middle layer (supports_inserted_prompts): a CLIPSeg refuses them at setup
NEEDS_OPEN_CLIP_ATTENTION = {"clip_lora", "mma", "mmrl"}


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def simple_folder(tmp_path_factory) -> Path:
    """A second tiny CLIPSeg: plain transposed convolution (rd64, not refined), legacy ``eos_token_id=2``
    (argmax pooling), three extract layers, square 32 px without position interpolation."""
    cfg = tiny_vlsm_config()
    cfg["use_complex_transposed_convolution"] = False
    cfg["text_config"] = {**cfg["text_config"], "eos_token_id": 2}
    cfg["vision_config"] = {**cfg["vision_config"], "image_size": 32, "patch_size": 8}
    cfg["extract_layers"] = [0, 1, 2]
    cfg["conditional_layer"] = 1
    return save_random_clipseg(tmp_path_factory.mktemp("clipseg") / "simple", cfg, seed=7, image_size=32)


@pytest.fixture(params=["tiny", "simple"])
def bb(request, simple_folder) -> CLIPSegBackbone:
    return tiny_vlsm() if request.param == "tiny" else CLIPSegBackbone(str(simple_folder))


def _images(bb: CLIPSegBackbone, n: int = 3) -> torch.Tensor:
    s = bb.preprocess.image_size
    return torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(0))


PHRASES = ["a red circle", "the small blue square on the left", "polyp"]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool(((a - b).abs().max() <= tol * max(1.0, float(b.abs().max()))))


# ------------------------------------------------------------------------------ faithfulness, no prompts


def test_features_and_masks_equal_hf(bb) -> None:
    images, ids = _images(bb), bb.tokenize(PHRASES)
    hf = bb.model
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=bb.normalize(images))
        ref_text = hf.clip.get_text_features(input_ids=ids).pooler_output
        ref_image = hf.clip.get_image_features(pixel_values=bb.normalize(images)).pooler_output
        text = bb.encode_text(ids)
        with bb.record_activations() as rec:
            image = bb.encode_image(images)
        masks = bb.decode_masks(rec, text)
    assert _close(text, ref_text) and _close(image, ref_image)
    assert masks.shape == ref.logits.shape == (3, *images.shape[-2:])
    assert _close(masks, ref.logits)
    assert torch.equal(bb.decode_masks(rec, ref.conditional_embeddings), bb.decode_masks(rec, ref_text))
    assert rec.image_size == tuple(images.shape[-2:]) and rec.extra["n_prompts"] == 0
    assert [a.shape[1] for a in rec.activations] == [1 + bb.grid_size[0] * bb.grid_size[1]] * len(bb.extract_layers)
    pooled, tokens = bb.encode_image(images, dense=True)
    assert _close(pooled, ref_image) and tokens.shape == (3, bb.grid_size[0] * bb.grid_size[1], bb.embed_dim)
    assert bb.logit_scale == hf.clip.logit_scale.exp()


def test_output_size_and_shape_errors(bb) -> None:
    images = _images(bb, 2)
    with torch.no_grad(), bb.record_activations() as rec:
        bb.encode_image(images)
    cond = bb.encode_text(bb.tokenize(PHRASES[:2]))
    assert bb.decode_masks(rec, cond, output_size=(20, 24)).shape == (2, 20, 24)
    with pytest.raises(BackboneError, match=r"one conditional embedding per image"):
        bb.decode_masks(rec, cond[:1])
    from vlprompt.backbones.base import ActivationRecord

    with pytest.raises(BackboneError, match="record_activations"):
        bb.decode_masks(ActivationRecord(), cond)


# ------------------------------------------------------------------------------ faithfulness, with prompts


def _hooks(modules, fns):
    return [m.register_forward_pre_hook(f) for m, f in zip(modules, fns)]


def test_text_prompts_equal_hf_with_replacement_at_layer_inputs(bb) -> None:
    """Shallow context + deep prompts: the HF text model with the embeddings swapped and positions 1:1+n replaced
    at each layer's input (MaPLe eq. 5-7 / the open_clip adapter / TuneVLSeg's mutate_text_hidden_states)."""
    g = torch.Generator().manual_seed(1)
    ids = bb.tokenize(["X X X " + p for p in PHRASES])
    n, wt = 3, bb.text_width
    emb = bb.embed_tokens(ids)
    ctx = torch.randn(n, wt, generator=g)
    emb[:, 1 : 1 + n] = ctx
    deep = [None, torch.randn(n, wt, generator=g)] + [None] * (bb.text_layers - 2)
    text = bb.model.clip.text_model
    handles = [text.embeddings.token_embedding.register_forward_hook(lambda m, a, out: emb.to(out.dtype))]

    def replace(p):
        def hook(module, args):
            h = args[0].clone()
            h[:, 1 : 1 + n] = p
            return (h, *args[1:])
        return hook

    handles += _hooks([text.encoder.layers[i] for i, p in enumerate(deep) if p is not None],
                      [replace(p) for p in deep if p is not None])
    try:
        with torch.no_grad():
            ref = bb.model.clip.get_text_features(input_ids=ids).pooler_output
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        ours = bb.encode_text_embeddings(emb, bb.pool_index(ids), deep_prompts=deep)
        plain = bb.encode_text_embeddings(emb, bb.pool_index(ids))
    assert _close(ours, ref)
    assert not _close(ours, plain), "the deep prompt had no effect"
    # per-class deep prompts [N, n, Wt] give the same as the shared ones expanded
    per = [None if p is None else p.expand(len(PHRASES), -1, -1) for p in deep]
    assert _close(bb.encode_text_embeddings(emb, bb.pool_index(ids), deep_prompts=per), ours)


def _tunevlseg_decoder(bb: CLIPSegBackbone, acts, cond, n):
    """TuneVLSeg's BaseCLIPSeg.decoder_forward, re-stated: the decoder runs over the prompt tokens too and drops
    them (and the class token) only before the transposed convolution."""
    dec = bb.model.decoder
    out = torch.zeros(bb.model.config.reduce_dim)
    for i, (act, layer, reduce) in enumerate(zip(acts[::-1], dec.layers, dec.reduces)):
        out = reduce(act) + out
        if i == dec.conditional_layer:
            out = (dec.film_mul(cond) * out.permute(1, 0, 2) + dec.film_add(cond)).permute(1, 0, 2)
        out = layer(out, None)
    out = out[:, 1:-n].permute(0, 2, 1)
    b, h, tokens = out.shape
    side = math.isqrt(tokens)
    return dec.transposed_convolution(out.reshape(b, h, side, side)).squeeze(1)


def test_visual_prompts_equal_hf_and_tunevlseg(bb) -> None:
    g = torch.Generator().manual_seed(2)
    images = _images(bb)
    n, wv = 2, bb.vision_width
    shallow = torch.randn(n, wv, generator=g)
    deep = [None] + [torch.randn(n, wv, generator=g) for _ in range(1, bb.vision_layers)]
    vision = bb.model.clip.vision_model

    def append(module, args):  # TuneVLSeg: concatenated before pre_layrnorm
        return (torch.cat([args[0], shallow.expand(args[0].shape[0], -1, -1)], dim=1),)

    def mutate(p):  # TuneVLSeg: in place on the previous layer's output (so the recorded state holds it too)
        def hook(module, args):
            args[0][:, -n:] = p
        return hook

    handles = [vision.pre_layrnorm.register_forward_pre_hook(append)]
    handles += _hooks([vision.encoder.layers[i] for i in range(1, bb.vision_layers)], [mutate(p) for p in deep[1:]])
    try:
        with torch.no_grad():
            out = vision(pixel_values=bb.normalize(images), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    ref_image = bb.model.clip.visual_projection(out.pooler_output)
    acts = [out.hidden_states[i + 1] for i in bb.extract_layers]
    cond = bb.encode_text(bb.tokenize(PHRASES))
    with torch.no_grad():
        ref_masks = _tunevlseg_decoder(bb, acts, cond, n)
        with bb.record_activations() as rec:
            image = bb.encode_image(images, prompts=shallow, deep_prompts=deep)
        masks = bb.decode_masks(rec, cond)
        plain = bb.encode_image(images)
    assert _close(image, ref_image)
    assert _close(masks, ref_masks)
    assert not _close(image, plain)
    assert [a.shape[1] for a in rec.activations] == [1 + bb.grid_size[0] * bb.grid_size[1]] * len(bb.extract_layers)
    assert all(torch.equal(a, p[:, :-n]) for a, p in zip(rec.activations, rec.extra["prompted"]))


def test_open_clip_adapter_semantics_shallow_visual_prompts_after_ln() -> None:
    """The open_clip adapter appends ``ln_pre(prompts)`` after ``ln_pre``; CLIPSeg/TuneVLSeg append before
    ``pre_layrnorm``: the same tokens, since LayerNorm is per token."""
    bb = tiny_vlsm()
    vision = bb.model.clip.vision_model
    x = torch.randn(2, 5, bb.vision_width)
    p = torch.randn(2, 3, bb.vision_width)
    with torch.no_grad():
        assert torch.allclose(vision.pre_layrnorm(torch.cat([x, p], 1)),
                              torch.cat([vision.pre_layrnorm(x), vision.pre_layrnorm(p)], 1))


# ------------------------------------------------------------------------------ depth, recording


def test_visual_prompt_depth_is_limited_to_what_reaches_the_masks() -> None:
    bb = tiny_vlsm()  # 4 ViT layers, extract_layers [0, 1]: prompts at inputs 0..2 reach the decoder
    assert bb.vision_tower_layers == 4 and bb.extract_layers == (0, 1) and bb.vision_layers == 3
    p = torch.zeros(2, bb.vision_width)
    with pytest.raises(BackboneError, match=r"extract_layers=\[0, 1\].*at most 3"):
        bb.encode_image(_images(bb, 1), prompts=p, deep_prompts=[None, None, None, p])
    with pytest.raises(LearnerError, match="prompt_depth=4"):
        VPT(prompt_depth=4).setup(bb, ["a", "b"])
    VPT(prompt_depth=3).setup(bb, ["a", "b"])
    # a prompt at input 2 (after the last extract layer 1) still reaches the masks through the decoder (TuneVLSeg)
    images, cond = _images(bb, 2), bb.encode_text(bb.tokenize(PHRASES[:2]))
    outs = []
    for value in (0.0, 1.0):
        with torch.no_grad(), bb.record_activations() as rec:
            bb.encode_image(images, prompts=p, deep_prompts=[None, None, p + value])
        outs.append(bb.decode_masks(rec, cond))
    assert not torch.allclose(outs[0], outs[1])


def test_record_keeps_the_first_call_and_refuses_nesting() -> None:
    bb = tiny_vlsm()
    a, b = _images(bb, 2), _images(bb, 2).flip(0)
    with torch.no_grad(), bb.record_activations() as rec:
        bb.encode_image(a)
        bb.encode_image(b)
        with pytest.raises(BackboneError, match="nested"):
            with bb.record_activations():
                pass
    with torch.no_grad(), bb.record_activations() as only:
        bb.encode_image(a)
    assert rec.extra["later_calls"] == 1
    assert all(torch.equal(x, y) for x, y in zip(rec.activations, only.activations))
    assert bb._recording is None


def test_gradients_reach_prompts_and_conditional_through_the_decoder() -> None:
    bb = tiny_vlsm()
    p = torch.zeros(2, bb.vision_width, requires_grad=True)
    cond = bb.encode_text(bb.tokenize(PHRASES[:2])).requires_grad_(True)
    with bb.record_activations() as rec:
        bb.encode_image(_images(bb, 2), prompts=p)
    bb.decode_masks(rec, cond).sigmoid().mean().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and cond.grad.abs().sum() > 0
    assert not any(q.grad is not None for q in bb.parameters())


# ------------------------------------------------------------------------------ loading, offline, provenance


def test_hub_name_offline_fails_at_once_with_the_fix(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match=r"offline.*save_pretrained\('clipseg'\).*pretrained: /path/to/clipseg"):
        CLIPSegBackbone("CIDAS/clipseg-rd64-refined")
    with pytest.raises(BackboneError, match="does not exist"):
        CLIPSegBackbone("/nonexistent/clipseg")


def test_folder_errors(tmp_path) -> None:
    src = tiny_vlsm_folder()
    bad = tmp_path / "no-tokenizer"
    shutil.copytree(src, bad)
    (bad / "vocab.json").unlink()
    with pytest.raises(BackboneError, match="no tokenizer files.*write_clip_tokenizer"):
        CLIPSegBackbone(str(bad))
    # an (almost) empty tokenizer, as CLIPTokenizer.from_pretrained can return offline: refused
    (bad / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (bad / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(BackboneError, match=r"has [23] token ids \(largest [12]\) but the model's text vocabulary has 49408"):
        CLIPSegBackbone(str(bad))
    write_clip_tokenizer(bad)
    assert CLIPSegBackbone(str(bad)).tokenize(["a"]).shape == (1, 32)
    (bad / "model.safetensors").unlink()
    with pytest.raises(BackboneError, match="no weights file"):
        CLIPSegBackbone(str(bad))
    cfg = json.loads((src / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "clip"}))
    with pytest.raises(BackboneError, match="model_type='clip'"):
        CLIPSegBackbone(str(bad))


def test_info_provenance_and_preprocess(tmp_path) -> None:
    bb = tiny_vlsm()
    folder = tiny_vlsm_folder()
    assert bb.tasks == ("classification", "segmentation")
    assert bb.info.checkpoint_sha256 == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert bb.info.extra["folder"] == str(folder.resolve()) and bb.info.extra["weights_file"] == "model.safetensors"
    assert bb.info.extra["config_sha256"] == hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    assert bb.info.extra["config"]["extract_layers"] == [0, 1] and bb.info.precision == "fp32"
    json.dumps(bb.info.to_dict())
    assert (bb.preprocess.image_size, bb.preprocess.interpolation, bb.preprocess.resize_mode) == (64, "bilinear", "squash")
    assert bb.grid_size == (4, 4)
    # without preprocessor_config.json: CLIPSeg's processor values (352 px, ImageNet mean/std, bilinear)
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "preprocessor_config.json").unlink()
    other = CLIPSegBackbone(str(bare))
    assert other.preprocess == DEFAULT_PREPROCESS and other.preprocess.image_size == 352
    assert other.grid_size == (22, 22)


def test_tokens_equal_open_clip() -> None:
    bb = tiny_vlsm()
    texts = ["a photo of a red circle.", "Hello, World!  polyp's   big", "Kvasir-SEG 12 cells", "a_b c",
             " ".join(["word"] * 40)]
    ours = bb.tokenize(texts)
    ref = open_clip.get_tokenizer("ViT-B-16")(texts, context_length=bb.context_length)
    assert torch.equal(ours, ref)
    assert ours[-1, -1] == 49407  # truncated text keeps its EOT


def test_bf16_matches_fp32(monkeypatch) -> None:
    monkeypatch.setenv("VLPROMPT_ALLOW_EMULATED_PRECISION", "1")
    full, half = tiny_vlsm(), tiny_vlsm(precision="bf16")
    assert half.info.precision == "bf16" and half.model.dtype == torch.bfloat16
    images, ids = _images(full, 2), full.tokenize(PHRASES[:2])
    with torch.no_grad():
        outs = []
        for bb in (full, half):
            with bb.record_activations() as rec:
                img = bb.encode_image(images, prompts=torch.zeros(2, bb.vision_width))
            txt = bb.encode_text(ids)
            outs.append((img, txt, bb.decode_masks(rec, txt)))
    for a, b in zip(*outs):
        assert b.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_bf16_falls_back_to_fp32_on_a_cpu_without_native_kernels(monkeypatch) -> None:
    import vlprompt.backbones.open_clip as oc

    monkeypatch.delenv("VLPROMPT_ALLOW_EMULATED_PRECISION", raising=False)
    monkeypatch.setattr(oc, "_cpu_runs_natively", lambda precision: precision == "fp32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bb = tiny_vlsm(precision="bf16")
    assert bb.info.precision == "fp32" and bb.info.extra["requested_precision"] == "bf16"


# ------------------------------------------------------------------------------ registry, toy VLSM, learners


def test_registered_and_toy_vlsm_resolution() -> None:
    names = {e.name for e in get_registry("backbones").entries()}
    assert {"clipseg", "toyvlsm"} <= names
    tiny = ToyVLSM(str(tiny_vlsm_folder()))
    assert tiny.info.checkpoint_sha256 == tiny_vlsm().info.checkpoint_sha256
    if (TOY_VLSM_FOLDER / "config.json").is_file():
        toy = ToyVLSM()
        assert toy.tasks == ("classification", "segmentation") and toy.info.extra["folder"] == str(TOY_VLSM_FOLDER.resolve())
    else:
        with pytest.raises(BackboneError, match="toyvlsm.yaml"):
            ToyVLSM()


@pytest.mark.parametrize("info", LEARNERS, ids=[i.name for i in LEARNERS])
def test_registered_learner_classifies_on_the_tiny_vlsm(info) -> None:
    """Every learner classifies on the CLIPSeg adapter, except one that needs what the adapter does not offer
    (CLIP-LoRA's attention adapters): that one is refused at setup, naming the backbone and what to use."""
    bb = tiny_vlsm()
    state = {k: v.clone() for k, v in bb.model.state_dict().items()}
    try:
        if info.name in NEEDS_OPEN_CLIP_ATTENTION:
            learner = info.obj()
            with pytest.raises(LearnerError, match="(?i)CLIPSegBackbone.*use an open_clip CLIP ViT"):
                learner.setup(bb, ["red circle", "blue square"])
            return
        check_learner(info.obj, backbone=bb)
    finally:
        bb.model.load_state_dict(state)
        bb.freeze()


def _pad_tokenizer(folder: Path, pad_id: int | None) -> None:
    """Name ``<|pad|>`` as the pad token; ``pad_id`` puts it into vocab.json sharing that id (as the toy VLSM folder
    does with id 0), ``None`` lets the tokenizer append it as a new id after the vocabulary."""
    if pad_id is not None:
        vocab = json.loads((folder / "vocab.json").read_text())
        (folder / "vocab.json").write_text(json.dumps({**vocab, "<|pad|>": pad_id}, ensure_ascii=False))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**cfg, "pad_token": "<|pad|>"}))


def test_tokenizer_with_an_added_pad_token(tmp_path) -> None:
    """A pad token sharing id 0 (the toy VLSM folder's tokenizer) is accepted and gives open_clip's ids; one appended
    beyond the model's embedding table is refused."""
    shared, beyond = tmp_path / "shared", tmp_path / "beyond"
    for folder, pad_id in ((shared, 0), (beyond, None)):
        shutil.copytree(tiny_vlsm_folder(), folder)
        _pad_tokenizer(folder, pad_id)
    bb = CLIPSegBackbone(str(shared))
    texts = ["a red circle!", "the polyp"]
    assert torch.equal(bb.tokenize(texts), open_clip.get_tokenizer("ViT-B-16")(texts, context_length=bb.context_length))
    with pytest.raises(BackboneError, match=r"49409 token ids \(largest 49408\)"):
        CLIPSegBackbone(str(beyond))
