"""Acceptance of the shipped toy CLIP: attributes are learned, datasets leave headroom, the card is honest."""

from __future__ import annotations

import json

import pytest
import torch

from vlprompt.backbones.open_clip import file_sha256
from vlprompt.backbones.toyclip import TOY_CARD, TOY_CHECKPOINT, ToyCLIP
from vlprompt.toyworld.toyclip_report import attribute_report, attribute_styles, dataset_report, linear_probe_accuracy


@pytest.fixture(scope="module")
def toyclip() -> ToyCLIP:
    return ToyCLIP(precision="fp32")


def test_card_matches_the_shipped_checkpoint() -> None:
    card = json.loads(TOY_CARD.read_text())
    assert card["sha256"] == file_sha256(TOY_CHECKPOINT)
    assert card["command"].startswith("vlprompt pretrain --config configs/pretrain/toyclip.yaml")
    assert TOY_CHECKPOINT.stat().st_size < 21 * 1024 * 1024


def test_every_class_name_attribute_is_learned(toyclip) -> None:
    rows = attribute_report(toyclip, n_train=400, n_test=400)
    assert {r["attribute"] for r in rows} == set(attribute_styles()) == {"colour", "texture", "size", "position", "background"}
    for r in rows:
        assert r["linear_probe"] >= 80.0, r
        assert r["zero_shot"] >= min(2 * r["chance"], r["chance"] + 25), r  # far above chance
        if r["style"] == "clean":
            assert r["zero_shot"] >= 90.0, r


def test_datasets_leave_headroom_in_their_native_style(toyclip) -> None:
    rows = dataset_report(toyclip, native_only=True)
    assert len(rows) == 5
    for r in rows:
        assert r["base"] < 95.0, r  # room for prompt learning
        assert r["all"] > 100.0 / 10 * 2, r  # but far from chance


def test_linear_probe_separates_separable_data() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, 0] > 0).long()
    assert linear_probe_accuracy(x[:100], y[:100], x[100:], y[100:]) > 90
