"""Frozen image-feature cache for learners that leave the image encoder untouched.

Zero-shot, CoOp, CoCoOp, KgCoOp... only read frozen image features, so these are computed once and reused
across epochs, seeds and learners. A cache entry is keyed by the backbone (model, weights sha256,
precision), the dataset identity, the split, the exact image index list and the transform; with train
augmentation on, a fixed number of augmented views per image is stored and each access picks one at random.
Entries are safetensors files under the cache directory (never the data root).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from vlprompt.backbones.base import VLBackbone
from vlprompt.progress import progress

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
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


class FeatureDataset(Dataset):
    """Cached features ``[V, N, D]`` with labels ``[N]``; each item is one of the V views, drawn at random."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        v = 0 if self.features.shape[0] == 1 else int(torch.randint(0, self.features.shape[0], ()))
        return self.features[v, i], int(self.labels[i])


@torch.no_grad()
def extract_features(backbone: VLBackbone, dataset: Dataset, *, views: int = 1, batch_size: int = 256, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image features ``[views, N, D]`` and labels ``[N]`` of a dataset of ``(image, label)``."""
    device = next(backbone.buffers()).device
    all_views, labels = [], None
    for _ in range(views):
        feats, ys = [], []
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for x, y in progress(loader, desc=f"extracting features (view {len(all_views) + 1}/{views})", unit="batch"):
            feats.append(backbone.encode_image(x.to(device)).cpu())
            ys.append(torch.as_tensor(y))
        all_views.append(torch.cat(feats))
        labels = torch.cat(ys)
    return torch.stack(all_views), labels


def cached_features(
    backbone: VLBackbone, dataset: Dataset, *, cache_dir: Path, key: str, views: int = 1, num_workers: int = 0
) -> FeatureDataset:
    """Load the entry ``key`` or compute and store it; returns a :class:`FeatureDataset`."""
    path = Path(cache_dir) / "features" / f"{key}.safetensors"
    if path.is_file():
        try:
            tensors = load_file(str(path))
            return FeatureDataset(tensors["features"], tensors["labels"])
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed
            log.warning("recomputing damaged feature cache entry %s: %s", path, exc)
    features, labels = extract_features(backbone, dataset, views=views, num_workers=num_workers)
    try:
        from vlprompt.atomic import save_safetensors

        # unique temporary name + os.replace: concurrent runs extracting the same entry never clash
        save_safetensors({"features": features.contiguous(), "labels": labels.contiguous()}, path)
    except OSError as exc:
        log.warning("could not write feature cache %s: %s", path, exc)
    return FeatureDataset(features, labels)
