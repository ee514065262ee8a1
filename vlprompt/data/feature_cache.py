"""Frozen image-feature cache for learners that leave the image encoder untouched.

Zero-shot, CoOp, CoCoOp, KgCoOp... only read frozen image features, so these are computed once and reused
across epochs, seeds and learners. A cache entry is keyed by the backbone (model, weights sha256,
precision), the dataset identity, the split, the exact image index list and the transform; with train
augmentation on, a fixed number of augmented views per image is stored and each access picks one at random.
Determinism: every view is seeded from the entry key and the item (not from the run), the extraction leaves
the global random generator untouched and view sampling uses its own generator, so a run's metrics are the
same whether the cache existed before it or not (``tests/test_determinism.py``).
Entries are safetensors files under the cache directory (never the data root).

Verification: an entry is never trusted because it parses. Each entry records in its safetensors metadata
what it was computed from (:func:`entry_provenance`: the entry key, backbone identity with its checkpoint
sha256 and precision, the dataset identity, the split, a digest of the sample ids in order and one of their
labels, sample count, view count, feature width, dtype) and a sha256 of its tensors' bytes. A load checks all
of it against the requesting dataset and backbone, recomputes a few items and compares them with the stored
rows (:func:`spot_check`: permuted or replaced rows are caught even under a forged record), and on any
mismatch recomputes the entry with a warning naming the file and the reason (:func:`verify_entry`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from vlprompt.backbones.base import VLBackbone
from vlprompt.data.atomic import save_safetensors
from vlprompt.data.base import TensorImageDataset
from vlprompt.data.batching import eval_batch_size
from vlprompt.data.progress import progress

log = logging.getLogger(__name__)

CACHE_FORMAT = "vlprompt.feature_cache/2"


def list_digest(values) -> str:
    """sha256 of a list of integers (sample ids or labels), order-sensitive."""
    return hashlib.sha256(json.dumps([int(v) for v in values]).encode()).hexdigest()


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def entry_provenance(
    *, key: str, backbone: VLBackbone | None, n: int, views: int, labels: list[int] | None,
    width: int | None, dtype: str | None, identity: dict | None = None, sample_ids: list[int] | None = None,
) -> dict:
    """What a feature-cache entry was computed from, as recorded in (and checked against) its metadata."""
    return {
        "key": key,
        "backbone": backbone.info.to_dict() if backbone is not None else None,
        "data": identity,
        "samples": int(n),
        "sample_ids_sha256": list_digest(sample_ids) if sample_ids is not None else None,
        "views": int(views),
        "labels_sha256": list_digest(labels) if labels is not None else None,
        "width": width,
        "dtype": dtype,
    }


def verify_entry(tensors: dict[str, torch.Tensor], metadata: dict | None, expected: dict) -> str | None:
    """Why the loaded entry does not match ``expected`` (:func:`entry_provenance`), or None if it does."""
    if not metadata or metadata.get("format") != CACHE_FORMAT:
        return f"no provenance record (format {None if not metadata else metadata.get('format')!r}, expected {CACHE_FORMAT!r})"
    try:
        recorded = json.loads(metadata.get("provenance", ""))
    except (json.JSONDecodeError, RecursionError) as exc:
        return f"unreadable provenance record ({exc})"
    if not isinstance(recorded, dict):
        return "provenance record is not a mapping"
    if set(tensors) != {"features", "labels"}:
        return f"tensors {sorted(tensors)}, expected ['features', 'labels']"
    feats, labels = tensors["features"], tensors["labels"]
    if tensor_digest(tensors) != metadata.get("content_sha256"):
        return "content digest differs from the recorded one (the tensors were changed after writing)"
    for name in ("key", "backbone", "data", "samples", "sample_ids_sha256", "views", "labels_sha256"):
        want = expected.get(name)
        if want is not None and recorded.get(name) != want:
            return f"{name} is {recorded.get(name)!r}, this run needs {want!r}"
    if expected.get("width") is not None and recorded.get("width") != expected["width"]:
        return f"feature width {recorded.get('width')} differs from the backbone's {expected['width']}"
    if feats.dim() != 3 or labels.dim() != 1:
        return f"features shape {list(feats.shape)} / labels shape {list(labels.shape)}, expected [V, N, D] / [N]"
    v, n, d = feats.shape
    if (v, n, d) != (recorded.get("views"), recorded.get("samples"), recorded.get("width")) or labels.shape[0] != n:
        return (f"features shape {list(feats.shape)} and {labels.shape[0]} labels disagree with the record "
                f"({recorded.get('views')} views, {recorded.get('samples')} samples, width {recorded.get('width')})")
    if not feats.is_floating_point() or str(feats.dtype) != recorded.get("dtype"):
        return f"features dtype {feats.dtype} differs from the recorded {recorded.get('dtype')!r}"
    if expected.get("labels_sha256") is not None and list_digest(labels.tolist()) != expected["labels_sha256"]:
        return "labels differ from the requesting dataset's labels"
    if not bool(torch.isfinite(feats).all()):
        return "features hold NaN or infinite values"
    return None


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


#: items of a loaded entry recomputed and compared (cosine similarity) before the entry is trusted
SPOT_CHECK_ITEMS = 3
SPOT_CHECK_MIN_COSINE = 0.999


@torch.no_grad()
def spot_check(backbone: VLBackbone, dataset: Dataset, key: str, features: torch.Tensor, labels: torch.Tensor) -> str | None:
    """Recompute a few items of an entry (view 0; the first, the last and one chosen by the key) and compare
    them with the stored rows: catches rows that were permuted or replaced even where the provenance record
    and digest were rewritten to match. Returns the reason of a mismatch, or None."""
    n = int(labels.shape[0])
    if n == 0:
        return None
    middle = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % n
    picks = sorted({0, n - 1, middle})
    flat = SeededViews(dataset, 1, key)
    device = next(backbone.buffers()).device
    for i in picks[:SPOT_CHECK_ITEMS]:
        image, label = flat[i]
        if int(label) != int(labels[i]):
            return f"item {i} has label {int(labels[i])} in the entry but {int(label)} in the dataset"
        fresh = backbone.encode_image(torch.as_tensor(image)[None].to(device)).float().cpu()[0]
        cos = float(torch.nn.functional.cosine_similarity(fresh, features[0, i].float(), dim=0))
        if not cos >= SPOT_CHECK_MIN_COSINE:
            return f"item {i}: stored features differ from the recomputed ones (cosine {cos:.4f})"
    return None


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
    labels: list[int] | None = None,
    identity: dict | None = None,
    sample_ids: list[int] | None = None,
) -> FeatureDataset:
    """Load the entry ``key`` or compute and store it; returns a :class:`FeatureDataset`.

    Cold (entry absent) and warm (entry present) give the same features and leave the global random
    generator in the same state; ``seed`` seeds the view sampling of the returned dataset. A present entry
    is verified (:func:`verify_entry`) against this dataset (its length, ``labels`` and ``sample_ids`` of its items in order,
    ``identity``) and backbone; any mismatch recomputes it with a warning naming the file and the reason.
    """
    path = Path(cache_dir) / "features" / f"{key}.safetensors"
    width = getattr(backbone, "embed_dim", None)
    expected = entry_provenance(
        key=key, backbone=backbone, n=len(dataset), views=views, labels=labels,  # type: ignore[arg-type]
        width=int(width) if isinstance(width, int) else None, dtype=None, identity=identity, sample_ids=sample_ids,
    )
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata()
            tensors = load_file(str(path))
            reason = verify_entry(tensors, metadata, expected)
            if reason is None:
                reason = spot_check(backbone, dataset, key, tensors["features"], tensors["labels"])
            if reason is None:
                return FeatureDataset(tensors["features"], tensors["labels"], seed=seed)
            log.warning("recomputing feature cache entry %s: %s", path, reason)
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed
            log.warning("recomputing damaged feature cache entry %s: %s", path, exc)
    features, labels_t = extract_features(
        backbone, dataset, views=views, num_workers=num_workers, key=key, batch_size=batch_size
    )
    tensors = {"features": features.contiguous(), "labels": labels_t.contiguous()}
    record = entry_provenance(
        key=key, backbone=backbone, n=features.shape[1], views=features.shape[0], labels=labels_t.tolist(),
        width=int(features.shape[2]), dtype=str(features.dtype), identity=identity, sample_ids=sample_ids,
    )
    metadata = {"format": CACHE_FORMAT, "provenance": json.dumps(record, sort_keys=True, default=str),
                "content_sha256": tensor_digest(tensors)}
    try:
        # unique temporary name + os.replace: concurrent runs extracting the same entry never clash
        save_safetensors(tensors, path, metadata=metadata)
    except OSError as exc:
        log.warning("could not write feature cache %s: %s", path, exc)
    return FeatureDataset(features, labels_t, seed=seed)


def weights_version(backbone: VLBackbone) -> int:
    """Sum of the in-place version counters of ``backbone``'s parameters: changes whenever a weight is written."""
    return sum(int(p._version) for p in backbone.parameters())


