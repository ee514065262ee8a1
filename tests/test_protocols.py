"""Tests for classification protocols: base/new split, Dassl-compatible few-shot draws, loaders, cache."""

from __future__ import annotations

from collections.abc import Iterator

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from vlprompt.learners.testing import torch_threads

from vlprompt.data.base import ClassificationSource, DataError, TensorImageDataset
from vlprompt.data.toyworld.datasets import ToyColors, ToyPatterns
from vlprompt.protocols.base2new import BaseToNew, FewShot, default_cache_dir, sample_few_shot, split_base_new

PER_CLASS = (20, 4, 6)
SHOTS = 4


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny models and toy rendering are many small ops: one thread is fastest on a shared CPU."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def colors() -> ToyColors:
    return ToyColors(per_class=PER_CLASS)


def _labels_of(loader) -> list[int]:
    return [int(y) for _, ys in loader for y in ys]


# ----------------------------------------------------------------------------- split_base_new
@pytest.mark.parametrize(
    ("c", "base", "new"),
    [(10, [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]), (5, [0, 1, 2], [3, 4]), (4, [0, 1], [2, 3]), (1, [0], []), (2, [0], [1])],
)
def test_split_base_new(c, base, new):
    assert split_base_new(c) == (base, new)


# ----------------------------------------------------------------------------- sample_few_shot
LABELS = [2, 0, 2, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2, 0, 1]
#           index:  0  1  2  3  4  5  6  7  8  9 10 11 12 13 14
GROUPS = {2: [0, 2, 5, 9, 12], 0: [1, 4, 7, 10, 13], 1: [3, 6, 8, 11, 14]}  # in first-appearance order


def test_sample_few_shot_reproduces_dassls_random_sequence():
    for seed in (0, 1, 42):
        rng = random.Random(seed)
        expected = rng.sample([0, 2, 5, 9, 12], 3) + rng.sample([1, 4, 7, 10, 13], 3) + rng.sample([3, 6, 8, 11, 14], 3)
        after = rng.random()
        got_rng = random.Random(seed)
        got = sample_few_shot(LABELS, 3, got_rng)
        assert got == expected
        assert got_rng.random() == after, "the random stream must advance exactly as Dassl's"


def test_sample_few_shot_counts_and_determinism():
    got = sample_few_shot(LABELS, 2, random.Random(7))
    assert got == sample_few_shot(LABELS, 2, random.Random(7))
    assert Counter(LABELS[i] for i in got) == {0: 2, 1: 2, 2: 2}
    assert len(set(got)) == len(got)
    for label, items in GROUPS.items():
        assert all(i in items for i in got if LABELS[i] == label)
    # all items when shots equals the group size (a permutation)
    full = sample_few_shot(LABELS, 5, random.Random(0))
    assert sorted(full) == list(range(len(LABELS)))
    assert sample_few_shot(LABELS, 2, random.Random(8)) != got or sample_few_shot(LABELS, 2, random.Random(9)) != got


def test_sample_few_shot_too_few_items_names_the_class():
    labels = [0, 0, 0, 1, 1, 3, 3, 3]
    with pytest.raises(DataError) as exc:
        sample_few_shot(labels, 3, random.Random(0))
    msg = str(exc.value)
    assert "class 1" in msg and "2" in msg and "shots=3" in msg


def test_sample_few_shot_repeat_uses_choices():
    labels = [0, 0, 0, 1, 1, 3, 3, 3]
    rng = random.Random(3)
    expected = rng.sample([0, 1, 2], 3) + rng.choices([3, 4], k=3) + rng.sample([5, 6, 7], 3)
    assert sample_few_shot(labels, 3, random.Random(3), repeat=True) == expected


def test_sample_few_shot_keep_all_if_short():
    labels = [0, 0, 0, 1, 1, 3, 3, 3]
    rng = random.Random(4)
    expected = rng.sample([0, 1, 2], 3) + [3, 4] + rng.sample([5, 6, 7], 3)
    assert sample_few_shot(labels, 3, random.Random(4), keep_all_if_short=True) == expected


