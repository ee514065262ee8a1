"""Segmentation data: medvlsm/TuneVLSeg layout, original releases, conversion, checks, toy benchmark."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vlprompt.backbones.base import PreprocessConfig
from vlprompt.data.base import DataError
from vlprompt.data.medseg import BUSIRelease, KvasirSEGRelease, MedVLSMDataset
from vlprompt.data.medseg_convert import convert_to_medvlsm
from vlprompt.data.medseg_prompts import generate_prompts, mask_attributes, PromptSpec
from vlprompt.data.seg_dataset import choose_prompt, mask_value_problem, swap_left_right
from vlprompt.data.segmentation import SPLITS, SegmentationSource

PP = PreprocessConfig(image_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bicubic")
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
PROMPTS = {"p0": "", "p1": "polyp", "p2": "round polyp on the left", "p3": ["a", "b", "c", "d"]}


def _write_pair(root: Path, stem: str, *, size=(24, 20), box=(2, 3, 10, 12), mask_ext=".png") -> None:
    rng = np.random.default_rng(abs(hash(stem)) % 2**32)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
    m = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    Image.fromarray(m).save(root / "masks" / f"{stem}{mask_ext}")


def make_medvlsm(root: Path, n: int = 3, prompts: dict | None = None) -> Path:
    """A tiny medvlsm-layout dataset: n items per split."""
    for sub in ("images", "masks", "anns"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        anns = []
        for i in range(n):
            stem = f"{split}{i}"
            _write_pair(root, stem)
            anns.append({"bbox": [2, 3, 9, 11], "cat": 0, "segment_id": stem, "img_name": f"{stem}.png",  # medvlsm keys
                         "mask_name": f"{stem}.png", "sentences": [{"idx": 0, "sent_id": i, "sent": ""}],
                         "prompts": prompts or PROMPTS, "sentences_num": 1})
        (root / "anns" / f"{split}.json").write_text(json.dumps(anns))
    return root


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ------------------------------------------------------------------ medvlsm layout
def test_medvlsm_reader_items(tmp_path):
    src = MedVLSMDataset(str(make_medvlsm(tmp_path / "ds")))
    assert isinstance(src, SegmentationSource) and src.task == "segmentation"
    assert {s: src.size(s) for s in SPLITS} == {"train": 3, "val": 3, "test": 3}
    item = src.dataset("test", preprocess=PP, prompt_index=1)[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].shape == (1, 16, 16) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["prompt"] == "polyp" and item["name"] == "test0.png"
    ident = src.identity()
    assert set(ident["anns_sha256"]) == set(SPLITS)


def test_image_resized_pil_side_and_mask_nearest(tmp_path):
    root = make_medvlsm(tmp_path / "ds")
    src = MedVLSMDataset(str(root))
    item = src.dataset("train", preprocess=PP, prompt_index=1)[0]
    pil = Image.open(root / "images" / "train0.png").convert("RGB")
    ref = TF.to_dtype(TF.pil_to_tensor(TF.resize(pil, [16, 16], interpolation=InterpolationMode.BICUBIC)),
                      torch.float32, scale=True)
    assert torch.equal(item["image"], ref)  # PIL resize then float, as the classification transforms
    mask = Image.open(root / "masks" / "train0.png").resize((16, 16), Image.Resampling.NEAREST)
    assert torch.equal(item["mask"][0], torch.from_numpy(np.asarray(mask) >= 128).float())


def test_prompt_index_semantics_as_tunevlseg(tmp_path):
    src = MedVLSMDataset(str(make_medvlsm(tmp_path / "ds", n=8)))
    assert src.dataset("train", preprocess=None, prompt_index=2)[0]["prompt"] == "round polyp on the left"
    assert src.dataset("train", preprocess=None, prompt_index=0)[0]["prompt"] == ""
    ds = src.dataset("train", preprocess=None, prompt_index=-1, seed=3)
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        seen |= {ds.prompt_of(i) for i in range(len(ds))}
    assert "" not in seen  # -1 never draws p0
    assert {"polyp", "round polyp on the left"} <= seen and seen & set("abcd")  # lists are sampled
    # reproducible per (seed, epoch, item), different across epochs
    ds.set_epoch(1)
    a = [ds.prompt_of(i) for i in range(8)]
    again = src.dataset("train", preprocess=None, prompt_index=-1, seed=3)
    again.set_epoch(1)
    assert a == [again.prompt_of(i) for i in range(8)]
    ds.set_epoch(2)
    assert a != [ds.prompt_of(i) for i in range(8)]
    over = src.dataset("train", preprocess=None, prompt_index=-1, prompt="a fixed text")
    assert {over.prompt_of(i) for i in range(8)} == {"a fixed text"}


def test_choose_prompt_sorts_keys_numerically():
    import random

    prompts = {"p10": "ten", "p2": "two", "p0": "zero", "p1": "one"}
    drawn = {choose_prompt(prompts, -1, random.Random(i)) for i in range(50)}
    assert drawn == {"one", "two", "ten"}


def test_stop_at_end(tmp_path):
    src = MedVLSMDataset(str(make_medvlsm(tmp_path / "ds")), stop_at_end=True)
    ds = src.dataset("val", preprocess=None, prompt_index=1)
    assert ds[0]["prompt"] == "polyp."
    assert src.dataset("val", preprocess=None, prompt_index=0)[0]["prompt"] == ""


def test_flip_is_joint_and_swaps_left_right(tmp_path):
    src = MedVLSMDataset(str(make_medvlsm(tmp_path / "ds", n=12)))
    plain = src.dataset("train", preprocess=PP, prompt_index=2)
    aug = src.dataset("train", preprocess=PP, prompt_index=2, augment=True, seed=0)
    flipped = 0
    for i in range(12):
        a, b = plain[i], aug[i]
        if torch.equal(a["mask"], b["mask"]):
            assert torch.equal(a["image"], b["image"]) and b["prompt"] == a["prompt"]
        else:
            flipped += 1
            assert torch.equal(b["mask"], a["mask"].flip(-1))
            assert torch.allclose(b["image"], a["image"].flip(-1), atol=1 / 255)
            assert b["prompt"] == "round polyp on the right"
    assert 0 < flipped < 12
    assert swap_left_right("Left and right, top left") == "Right and left, top right"


# ------------------------------------------------------------------ bad inputs (clear errors, nothing written)
def test_missing_mask_names_file(tmp_path):
    root = make_medvlsm(tmp_path / "ds")
    os.remove(root / "masks" / "val1.png")
    with pytest.raises(DataError, match=r"mask .*val1\.png.*does not exist"):
        MedVLSMDataset(str(root))


def test_mask_of_other_size(tmp_path):
    root = make_medvlsm(tmp_path / "ds")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "masks" / "test2.png")
    with pytest.raises(DataError, match=r"test2\.png is 5x5 px but its image .*test2\.png is 24x20"):
        MedVLSMDataset(str(root))


def test_non_binary_mask(tmp_path):
    root = make_medvlsm(tmp_path / "ds")
    Image.fromarray(np.full((20, 24), 128, np.uint8)).save(root / "masks" / "train1.png")
    Image.fromarray((np.arange(20 * 24).reshape(20, 24) % 2).astype(np.uint8)).save(root / "masks" / "train2.png")
    with pytest.raises(DataError, match=r"mask .*train1\.png is not binary.*binarise"):
        MedVLSMDataset(str(root))  # before any work: every mask is decoded at start-up
    ds = MedVLSMDataset(str(root), check_masks=False).dataset("train", preprocess=PP, prompt_index=1)
    with pytest.raises(DataError, match=r"mask .*train1\.png is not binary.*binarise"):
        ds[1]
    with pytest.raises(DataError, match=r"train2\.png is not binary.*label map"):
        ds[2]
    assert mask_value_problem(np.array([[0, 3, 252, 255]], np.uint8)) is None  # JPEG noise is tolerated


def test_annotation_pointing_outside_root(tmp_path):
    root = make_medvlsm(tmp_path / "ds")
    for bad in ("../../etc/passwd", "/etc/passwd"):
        anns = json.loads((root / "anns" / "val.json").read_text())
        anns[1]["img_name"] = bad
        (root / "anns" / "val.json").write_text(json.dumps(anns))
        with pytest.raises(DataError, match=r"val\.json record 1: img_name .* points outside images/"):
            MedVLSMDataset(str(root))


def test_prompt_index_the_record_lacks(tmp_path):
    src = MedVLSMDataset(str(make_medvlsm(tmp_path / "ds")))
    with pytest.raises(DataError, match=r"record 0 \(train0\.png\) has no prompt p7 .*p0.*p3"):
        src.dataset("train", preprocess=PP, prompt_index=7)
    src.dataset("train", preprocess=PP, prompt_index=7, prompt="override")  # an override needs no key
    only = MedVLSMDataset(str(make_medvlsm(tmp_path / "ds2", prompts={"p0": "x"})))
    with pytest.raises(DataError, match="nothing to draw from"):
        only.dataset("train", preprocess=PP, prompt_index=-1)


@pytest.mark.parametrize("content", ["", "[]"])
def test_empty_annotation_file(tmp_path, content):
    root = make_medvlsm(tmp_path / "ds")
    (root / "anns" / "test.json").write_text(content)
    with pytest.raises(DataError, match=r"annotation file .*test\.json is empty"):
        MedVLSMDataset(str(root))


def test_release_folder_given_to_medvlsm_reader_says_how_to_convert(tmp_path):
    root = make_medvlsm(tmp_path / "ds")
    for f in (root / "anns").iterdir():
        f.unlink()
    (root / "anns").rmdir()
    with pytest.raises(DataError, match="no anns/ folder.*vlprompt data convert"):
        MedVLSMDataset(str(root))


def test_data_check_reports_segmentation_problems(tmp_path):
    from vlprompt.runs.data_check import check_dataset

    root = make_medvlsm(tmp_path / "ds")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(root / "masks" / "val0.png")  # empty mask
    Image.fromarray(np.full((20, 24), 100, np.uint8)).save(root / "masks" / "val1.png")  # not binary
    os.remove(root / "masks" / "test0.png")
    before = _snapshot(root)
    report = check_dataset("medvlsm", str(root))
    assert _snapshot(root) == before
    assert not report.ok
    assert report.facts["empty_masks"]["val"] == 1
    assert report.facts["non_binary_masks"] == 1
    assert any("test0.png" in p and "does not exist" in p for p in report.problems)
    assert report.facts["prompt_keys"] == ["p0", "p1", "p2", "p3"]


# ------------------------------------------------------------------ prompts generated from masks
def test_mask_attributes_and_prompt_ladder():
    mask = np.zeros((90, 90), bool)
    mask[5:20, 65:80] = True  # a square in the top right
    mask[60:80, 5:25] = True  # another in the bottom left
    image = np.zeros((90, 90, 3), np.uint8)
    image[..., 0] = 230
    attrs = mask_attributes(mask, image)
    assert attrs["number"] == 2 and attrs["shape"] == "square" and attrs["colour"] == "red"
    assert attrs["size"] == "medium" and set(attrs["location"]) == {"top right", "bottom left"}
    prompts = generate_prompts(attrs, PromptSpec(noun="polyp", descriptions=("a growth",)))
    assert prompts["p1"] == "polyp" and prompts["p5"] == "two medium red square polyp"
    assert prompts["p6"].endswith("located in bottom left, top right of the image")
    assert prompts["p9"] == [f"two medium red square polyp which is a growth {prompts['p6'].split(', ', 1)[1]}"]
    empty = generate_prompts(mask_attributes(np.zeros((8, 8), bool)), PromptSpec(noun="tumor", context="in x"))
    assert empty["p0"] == "" and set(list(empty.values())[1:]) == {"no tumor in x"}


# ------------------------------------------------------------------ original releases (synthetic)
def test_busi_release_merges_masks_and_keeps_spaces(tmp_path):
    root = tmp_path / "Dataset_BUSI_with_GT"
    for cls, n in (("benign", 20), ("normal", 10)):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(np.full((10, 12, 3), 90, np.uint8)).save(d / f"{cls} ({i}).png")
            m = np.zeros((10, 12), np.uint8)
            if cls == "benign":
                m[1:4, 1:4] = 255
            Image.fromarray(m).save(d / f"{cls} ({i})_mask.png")
    second = np.zeros((10, 12), np.uint8)
    second[6:9, 6:9] = 255
    Image.fromarray(second).save(root / "benign" / "benign (2)_mask_1.png")
    src = BUSIRelease(str(tmp_path))
    assert src.merged == 1
    recs = {r.name: (s, r) for s in SPLITS for r in src.records[s]}
    assert len(recs) == 30 and "benign (2).png" in recs
    split, rec = recs["benign (2).png"]
    assert len(rec.masks) == 2
    _, mask = src.load_item(split, src.records[split].index(rec))
    assert mask.sum() == 18  # union of both masks
    split, rec = recs["normal (1).png"]
    assert rec.prompts["p1"].startswith("no breast tumor")
    assert src.load_item(split, src.records[split].index(rec))[1].sum() == 0


def test_busi_release_image_without_mask(tmp_path):
    d = tmp_path / "busi" / "images"
    d.mkdir(parents=True)
    (tmp_path / "busi" / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "malignant (3).png")
    with pytest.raises(DataError, match=r"malignant \(3\)\.png has no mask.*malignant \(3\)_mask\.png"):
        BUSIRelease(str(tmp_path))


# ------------------------------------------------------------------ real data (read-only)
def _needs(name: str) -> Path:
    path = SHARED / name
    if not (path / "images").is_dir():
        pytest.skip(f"real data {path} is absent")
    return path


def test_kvasir_release_real_data_and_conversion(tmp_path):
    path = _needs("kvasir_seg")
    before = _snapshot(path)
    src = KvasirSEGRelease(str(SHARED))
    sizes = {s: src.size(s) for s in SPLITS}
    assert sum(sizes.values()) == 300
    # MediaEval lists: test = the MediaEval val ids present; val/train partition the train ids
    val_ids = set((path / "splits_mediaeval2020" / "val.txt").read_text().split())
    assert {Path(r.name).stem for r in src.records["test"]} <= val_ids
    item = src.dataset("train", preprocess=PP, prompt_index=1)[0]
    assert item["mask"].sum() > 0 and item["prompt"] == "polyp"
    src.records = {s: r[:6] for s, r in src.records.items()}  # convert a few (the suite stays fast)
    summary = convert_to_medvlsm(src, tmp_path / "kvasir_polyp")
    out = MedVLSMDataset(str(tmp_path), folder="kvasir_polyp")
    assert {s: out.size(s) for s in SPLITS} == {s: 6 for s in SPLITS} == summary["sizes"]
    rec = out.records["train"][0]
    assert [f"p{k}" for k in range(10)] == list(rec.prompts)
    grey = np.asarray(Image.open(rec.masks[0]))
    assert set(np.unique(grey).tolist()) <= {0, 255}
    with pytest.raises(DataError, match="inside the source dataset"):
        convert_to_medvlsm(src, path / "converted")
    assert _snapshot(path) == before  # nothing written into the data root


def test_busi_release_real_data_and_conversion(tmp_path):
    path = _needs("busi")
    before = _snapshot(path)
    src = BUSIRelease(str(SHARED))
    assert sum(src.size(s) for s in SPLITS) == 75 and src.merged == 2
    normals = [r for s in SPLITS for r in src.records[s] if r.category == "normal"]
    assert len(normals) == 15
    summary = convert_to_medvlsm(src, tmp_path / "busi")
    assert sum(summary["empty_masks"].values()) == 15
    out = MedVLSMDataset(str(tmp_path / "busi"))
    assert all(" " not in r.name for s in SPLITS for r in out.records[s])
    item = out.dataset("test", preprocess=PP, prompt_index=-1)[0]
    assert item["image"].shape == (3, 16, 16)
    assert _snapshot(path) == before


# ------------------------------------------------------------------ toy benchmark
def test_toy_segmentation_benchmark():
    from vlprompt.data.toyworld.segmentation import ToySegmentation, ToySegmentationScan

    src = ToySegmentation(sizes=(8, 4, 8))
    assert src.split_style("train") == "clean" and src.split_style("test") == "scan"
    ds = src.dataset("train", preprocess=None, prompt_index=1)
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["mask"].sum() > 0
    assert item["prompt"] in ("circle", "square", "triangle", "diamond")
    again = ToySegmentation(sizes=(8, 4, 8)).dataset("train", preprocess=None, prompt_index=1)[0]
    assert torch.equal(item["image"], again["image"]) and torch.equal(item["mask"], again["mask"])
    recs = src.records["test"]
    assert all(set(r.prompts) == {"p0", "p1", "p2", "p3", "p4"} for r in recs)
    assert recs[0].prompts["p3"].startswith("the ") and recs[0].prompts["p4"].startswith(recs[0].prompts["p3"])
    big = src.dataset("test", preprocess=PreprocessConfig(image_size=64, mean=(0, 0, 0), std=(1, 1, 1)))[0]
    assert big["image"].shape == (3, 64, 64) and set(big["mask"].unique().tolist()) == {0.0, 1.0}
    # the shifted domain differs from the clean one: washed-out colours
    clean = ToySegmentation(sizes=(8, 4, 8), test_style="clean").dataset("test", preprocess=None)[0]["image"]
    scan = ToySegmentationScan(sizes=(8, 4, 8)).dataset("test", preprocess=None)[0]["image"]
    assert clean.std(0).mean() > 2 * scan.std(0).mean()
    with pytest.raises(ValueError, match="num_objects"):
        ToySegmentation(num_objects=9)


def test_toy_categories_unique_per_image():
    from vlprompt.data.toyworld.segmentation import ToySegmentation

    src = ToySegmentation(sizes=(64, 4, 4))
    src._generate("train")
    from vlprompt.data.toyworld import segmentation as mod

    key = next(k for k in mod._GENERATED if k[0] == "toy_seg" and k[1] == "train" and k[2] == 64)
    _, masks, recs = mod._GENERATED[key]
    assert all(m.any() for m in masks)
    assert len({r.category for r in recs}) == 4
    assert all(len(set(r.present)) == 3 and r.category in r.present for r in recs)  # 3 distinct of 4 categories


def test_registered_and_convert_cli(tmp_path):
    from vlprompt.cli.data import data_main
    from vlprompt.learners.registry import get_registry

    reg = get_registry("datasets")
    for name in ("toy_seg", "toy_seg_scan", "medvlsm", "kvasir_seg", "busi", "clinicdb", "bkai", "isic2016",
                 "dfu2022", "chexlocalize", "camus", "kvasir_seg_release", "busi_release"):
        assert reg.get(name).task == "segmentation"
    assert data_main(["convert", "toy_seg", "--out", str(tmp_path / "toy")]) == 0
    out = MedVLSMDataset(str(tmp_path / "toy"))
    assert out.size("val") == 64 and "p3" in out.records["val"][0].prompts
    assert data_main(["convert", "toy_seg", "--out", str(tmp_path / "toy")]) == 1  # exists: refused
    assert data_main(["check", "medvlsm", "--root", str(tmp_path / "toy")]) == 0


SEG_CONFIGS = ("busi", "kvasir_seg", "clinicdb", "bkai", "isic2016", "dfu2022", "chexlocalize", "camus",
               "kvasir_seg_release", "busi_release", "toy_seg", "toy_seg_scan")


@pytest.mark.parametrize("name", SEG_CONFIGS)
def test_dataset_configs_name_registered_sources_with_valid_arguments(name):
    import inspect

    import yaml

    from vlprompt.learners.registry import get_registry

    path = Path(__file__).resolve().parents[1] / "configs" / "datasets" / f"{name}.yaml"
    cfg = yaml.safe_load(path.read_text())["data"]["init_args"]["dataset"]
    cls = get_registry("datasets").get(cfg["class_path"])
    params = inspect.signature(cls.__init__).parameters
    assert set(cfg.get("init_args", {})) <= set(params)
    published = getattr(cls, "published_sizes", None)
    if published:
        text = path.read_text()
        assert "reported" in text and all(str(n) in text for k, n in published.items() if k != "from" and n)


def test_datasets_pickle_and_load_in_workers(tmp_path):
    import pickle

    from torch.utils.data import DataLoader

    from vlprompt.data.toyworld.segmentation import ToySegmentation

    src = MedVLSMDataset(str(make_medvlsm(tmp_path / "ds", n=4)))
    ds = src.dataset("train", preprocess=PP, prompt_index=-1, augment=True, seed=5)
    ds.set_epoch(3)
    clone = pickle.loads(pickle.dumps(ds))
    assert [clone[i]["prompt"] for i in range(4)] == [ds[i]["prompt"] for i in range(4)]
    toy = ToySegmentation(sizes=(4, 2, 2)).dataset("train", preprocess=None, prompt_index=2)
    assert torch.equal(pickle.loads(pickle.dumps(toy))[1]["mask"], toy[1]["mask"])
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=1)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["mask"].shape == (4, 1, 16, 16)
    assert list(batch["prompt"]) == [ds[i]["prompt"] for i in range(4)]  # same draws in a worker


def test_data_check_compares_published_sizes(tmp_path):
    from vlprompt.runs.data_check import check_dataset

    make_medvlsm(tmp_path / "kvasir_polyp")
    report = check_dataset("kvasir_seg", str(tmp_path))
    assert report.ok and report.facts["expected"]["train"] == 800
    assert any("expected 800" in w and "not comparable" in w for w in report.warnings)
    strict = check_dataset("kvasir_seg", str(tmp_path), strict=True)
    assert not strict.ok and any("expected 100" in p for p in strict.problems)


def test_kvasir_release_without_lists_and_missing_mask(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(40):
        _write_pair(root, f"id{i:03d}", mask_ext=".png")
    src = KvasirSEGRelease(str(tmp_path))
    assert src.split_files == {} and sum(src.size(s) for s in SPLITS) == 40
    again = KvasirSEGRelease(str(tmp_path))
    assert [r.name for r in again.records["test"]] == [r.name for r in src.records["test"]]
    os.remove(root / "masks" / "id007.png")
    with pytest.raises(DataError, match=r"id007\.png has no mask"):
        KvasirSEGRelease(str(tmp_path))


# ------------------------------------------------------------------ TuneVLSeg's soft targets, resize and eval prompts
def _protocol(src, **kw):
    from types import SimpleNamespace

    from vlprompt.protocols.segmentation import SegmentationProtocol

    data = SegmentationProtocol(src, seed=1, **kw)
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(backbone=SimpleNamespace(preprocess=PP)))
    return data


def test_soft_targets_are_the_grey_mask_over_255(tmp_path):
    """TuneVLSeg's loss target is the grey mask / 255 (image_text_mask_dataset.py); the metrics' mask stays the
    one thresholded at 128."""
    root = make_medvlsm(tmp_path / "ds")
    grey = np.zeros((20, 24), np.uint8)
    grey[3:12, 2:10] = 250  # JPEG-like foreground
    grey[0, :5] = 20  # and background noise
    Image.fromarray(grey).save(root / "masks" / "train0.png")
    src = MedVLSMDataset(str(root))
    plain = src.dataset("train", preprocess=PP, prompt_index=1)[0]
    assert "target" not in plain
    soft = _protocol(src, soft_targets=True).split_dataset("train")
    item = next(soft[i] for i in range(len(soft)) if soft[i]["name"] == "train0.png")
    near = np.asarray(Image.fromarray(grey).resize((16, 16), Image.Resampling.NEAREST))
    assert torch.equal(item["target"][0], torch.from_numpy(near.astype(np.float32) / 255))
    assert torch.equal(item["mask"], plain["mask"])
    assert set(item["target"].unique().tolist()) >= {float(np.float32(20 / 255)), float(np.float32(250 / 255))}
    with pytest.raises(DataError, match="soft_targets: true needs items from vlprompt's SegmentationDataset"):
        from seg_fakes import FakeSegSource

        _protocol(FakeSegSource(), soft_targets=True).split_dataset("train")


def test_image_interpolation_option(tmp_path):
    root = make_medvlsm(tmp_path / "ds")
    src = MedVLSMDataset(str(root))
    ds = _protocol(src, image_interpolation="bilinear").split_dataset("test")
    pil = Image.open(root / "images" / "test0.png").convert("RGB")
    ref = TF.to_dtype(TF.pil_to_tensor(TF.resize(pil, [16, 16], interpolation=InterpolationMode.BILINEAR)),
                      torch.float32, scale=True)
    assert torch.equal(next(ds[i] for i in range(len(ds)) if ds[i]["name"] == "test0.png")["image"], ref)
    assert _protocol(src).identity().get("image_interpolation") is None  # default: the backbone's processor
    with pytest.raises(DataError, match="image_interpolation='cubic' is not one of"):
        _protocol(src, image_interpolation="cubic")


def test_random_prompt_index_draws_per_item_in_every_split(tmp_path):
    """TuneVLSeg passes one prompt_index to train, val and test (configs/data/image_text_mask.yaml): with -1 eval
    prompts are random too; here they are drawn per (seed, item) once, the same at every validation, while training
    draws anew each epoch."""
    src = MedVLSMDataset(str(make_medvlsm(tmp_path / "ds", n=8)))
    data = _protocol(src, prompt_index=-1)
    val = [data.split_dataset("val")[i]["prompt"] for i in range(8)]
    assert val == [data.split_dataset("val")[i]["prompt"] for i in range(8)] and "" not in val
    assert len(set(val)) > 1
