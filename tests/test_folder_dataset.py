"""The generic image-folder adapter, the ImageNet family and FGVC-Aircraft on synthetic trees in tmp_path."""

from __future__ import annotations

import json
import logging
import pickle
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlprompt.data.base import DataError
from vlprompt.runs.data_check import check_dataset
from vlprompt.data.coop import FGVCAircraft, StanfordCars
from vlprompt.data.folder import ImageFolderDataset, split_counts
from vlprompt.data.imagenet import ImageNet, ImageNetA, ImageNetR, ImageNetSketch, ImageNetV2, subset_in_imagenet_order


def _jpeg(path: Path, shade: int = 0, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade % 256, 40, 200)).save(path, "JPEG")
    return path


def _folder_tree(root: Path, classes: dict[str, int]) -> Path:
    for k, (folder, n) in enumerate(classes.items()):
        for i in range(n):
            _jpeg(root / folder / f"img_{i:03d}.jpg", shade=10 * k + i)
    return root


# ----------------------------------------------------------------------------- ImageFolderDataset
def test_folder_labels_split_and_determinism(tmp_path):
    root = _folder_tree(tmp_path / "mine", {"zebra": 10, "ant": 10, "moth": 7})
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "moth" / "sub").mkdir()
    _jpeg(root / "moth" / "sub" / "deep.png")
    src = ImageFolderDataset(str(root))
    assert src.classnames == ["ant", "moth", "zebra"]
    assert src.split_sizes() == {"train": 5 + 4 + 5, "val": 2 + 2 + 2, "test": 3 + 2 + 3}
    per_split = {s: set(src.paths(s)) for s in ("train", "val", "test")}
    assert not (per_split["train"] & per_split["val"]) and not (per_split["train"] & per_split["test"])
    assert str(root / "moth/sub/deep.png") in set.union(*per_split.values())
    assert len(set.union(*per_split.values())) == 28
    for s in per_split:
        for p, y in zip(src.paths(s), src.labels(s)):
            assert Path(p).relative_to(root).parts[0] == src.classnames[y]
    again = ImageFolderDataset(str(root))
    assert all(again.paths(s) == src.paths(s) for s in per_split)
    other = ImageFolderDataset(str(root), split_seed=1)
    assert other.paths("train") != src.paths("train")
    x, y = src.dataset("test", [0])[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == src.labels("test")[0]
    ident = src.identity()
    assert ident["split_seed"] == 0 and ident["sizes"] == src.split_sizes() and ident["name"] == "image_folder"


def test_folder_split_matches_documented_rule(tmp_path):
    root = _folder_tree(tmp_path / "mine", {"a": 6, "b": 4})
    src = ImageFolderDataset(str(root), split_ratio=(0.5, 0.25, 0.25), split_seed=3)
    rng = random.Random(3)
    expect: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for folder in ("a", "b"):
        files = sorted(f"{folder}/{p.name}" for p in (root / folder).iterdir())
        rng.shuffle(files)
        counts = split_counts(len(files), (0.5, 0.25, 0.25))
        start = 0
        for s, c in zip(expect, counts):
            expect[s] += sorted(files[start:start + c])
            start += c
    assert {s: [str(Path(p).relative_to(root).as_posix()) for p in src.paths(s)] for s in expect} == expect


def test_split_counts():
    assert split_counts(10, (0.5, 0.2, 0.3)) == [5, 2, 3]
    assert split_counts(7, (0.5, 0.2, 0.3)) == [4, 1, 2]
    assert split_counts(3, (0.5, 0.2, 0.3)) == [1, 1, 1]
    assert split_counts(5, (1.0, 0.0, 0.0)) == [5, 0, 0]
    assert all(sum(split_counts(n, (0.5, 0.2, 0.3))) == n for n in range(50))


def test_folder_classnames_file(tmp_path):
    root = _folder_tree(tmp_path / "mine", {"n01": 3, "n02": 3})
    txt = tmp_path / "names.txt"
    txt.write_text("n02 red fox\nn01 grey wolf\n\nn09 unused\n")
    assert ImageFolderDataset(str(root), classnames_file=str(txt)).classnames == ["grey wolf", "red fox"]
    js = tmp_path / "names.json"
    js.write_text(json.dumps({"n01": "wolf", "n02": "fox"}))
    assert ImageFolderDataset(str(root), classnames_file=str(js)).classnames == ["wolf", "fox"]
    js.write_text(json.dumps({"n01": "wolf"}))
    with pytest.raises(DataError, match=r"names no class for 1 folder.*'n02'"):
        ImageFolderDataset(str(root), classnames_file=str(js))
    js.write_text(json.dumps({"n01": "dog", "n02": "dog"}))
    with pytest.raises(DataError, match="share a class name"):
        ImageFolderDataset(str(root), classnames_file=str(js))
    txt.write_text("n01\n")
    with pytest.raises(DataError, match=r"names.txt, line 1.*'<folder> <class name>'"):
        ImageFolderDataset(str(root), classnames_file=str(txt))


def test_folder_split_file_and_path_safety(tmp_path):
    root = _folder_tree(tmp_path / "mine", {"cat": 3, "dog": 3})
    split = {"train": [["cat/img_000.jpg", 0, "cat"], ["dog/img_000.jpg", 1, "dog"]],
             "val": [["cat/img_001.jpg", 0, "cat"]], "test": [["dog/img_002.jpg", 1, "dog"]]}
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    src = ImageFolderDataset(str(root), split_file=str(path))
    assert src.split_sizes() == {"train": 2, "val": 1, "test": 1} and src.labels("train") == [0, 1]
    assert src.identity()["split_file"] == str(path)
    split["test"].append(["../../secret.jpg", 1, "dog"])
    path.write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"test\[1\].*'../../secret.jpg' leaves the image folder"):
        ImageFolderDataset(str(root), split_file=str(path))
    with pytest.raises(DataError, match="not both"):
        ImageFolderDataset(str(root), split_file=str(path), classnames_file=str(path))
    split["test"][1] = ["dog/img_009.jpg", 1, "dog"]
    path.write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"1 of 5 images .* missing .*img_009.jpg"):
        ImageFolderDataset(str(root), split_file=str(path))