class FrozenFeatureStore:
    """In-memory image features of non-augmented splits (validation, test), computed once per process and reused by
    every later evaluation of the same images with the same frozen backbone: across epochs and across the seeds of
    a run (``vlprompt fit`` rebuilds the model per seed, over the same cached backbone weights).

    An entry is found by :func:`feature_cache_key` (backbone identity, dataset identity, split, indices, transform)
    *and* by the backbone's weight tensors themselves: it holds a weak reference to the first parameter and the
    :func:`weights_version` at extraction, so two random backbones of the same name never share features, an entry
    dies with its weights, and a weight written in place invalidates it. Serve entries only to learners that leave the
    image encoder untouched (``modifies_image_encoder = False``): their ``encode_images`` is the backbone's.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], tuple[weakref.ref, int, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        self._purge()
        return len(self._entries)

    def _purge(self) -> None:
        for k in [k for k, (ref, *_rest) in self._entries.items() if ref() is None]:
            del self._entries[k]

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()

    def features(
        self, backbone: VLBackbone, dataset: Dataset, *, key: str, batch_size: int | None = None,
        num_workers: int | str = 0,
    ) -> FeatureDataset:
        """The features of ``dataset`` (one view, no augmentation) for ``backbone``: stored ones, or extracted now
        with :func:`extract_features` (in batches of ``batch_size``) and stored."""
        anchor = next(backbone.parameters(), None)
        if anchor is None:  # nothing to tie an entry to: extract every time
            feats, labels = extract_features(backbone, dataset, batch_size=batch_size, num_workers=num_workers, key=key)
            return FeatureDataset(feats, labels)
        slot = (id(anchor), key)
        version = weights_version(backbone)
        hit = self._entries.get(slot)
        if hit is not None and hit[0]() is anchor and hit[1] == version and hit[3].shape[0] == len(dataset):  # type: ignore[arg-type]
            log.debug("frozen eval features reused for %s", key)
            return FeatureDataset(hit[2], hit[3])
        feats, labels = extract_features(backbone, dataset, batch_size=batch_size, num_workers=num_workers, key=key)
        self._purge()
        self._entries[slot] = (weakref.ref(anchor), version, feats, labels)
        return FeatureDataset(feats, labels)


#: the process-wide store the classification protocols use (``eval_feature_reuse``)
FROZEN_EVAL_FEATURES = FrozenFeatureStore()