# ----------------------------------------------------------------------------- BaseToNew
def test_base_to_new_label_spaces_and_task(colors, tmp_path):
    dm = BaseToNew(colors, shots=SHOTS, seed=1, cache_dir=str(tmp_path))
    assert dm.label_spaces == {"base": [0, 1, 2, 3, 4], "new": [5, 6, 7, 8, 9]}
    task = dm.task
    names = colors.classnames
    assert task == {
        "label_spaces": {"base": names[:5], "new": names[5:]},
        "train_space": "base",
        "val_sets": [["base", "base"]],
        "test_sets": [["base", "base"], ["new", "new"]],
    }
    ident = dm.identity()
    assert ident["protocol"] == "base2new" and ident["shots"] == SHOTS and ident["seed"] == 1
    assert ident["dataset"] == colors.identity()


def test_base_to_new_loaders(colors, tmp_path):
    dm = BaseToNew(colors, shots=SHOTS, seed=1, cache_dir=str(tmp_path), batch_size=8, eval_batch_size=16, drop_last=False)
    train = dm.train_dataloader()
    x, y = next(iter(train))
    assert x.shape[1:] == (3, 48, 48) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert Counter(_labels_of(train)) == {k: SHOTS for k in range(5)}

    # the drawn images are exactly those of Dassl's draw (train shots over all classes, then base only)
    expected = sample_few_shot(colors.labels("train"), SHOTS, random.Random(1))
    expected = [i for i in expected if colors.labels("train")[i] < 5]
    got = train.dataset.dataset
    assert isinstance(got, TensorImageDataset)
    assert torch.equal(got.images, colors.dataset("train").images[expected])

    (val,) = dm.val_dataloader()
    assert Counter(_labels_of(val)) == {k: min(SHOTS, 4) for k in range(5)}

    base, new = dm.test_dataloader()
    assert Counter(_labels_of(base)) == {k: PER_CLASS[2] for k in range(5)}
    assert Counter(_labels_of(new)) == {k: PER_CLASS[2] for k in range(5)}
    # the new test set holds the images of the original classes 5..9, relabelled 0..4
    new_images = torch.cat([xb for xb, _ in new])
    test_labels = torch.tensor(colors.labels("test"))
    assert torch.equal((new_images * 255).round().to(torch.uint8), colors.dataset("test").images[test_labels >= 5])


@pytest.mark.parametrize(("batch_size", "drop_last", "steps", "seen"), [(32, True, 2, 64), (32, False, 3, 80), (100, True, 1, 80)])
def test_training_drops_the_last_incomplete_batch_like_dassl(colors, tmp_path, batch_size, drop_last, steps, seen):
    """80 base shots (5 classes x 16) at batch 32: Dassl makes 2 steps per epoch; a batch larger than the data keeps it."""
    dm = BaseToNew(colors, shots=16, seed=1, cache_dir=str(tmp_path), batch_size=batch_size, drop_last=drop_last)
    train = dm.train_dataloader()
    assert len(train) == steps and sum(len(y) for _, y in train) == seen
    base, _ = dm.test_dataloader()  # evaluation never drops images
    assert sum(len(y) for _, y in base) == 5 * PER_CLASS[2]


def test_base_to_new_odd_number_of_classes(tmp_path):
    ds = ToyPatterns(per_class=(2, 1, 1))  # 12 classes
    dm = BaseToNew(ds, shots=1, seed=0, cache_dir=str(tmp_path))
    assert dm.label_spaces["base"] == list(range(6)) and dm.label_spaces["new"] == list(range(6, 12))
    assert len(dm.task["label_spaces"]["base"]) == 6


class _OneClass(ClassificationSource):
    name = "one_class"

    @property
    def classnames(self):
        return ["thing"]

    def labels(self, split):
        return [0, 0]

    def dataset(self, split, indices=None, transform=None):
        return TensorImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), transform)

    def identity(self):
        return {"name": self.name}


def test_base_to_new_needs_two_classes(tmp_path):
    dm = BaseToNew(_OneClass(), shots=1, seed=0, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="at least 2"):
        _ = dm.label_spaces


