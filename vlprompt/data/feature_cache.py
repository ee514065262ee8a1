"""Frozen image-feature cache for learners that leave the image encoder untouched.

Zero-shot, CoOp, CoCoOp, KgCoOp... only read frozen image features, so these are computed once and reused
across epochs, seeds and learners. A cache entry is keyed by the backbone (model, weights sha256,
precision), the dataset identity, the split, the exact image index list and the transform; with train
augmentation on, a fixed number of augmented views per image is stored and each access picks one at random.
Determinism: every view is seeded from the entry key and the item (not from the run), the extraction leaves
the global random generator untouched and view sampling uses its own generator, so a run's metrics are the
same whether the cache existed before it or not (``tests/test_determinism.py``).
Entries are safetensors files under the cache directory (never the data root).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from vlprompt.backbones.base import VLBackbone
from vlprompt.data.atomic import save_safetensors
from vlprompt.data.base import TensorImageDataset
from vlprompt.data.batching import eval_batch_size
from vlprompt.data.progress import progress

log = logging.getLogger(__name__)


def feature_cache_key(*, backbone: VLBackbone, data_identity: dict, split: str, indices: list[int], transform: str, views: int) -> str:
    """Hex key of a cache entry; any change in what determines the features changes the key."""
    payload = {
        "backbone": backbone.info.to_dict(),
        "data": data_identity,
        "split": split,
        "indices": indices,
        "transform": transform,
        "views": views,
        # entries written before views were seeded per item (global-RNG views) must not be reused
        "view_seeding": "sha256(key/view/item)",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


class FeatureDataset(Dataset):
    """Cached features ``[V, N, D]`` with labels ``[N]``; each item is one of the V views, drawn at random.

    Views are drawn from the dataset's own generator (seeded with ``seed``), never from the global one, so
    serving cached features leaves the run's random stream (shuffling, dropout, initialisation) exactly as
    it is on a run that builds the cache. Serve it with ``num_workers=0`` (the features are in memory; each
    worker would otherwise copy the generator).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, *, seed: int | None = None) -> None:
        self.features = features
        self.labels = labels
        self.generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else int(seed))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        v = 0 if self.features.shape[0] == 1 else int(torch.randint(0, self.features.shape[0], (), generator=self.generator))
        return self.features[v, i], int(self.labels[i])


def view_seed(key: str, view: int, index: int) -> int:
    """Seed of the random augmentation of item ``index``, view ``view``, of the cache entry ``key``."""
    return int.from_bytes(hashlib.sha256(f"{key}/{view}/{index}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


class SeededViews(Dataset):
    """All ``views`` augmented views of a dataset as one flat dataset (view-major), each item under its own seed.

    Item ``v * N + i`` is ``dataset[i]`` computed with the global torch generator seeded by
    :func:`view_seed` ``(key, v, i)`` inside :func:`torch.random.fork_rng`: a view depends only on the entry
    key, the view and the item, never on batch size, worker count, which run built the cache or its seed,
    and the caller's random stream is left untouched.
    """

    def __init__(self, dataset: Dataset, views: int, key: str) -> None:
        self.dataset = dataset
        self.views = views
        self.key = key
        self.n = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.views * self.n

    def __getitem__(self, j: int):
        v, i = divmod(j, self.n)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.key, v, i))
            return self.dataset[i]


def decode_workers(dataset: Dataset, requested: int | str | None = "auto") -> int:
    """Loader workers for ``dataset``: ``requested`` if an integer; ``auto`` gives 0 for in-memory data
    (tensor datasets, cached features) and ``min(4, cpus - 1)`` for data decoded from files (JPEG/PNG)."""
    if isinstance(requested, int):
        return requested
    if requested not in (None, "auto"):
        raise ValueError(f"num_workers={requested!r} must be an integer >= 0 or 'auto'")
    inner = dataset
    while hasattr(inner, "dataset") and not isinstance(inner, (TensorImageDataset, FeatureDataset)):
        inner = inner.dataset
    if isinstance(inner, (TensorImageDataset, FeatureDataset)):
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@torch.no_grad()
def extract_features(
    backbone: VLBackbone,
    dataset: Dataset,
    *,
    views: int = 1,
    batch_size: int | None = None,
    num_workers: int | str = "auto",
    key: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image features ``[views, N, D]`` and labels ``[N]`` of a dataset of ``(image, label)``.

    One loader pass over all views (:class:`SeededViews`, augmentation seeded per item from ``key``), in
    batches of ``batch_size`` (default :func:`vlprompt.data.batching.eval_batch_size` of the backbone);
    the global random generator is left exactly as it was.
    """
    device = next(backbone.buffers()).device
    flat = SeededViews(dataset, views, key)
    workers = decode_workers(dataset, num_workers)
    bs = batch_size or eval_batch_size(backbone)
    feats, ys = [], []
    with torch.random.fork_rng(devices=[]):
        loader = DataLoader(
            flat, batch_size=bs, shuffle=False, num_workers=workers, generator=torch.Generator().manual_seed(0),
        )
        for x, y in progress(loader, desc=f"extracting features ({views} view(s))", unit="batch"):
            feats.append(backbone.encode_image(x.to(device)).cpu())
            ys.append(torch.as_tensor(y))
    n = len(dataset)  # type: ignore[arg-type]
    features = torch.cat(feats).view(views, n, -1)
    labels = torch.cat(ys)[:n]
    return features, labels


def cached_features(
    backbone: VLBackbone,
    dataset: Dataset,
    *,
    cache_dir: Path,
    key: str,
    views: int = 1,
    num_workers: int | str = "auto",
    seed: int | None = None,
    batch_size: int | None = None,
) -> FeatureDataset:
    """Load the entry ``key`` or compute and store it; returns a :class:`FeatureDataset`.

    Cold (entry absent) and warm (entry present) give the same features and leave the global random
    generator in the same state; ``seed`` seeds the view sampling of the returned dataset.
    """
    path = Path(cache_dir) / "features" / f"{key}.safetensors"
    if path.is_file():
        try:
            tensors = load_file(str(path))
            return FeatureDataset(tensors["features"], tensors["labels"], seed=seed)
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed
            log.warning("recomputing damaged feature cache entry %s: %s", path, exc)
    features, labels = extract_features(
        backbone, dataset, views=views, num_workers=num_workers, key=key, batch_size=batch_size
    )
    try:
        # unique temporary name + os.replace: concurrent runs extracting the same entry never clash
        save_safetensors({"features": features.contiguous(), "labels": labels.contiguous()}, path)
    except OSError as exc:
        log.warning("could not write feature cache %s: %s", path, exc)
    return FeatureDataset(features, labels, seed=seed)
