"""Frozen image-feature cache: same results as images, reused across runs, keyed by what matters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlprompt.data.feature_cache import FeatureDataset, cached_features, feature_cache_key
from vlprompt.runs.driver import run_experiment

REPO = Path(__file__).resolve().parents[1]


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs" / "quickstart.yaml"), "--seeds", "[1]", "--trainer.max_epochs", "3",
        "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.dataset.init_args.per_class", "[16, 4, 8]", "--data.init_args.cache_dir", str(tmp_path / "cache"),
        *extra,
    ]


def test_cached_features_give_the_same_coop_run(tmp_path) -> None:
    plain = run_experiment("fit", _args(tmp_path))
    cached = run_experiment("fit", _args(tmp_path, "--data.init_args.feature_cache", "true"))
    entries = sorted((tmp_path / "cache" / "features").glob("*.safetensors"))
    assert len(entries) == 3  # train (base), test base, test new
    for k in ("base", "new"):
        assert cached["per_seed"][0]["metrics"][k] == pytest.approx(plain["per_seed"][0]["metrics"][k], abs=1.0)
    stamps = [p.stat().st_mtime_ns for p in entries]
    run_experiment("fit", _args(tmp_path, "--data.init_args.feature_cache", "true", "--seeds", "[2]"))
    again = sorted((tmp_path / "cache" / "features").glob("*.safetensors"))
    # a new seed draws new shots: one new train entry, the test entries are reused untouched
    assert len(again) == 4 and [p.stat().st_mtime_ns for p in again if p in entries] == stamps


def test_key_changes_with_split_indices_and_views() -> None:
    from vlprompt.learners.testing import tiny_clip

    b = tiny_clip()
    base = dict(backbone=b, data_identity={"name": "x"}, split="train", indices=[1, 2], transform="t", views=1)
    k = feature_cache_key(**base)
    assert k == feature_cache_key(**base)
    for change in ({"split": "test"}, {"indices": [1, 3]}, {"views": 2}, {"transform": "u"}, {"data_identity": {"name": "y"}}):
        assert feature_cache_key(**{**base, **change}) != k


def test_damaged_entry_is_recomputed(tmp_path) -> None:
    from vlprompt.learners.testing import tiny_clip

    b = tiny_clip()
    data = [(torch.rand(3, 32, 32), i % 2) for i in range(5)]
    first = cached_features(b, data, cache_dir=tmp_path, key="k", views=1)
    (tmp_path / "features" / "k.safetensors").write_bytes(b"garbage")
    second = cached_features(b, data, cache_dir=tmp_path, key="k", views=1)
    assert isinstance(second, FeatureDataset) and torch.allclose(first.features, second.features)
