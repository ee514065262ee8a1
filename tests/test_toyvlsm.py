"""The embedded toy VLSM: exact open_clip -> HF CLIPSeg conversion, tokenizer ids, the shipped folder and its acceptance."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from vlprompt.data.atomic import sha256_file
from vlprompt.backbones.toyclip import TOY_CHECKPOINT, TOY_MODEL
from vlprompt.data.toyworld.datasets import ToyReferring
from vlprompt.learners.testing import tiny_clip_config
from vlprompt.toyworld.toyvlsm_report import (
    TOYVLSM_CARD,
    TOYVLSM_DIR,
    TOYVLSM_REPORT,
    TRAIN_SEED_BASE,
    absent_colour_phrases,
    acceptance,
    load_folder,
    mask_dice,
    other_object_phrases,
)
from vlprompt.backbones.vlsm_convert import clipseg_config_from_open_clip, open_clip_to_clipseg_state_dict, save_clip_tokenizer

PHRASES = [
    "the red dotted circle",
    "A Big   blue thing, on the LEFT!",
    "wow!! a (purple) hollow-diamond... at 3 o'clock",
    "there is a purple hollow diamond " * 8,  # truncated to the context length
    "café naïve",
    "",
]


def _converted(oc: open_clip.CLIP, cfg: dict, quick_gelu: bool = False):
    from transformers import CLIPSegForImageSegmentation

    config = clipseg_config_from_open_clip(cfg, extract_layers=[0, cfg["vision_cfg"]["layers"] - 1], quick_gelu=quick_gelu)
    hf = CLIPSegForImageSegmentation(config).eval()
    missing, unexpected = hf.load_state_dict(open_clip_to_clipseg_state_dict(oc.state_dict(), config), strict=False)
    assert not unexpected and all(k.startswith("decoder.") for k in missing)
    return hf


def _features_match(oc, hf, cfg, atol=1e-5) -> None:
    g = torch.Generator().manual_seed(0)
    size = cfg["vision_cfg"]["image_size"]
    x = torch.randn(3, 3, size, size, generator=g)
    ids = open_clip.get_tokenizer(TOY_MODEL)(PHRASES[:3])[:, : cfg["text_cfg"]["context_length"]]
    with torch.no_grad():
        torch.testing.assert_close(hf.clip.get_image_features(pixel_values=x).pooler_output, oc.encode_image(x), atol=atol, rtol=0)
        torch.testing.assert_close(hf.clip.get_text_features(input_ids=ids).pooler_output, oc.encode_text(ids), atol=atol, rtol=0)
    assert float(hf.clip.logit_scale) == float(oc.logit_scale)


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_conversion_of_a_random_open_clip_is_exact(quick_gelu) -> None:
    cfg = tiny_clip_config()
    torch.manual_seed(0)
    oc = open_clip.model.CLIP(**cfg, quick_gelu=quick_gelu).eval()
    for p in oc.parameters():  # non-trivial norms and biases
        p.data.add_(0.05 * torch.randn_like(p))
    hf = _converted(oc, cfg, quick_gelu)
    assert hf.config.vision_config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    _features_match(oc, hf, cfg)
    # the activation matters: the other one gives different features
    wrong = _converted(oc, cfg, not quick_gelu)
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert not torch.allclose(wrong.clip.get_image_features(pixel_values=x).pooler_output, oc.encode_image(x), atol=1e-4)


def test_conversion_of_the_toy_clip_is_exact() -> None:
    cfg = open_clip.get_model_config(TOY_MODEL)
    oc = open_clip.create_model(TOY_MODEL, pretrained=str(TOY_CHECKPOINT)).eval()
    _features_match(oc, _converted(oc, cfg), cfg)


def test_conversion_refuses_bad_extract_layers_and_unsupported_towers() -> None:
    cfg = tiny_clip_config()
    with pytest.raises(ValueError, match="extract_layers"):
        clipseg_config_from_open_clip(cfg, extract_layers=[0, 2])
    with pytest.raises(ValueError, match="ViT"):
        clipseg_config_from_open_clip({**cfg, "vision_cfg": {**cfg["vision_cfg"], "layers": [1, 1, 1, 1]}}, extract_layers=[0])


def test_tokenizer_files_give_open_clip_ids_offline(tmp_path, monkeypatch) -> None:
    from transformers import CLIPTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_clip_tokenizer(tmp_path, 32)
    assert not (tmp_path / "tokenizer.json").exists()
    tok = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert len(tok) > 49000 and tok.pad_token_id == 0
    ids = tok(PHRASES, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, open_clip.get_tokenizer(TOY_MODEL)(PHRASES))


def test_mask_dice_is_per_sample_f1() -> None:
    masks = torch.zeros(3, 4, 4)
    masks[0, :2] = 1
    masks[1, :2] = 1
    logits = torch.full((3, 4, 4), -5.0)
    logits[0, :2] = 5.0  # perfect
    logits[1, :1] = 5.0  # half the pixels: 2*4 / (4 + 8)
    logits[2, 0] = 5.0  # empty mask, 4 false positives
    torch.testing.assert_close(mask_dice(logits, masks), torch.tensor([1.0, 8 / 12, 0.0]))
    assert float(mask_dice(torch.full((1, 4, 4), -5.0), torch.zeros(1, 4, 4))[0]) == 1.0  # empty vs empty


def test_wrong_phrases_name_absent_and_other_objects() -> None:
    data = ToyReferring(32, seed=5)
    absent, other = absent_colour_phrases(data), other_object_phrases(data)
    for i in range(len(data)):
        colours = {data.phrases[i].split()[1], other[i].split()[1]}
        assert absent[i].split()[1] not in colours and absent[i].split()[2:] == data.phrases[i].split()[2:]
        assert other[i] != data.phrases[i]


def test_training_stream_is_deterministic_held_out_and_has_negatives() -> None:
    from vlprompt.toyworld.pretrain_vlsm import ReferringStream, train_seed

    assert train_seed(0, 0, 0) >= TRAIN_SEED_BASE
    with pytest.raises(ValueError):
        train_seed(0, 0, 10**6)
    a = next(iter(ReferringStream(TOY_MODEL, 16, 0, 0.5)))
    b = next(iter(ReferringStream(TOY_MODEL, 16, 0, 0.5)))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    images, tokens, masks = a
    assert images.shape == (16, 3, 48, 48) and tokens.shape == (16, 32) and masks.shape == (16, 48, 48)
    empty = masks.flatten(1).sum(1) == 0
    assert 0 < int(empty.sum()) < 16


def test_pretrain_config_selects_the_vlsm(monkeypatch, tmp_path) -> None:
    import lightning.pytorch as pl

    from vlprompt.toyworld.pretrain_vlsm import ReferringData, VLSMPretraining

    called = {}
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, model, datamodule=None, **kw: called.setdefault("fit", (model, datamodule)))
    from vlprompt.cli.pretrain import pretrain_main

    pretrain_main(["--config", "configs/pretrain/toyvlsm.yaml", "--model.init_args.export_dir", str(tmp_path / "x")])
    model, data = called["fit"]
    assert isinstance(model, VLSMPretraining) and isinstance(data, ReferringData)
    assert not any(p.requires_grad for p in model.vlsm.clip.parameters())
    assert all(p.requires_grad for p in model.vlsm.decoder.parameters())
    # cached text conditions equal HF's text features, with repeated phrases inside and across batches
    tok = open_clip.get_tokenizer(TOY_MODEL)
    phrases = ["the red dotted circle", "the blue solid square", "the green hollow x"]
    first = model.text_features(tok([phrases[0], phrases[1], phrases[0]]))
    second = model.text_features(tok([phrases[1], phrases[2], phrases[0]]))
    with torch.no_grad():
        ref = model.vlsm.clip.get_text_features(input_ids=tok(phrases)).pooler_output
    torch.testing.assert_close(first, ref[[0, 1, 0]], atol=1e-6, rtol=0)
    torch.testing.assert_close(second, ref[[1, 2, 0]], atol=1e-6, rtol=0)
    assert len(model._text_cache) == 3