def test_folder_bad_inputs(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "absent")):
        ImageFolderDataset(str(tmp_path / "absent"))
    root = _folder_tree(tmp_path / "mine", {"a": 2, "b": 5})
    with pytest.raises(DataError, match=r"/a has only 2 image\(s\).*\['val'\]"):
        ImageFolderDataset(str(root))
    assert ImageFolderDataset(str(root), split_ratio=(0.5, 0.0, 0.5)).split_sizes()["val"] == 0
    with pytest.raises(DataError, match="sum to 1"):
        ImageFolderDataset(str(root), split_ratio=(0.5, 0.5, 0.5))
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="has no images"):
        ImageFolderDataset(str(root), split_ratio=(0.5, 0.0, 0.5))
    with pytest.raises(DataError, match="on_corrupt"):
        ImageFolderDataset(str(_folder_tree(tmp_path / "ok", {"a": 4})), on_corrupt="ignore")


def test_folder_corrupt_skip_and_pickle(tmp_path):
    root = _folder_tree(tmp_path / "mine", {"a": 10, "b": 10})
    bad = root / "b" / "img_004.jpg"
    bad.write_bytes(bad.read_bytes()[:60])
    src = ImageFolderDataset(str(root), on_corrupt="skip")
    assert src.skipped == 1 and sum(src.split_sizes().values()) == 19
    assert all(str(bad) not in src.paths(s) for s in src.splits)
    ds = pickle.loads(pickle.dumps(src.dataset("train")))  # DataLoader workers pickle the dataset
    assert len(ds) == src.split_sizes()["train"] and ds[0][0].shape == (3, 8, 8)


