"""Protocols as Lightning data modules: which classes train, which label spaces are evaluated.

:class:`BaseToNew` follows Zhou et al. (CoCoOp, CVPR 2022, Sec. 4.1): sort the labels, the first half
(rounded up) are *base* classes, the rest *new*; train with K shots per base class; evaluate base test
images among base classes and new test images among new classes; report their harmonic mean.
:class:`FewShot` trains and tests on all classes (CoOp, IJCV 2022).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from vlprompt.data.atomic import atomic_write_text
from vlprompt.data.base import ClassificationSource, DataError
from vlprompt.data.batching import eval_batch_size as memory_eval_batch_size
from vlprompt.data.distributed import (
    check_same_in_every_process,
    eval_sampler,
    fingerprint,
    is_distributed,
)
from vlprompt.data.feature_cache import (
    FROZEN_EVAL_FEATURES,
    FeatureDataset,
    cached_features,
    decode_workers,
    feature_cache_key,
)
from vlprompt.data.transforms import build_transform

log = logging.getLogger(__name__)


def sample_few_shot(
    labels: Sequence[int], shots: int, rng: random.Random, *, repeat: bool = False, keep_all_if_short: bool = False
) -> list[int]:
    """Indices of ``shots`` items per label, in Dassl's order and random-number sequence.

    Items are grouped by label in order of first appearance; each group is reduced with
    ``rng.sample(group, shots)`` (``rng.choices`` with ``repeat`` when a class has fewer items), as Dassl's
    ``generate_fewshot_dataset`` does with the global ``random`` module seeded by the run seed. A class
    with fewer than ``shots`` items is an error naming the class, unless ``keep_all_if_short`` (Dassl's
    behaviour, used for validation shots) keeps all its items.
    """
    groups: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        groups[int(y)].append(i)
    chosen: list[int] = []
    for label, items in groups.items():
        if len(items) >= shots:
            chosen.extend(rng.sample(items, shots))
        elif repeat:
            chosen.extend(rng.choices(items, k=shots))
        elif keep_all_if_short:
            chosen.extend(items)
        else:
            raise DataError(
                f"class {label} has only {len(items)} training images but shots={shots} were asked for: lower shots "
                f"to at most {len(items)} (e.g. --data.init_args.shots {min(len(items), 16)})"
            )
    return chosen


def check_fewshot_entry(cached, key: str, labels: dict[str, Sequence[int]], shots: int) -> str | None:
    """Why a few-shot index cache entry cannot be used, or None: it must be a mapping with this ``key``,
    and each split a list of distinct in-range integer indices with the per-class counts the draw gives
    (``shots`` per class in train, ``min(shots, 4)`` or all of a short class in val)."""
    if not isinstance(cached, dict):
        return f"expected a JSON object, got {type(cached).__name__}"
    if cached.get("key") != key:
        return f"key {cached.get('key')!r} differs from this dataset's {key!r}"
    for split, want_shots in (("train", shots), ("val", min(shots, 4))):
        picked = cached.get(split)
        ys = labels[split]
        if not isinstance(picked, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in picked):
            return f"{split!r} is not a list of integer indices"
        bad = [i for i in picked if not 0 <= i < len(ys)]
        if bad:
            return f"{split!r} index {bad[0]} is outside 0..{len(ys) - 1}"
        if len(set(picked)) != len(picked):
            return f"{split!r} repeats indices ({len(picked) - len(set(picked))} duplicate(s))"
        sizes: dict[int, int] = defaultdict(int)
        for y in ys:
            sizes[int(y)] += 1
        got: dict[int, int] = defaultdict(int)
        for i in picked:
            got[int(ys[i])] += 1
        for label, size in sizes.items():
            want = want_shots if split == "train" else min(want_shots, size)
            if got[label] != want:
                return f"{split!r} has {got[label]} image(s) of class {label}, the draw gives {want}"
    return None


def split_base_new(num_classes: int) -> tuple[list[int], list[int]]:
    """Labels of base (first ceil(C/2) after sorting) and new classes, as in CoCoOp's ``subsample_classes``."""
    labels = list(range(num_classes))
    m = math.ceil(num_classes / 2)
    return labels[:m], labels[m:]


