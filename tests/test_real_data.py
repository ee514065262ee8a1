"""Real data (EuroSAT, Caltech101 subsets and the original CoOp split files) read from ../shared/data.

Skipped when the shared data folder is absent. The shared folder is only read: every test that alters
data copies a small subset into ``tmp_path`` first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from vlprompt.backbones.base import PreprocessConfig
from vlprompt.data.base import DataError
from vlprompt.cli.data import data_main
from vlprompt.runs.data_check import check_dataset
from vlprompt.data.coop import Caltech101, EuroSAT, known_splits
from vlprompt.data.transforms import build_transform

CUT_DOWN = {  # (dataset class, split file under the shared root, classes, sizes)
    "eurosat": (EuroSAT, "eurosat/split_zhou_EuroSAT.json", 10, {"train": 1500, "val": 500, "test": 1000}),
    "caltech101": (Caltech101, "caltech-101/split_zhou_Caltech101.json", 100, {"train": 800, "val": 200, "test": 500}),
}
PRE = PreprocessConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def eurosat_subset(shared_data: Path, tmp_path: Path) -> Path:
    """A DATA root in tmp_path with 3 EuroSAT classes x 4 images (2/1/1) and a matching split file."""
    full = json.loads((shared_data / "eurosat/split_zhou_EuroSAT.json").read_text())
    split: dict[str, list] = {}
    for s, per_class in (("train", 2), ("val", 1), ("test", 1)):
        rows = []
        for label in range(3):
            rows += [e for e in full[s] if e[1] == label][:per_class]
        split[s] = rows
    root = tmp_path / "data"
    for rows in split.values():
        for rel, _, _ in rows:
            dst = root / "eurosat/2750" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared_data / "eurosat/2750" / rel, dst)
    (root / "eurosat/split_zhou_EuroSAT.json").write_text(json.dumps(split))
    return root


def _write_split(root: Path, split: dict) -> Path:
    path = root / "eurosat/split_zhou_EuroSAT.json"
    path.write_text(json.dumps(split))
    return path


# ----------------------------------------------------------------------------- loading the shared subsets
@pytest.mark.parametrize("name", sorted(CUT_DOWN))
def test_cut_down_split_loads(shared_data, caplog, name):
    cls, rel, classes, sizes = CUT_DOWN[name]
    data = json.loads((shared_data / rel).read_text())
    assert {s: len(data[s]) for s in sizes} == sizes  # the stated sizes are the file's
    with caplog.at_level(logging.WARNING, logger="vlprompt.data"):
        source = cls(str(shared_data))
    assert "differs from the official CoOp" in caplog.text and cls.split_filename in caplog.text
    assert len(source.classnames) == classes
    assert source.split_sizes() == sizes
    for split in sizes:
        labels = source.labels(split)
        assert labels == [e[1] for e in data[split]]
        assert all(source.classnames[y] == e[2] for y, e in zip(labels, data[split]))
    assert sorted(set(source.labels("train"))) == list(range(classes))
    ident = source.identity()
    assert ident["split_sha256"] == _sha(shared_data / rel) and ident["official_split"] is False
    assert ident["name"] == name and ident["root"] == str(shared_data)


def test_images_decode_through_transform(shared_data):
    source = Caltech101(str(shared_data))
    ds = source.dataset("test", [0, 7, 499], build_transform(PRE, train=False))
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
        assert y == source.labels("test")[[0, 7, 499][i]]
    x, _ = EuroSAT(str(shared_data)).dataset("train", [3], build_transform(PRE, train=True, augment="flip_crop"))[0]
    assert x.shape == (3, 32, 32)
    raw, _ = EuroSAT(str(shared_data)).dataset("val", [0])[0]  # no transform: the native 64x64 as floats
    assert raw.shape == (3, 64, 64) and raw.dtype == torch.float32


def test_strict_checksum_rejects_cut_down_split(shared_data):
    with pytest.raises(DataError, match="differs from the official CoOp split_zhou_EuroSAT.json"):
        EuroSAT(str(shared_data), strict_checksum=True)


def test_original_split_files_match_known_checksums(shared_data):
    table = known_splits()["splits"]
    files = sorted((shared_data / "coop_splits").glob("split_zhou_*.json"))
    assert len(files) == 7
    for path in files:
        assert table[path.name] == _sha(path), path.name
    assert table["split_zhou_Food101.json"] is None and table["split_zhou_SUN397.json"] is None
    classnames = known_splits()["other_files"]["imagenet/classnames.txt"]
    assert classnames["sha256"] == _sha(shared_data / "coop_splits/imagenet_classnames.txt")


def test_official_split_is_recognised_and_missing_images_reported(shared_data, caplog):
    official = shared_data / "coop_splits/split_zhou_EuroSAT.json"
    with caplog.at_level(logging.WARNING, logger="vlprompt.data"):
        source = EuroSAT(str(shared_data), split_file=str(official), strict_checksum=True, check_files=False)
    assert "differs" not in caplog.text
    assert source.official_split is True and source.split_sizes() == {"train": 13500, "val": 5400, "test": 8100}
    assert len(source.missing_files()) == 27000 - 3000
    with pytest.raises(DataError) as err:
        EuroSAT(str(shared_data), split_file=str(official))
    msg = str(err.value)
    assert "24000 of 27000 images" in msg and str(official) in msg and "datasets/eurosat.md" in msg
    assert str(shared_data / "eurosat/2750") in msg and ".jpg" in msg


# ----------------------------------------------------------------------------- bad inputs (on copies)
@pytest.mark.parametrize("bad_path", ["../../../etc/passwd", "/etc/passwd", "Forest/../../outside.jpg"])
def test_path_traversal_rejected(eurosat_subset, bad_path):
    split = json.loads((eurosat_subset / "eurosat/split_zhou_EuroSAT.json").read_text())
    split["val"][0][0] = bad_path
    path = _write_split(eurosat_subset, split)
    with pytest.raises(DataError) as err:
        EuroSAT(str(eurosat_subset), check_files=False)
    assert str(path) in str(err.value) and repr(bad_path) in str(err.value) and "val[0]" in str(err.value)


def test_inner_dotdot_that_stays_inside_is_allowed(eurosat_subset):
    split = json.loads((eurosat_subset / "eurosat/split_zhou_EuroSAT.json").read_text())
    rel = split["train"][0][0]
    split["train"][0][0] = f"{rel.split('/')[0]}/../{rel}"
    _write_split(eurosat_subset, split)
    assert EuroSAT(str(eurosat_subset)).paths("train")[0] == str(eurosat_subset / "eurosat/2750" / rel)


def test_missing_image_reported(eurosat_subset):
    split = json.loads((eurosat_subset / "eurosat/split_zhou_EuroSAT.json").read_text())
    gone = eurosat_subset / "eurosat/2750" / split["test"][1][0]
    gone.unlink()
    with pytest.raises(DataError) as err:
        EuroSAT(str(eurosat_subset))
    assert "1 of 12 images" in str(err.value) and str(gone) in str(err.value)
    source = EuroSAT(str(eurosat_subset), check_files=False)
    assert source.missing_files() == [str(gone)]


def test_corrupt_image_fail_names_file_and_skip_counts(eurosat_subset, caplog):
    split = json.loads((eurosat_subset / "eurosat/split_zhou_EuroSAT.json").read_text())
    bad = eurosat_subset / "eurosat/2750" / split["train"][3][0]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    source = EuroSAT(str(eurosat_subset))
    assert source.labels("train") == [e[1] for e in split["train"]]  # labels never decode
    ds = source.dataset("train")
    ds[0]
    with pytest.raises(DataError) as err:
        ds[3]
    assert str(bad) in str(err.value) and "on_corrupt='skip'" in str(err.value)
    assert [(c.index, c.path) for c in source.verify_images("train")] == [(3, str(bad))]
    with caplog.at_level(logging.WARNING, logger="vlprompt.data"):
        skipping = EuroSAT(str(eurosat_subset), on_corrupt="skip")
    assert skipping.skipped == 1 and skipping.skipped_by_split == {"train": 1, "val": 0, "test": 0}
    assert "skipped 1 unreadable" in caplog.text
    assert skipping.split_sizes() == {"train": 5, "val": 3, "test": 3}
    assert str(bad) not in skipping.paths("train")
    assert skipping.labels("train") == [e[1] for i, e in enumerate(split["train"]) if i != 3]
    assert all(skipping.dataset("train")[i][0].shape == (3, 64, 64) for i in range(5))


def test_contradictory_labels_rejected(eurosat_subset):
    split = json.loads((eurosat_subset / "eurosat/split_zhou_EuroSAT.json").read_text())
    name = split["train"][0][2]
    split["test"][2][2] = name  # a label-2 entry named like class 0
    path = _write_split(eurosat_subset, split)
    with pytest.raises(DataError) as err:
        EuroSAT(str(eurosat_subset))
    msg = str(err.value)
    assert str(path) in msg and "contradictory" in msg and "test[2]" in msg and repr(name) in msg
    split = json.loads(json.dumps(split))
    split["test"][2][2] = "Forest"
    split["val"][0][1] = 1  # a class-0 name with label 1
    _write_split(eurosat_subset, split)
    with pytest.raises(DataError, match=r"label 1 is .* but 'Annual Crop Land' at val\[0\]"):
        EuroSAT(str(eurosat_subset))


def test_malformed_split_files(eurosat_subset):
    path = eurosat_subset / "eurosat/split_zhou_EuroSAT.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        EuroSAT(str(eurosat_subset))
    path.write_text(json.dumps({"train": [["a.jpg", 0, "x"]], "test": []}))
    with pytest.raises(DataError, match=r"no list for split\(s\) \['val'\]"):
        EuroSAT(str(eurosat_subset))
    path.write_text(json.dumps({"train": [["a.jpg", "0", "x"]], "val": [], "test": []}))
    with pytest.raises(DataError, match=r"train\[0\].*not \[relative_path, integer label, class name\]"):
        EuroSAT(str(eurosat_subset))


def test_missing_root_folder_and_split_file(tmp_path):
    with pytest.raises(DataError) as err:
        EuroSAT(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(err.value) and "datasets/eurosat.md" in str(err.value)
    (tmp_path / "eurosat").mkdir()
    with pytest.raises(DataError) as err:
        EuroSAT(str(tmp_path))
    assert str(tmp_path / "eurosat/2750") in str(err.value) and "datasets/eurosat.md" in str(err.value)
    (tmp_path / "eurosat/2750").mkdir()
    with pytest.raises(DataError) as err:
        EuroSAT(str(tmp_path))
    assert str(tmp_path / "eurosat/split_zhou_EuroSAT.json") in str(err.value)
    assert "datasets/eurosat.md" in str(err.value)
    with pytest.raises(DataError, match="split_file="):
        EuroSAT(str(tmp_path), split_file=str(tmp_path / "mine.json"))


# ----------------------------------------------------------------------------- data check
def test_check_dataset_on_shared_eurosat(shared_data):
    report = check_dataset("eurosat", str(shared_data), source_cls=EuroSAT)
    assert report.ok, report.problems
    assert len(report.warnings) == 1 and "differs from the official CoOp" in report.warnings[0]
    assert report.facts["classes"] == 10 and report.facts["sizes"] == {"train": 1500, "val": 500, "test": 1000}
    assert report.facts["official_split"] is False and report.facts["missing_files"] == 0
    strict = check_dataset("eurosat", str(shared_data), strict=True, source_cls=EuroSAT)
    assert not strict.ok and "differs from the official" in strict.problems[0]


def test_check_dataset_official_split_compares_sizes(shared_data, tmp_path):
    root = tmp_path / "data"
    (root / "eurosat/2750").mkdir(parents=True)
    shutil.copyfile(shared_data / "coop_splits/split_zhou_EuroSAT.json", root / "eurosat/split_zhou_EuroSAT.json")
    report = check_dataset("eurosat", str(root), source_cls=EuroSAT)
    assert report.facts["official_split"] is True and report.facts["sizes"]["train"] == 13500
    assert "official split file" in report.facts["compared"]
    assert len(report.problems) == 1 and "27000 listed image(s) are missing" in report.problems[0]


def test_check_dataset_decode_and_cli(eurosat_subset, capsys):
    split = json.loads((eurosat_subset / "eurosat/split_zhou_EuroSAT.json").read_text())
    bad = eurosat_subset / "eurosat/2750" / split["val"][1][0]
    bad.write_bytes(b"not an image")
    assert check_dataset("eurosat", str(eurosat_subset), source_cls=EuroSAT).ok
    report = check_dataset("eurosat", str(eurosat_subset), decode=True, source_cls=EuroSAT)
    assert not report.ok and report.facts["unreadable"] == 1 and report.facts["decoded"] == 12
    assert str(bad) in report.problems[0]
    assert check_dataset("eurosat", str(eurosat_subset / "nope"), source_cls=EuroSAT).problems
    assert data_main(["check", "no_such_dataset_xyz", "--root", str(eurosat_subset)]) == 1
    assert "no_such_dataset_xyz" in capsys.readouterr().out


def test_data_main_prints_report(shared_data, monkeypatch, capsys):
    import vlprompt.learners.registry as registry

    class _Registry:
        def get(self, name: str) -> type:
            assert name == "eurosat"
            return EuroSAT

    monkeypatch.setattr(registry, "get_registry", lambda kind: _Registry())
    assert data_main(["check", "eurosat", "--root", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "differs from the official CoOp" in out and "1500" in out
    assert data_main(["check", "eurosat", "--root", str(shared_data), "--strict"]) == 1
    assert "PROBLEMS" in capsys.readouterr().out
