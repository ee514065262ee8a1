"""The CRIS backbone (issue 30, item 3): loading the checkpoint format from a local file, its errors, and the same
learners attached through the backbone interface with no learner-specific branch.

Everything runs on a small random CRIS of the real layout (``cris_recipe.TINY``: every key of the checkpoint
format, small widths, 64 px). Equivalence with TuneVLSeg's CRIS code on the real architecture is in
``tests/test_cris_equivalence.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vlprompt.backbones.base import BackboneError
from vlprompt.backbones.cris import (
    CRISBackbone,
    build_model,
    clear_model_cache,
    config_from_state_dict,
    convert_checkpoint,
    read_state_dict,
)
from vlprompt.learners.base import LearnerError
from vlprompt.learners.registry import get_registry
from vlprompt.learners.testing import torch_threads
from vlprompt.modules.segmentation import PromptSegmenter
from vlprompt.modules.testing import check_segmentation_learner
from vlprompt.runs.config import VlpromptCLI, build_cli
from vlprompt.runs.driver import run_experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cris_recipe as R  # noqa: E402

SIZE = 64
PROMPTS = ["a round polyp", "a dark lesion", "a round polyp"]
SEG_LEARNERS = [i for i in get_registry("learners").entries() if "segmentation" in getattr(i.obj, "tasks", ())]
TEXT_ONLY = [i for i in SEG_LEARNERS if not getattr(i.obj, "modifies_image_encoder", False)]
VISUAL = [i for i in SEG_LEARNERS if getattr(i.obj, "modifies_image_encoder", False)]


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return R.random_state_dict(R.TINY, seed=7)


@pytest.fixture(scope="module")
def tiny(state) -> CRISBackbone:
    return CRISBackbone.from_model(build_model(state), image_size=SIZE)


def _logits(bb: CRISBackbone, learner_name: str = "coop") -> torch.Tensor:
    torch.manual_seed(0)
    module = PromptSegmenter(bb, get_registry("learners").get(learner_name)(), overlays=0)
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return module.mask_logits(images, PROMPTS)


@pytest.mark.parametrize("layout", ["safetensors", "released_pth", "tunevlseg_pth"])
def test_checkpoint_layouts_load_to_the_same_model(layout, state, tiny, tmp_path) -> None:
    """CRIS's released ``cris_best.pth`` (a training checkpoint: ``state_dict`` with DDP's ``module.`` prefix, beside
    epoch and score entries), TuneVLSeg's processed ``cris_best_single.pth`` (the flat state dict) and safetensors
    all load, read with ``weights_only=True``, into the model the state dict describes."""
    path = tmp_path / ("cris.safetensors" if layout == "safetensors" else "cris.pth")
    if layout == "safetensors":
        save_file(state, str(path))
    elif layout == "released_pth":
        torch.save({"epoch": 50, "cur_iou": 0.61, "best_iou": 0.62, "prec": {"Pr@50": 0.7},
                    "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    clear_model_cache()
    bb = CRISBackbone(str(path), image_size=SIZE)
    assert bb.info.model == "CRIS-RN1-1-1-1" and bb.info.checkpoint_sha256
    assert bb.info.extra["config"]["embed_dim"] == 64
    assert torch.equal(_logits(bb), _logits(tiny))
    assert not any(p.requires_grad for p in bb.parameters()) and not bb.training


def test_convert_checkpoint_writes_safetensors(state, tiny, tmp_path) -> None:
    src = tmp_path / "cris_best.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, src)
    dst = convert_checkpoint(src, tmp_path / "cris.safetensors")
    assert set(read_state_dict(dst)) == set(state)
    clear_model_cache()
    assert torch.equal(_logits(CRISBackbone(str(dst), image_size=SIZE)), _logits(tiny))


def test_the_real_layout_is_read_from_shapes() -> None:
    config = config_from_state_dict(R.random_state_dict(R.CONFIG, seed=1))
    assert config == R.CONFIG and config.model_name == "CRIS-RN50"


def test_checkpoint_errors_name_the_file_and_the_fix(state, tmp_path) -> None:
    with pytest.raises(BackboneError, match="does not exist.*cris_best.pth"):
        CRISBackbone(str(tmp_path / "missing.pth"))
    other = tmp_path / "other.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(2, 3, 1, 1)}, str(other))
    with pytest.raises(BackboneError, match="other.safetensors.*is not a CRIS checkpoint.*backbone"):
        CRISBackbone(str(other))
    vit = tmp_path / "vit.safetensors"
    save_file({**state, "backbone.visual.proj": torch.zeros(4, 4)}, str(vit))
    with pytest.raises(BackboneError, match="ViT image tower.*ResNet"):
        CRISBackbone(str(vit))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1e-4)}, unsafe)
    with pytest.raises(BackboneError, match="(?s)unsafe.pth.*weights_only=True.*argparse.Namespace.*pretrained: .*unsafe.safetensors"):
        CRISBackbone(str(unsafe))
    truncated = dict(state)
    truncated.pop("decoder.layers.0.ffn.3.weight")
    short = tmp_path / "short.safetensors"
    save_file(truncated, str(short))
    with pytest.raises(BackboneError, match="(?s)short.safetensors.*does not match the CRIS layout.*ffn.3.weight"):
        CRISBackbone(str(short))
    with pytest.raises(BackboneError, match="image_size=100 must be a positive multiple of 32"):
        CRISBackbone(str(short), image_size=100)


@pytest.mark.parametrize("info", TEXT_ONLY, ids=[i.name for i in TEXT_ONLY])
def test_every_text_prompt_learner_passes_the_segmentation_contract_on_cris(info, tiny) -> None:
    """The same learners, unchanged, through the backbone interface: mask logits of the right shape, finite loss,
    gradients into every trainable learner, deterministic evaluation, the backbone untouched."""
    check_segmentation_learner(info.obj, backbone=tiny)


@pytest.mark.parametrize("info", VISUAL, ids=[i.name for i in VISUAL])
def test_visual_prompt_learners_are_refused_before_any_work(info, tiny) -> None:
    """A learner that prompts or reads the image tower's tokens stops at construction with an error naming itself,
    the backbone and a learner to use instead (the backbone's, or the learner's own check, e.g. TMML's)."""
    with pytest.raises((BackboneError, LearnerError), match=rf"(?s){info.obj.__name__}.*CRISBackbone.*(ResNet|ViT).*coop"):
        PromptSegmenter(tiny, info.obj(), overlays=0)


def test_the_decoder_reads_the_words_of_each_images_prompt(tiny) -> None:
    """Each image is decoded with its own prompt's word states: swapping the prompts swaps the masks, and an
    image's mask does not depend on the other prompts of the batch."""
    torch.manual_seed(0)
    module = PromptSegmenter(tiny, get_registry("learners").get("coop")(), overlays=0)
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ab = module.mask_logits(images, ["a round polyp", "the left ventricle"])
        ba = module.mask_logits(images.flip(0), ["the left ventricle", "a round polyp"])
        alone = module.mask_logits(images[:1], ["a round polyp"])
    torch.testing.assert_close(ab, ba.flip(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ab[:1], alone, rtol=1e-5, atol=1e-5)
    assert (ab[0] - ab[1]).abs().max() > 1e-3


def test_word_gradients_survive_recomputed_text_encoding(tiny) -> None:
    """CoCoOp recomputes its text encodings in backward (checkpointing); the word states the decoder reads are
    recorded inside that region, and their gradients equal those of a plain encoding."""
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    grads = []
    for recompute in (True, False):
        torch.manual_seed(0)
        learner = get_registry("learners").get("cocoop")(recompute=recompute)
        module = PromptSegmenter(tiny, learner, overlays=0)
        learner.train()
        module.mask_logits(images, ["a round polyp", "a dark lesion"]).square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in learner.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-8)


def test_decode_masks_refuses_what_it_cannot_decode(tiny) -> None:
    images = torch.rand(1, 3, SIZE, SIZE)
    with tiny.record_activations() as record:
        tiny.encode_image(images)
    with pytest.raises(BackboneError, match="no text was encoded inside this record_activations"):
        tiny.decode_masks(record, torch.zeros(1, tiny.embed_dim))
    tokens = tiny.tokenize(["a round polyp"])
    with tiny.record_activations() as record:
        tiny.encode_image(images)
        feats = tiny.encode_text(tokens)
    assert tiny.decode_masks(record, feats).shape == (1, SIZE, SIZE)
    with pytest.raises(BackboneError, match="equals no text feature.*not a mix or a rescaled copy"):
        tiny.decode_masks(record, feats * 2)
    with pytest.raises(BackboneError, match="ResNet image tower"):
        tiny.encode_image(images, prompts=torch.zeros(2, 8))


def test_decode_masks_hands_a_branch_the_decoder_map_and_the_image_sized_logits(tiny) -> None:
    seen = {}

    def branch(features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        seen["features"], seen["logits"] = tuple(features.shape), tuple(logits.shape)
        return logits + 1.0

    images = torch.rand(1, 3, SIZE, SIZE)
    with tiny.record_activations() as record:
        tiny.encode_image(images)
        feats = tiny.encode_text(tiny.tokenize(["a round polyp"]))
    plain = tiny.decode_masks(record, feats)
    assert tiny.decoder_stride == 16
    torch.testing.assert_close(tiny.decode_masks(record, feats, branch=branch), plain + 1.0)
    assert seen == {"features": (1, tiny.decoder_width, SIZE // 16, SIZE // 16), "logits": (1, 1, SIZE, SIZE)}
    assert tiny.decode_masks(record, feats, branch=branch, output_size=(32, 32)).shape == (1, 32, 32)


@pytest.mark.parametrize("learner", ["coop", "cocoop"])
def test_the_tunevlseg_cris_configs_parse_with_the_branch(learner: str, monkeypatch) -> None:
    monkeypatch.setattr(VlpromptCLI, "instantiate_classes", lambda self: None)
    root = Path(__file__).resolve().parents[1] / "configs"
    c = build_cli("fit", ["--config", str(root / "seg_quickstart.yaml"), "--config", str(root / "backbones" /
                          "cris_rn50.yaml"), "--config", str(root / "learners" / learner / "tunevlseg_cris.yaml")])
    assert c.config.model.backbone.class_path == "vlprompt.backbones.cris.CRISBackbone"
    assert c.config.model.decoder_branch == {"kernel_size": 5, "residual_ratio": 0.5, "mix": "residual", "reduce": 64}
    assert f".learners.{learner}." in c.config.model.learner.class_path


def test_cris_is_a_registered_backbone() -> None:
    assert get_registry("backbones").get("cris") is CRISBackbone


def test_a_run_with_a_cris_checkpoint_file(state, tmp_path) -> None:
    """``vlprompt fit`` machinery end to end: configs/backbones/cris_rn50.yaml pointed at a checkpoint file, one epoch
    of CoOp on the toy segmentation benchmark, a result naming the CRIS model and the checkpoint's sha256."""
    ckpt = tmp_path / "cris.safetensors"
    save_file(state, str(ckpt))
    root = Path(__file__).resolve().parents[1]
    result = run_experiment("fit", [
        "--config", str(root / "configs" / "seg_quickstart.yaml"), "--config", str(root / "configs" / "backbones" /
                                                                                   "cris_rn50.yaml"),
        "--model.backbone.init_args.pretrained", str(ckpt), "--model.backbone.init_args.image_size", str(SIZE),
        "--model.backbone.init_args.decoder_heads", "2", "--trainer.max_epochs", "1", "--seeds", "[1]",
        "--model.overlays", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--results_dir", str(tmp_path / "results")], show_summary=False)
    row = result["per_seed"][0]
    assert 0 <= row["metrics"]["dice"] <= 100 and 0 <= row["metrics"]["iou"] <= 100
    assert result["backbone"]["model"] == "CRIS-RN1-1-1-1" and result["backbone"]["checkpoint_sha256"]
