"""The shipped toy VLSM folder: card sha256, offline loading, its CLIP is the toy CLIP, acceptance smoke."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from test_toyvlsm import PHRASES, _features_match
from vlprompt.data.atomic import sha256_file
from vlprompt.backbones.toyclip import TOY_CHECKPOINT, TOY_MODEL
from vlprompt.toyworld.toyvlsm_report import TOYVLSM_CARD, TOYVLSM_DIR, TOYVLSM_REPORT, acceptance, load_folder


def test_shipped_folder_matches_its_card() -> None:
    card = json.loads(TOYVLSM_CARD.read_text())
    assert card["command"].startswith("vlprompt pretrain --config configs/pretrain/toyvlsm.yaml")
    files = {p.name for p in TOYVLSM_DIR.iterdir() if p.is_file()}
    assert files == set(card["files"])
    for name, info in card["files"].items():
        assert sha256_file(TOYVLSM_DIR / name) == info["sha256"], name
    assert card["clip"]["checkpoint_sha256"] == sha256_file(TOY_CHECKPOINT)
    assert card["bytes"] < 21 * 1024 * 1024
    report = json.loads(TOYVLSM_REPORT.read_text())
    assert report["weights_sha256"] == card["files"]["model.safetensors"]["sha256"]


def test_shipped_card_lists_every_pretraining_stage_in_order() -> None:
    from vlprompt.toyworld.pretrain_vlsm import card_stages

    card = json.loads(TOYVLSM_CARD.read_text())
    stages = card_stages(card)
    assert card["stages"] == stages and len(stages) >= 2
    assert stages[0]["command"] == "vlprompt pretrain --config configs/pretrain/toyvlsm.yaml"
    assert stages[0]["init_model_sha256"] is None
    # each stage continued exactly the weights the previous one exported; the last exported the shipped file
    assert [s["init_model_sha256"] for s in stages[1:]] == [s["model_sha256"] for s in stages[:-1]]
    assert stages[-1]["model_sha256"] == card["files"]["model.safetensors"]["sha256"]
    assert all(s["command"].startswith("vlprompt pretrain --config configs/pretrain/toyvlsm.yaml") for s in stages)


@pytest.fixture(scope="module")
def shipped():
    return load_folder(TOYVLSM_DIR)


def test_shipped_folder_loads_offline_and_its_clip_is_the_toy_clip(shipped, monkeypatch) -> None:
    from transformers import CLIPSegForImageSegmentation

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = CLIPSegForImageSegmentation.from_pretrained(str(TOYVLSM_DIR), local_files_only=True, dtype=torch.float32)
    assert model.config.extract_layers == shipped[0].config.extract_layers
    oc = open_clip.create_model(TOY_MODEL, pretrained=str(TOY_CHECKPOINT)).eval()
    _features_match(oc, model.eval(), open_clip.get_model_config(TOY_MODEL))
    assert torch.equal(shipped[1](PHRASES), open_clip.get_tokenizer(TOY_MODEL)(PHRASES))


def test_shipped_vlsm_segments_the_named_object_only(shipped) -> None:
    model, tokenize = shipped
    row = acceptance(model, tokenize, n=48, seed=11)
    assert row["dice_right"] >= 0.6, row
    assert row["dice_right"] >= row["dice_absent"] + 0.4, row
    assert row["dice_right"] >= row["dice_other"] + 0.4, row


def test_pretraining_can_continue_from_the_shipped_decoder(tmp_path) -> None:
    from safetensors.torch import load_file

    from vlprompt.toyworld.pretrain_vlsm import VLSMPretraining

    card = json.loads(TOYVLSM_CARD.read_text())
    keys = ("extract_layers", "reduce_dim", "decoder_num_attention_heads", "decoder_intermediate_size", "conditional_layer")
    model = VLSMPretraining(**{k: card["hparams"][k] for k in keys}, init_decoder_from=str(TOYVLSM_DIR))
    shipped = load_file(str(TOYVLSM_DIR / "model.safetensors"))
    for name, p in model.vlsm.decoder.state_dict().items():
        assert torch.equal(p, shipped["decoder." + name].float()), name
    assert model._init_card["model_sha256"] == card["files"]["model.safetensors"]["sha256"]
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        VLSMPretraining(init_decoder_from=str(tmp_path))
    with pytest.raises(RuntimeError):  # another decoder configuration
        VLSMPretraining(**{k: card["hparams"][k] for k in keys if k != "reduce_dim"}, reduce_dim=32, init_decoder_from=str(TOYVLSM_DIR))