#: unlabeled image pools a protocol can serve to a learner that trains without labels
#: (:attr:`~vlprompt.learners.base.PromptLearner.unlabeled_pool`, e.g. PromptKD): name -> what it holds
UNLABELED_POOLS = {
    "train_all_classes": "every image of the dataset's training split, of every class (base and new alike), "
                         "labels hidden; ``shots`` does not subsample it",
}

#: the label space of the unlabeled pool in :attr:`ClassificationProtocol.task` (every class of the dataset)
UNLABELED_SPACE = "unlabeled"


class HiddenLabels:
    """Dataset view that hides the labels of another: items are ``(x, -1)``."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, _ = self.dataset[i]
        return x, -1


def default_cache_dir() -> Path:
    """Where few-shot index lists are cached: ``$VLPROMPT_CACHE`` or ``~/.cache/vlprompt`` (never the data root)."""
    return Path(os.environ.get("VLPROMPT_CACHE", Path.home() / ".cache" / "vlprompt"))


class Relabel:
    """Dataset view mapping original labels to a label space's indices."""

    def __init__(self, dataset, mapping: dict[int, int]) -> None:
        self.dataset = dataset
        self.mapping = mapping

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, self.mapping[int(y)]


class ClassificationProtocol(pl.LightningDataModule):
    """Shared machinery of classification protocols (few-shot sampling, caching, loaders, label spaces).

    Args:
        dataset: a registered data source (``class_path: toy_colors``...).
        shots: training images per class (K); ``None`` uses the whole training split.
        seed: seed of the few-shot draw (set per run by ``vlprompt fit``; Dassl-compatible sequence).
        batch_size / eval_batch_size / num_workers: loader settings. ``eval_batch_size: auto`` picks the
            evaluation batch from memory (:func:`vlprompt.data.batching.eval_batch_size`: at most 256, at
            most 1 GiB of estimated activations); ``num_workers: auto`` decodes files in ``min(4, cpus-1)``
            worker processes and in-memory data in the main process. Feature extraction for the cache
            always uses ``auto`` (its views are seeded per image, so workers do not change them).
        augment: ``auto`` (the dataset's default), ``none``, or ``flip_crop`` (random resized crop, scale
            0.08-1, and horizontal flip, as CoOp).
        cache_dir: few-shot index and feature cache (default ``$VLPROMPT_CACHE`` or ``~/.cache/vlprompt``).
        feature_cache: serve cached frozen image features instead of images when the learner does not
            modify the image encoder (off by default for exact reproduction).
        feature_views: augmented views stored per training image when augmentation is on.
        eval_feature_reuse: when the learner leaves the image encoder untouched (``modifies_image_encoder =
            False``), encode the validation and test images once per process and serve their frozen features to
            every later evaluation (each epoch's validation, every seed of the run) from memory
            (:data:`vlprompt.data.feature_cache.FROZEN_EVAL_FEATURES`); logits equal the image path's within 1e-5.
            ``false`` re-encodes the images at every evaluation. The on-disk ``feature_cache`` takes precedence.
        drop_last: drop the last incomplete training batch, as Dassl does (``drop_last=is_train and
            len(data) >= batch_size``): 80 shots at batch 32 make 2 steps per epoch, not 3. ``false`` keeps it.
        validation: ``true`` (the legacy CoOp protocol: a few-shot validation split of ``min(K, 4)`` images per
            class is drawn and can be evaluated); ``false``: the validation-free protocol (issue 29, CLAP /
            2SFS style): no validation image is loaded or evaluated, the last epoch is what is tested, and
            the protocol is recorded as ``<name>-vf`` (its own leaderboard). The validation draw's labels are
            still drawn, so every seed's training images equal the legacy protocol's. Fixed hyper-parameters
            across datasets are the sweep's part: ``sweeps/toy_validation_free.yaml`` gives every dataset one
            learner configuration.
        unlabeled_pool: serve training images without labels from a pool of :data:`UNLABELED_POOLS` (``None``:
            labelled training, the default). ``train_all_classes``: the whole training split of every class
            (base and new), targets ``-1``; the training label space is then ``unlabeled`` (every class name of
            the dataset: the learner scores its unlabeled images over all of them) and the validation and test
            sets are unchanged. Only a learner whose ``unlabeled_pool`` names the same pool trains with it
            (PromptKD); the pool is recorded in :meth:`identity` and :attr:`task`.
    """

    name = "classification"

    def __init__(
        self,
        dataset: ClassificationSource,
        *,
        shots: int | None = 16,
        seed: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int | Literal["auto"] = "auto",
        num_workers: int | Literal["auto"] = 0,
        augment: str = "auto",
        cache_dir: str | None = None,
        feature_cache: bool = False,
        feature_views: int = 8,
        drop_last: bool = True,
        validation: bool = True,
        eval_feature_reuse: bool = True,
        unlabeled_pool: str | None = None,
    ) -> None:
        super().__init__()
        if unlabeled_pool is not None and unlabeled_pool not in UNLABELED_POOLS:
            raise DataError(f"unlabeled_pool={unlabeled_pool!r} is not a known pool: use one of "
                            f"{sorted(UNLABELED_POOLS)} or null (labelled training)")
        self.unlabeled_pool = unlabeled_pool
        self.validation = bool(validation)
        if not self.validation:
            self.name = f"{type(self).name}-vf"
            self.val_sets = ()
        if shots is not None and shots < 1:
            raise DataError(f"shots={shots} must be a positive integer (the field uses 1, 2, 4, 8, 16) or null")
        if augment not in ("auto", "none", "flip_crop"):
            raise DataError(f"augment={augment!r} must be 'auto', 'none' or 'flip_crop'")
        self.dataset = dataset
        self.shots = shots
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.augment = dataset.default_augment if augment == "auto" else augment
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        if feature_views < 1:
            raise DataError(f"feature_views={feature_views} must be at least 1")
        self.feature_cache = feature_cache
        self.feature_views = feature_views
        self.drop_last = drop_last
        self.eval_feature_reuse = eval_feature_reuse
        self._preprocess = None

    # ------------------------------------------------------------------ label spaces
    @property
    def label_spaces(self) -> dict[str, list[int]]:
        """Original labels of each label space (each protocol defines its spaces)."""
        raise NotImplementedError(f"{type(self).__name__} must define label_spaces (e.g. {{'base': [...], 'new': [...]}})")

    train_space = "all"
    val_sets: tuple[tuple[str, str], ...] = (("all", "all"),)
    test_sets: tuple[tuple[str, str], ...] = (("all", "all"),)

    def space_source(self, space: str) -> ClassificationSource:
        """The data source whose classes and test images a label space uses (the protocol's dataset here)."""
        return self.dataset

    def _space_labels(self, space: str) -> list[int]:
        """Original labels of ``space``: a label space of :attr:`label_spaces`, or the unlabeled pool's (all)."""
        if space == UNLABELED_SPACE and self.unlabeled_pool is not None:
            return list(range(len(self.dataset.classnames)))
        return self.label_spaces[space]

    @property
    def task(self) -> dict:
        """What the model needs: class names per label space, the train space, and (name, space) eval sets; with an
        unlabeled pool also ``unlabeled_pool`` (its name) and ``unlabeled_space`` (its label space)."""
        spaces = self.label_spaces
        out = {
            "label_spaces": {k: [self.space_source(k).classnames[i] for i in v] for k, v in spaces.items()},
            "train_space": self.train_space,
            "val_sets": [list(s) for s in self.val_sets],
            "test_sets": [list(s) for s in self.test_sets],
        }
        if self.unlabeled_pool is not None:
            out["label_spaces"][UNLABELED_SPACE] = [self.dataset.classnames[i] for i in self._space_labels(UNLABELED_SPACE)]
            out["unlabeled_pool"] = self.unlabeled_pool
            out["unlabeled_space"] = UNLABELED_SPACE
        return out

    # ------------------------------------------------------------------ few-shot sampling
    def _fewshot_indices(self, split: str, shots: int) -> list[int]:
        """Few-shot indices of ``split`` (``train``: K per class; ``val``: min(K, 4) per class).

        Like Dassl, one random stream seeded with the run seed draws the training shots first and then
        the validation shots, over all classes, before base/new subsampling. Cached under ``cache_dir``,
        keyed by the dataset identity and the label lists, so a changed split never reuses a stale draw.
        """
        train_labels, val_labels = self.dataset.labels("train"), self.dataset.labels("val")
        payload = {"data": self.dataset.identity(), "train": train_labels, "val": val_labels}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        path = self.cache_dir / "fewshot" / self.dataset.name / f"shots{shots}-seed{self.seed}-{key}.json"
        if self.seed is not None and path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                reason = check_fewshot_entry(cached, key, {"train": train_labels, "val": val_labels}, shots)
            except (ValueError, RecursionError, OSError) as exc:  # JSON, UTF-8 and read errors
                reason = f"unreadable ({type(exc).__name__}: {exc})"
            if reason is None:
                return [int(i) for i in cached[split]]
            log.warning("recomputing few-shot index cache %s: %s", path, reason)
        rng = random.Random(self.seed)
        draws = {"train": sample_few_shot(train_labels, shots, rng)}
        draws["val"] = sample_few_shot(val_labels, min(shots, 4), rng, keep_all_if_short=True)
        if self.seed is None:  # an unseeded draw is never cached (it would silently become fixed)
            return draws[split]
        try:
            atomic_write_text(path, json.dumps({"key": key, **draws}))  # concurrent runs never see a partial file
        except OSError as exc:  # a read-only cache is not fatal
            log.warning("could not cache few-shot indices in %s: %s", path, exc)
        return draws[split]

    def _indices(self, split: str, space: str, shots: int | None, source: ClassificationSource | None = None) -> list[int]:
        allowed = set(self._space_labels(space))
        labels = (source or self.dataset).labels(split)
        if shots is None:
            return [i for i, y in enumerate(labels) if y in allowed]
        picked = self._fewshot_indices(split, shots)
        return [i for i in picked if labels[i] in allowed]

    # ------------------------------------------------------------------ lightning hooks
    def _module(self):
        return getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None

    def _preprocess_cfg(self):
        return getattr(getattr(self._module(), "backbone", None), "preprocess", None)

    def _image_encoder_frozen(self) -> bool:
        """Whether the module's learner declares that it leaves the image encoder untouched."""
        learner = getattr(self._module(), "learner", None)
        return bool(learner is not None and not learner.modifies_image_encoder)

    def _uses_feature_cache(self) -> bool:
        return bool(self.feature_cache and self._image_encoder_frozen())

    def _dataset(self, split: str, space: str, shots: int | None, train: bool, source: ClassificationSource | None = None):
        """Images (or cached features) of ``split`` restricted to a label space, relabelled ``0..n-1``."""
        source = source or self.dataset
        augment = self.augment if train else "none"
        transform = build_transform(self._preprocess_cfg(), train=train, augment=augment)
        if shots is not None and source is not self.dataset:
            raise DataError("few-shot sampling applies to the protocol's own dataset only")
        idx = self._indices(split, space, shots, source)
        if not idx:
            raise DataError(f"split {split!r} of {source.name} has no images of the {space!r} classes")
        mapping = {orig: new for new, orig in enumerate(self._space_labels(space))}
        images = source.dataset(split, idx, transform)
        if self._uses_feature_cache():
            views = self.feature_views if augment != "none" else 1
            backbone = self._module().backbone
            key = feature_cache_key(
                backbone=backbone, data_identity=source.identity(), split=split, indices=idx,
                transform=repr(transform), views=views,
            )
            all_labels = source.labels(split)
            images = cached_features(
                backbone, images, cache_dir=self.cache_dir, key=key, views=views, seed=self.seed,
                labels=[int(all_labels[i]) for i in idx], identity=source.identity(), sample_ids=idx,
            )
        elif not train and self.eval_feature_reuse and self._image_encoder_frozen():
            backbone = self._module().backbone
            key = feature_cache_key(
                backbone=backbone, data_identity=source.identity(), split=split, indices=idx,
                transform=repr(transform), views=1,
            )
            images = FROZEN_EVAL_FEATURES.features(backbone, images, key=key, batch_size=self._eval_batch(),
                                                   num_workers=self.num_workers)
        return Relabel(images, mapping)

    def _eval_batch(self) -> int:
        if self.eval_batch_size != "auto":
            return int(self.eval_batch_size)
        backbone = getattr(self._module(), "backbone", None)
        return memory_eval_batch_size(backbone) if backbone is not None else 256

    def _loader(self, ds, *, train: bool) -> DataLoader:
        cached = isinstance(getattr(ds, "dataset", None), FeatureDataset)
        workers = 0 if cached else decode_workers(ds, self.num_workers)
        return DataLoader(
            ds, batch_size=self.batch_size if train else self._eval_batch(), shuffle=train,
            sampler=None if train else eval_sampler(self.trainer, ds),  # DDP: each image evaluated exactly once
            drop_last=self._drop_last(len(ds), train=train),
            num_workers=workers, persistent_workers=False,
        )

    def _drop_last(self, n_items: int, *, train: bool) -> bool:
        """Dassl's rule: drop the incomplete last batch in training only, and only if one full batch exists."""
        return bool(self.drop_last and train and n_items >= self.batch_size)

    def _check_same_draw(self) -> None:
        """Under DDP: the few-shot draw must be the same in every process (it is seeded by the run seed)."""
        if self.shots is not None and is_distributed(self.trainer):
            check_same_in_every_process(self.trainer, fingerprint(self._fewshot_indices("train", self.shots)),
                                        f"few-shot draw of {self.dataset.name} (seed {self.seed})")

    def train_dataloader(self) -> DataLoader:
        if self.unlabeled_pool is not None:  # "train_all_classes": the whole split, every class, labels hidden
            return self._loader(HiddenLabels(self._dataset("train", UNLABELED_SPACE, None, train=True)), train=True)
        self._check_same_draw()
        return self._loader(self._dataset("train", self.train_space, self.shots, train=True), train=True)

    def val_dataloader(self) -> list[DataLoader]:
        if not self.validation:
            return []
        return [self._loader(self._dataset("val", space, self.shots, train=False), train=False) for _, space in self.val_sets]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self._dataset("test", space, None, train=False), train=False) for _, space in self.test_sets]

    def identity(self) -> dict:
        out = {"protocol": self.name, "shots": self.shots, "seed": self.seed, "dataset": self.dataset.identity()}
        if self.unlabeled_pool is not None:
            out["unlabeled_pool"] = self.unlabeled_pool
        return out if self.validation else {**out, "validation": False}


class BaseToNew(ClassificationProtocol):
    """Base-to-new generalisation: train on base classes, test base and new classes separately."""

    name = "base2new"
    train_space = "base"
    val_sets = (("base", "base"),)
    test_sets = (("base", "base"), ("new", "new"))

    @property
    def label_spaces(self) -> dict[str, list[int]]:
        base, new = split_base_new(len(self.dataset.classnames))
        if not new:
            raise DataError(f"{self.dataset.name} has {len(base)} class(es): base-to-new needs at least 2")
        return {"base": base, "new": new}


class FewShot(ClassificationProtocol):
    """Few-shot classification over all classes (train K shots per class, test on the full test split)."""

    name = "fewshot"
    train_space = "all"

    @property
    def label_spaces(self) -> dict[str, list[int]]:
        return {"all": list(range(len(self.dataset.classnames)))}
