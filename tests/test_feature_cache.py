"""Frozen image-feature cache: same results as images, reused across runs, keyed by what matters."""

from __future__ import annotations

import copy
import gc
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


# ----------------------------------------------------------------------------- frozen eval features (in memory)


def test_eval_features_are_encoded_once_per_run_with_the_same_metrics(tmp_path, monkeypatch) -> None:
    """Default path: the test images are encoded once for all seeds of a run (the toy backbone's weights are shared
    by the seeds), with the metrics of a run that re-encodes them at every evaluation."""
    from vlprompt.data import feature_cache as fc

    calls: list[int] = []
    real = fc.extract_features

    def counting(backbone, dataset, **kw):
        calls.append(len(dataset))
        return real(backbone, dataset, **kw)

    monkeypatch.setattr(fc, "extract_features", counting)
    fc.FROZEN_EVAL_FEATURES.clear()
    seeds = ("--seeds", "[1, 2]", "--trainer.max_epochs", "2")
    reused = run_experiment("fit", _args(tmp_path / "a", *seeds))
    assert len(calls) == 2  # test base + test new, once for both seeds
    plain = run_experiment("fit", _args(tmp_path / "b", *seeds, "--data.init_args.eval_feature_reuse", "false"))
    assert len(calls) == 2  # the opt-out never extracts
    for r, p in zip(reused["per_seed"], plain["per_seed"]):
        assert r["metrics"] == p["metrics"]
    fc.FROZEN_EVAL_FEATURES.clear()


def test_eval_features_give_the_image_path_logits_within_1e_5() -> None:
    from vlprompt.data.base import TensorImageDataset
    from vlprompt.data.feature_cache import FrozenFeatureStore
    from vlprompt.learners.coop import CoOp
    from vlprompt.learners.testing import tiny_clip

    backbone = tiny_clip()
    learner = CoOp(n_ctx=4, ctx_init="a photo of a")
    learner.setup(backbone, ["cat", "dog", "bird"])
    raw = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = TensorImageDataset(raw, torch.arange(10) % 3)
    images = raw.float() / 255.0  # what the dataset yields
    store = FrozenFeatureStore()
    feats = store.features(backbone, data, key="k", batch_size=4)
    served = torch.stack([feats[i][0] for i in range(len(feats))])
    with torch.no_grad():
        want = torch.cat([learner.logits(learner.encode_images(images[i:i + 3])) for i in range(0, 10, 3)])
        got = learner.logits(served)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert [feats[i][1] for i in range(10)] == [i % 3 for i in range(10)]


def test_eval_features_are_tied_to_the_weights_not_the_name(monkeypatch) -> None:
    """Same key, other weights (a second random backbone, or the same one written in place): re-extracted."""
    from vlprompt.data import feature_cache as fc
    from vlprompt.data.base import TensorImageDataset
    from vlprompt.learners.testing import tiny_clip

    calls: list[int] = []
    real = fc.extract_features
    monkeypatch.setattr(fc, "extract_features", lambda b, d, **kw: (calls.append(1), real(b, d, **kw))[1])
    data = TensorImageDataset(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    store = fc.FrozenFeatureStore()
    a = tiny_clip()
    first = store.features(a, data, key="k").features
    assert torch.equal(store.features(a, data, key="k").features, first) and len(calls) == 1
    other = copy.deepcopy(a)  # same name and identity, its own weight tensors
    with torch.no_grad():
        next(other.parameters()).mul_(2.0)
    store.features(other, data, key="k")
    assert len(calls) == 2
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.0)  # an in-place write bumps the version: the entry is no longer trusted
    store.features(a, data, key="k")
    assert len(calls) == 3
    del other
    gc.collect()
    assert len(store) == 1  # the entry of the freed weights is gone
