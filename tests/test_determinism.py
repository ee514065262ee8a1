"""A run's metrics depend only on its config and seed, never on what is cached (issue 13, goal 2).

The same seed is run cold (feature cache, few-shot cache and in-process text caches absent) and warm (all
present, built by that run or by a run with another seed); every metric must be exactly equal. Training
uses random resized crops so that cached augmented views and their sampling are exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from vlprompt.runs.driver import run_experiment

REPO = Path(__file__).resolve().parents[1]


def _args(tmp_path: Path, cache: Path, seed: int, run: str) -> list[str]:
    return [
        "--config", str(REPO / "configs" / "quickstart.yaml"), "--seeds", f"[{seed}]", "--trainer.max_epochs", "2",
        "--model.warmup_epochs", "0", "--results_dir", str(tmp_path / "results"),
        "--trainer.default_root_dir", str(tmp_path / "runs" / run),
        "--data.init_args.dataset.init_args.per_class", "[8, 2, 6]", "--data.init_args.shots", "8",
        "--data.init_args.cache_dir", str(cache), "--data.init_args.feature_cache", "true",
        "--data.init_args.augment", "flip_crop", "--data.init_args.feature_views", "3",
    ]


def _run(tmp_path: Path, cache: str, seed: int, run: str) -> tuple[dict, dict]:
    """Metrics and learned prompt tensors of one run."""
    result = run_experiment("fit", _args(tmp_path, tmp_path / cache, seed, run), show_summary=False)
    row = result["per_seed"][0]
    return row["metrics"], load_file(row["prompts"])


def test_cold_and_warm_runs_give_identical_metrics(tmp_path) -> None:
    cold, cold_ctx = _run(tmp_path, "cache_a", 1, "cold")
    assert len(list((tmp_path / "cache_a" / "features").glob("*.safetensors"))) == 3
    warm, warm_ctx = _run(tmp_path, "cache_a", 1, "warm")
    assert warm == cold and set(cold) >= {"base", "new"}
    assert all(torch.equal(warm_ctx[k], cold_ctx[k]) for k in cold_ctx)  # the learned prompts too, bit for bit
    # a cache built by another seed's run serves the same features: seed 1 warm on it equals seed 1 cold
    _run(tmp_path, "cache_b", 2, "other2")
    other, other_ctx = _run(tmp_path, "cache_b", 1, "other1")
    assert other == cold
    assert all(torch.equal(other_ctx[k], cold_ctx[k]) for k in cold_ctx)


def test_feature_extraction_leaves_the_global_generator_untouched(tmp_path) -> None:
    from torchvision.transforms import v2

    from vlprompt.data.feature_cache import cached_features, extract_features
    from vlprompt.learners.testing import tiny_clip

    b = tiny_clip()
    crop = v2.RandomResizedCrop(32, scale=(0.3, 1.0))
    data = [(crop(torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(i))), i % 2) for i in range(5)]

    class Augmented(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i):
            return crop(data[i][0]), data[i][1]

    torch.manual_seed(7)
    before = torch.get_rng_state()
    feats = cached_features(b, Augmented(), cache_dir=tmp_path, key="k", views=3, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    # views are a function of (key, view, item): batch size and workers do not change them
    again, _ = extract_features(b, Augmented(), views=3, key="k", num_workers=1)
    assert torch.equal(again, feats.features)
    small, _ = extract_features(b, Augmented(), views=3, key="k", batch_size=2, num_workers=0)
    torch.testing.assert_close(small, feats.features)  # same views; kernels may round per batch size
    assert not torch.equal(feats.features[0], feats.features[1])
    # view sampling uses the dataset's own generator
    [feats[i] for i in range(5)]
    assert torch.equal(torch.get_rng_state(), before)