# ----------------------------------------------------------------------------- FewShot
def test_few_shot_protocol(colors, tmp_path):
    dm = FewShot(colors, shots=2, seed=3, cache_dir=str(tmp_path), batch_size=7, drop_last=False)
    assert dm.label_spaces == {"all": list(range(10))}
    assert dm.task["train_space"] == "all" and dm.task["test_sets"] == [["all", "all"]]
    assert Counter(_labels_of(dm.train_dataloader())) == {k: 2 for k in range(10)}
    (test,) = dm.test_dataloader()
    assert Counter(_labels_of(test)) == {k: PER_CLASS[2] for k in range(10)}


def test_whole_training_split_when_shots_is_none(colors, tmp_path):
    dm = FewShot(colors, shots=None, cache_dir=str(tmp_path), batch_size=64, drop_last=False)
    assert Counter(_labels_of(dm.train_dataloader())) == {k: PER_CLASS[0] for k in range(10)}
    assert not (tmp_path / "fewshot").exists()


@pytest.mark.parametrize("shots", [0, -1])
def test_non_positive_shots_are_rejected(colors, shots):
    with pytest.raises(DataError, match="shots"):
        FewShot(colors, shots=shots)


def test_too_many_shots_names_the_class(colors, tmp_path):
    dm = FewShot(colors, shots=PER_CLASS[0] + 1, seed=0, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"class \d+ has only 20"):
        dm.train_dataloader()


def test_bad_augment(colors):
    with pytest.raises(DataError, match="augment"):
        FewShot(colors, augment="mixup")


# ----------------------------------------------------------------------------- few-shot cache
def _cache_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.json"))


def test_fewshot_cache_goes_to_vlprompt_cache(colors, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VLPROMPT_CACHE", str(cache))
    assert default_cache_dir() == cache
    dm = BaseToNew(colors, shots=SHOTS, seed=5)
    assert dm.cache_dir == cache
    dm.train_dataloader()
    files = _cache_files(cache)
    assert len(files) == 1
    path = files[0]
    assert path.parent == cache / "fewshot" / "toy_colors"
    assert path.name.startswith(f"shots{SHOTS}-seed5-")
    content = json.loads(path.read_text())
    assert set(content) == {"key", "train", "val"}
    assert content["train"] == sample_few_shot(colors.labels("train"), SHOTS, random.Random(5))


def test_fewshot_cache_is_read_back(colors, tmp_path):
    dm = FewShot(colors, shots=1, seed=0, cache_dir=str(tmp_path), batch_size=100)
    dm.train_dataloader()
    (path,) = _cache_files(tmp_path)
    content = json.loads(path.read_text())
    labels = colors.labels("train")
    other = [next(j for j, y in enumerate(labels) if y == labels[i] and j != i) for i in content["train"]]
    content["train"] = other  # another valid draw with the right key is read back as stored
    path.write_text(json.dumps(content))
    again = FewShot(colors, shots=1, seed=0, cache_dir=str(tmp_path), batch_size=100)
    assert again._fewshot_indices("train", 1) == other
    content["train"] = content["train"][:3]  # a doctored draw (3 classes of 10) is redrawn (issue 23)
    path.write_text(json.dumps(content))
    again = FewShot(colors, shots=1, seed=0, cache_dir=str(tmp_path), batch_size=100)
    assert len(_labels_of(again.train_dataloader())) == 10
    path.write_text("{not json")  # an unreadable cache is redrawn
    third = FewShot(colors, shots=1, seed=0, cache_dir=str(tmp_path), batch_size=100)
    assert len(_labels_of(third.train_dataloader())) == 10


def test_changed_dataset_identity_uses_another_cache_file(colors, tmp_path):
    FewShot(colors, shots=SHOTS, seed=0, cache_dir=str(tmp_path)).train_dataloader()
    FewShot(ToyColors(per_class=PER_CLASS, world_seed=1), shots=SHOTS, seed=0, cache_dir=str(tmp_path)).train_dataloader()
    FewShot(ToyColors(per_class=PER_CLASS, style="clean"), shots=SHOTS, seed=0, cache_dir=str(tmp_path)).train_dataloader()
    assert len(_cache_files(tmp_path)) == 3
    FewShot(colors, shots=SHOTS, seed=0, cache_dir=str(tmp_path)).train_dataloader()
    assert len(_cache_files(tmp_path)) == 3
    FewShot(colors, shots=SHOTS, seed=1, cache_dir=str(tmp_path)).train_dataloader()
    assert len(_cache_files(tmp_path)) == 4