# ----------------------------------------------------------------------------- ImageNet family
# "ImageNet order" is the class-name file's order; here it differs from the sorted wnid (folder) order.
IMAGENET = [("n03000003", "gamma"), ("n01000001", "alpha"), ("n02000002", "beta"), ("n00000009", "delta"),
            ("n04000004", "epsilon")]


def _classnames(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\r\n" for w, n in IMAGENET))
    return path


def _subset_tree(root: Path, folder: str, sub: str, wnids: dict[str, int]) -> Path:
    for w, n in wnids.items():
        for i in range(n):
            _jpeg(root / folder / sub / w / f"{w}_{i}.jpg", shade=i)
    (root / folder / sub / "README.txt").write_text("ignored")
    return root


@pytest.mark.parametrize("cls, folder, sub", [(ImageNetA, "imagenet-adversarial", "imagenet-a"),
                                              (ImageNetR, "imagenet-rendition", "imagenet-r")])
def test_subset_variants_label_in_imagenet_order(tmp_path, caplog, cls, folder, sub):
    root = _subset_tree(tmp_path, folder, sub, {"n00000009": 2, "n01000001": 3, "n04000004": 1})
    _classnames(root / folder / "classnames.txt")
    with caplog.at_level(logging.WARNING, logger="vlprompt.data"):
        src = cls(str(root))
    assert "differ from CoOp's ImageNet classnames.txt" in caplog.text
    # folder order: n00000009, n01000001, n04000004; ImageNet order: n01000001 (1), n00000009 (3), n04000004 (4)
    assert src.wnids == ["n01000001", "n00000009", "n04000004"]
    assert src.classnames == ["alpha", "delta", "epsilon"]
    assert src.imagenet_indices == [1, 3, 4]
    for p, y in zip(src.paths("test"), src.labels("test")):
        assert Path(p).parent.name == src.wnids[y]
    assert sorted(src.labels("test")) == [0, 0, 0, 1, 1, 2]
    assert src.split_sizes() == {"test": 6}
    for split in ("train", "val"):
        with pytest.raises(DataError, match=f"test-only .* no '{split}' split"):
            src.labels(split)
    x, y = src.dataset("test", [5])[0]
    assert x.shape == (3, 8, 8) and y == src.labels("test")[5]


def test_subset_in_imagenet_order_rejects_unknown_wnids():
    assert subset_in_imagenet_order(["n04000004", "n03000003"], IMAGENET, where="x") == (
        ["n03000003", "n04000004"], ["gamma", "epsilon"], [0, 4])
    with pytest.raises(DataError, match=r"x: 1 sub-folder\(s\) are not ImageNet wnids.*n09999999"):
        subset_in_imagenet_order(["n09999999", "n01000001"], IMAGENET, where="x")


def test_classnames_lookup_and_missing(tmp_path):
    root = _subset_tree(tmp_path, "imagenet-rendition", "imagenet-r", {"n02000002": 1})
    with pytest.raises(DataError) as err:
        ImageNetR(str(root))
    msg = str(err.value)
    assert str(root / "imagenet-rendition/classnames.txt") in msg and str(root / "imagenet/classnames.txt") in msg
    assert "datasets/imagenet_r.md" in msg
    _classnames(root / "imagenet/classnames.txt")  # falls back to the ImageNet folder
    assert ImageNetR(str(root)).classnames == ["beta"]
    own = _classnames(tmp_path / "elsewhere/names.txt")
    assert ImageNetR(str(root), classnames_file=str(own)).identity()["classnames_file"] == str(own)


def test_imagenet_v2_and_sketch(tmp_path):
    root = tmp_path
    _classnames(root / "imagenet/classnames.txt")
    for label in (0, 4, 3):
        _jpeg(root / "imagenetv2/imagenetv2-matched-frequency-format-val" / str(label) / "a.jpeg")
    v2 = ImageNetV2(str(root))
    assert v2.classnames == [n for _, n in IMAGENET]
    assert v2.labels("test") == [0, 3, 4]
    _jpeg(root / "imagenetv2/imagenetv2-matched-frequency-format-val/n01000001/a.jpeg")
    with pytest.raises(DataError, match=r"folders named by the label 0..4.*n01000001"):
        ImageNetV2(str(root))
    for w in ("n04000004", "n00000009"):
        _jpeg(root / "imagenet-sketch/images" / w / "s.JPEG")
    sketch = ImageNetSketch(str(root))
    assert sketch.labels("test") == [3, 4] and len(sketch.classnames) == 5


def test_imagenet_train_val_test(tmp_path):
    root = tmp_path
    _classnames(root / "imagenet/classnames.txt")
    for split, n in (("train", 2), ("val", 1)):
        for w, _ in IMAGENET:
            for i in range(n):
                _jpeg(root / "imagenet/images" / split / w / f"{i}.JPEG")
    src = ImageNet(str(root))
    assert src.classnames == [n for _, n in IMAGENET]
    assert src.split_sizes() == {"train": 10, "val": 5, "test": 5}
    assert src.paths("test") == src.paths("val")
    for p, y in zip(src.paths("train"), src.labels("train")):
        assert Path(p).parent.name == IMAGENET[y][0]
    _jpeg(root / "imagenet/images/val/ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="holds 1 image file.*directly"):
        ImageNet(str(root))


def test_check_dataset_on_synthetic_imagenet_a(tmp_path):
    root = _subset_tree(tmp_path, "imagenet-adversarial", "imagenet-a", {"n01000001": 2})
    _classnames(root / "imagenet-adversarial/classnames.txt")
    report = check_dataset("imagenet_a", str(root), source_cls=ImageNetA)
    assert report.facts["classes"] == 1 and report.facts["expected"]["classes"] == 200
    assert any("1 classes, expected 200" in p for p in report.problems)
    assert any("expected 7500" in p for p in report.problems)
    assert any("differ from CoOp's" in w for w in report.warnings)


# ----------------------------------------------------------------------------- CoOp layouts without shared data
def test_fgvc_aircraft_reader(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    names = ["737-200", "F/A-18", "Cessna 172"]
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(names) + "\n")
    rows = {"train": [("0001", "F/A-18"), ("0002", "737-200")], "val": [("0003", "Cessna 172")],
            "test": [("0004", "F/A-18")]}
    for split, lines in rows.items():
        (base / f"images_variant_{split}.txt").write_text("".join(f"{i} {n}\n" for i, n in lines))
        for i, _ in lines:
            _jpeg(base / "images" / f"{i}.jpg")
    src = FGVCAircraft(str(tmp_path))
    assert src.classnames == names and src.labels("train") == [1, 0] and src.labels("test") == [1]
    assert src.paths("val") == [str(base / "images/0003.jpg")]
    assert src.official_split is None and len(src.identity()["split_file"]) == 4
    (base / "images_variant_test.txt").write_text("0004 Boeing 999\n")
    with pytest.raises(DataError, match=r"images_variant_test.txt, line 1: variant 'Boeing 999' is not in"):
        FGVCAircraft(str(tmp_path))
    (base / "images_variant_test.txt").unlink()
    with pytest.raises(DataError, match=r"missing .*images_variant_test.txt.*datasets/fgvc_aircraft.md"):
        FGVCAircraft(str(tmp_path))


def test_stanford_cars_image_dir_is_dataset_folder(tmp_path):
    base = tmp_path / "stanford_cars"
    _jpeg(base / "cars_train/00001.jpg")
    _jpeg(base / "cars_test/00001.jpg")
    split = {"train": [["cars_train/00001.jpg", 0, "2012 Audi TTS Coupe"]], "val": [],
             "test": [["cars_test/00001.jpg", 0, "2012 Audi TTS Coupe"]]}
    (base / "split_zhou_StanfordCars.json").write_text(json.dumps(split))
    src = StanfordCars(str(tmp_path))
    assert src.paths("test") == [str(base / "cars_test/00001.jpg")] and src.official_split is False
    with pytest.raises(DataError, match="differs from the official CoOp split_zhou_StanfordCars.json"):
        StanfordCars(str(tmp_path), strict_checksum=True)
