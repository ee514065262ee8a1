"""CLIP-LoRA equals its reference's LoRA layer (MaxZanella/CLIP-LoRA ``loralib/layers.py``
``PlainMultiheadAttentionLoRA``) on the tiny random CLIP: logits and one AdamW step, against outputs saved by
``tests/fixtures/clip_lora_reference/make_fixtures.py`` on the inputs of ``tests/clip_lora_recipe.py``. Also: the
backbone's weights never change, adapters start as zero-shot CLIP (``B = 0``), dropout acts in training only, and a
tower without attention adapters (SigLIP's timm image tower) is refused at setup.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clip_lora_recipe import BETAS, CLASSNAMES, LR, TEMPLATE, WEIGHT_DECAY, images, lora_weights
from vlprompt.learners.base import LearnerError
from vlprompt.learners.clip_lora import CLIPLoRA
from vlprompt.learners.testing import check_learner, tiny_clip, tiny_siglip, torch_threads
from vlprompt.learners.zero_shot import ZeroShot

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "clip_lora_reference" / "reference_outputs.safetensors"


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _learner(dropout: float = 0.0) -> CLIPLoRA:
    bb = tiny_clip()
    learner = CLIPLoRA(rank=2, alpha=1.0, dropout=dropout, template=TEMPLATE)
    learner.setup(bb, CLASSNAMES)
    with torch.no_grad():
        for key, value in lora_weights(bb.text_layers, bb.text_width).items():
            tower, layer, proj, which = key.split(".")
            getattr(learner.lora[tower][layer], f"lora_{which}")[proj].copy_(value)
    return learner


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_logits_and_one_adamw_step_equal_the_reference() -> None:
    ref = load_file(str(FIXTURE))
    learner = _learner()
    before_backbone = {k: v.clone() for k, v in learner.backbone.clip.state_dict().items()}
    imgs, labels = images()
    learner.train()
    logits = learner(imgs)
    assert _rel(logits.detach(), ref["logits_before"]) <= 1e-4
    opt = torch.optim.AdamW([p for p in learner.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY, betas=BETAS)
    F.cross_entropy(logits, labels).backward()
    opt.step()
    for key in [k for k in ref if not k.startswith("logits")]:
        tower, layer, proj, which = key.split(".")
        got = getattr(learner.lora[tower][layer], f"lora_{which}")[proj].detach()
        assert _rel(got, ref[key]) <= 1e-4, key
    learner.eval()
    with torch.no_grad():
        assert _rel(learner(imgs), ref["logits_after"]) <= 1e-4
    for k, v in learner.backbone.clip.state_dict().items():
        assert torch.equal(v, before_backbone[k]), f"the frozen backbone changed: {k}"


def test_fresh_adapters_are_zero_shot_and_dropout_trains_only() -> None:
    bb = tiny_clip()
    learner = CLIPLoRA(template=TEMPLATE)
    learner.setup(bb, CLASSNAMES)
    zs = ZeroShot(templates=[TEMPLATE])
    zs.setup(bb, CLASSNAMES)
    imgs, _ = images()
    with torch.no_grad():
        torch.testing.assert_close(learner.eval()(imgs), zs(imgs), rtol=1e-5, atol=1e-5)
        drop = _learner(dropout=0.25)
        assert torch.equal(drop.eval()(imgs), drop(imgs))
        drop.train()
        assert not torch.allclose(drop(imgs), drop.eval()(imgs), atol=1e-5)


def test_contract_and_refusals() -> None:
    check_learner(CLIPLoRA, init_kwargs={"dropout": 0.0})
    with pytest.raises(LearnerError, match=r"vision tower.*vlprompt-tiny-siglip.*encoder: text"):
        CLIPLoRA().setup(tiny_siglip(), CLASSNAMES)
    text_only = CLIPLoRA(encoder="text")
    text_only.setup(tiny_siglip(), CLASSNAMES)  # SigLIP's text tower is plain open_clip attention
    with pytest.raises(LearnerError, match="'o'"):
        CLIPLoRA(params=["q", "o"])
