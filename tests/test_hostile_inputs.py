"""Issue 23: hostile and damaged inputs never give a silently wrong result.

Each case here was reproduced as a silent wrong result (or a traceback) before the fix; now it gives a clear
error, a skip with its reason, or a correct recomputation. docs/reliability.md lists them with the observed
behaviour.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlprompt.data.feature_cache import cached_features, tensor_digest

# ----------------------------------------------------------------------------------------- feature cache


def _permute(t: dict) -> dict:
    perm = torch.tensor([4, 3, 2, 1, 0])
    return {"features": t["features"][:, perm], "labels": t["labels"][perm]}


def _shorten(t: dict) -> dict:
    return {"features": t["features"][:, :2], "labels": t["labels"][:2]}


def _fewer_labels(t: dict) -> dict:
    return {"features": t["features"], "labels": t["labels"][:2]}


def _narrow(t: dict) -> dict:
    return {"features": t["features"][..., : t["features"].shape[-1] // 2].contiguous(), "labels": t["labels"]}


def _nan(t: dict) -> dict:
    return {"features": torch.full_like(t["features"], float("nan")), "labels": t["labels"]}


FEATURE_CASES = {
    "rows permuted": _permute,
    "features and labels shortened": _shorten,
    "fewer labels than rows": _fewer_labels,
    "half the feature width": _narrow,
    "NaN features": _nan,
}


@pytest.mark.parametrize("metadata_mode", ["kept", "rewritten", "stripped"])
@pytest.mark.parametrize("case", sorted(FEATURE_CASES))
def test_poisoned_feature_cache_entry_is_recomputed(tmp_path, caplog, case, metadata_mode) -> None:
    """An edited entry is recomputed with a warning naming it, whether its provenance record was kept as
    written (content digest differs), rewritten to match the new tensors (provenance differs from the
    request), or stripped (no provenance: an entry of an older version)."""
    from vlprompt.learners.testing import tiny_clip

    b = tiny_clip()
    data = [(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)), i % 2) for i in range(5)]
    labels = [y for _, y in data]
    kw = dict(cache_dir=tmp_path, key="k", views=1, labels=labels, sample_ids=list(range(5)), identity={"name": "x"})
    fresh = cached_features(b, data, **kw)
    path = tmp_path / "features" / "k.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    poisoned = FEATURE_CASES[case](load_file(str(path)))
    if metadata_mode == "rewritten":
        rec = json.loads(meta["provenance"])
        rec.update(samples=int(poisoned["labels"].shape[0]), width=int(poisoned["features"].shape[-1]))
        meta = {**meta, "provenance": json.dumps(rec), "content_sha256": tensor_digest(poisoned)}
    save_file({k: v.contiguous() for k, v in poisoned.items()}, str(path),
              metadata=None if metadata_mode == "stripped" else meta)
    with caplog.at_level(logging.WARNING):
        again = cached_features(b, data, **kw)
    assert torch.equal(again.features, fresh.features) and torch.equal(again.labels, fresh.labels)
    assert any("recomputing feature cache entry" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    # the recomputed entry is written back and then trusted
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        third = cached_features(b, data, **kw)
    assert torch.equal(third.features, fresh.features) and not caplog.records


def test_feature_cache_entry_of_another_dataset_is_recomputed(tmp_path, caplog) -> None:
    """A valid entry under the right key, but written for other labels or another backbone, is not used."""
    from vlprompt.learners.testing import tiny_clip

    b = tiny_clip()
    data = [(torch.rand(3, 32, 32), i % 2) for i in range(5)]
    other = [(x, 1) for x, _ in data]
    cached_features(b, other, cache_dir=tmp_path, key="k", views=1, labels=[1, 1, 1, 1, 1])
    with caplog.at_level(logging.WARNING):
        ds = cached_features(b, data, cache_dir=tmp_path, key="k", views=1, labels=[0, 1, 0, 1, 0])
    assert ds.labels.tolist() == [0, 1, 0, 1, 0]
    assert any("labels_sha256" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------ few-shot index cache

FEWSHOT_CASES = {
    "one index repeated": lambda c: {**c, "train": [c["train"][0]] * len(c["train"])},
    "a JSON list": lambda c: [c["train"]],
    "index out of range": lambda c: {**c, "train": [10**9, *c["train"][1:]]},
    "negative index": lambda c: {**c, "train": [-1, *c["train"][1:]]},
    "strings as indices": lambda c: {**c, "train": [str(i) for i in c["train"]]},
    "fewer shots than recorded": lambda c: {**c, "train": c["train"][::2]},
    "train missing": lambda c: {"key": c["key"], "val": c["val"]},
    "val repeated": lambda c: {**c, "val": c["val"][:1] * len(c["val"])},
}


@pytest.mark.parametrize("case", sorted(FEWSHOT_CASES))
def test_poisoned_fewshot_index_cache_is_redrawn(tmp_path, caplog, case) -> None:
    from vlprompt.data.toyworld.datasets import ToyColors
    from vlprompt.protocols.base2new import FewShot

    colors = ToyColors(per_class=[8, 4, 8])
    first = FewShot(colors, shots=2, seed=1, cache_dir=str(tmp_path))
    want = first._fewshot_indices("train", 2), first._fewshot_indices("val", 2)
    (path,) = (tmp_path / "fewshot").rglob("*.json")
    path.write_text(json.dumps(FEWSHOT_CASES[case](json.loads(path.read_text()))))
    again = FewShot(colors, shots=2, seed=1, cache_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        got = again._fewshot_indices("train", 2), again._fewshot_indices("val", 2)
    assert got == want
    assert any("recomputing few-shot index cache" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content", [b"[" * 200000, b"\xff\xfe not utf-8", b""])
def test_unreadable_fewshot_index_cache_is_redrawn(tmp_path, content) -> None:
    from vlprompt.data.toyworld.datasets import ToyColors
    from vlprompt.protocols.base2new import FewShot

    colors = ToyColors(per_class=[8, 4, 8])
    want = FewShot(colors, shots=2, seed=1, cache_dir=str(tmp_path))._fewshot_indices("train", 2)
    (path,) = (tmp_path / "fewshot").rglob("*.json")
    path.write_bytes(content)
    assert FewShot(colors, shots=2, seed=1, cache_dir=str(tmp_path))._fewshot_indices("train", 2) == want


# ------------------------------------------------------------------------------------------------ prompts

NAMES = ["cat", "dog", "fish"]


def _coop():
    from vlprompt.learners.coop import CoOp
    from vlprompt.learners.testing import tiny_clip

    torch.manual_seed(0)
    learner = CoOp()
    learner.setup(tiny_clip(), NAMES)
    return learner


PROMPT_CASES = {
    "ctx all NaN": (lambda t: {**t, "ctx": torch.full_like(t["ctx"], float("nan"))}, "NaN or infinite"),
    "ctx all inf": (lambda t: {**t, "ctx": torch.full_like(t["ctx"], float("inf"))}, "NaN or infinite"),
    "one NaN": (lambda t: {**t, "ctx": t["ctx"].clone().index_fill_(0, torch.tensor([0]), float("nan"))}, "NaN or infinite"),
    "int64 ctx": (lambda t: {**t, "ctx": (t["ctx"] * 100).long()}, "expected a floating-point tensor"),
}


@pytest.mark.parametrize("case", sorted(PROMPT_CASES))
def test_non_finite_or_non_float_prompts_are_refused(tmp_path, case) -> None:
    from vlprompt.learners.base import LearnerError

    learner = _coop()
    path = learner.save_prompts(tmp_path / "p.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    poison, message = PROMPT_CASES[case]
    save_file(poison(load_file(str(path))), str(path), metadata=meta)
    before = learner.ctx.detach().clone()
    with pytest.raises(LearnerError, match=message) as info:
        learner.load_prompts(path)
    assert str(path) in str(info.value) and "'ctx'" in str(info.value)
    assert torch.equal(learner.ctx.detach(), before)  # nothing was loaded
    with pytest.raises(LearnerError, match=message):
        learner.set_learned_state(poison(learner.learned_state()))


@pytest.mark.parametrize("classnames", ["not json [", '{"a": 1}', "[1, 2, 3]"])
def test_malformed_classnames_metadata_is_a_clear_error(tmp_path, classnames) -> None:
    from vlprompt.learners.base import LearnerError

    learner = _coop()
    path = learner.save_prompts(tmp_path / "p.safetensors")
    save_file(load_file(str(path)), str(path), metadata={"learner": "CoOp", "classnames": classnames})
    with pytest.raises(LearnerError, match="metadata 'classnames'"):
        learner.load_prompts(path)


def test_missing_classnames_metadata_is_a_warning(tmp_path, caplog) -> None:
    learner = _coop()
    path = learner.save_prompts(tmp_path / "p.safetensors")
    save_file(load_file(str(path)), str(path), metadata={"learner": "CoOp"})
    with caplog.at_level(logging.WARNING):
        learner.load_prompts(path)
    assert any("could not be checked" in r.getMessage() for r in caplog.records)


def test_prompts_without_backbone_metadata_warn_and_malformed_refuse(tmp_path, caplog) -> None:
    from vlprompt.learners.base import LearnerError
    from vlprompt.runs.driver import load_checked_prompts

    learner = _coop()
    path = learner.save_prompts(tmp_path / "p.safetensors")  # no backbone metadata
    with caplog.at_level(logging.WARNING):
        load_checked_prompts(learner, str(path), _bb(), force=False)
    assert any("no 'backbone' metadata" in r.getMessage() and "could not check" in r.getMessage() for r in caplog.records)
    for bad in ("{oops", "[1, 2]"):
        save_file(load_file(str(path)), str(path), metadata={"learner": "CoOp", "classnames": json.dumps(NAMES), "backbone": bad})
        with pytest.raises(LearnerError, match="metadata 'backbone'"):
            load_checked_prompts(learner, str(path), _bb(), force=False)


def _bb():
    from vlprompt.learners.testing import tiny_clip

    return tiny_clip()


def test_import_dassl_of_nan_prompts_is_refused(tmp_path) -> None:
    from vlprompt.learners.base import LearnerError
    from vlprompt.learners.reference_import import import_dassl

    state = {"ctx": torch.full((16, 32), float("nan")), "token_prefix": torch.zeros(3, 1, 32),
             "token_suffix": torch.zeros(3, 15, 32)}
    ckpt = tmp_path / "model.pth.tar-10"
    torch.save({"state_dict": state, "epoch": 10}, ckpt)
    cfg = tmp_path / "backbone.yaml"
    cfg.write_text("model:\n  backbone:\n    class_path: vlprompt.learners.testing.tiny_clip\n")
    out = tmp_path / "p.safetensors"
    with pytest.raises(LearnerError, match="NaN or infinite"):
        import_dassl(ckpt, learner="coop", classnames=NAMES, out=out, backbone_config=str(cfg))
    assert not out.exists()


# --------------------------------------------------------------------------------------------- leaderboards


def _result(*, seeds=(1, 2, 3), base=80.0, benchmark="toy", dataset="toy_colors", learner="coop", run_id=None,
            created="2026-01-01T00:00:00.000+00:00", **extra) -> dict:
    from vlprompt.metrics import summarize_seeds
    from vlprompt.runs.results import SCHEMA

    per_seed = [{"seed": s, "epochs": 50, "metrics": {"base": base, "new": 60.0, "hm": 68.5714}} for s in seeds]
    r = {
        "schema": SCHEMA, "protocol": "base2new", "benchmark": benchmark, "dataset": dataset, "learner": learner,
        "learner_config": {}, "backbone": {"model": "toyclip-s", "pretrained": "/w/toy.pt", "checkpoint_sha256": "c0ffee"},
        "data": {"name": dataset, "split_sha256": "aaa"}, "shots": 16, "seeds": list(seeds),
        "per_seed": per_seed, "summary": summarize_seeds([p["metrics"] for p in per_seed]), "config": {},
        "command": "vlprompt fit --config x.yaml", "versions": {}, "device": "cpu", "wall_seconds": 1.0,
        "created": created, "git": {"commit": None, "dirty": None}, "complete": True,
    }
    if run_id:
        r["run_id"] = run_id
    r.update(extra)
    return r


def _metric(value):
    def poison(r):
        r["per_seed"][0]["metrics"]["base"] = value
        return r
    return poison


def _summary(r):
    r["summary"].update(base=99.9, n_seeds=10)
    r["per_seed"] = r["per_seed"][:1]
    return r


LEADERBOARD_CASES = {
    # name: (poison applied to a fresh result dict, or raw bytes; reason shown on the page)
    "seeds [1,1,1]": (lambda r: _result(seeds=(1, 1, 1), base=95.0), "repeats seed(s) [1]"),
    "NaN accuracy": (_metric(float("nan")), "expected a finite percentage"),
    "inf accuracy": (_metric(float("inf")), "expected a finite percentage"),
    "accuracy -50": (_metric(-50.0), "expected a finite percentage"),
    "accuracy 1e6": (_metric(1e6), "expected a finite percentage"),
    "summary disagrees with per_seed": (_summary, "but per_seed"),
    "deeply nested JSON": (b"[" * 200000, "nested too deeply"),
    "versions a string": (lambda r: {**r, "versions": "1.0"}, "'versions' must be an object"),
    "init_args a string": (lambda r: {**r, "learner_config": {"class_path": "x.Y", "init_args": "n_ctx=4"}},
                           "'learner_config.init_args' must be an object"),
    "complete 'false'": (lambda r: {**r, "complete": "false"}, "'complete' must be true or false"),
    "negative seed": (lambda r: _result(seeds=(-1,)), "expected an integer in 0..4294967295"),
    "huge seed": (lambda r: _result(seeds=(2**70,)), "expected an integer in 0..4294967295"),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8"),
    "empty per_seed": (lambda r: {**r, "per_seed": []}, "'per_seed' is empty"),
}


@pytest.mark.parametrize("case", sorted(LEADERBOARD_CASES))
def test_hostile_result_file_is_skipped_with_its_reason(tmp_path, case) -> None:
    from vlprompt.leaderboards.build import build_leaderboards

    poison, reason = LEADERBOARD_CASES[case]
    root = tmp_path / "results"
    good = root / "base2new/toy/toy_colors/good.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps(_result(seeds=(1, 2))))
    bad = root / "base2new/toy/toy_colors/bad.json"
    content = poison if isinstance(poison, bytes) else json.dumps(poison(_result(created="2026-02-01T00:00:00.000+00:00")))
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    report: list = []
    build_leaderboards(root, tmp_path / "out", report=report)
    reasons = dict(report)
    assert reason in reasons["base2new/toy/toy_colors/bad.json"], reasons
    page = (tmp_path / "out/base2new/toy/README.md").read_text()
    assert "good.json" in page and "| coop | toyclip-s (toy.pt) | 16 | 2 | 80.00 ± 0.00" in page
    assert "bad.json" in page.split("## Results not shown")[1]


def test_benchmarks_mapping_to_one_folder_are_refused_not_merged(tmp_path) -> None:
    from vlprompt.leaderboards.build import build_leaderboards

    root = tmp_path / "results"
    for name, bench, base in (("a.json", "toy", 80.0), ("b.json", "toy.", 70.0)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(_result(benchmark=bench, base=base)))
    report: list = []
    written = build_leaderboards(root, tmp_path / "out", report=report)
    assert written == [] and not (tmp_path / "out/base2new/toy").exists()
    assert all("map to one output folder" in why for _, why in report) and len(report) == 2


def test_conflicting_results_under_one_run_id_are_a_conflict(tmp_path) -> None:
    from vlprompt.leaderboards.select import select_results

    a = {**_result(run_id="coop-1", base=80.0), "_rel": "a.json"}
    b = {**_result(run_id="coop-1", base=70.0), "_rel": "b.json"}
    rows, left_out = select_results([a, b])
    assert rows == [] and all(why.startswith("conflict: run id 'coop-1'") for _, why in left_out)
    same = {**_result(run_id="coop-1", base=80.0), "_rel": "c.json"}  # an identical copy is not a conflict
    rows, _ = select_results([a, same])
    assert len(rows) == 1


@pytest.mark.parametrize("field", ["dataset", "learner"])
def test_names_cannot_inject_markdown_or_html(tmp_path, field) -> None:
    from vlprompt.leaderboards.build import build_leaderboards

    root = tmp_path / "results"
    evil = "x\n## Injected\n| a | b |\n<script>alert(1)</script>"
    (root / "r.json").parent.mkdir(parents=True)
    (root / "r.json").write_text(json.dumps(_result(**{field: evil})))
    build_leaderboards(root, tmp_path / "out")
    page = (tmp_path / "out/base2new/toy/README.md").read_text()
    assert "\n## Injected" not in page and "<script>" not in page and "&lt;script&gt;" in page


# ------------------------------------------------------------------------------- run ids and bounds (items 4, 5)

def _fit_argv(tmp_path, *extra: str) -> list[str]:
    from pathlib import Path

    quick = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    return ["fit", "--config", quick, "--seeds", "[1]", "--trainer.max_epochs", "2",
            "--results_dir", str(tmp_path / "out" / "results"), "--trainer.default_root_dir", str(tmp_path / "out" / "runs"),
            "--data.init_args.dataset.init_args.per_class", "[4, 2, 4]", "--data.init_args.shots", "2", *extra]


BOUND_CASES = {
    "run id ../../../somewhere": (["--run_id", "../../../somewhere"], "is not a run name"),
    "run id a/b": (["--run_id", "a/b"], "is not a run name"),
    "run id ..": (["--run_id", ".."], "is not a run name"),
    "run id with a newline": (["--run_id", "a\nb"], "is not a run name"),
    "seed -1": (["--seeds", "[-1]"], "seed -1 is outside 0..4294967295"),
    "seed 1e20": (["--seeds", "[99999999999999999999]"], "is outside 0..4294967295"),
    "max_epochs -1": (["--trainer.max_epochs", "-1"], "trainer.max_epochs=-1 must be a whole number in 1.."),
    "max_epochs 0": (["--trainer.max_epochs", "0"], "trainer.max_epochs=0 must be a whole number in 1.."),
    "batch size 1e20": (["--data.init_args.batch_size", "100000000000000000000"], "batch_size=100000000000000000000 is larger"),
}


@pytest.mark.parametrize("case", sorted(BOUND_CASES))
def test_out_of_bounds_values_are_refused_before_anything_is_written(tmp_path, capsys, case) -> None:
    from vlprompt import cli

    extra, expected = BOUND_CASES[case]
    code = cli.main(_fit_argv(tmp_path, *extra))
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "somewhere").exists()


def test_run_folder_refuses_a_path_as_run_id(tmp_path) -> None:
    from vlprompt.runs.folders import RunError, RunFolder

    for bad in ("../x", "a/b", "/abs", "", ".hidden", "x" * 129):
        with pytest.raises(RunError, match="is not a run name"):
            RunFolder.open(tmp_path / "runs", bad, stage="fit", argv=[], cfg_hash="0")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------- damaged checkpoints, full disks (7, 8)

@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "unsafe pickle"])
def test_damaged_checkpoint_is_reported_and_the_seed_redone(tmp_path, caplog, damage) -> None:
    import argparse

    from vlprompt.runs.folders import RunFolder

    run, _ = RunFolder.open(tmp_path / "runs", "r1", stage="fit", argv=[], cfg_hash="0")
    ckpt = run.checkpoint(2)
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 3}, ckpt)
    assert run.usable_checkpoint(2) == ckpt
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:40])
    elif damage == "not a checkpoint":
        torch.save([1, 2, 3], ckpt)
    else:
        torch.save({"state_dict": {}, "x": argparse.Namespace(a=1)}, ckpt)
    with caplog.at_level(logging.WARNING):
        assert run.usable_checkpoint(2) is None
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert str(ckpt) in msg and "redone from scratch" in msg and "weights_only=False" not in msg
    assert not ckpt.exists() and ckpt.with_name("last.ckpt.damaged").is_file()
    run.close()


def test_full_disk_at_the_result_names_the_run_folder_and_resume(tmp_path, capsys, monkeypatch) -> None:
    import errno

    from vlprompt import cli
    from vlprompt.runs import driver

    real = driver.write_result

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(driver, "write_result", full)
    code = cli.main(_fit_argv(tmp_path))
    err = capsys.readouterr().err
    (folder,) = (tmp_path / "out" / "runs").iterdir()
    assert code == 2 and "No space left on device" in err and f"vlprompt fit --resume {folder}" in err, err
    monkeypatch.setattr(driver, "write_result", real)
    assert cli.main(_fit_argv(tmp_path, "--resume", str(folder))) == 0
    assert len(list((tmp_path / "out" / "results").rglob("*.json"))) == 1


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
) + "model: *i\n"


def test_yaml_alias_bomb_in_config_is_refused(tmp_path, capsys) -> None:
    from vlprompt import cli

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    code = cli.main(_fit_argv(tmp_path, "--config", str(bomb)))
    err = capsys.readouterr().err
    assert code == 2 and "expands to more than" in err and str(bomb) in err, err


def test_yaml_with_a_few_aliases_still_loads() -> None:
    from vlprompt.runs.config import safe_yaml_load

    assert safe_yaml_load("a: &x {b: 1}\nc: *x\nd: [*x, *x]\n") == {"a": {"b": 1}, "c": {"b": 1}, "d": [{"b": 1}, {"b": 1}]}


@pytest.mark.parametrize("overlap", ["test equals train", "one shared image", "disjoint"])
def test_data_check_flags_overlapping_splits(tmp_path, overlap) -> None:
    from PIL import Image

    from vlprompt.data.folder import ImageFolderDataset
    from vlprompt.runs.data_check import check_dataset

    root = tmp_path / "mine"
    for c in ("cat", "dog"):
        for i in range(3):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (10 * i, 40, 200)).save(root / c / f"{i}.jpg", "JPEG")
    train = [["cat/0.jpg", 0, "cat"], ["dog/0.jpg", 1, "dog"]]
    split = {"train": train, "val": [["cat/1.jpg", 0, "cat"]],
             "test": {"test equals train": train, "one shared image": [["dog/0.jpg", 1, "dog"], ["dog/2.jpg", 1, "dog"]],
                      "disjoint": [["dog/2.jpg", 1, "dog"]]}[overlap]}
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps(split))

    class Mine(ImageFolderDataset):
        def __init__(self, root, **kwargs):
            super().__init__(root, split_file=str(split_file), **kwargs)

    report = check_dataset("mine", str(root), source_cls=Mine)
    flagged = [p for p in report.problems if "the splits overlap" in p]
    assert bool(flagged) == (overlap != "disjoint"), report.problems
    if overlap == "test equals train":
        assert "2 image(s)" in flagged[0]


@pytest.mark.parametrize("case", ["views replaced", "metadata stripped", "another image's entry"])
def test_poisoned_generated_view_entry_is_regenerated(tmp_path, caplog, case) -> None:
    from vlprompt.generators.base import GeneratedViews
    from vlprompt.generators.testing import JitterGenerator

    cache = GeneratedViews(JitterGenerator(), tmp_path)
    image, other = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.rand(3, 16, 16)
    want = cache.get(image, 2)
    path = cache.path(image, 2)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    if case == "views replaced":
        save_file({"views": torch.zeros_like(want)}, str(path), metadata=meta)
    elif case == "metadata stripped":
        save_file({"views": torch.zeros_like(want)}, str(path))
    else:
        cache.get(other, 2)
        path.write_bytes(cache.path(other, 2).read_bytes())
    with caplog.at_level(logging.WARNING):
        assert torch.equal(cache.get(image, 2), want)
    assert any("regenerating it" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_non_utf8_reported_yaml_is_a_clear_error(tmp_path) -> None:
    from vlprompt.leaderboards.reported import ReportedError, load_reported

    (tmp_path / "paper.yaml").write_bytes(b"protocol: base2new\nentries: []\n# \xff\xfe\n")
    with pytest.raises(ReportedError, match="not UTF-8"):
        load_reported(tmp_path)


@pytest.mark.parametrize("how", ["absolute folder", "dot-dot", "symlink out"])
def test_overlay_artifacts_outside_the_results_tree_are_not_read(tmp_path, monkeypatch, how) -> None:
    from vlprompt.leaderboards.html import overlay_paths

    secret = tmp_path / "elsewhere"  # beside the experiment folder "work" that holds results/ and runs/
    secret.mkdir()
    (secret / "private.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 32)
    root = tmp_path / "work" / "exp" / "results"
    folder = root / "segmentation" / "toy" / "toy_seg"
    folder.mkdir(parents=True)
    inside = folder / "ok.png"
    inside.write_bytes(b"\x89PNG\r\n\x1a\n" + b"1" * 32)
    monkeypatch.chdir(tmp_path / "work")
    if how == "absolute folder":
        value = str(secret)
    elif how == "dot-dot":
        value = "../elsewhere"  # from the working directory: exists, outside both trees
    else:
        (folder / "link").symlink_to(secret)
        value = "exp/results/segmentation/toy/toy_seg/link"
    result = {"artifacts": {"seed1/overlays": [value, str(inside)]}, "_path": str(folder / "r.json"),
              "_rel": "segmentation/toy/toy_seg/r.json"}
    runs = tmp_path / "work" / "exp" / "runs" / "seed1"  # a run folder beside the results folder is read
    runs.mkdir(parents=True)
    (runs / "o.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    result["artifacts"]["seed1/overlays"].append(str(runs / "o.png"))
    assert overlay_paths(result) == [inside, runs / "o.png"]


HOSTILE_VALUES = [None, -1, 1.5, "", [1], {"a": 1}, "<b>\n# h |", True, 10**30]
HOSTILE_KEYS = ["protocol", "benchmark", "dataset", "learner", "learner_config", "backbone", "data", "shots", "seeds",
                "summary", "config", "command", "versions", "created", "git", "stage", "trainable", "complete",
                "evaluated_checkpoint", "run_id", "artifacts", "backbone.model", "backbone.checkpoint_sha256",
                "learner_config.class_path", "data.split_sha256", "per_seed.epochs"]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_no_value_of_any_key_aborts_a_build(tmp_path, key) -> None:
    """Nothing in one result file can abort the build (markdown, CSV and HTML): each hostile value gives a row or
    a skip with its reason, and the good file's row is always there."""
    from vlprompt.leaderboards.build import build_leaderboards
    from vlprompt.leaderboards.html import build_html_leaderboards

    root = tmp_path / "results"
    (root / "base2new/toy/x").mkdir(parents=True)
    (root / "base2new/toy/x/good.json").write_text(json.dumps(_result(seeds=(1, 2))))
    for i, value in enumerate(HOSTILE_VALUES):
        r = _result(created=f"2026-02-0{i + 1}T00:00:00.000+00:00")
        if key == "per_seed.epochs":
            r["per_seed"][0]["epochs"] = value
        elif "." in key:
            outer, inner = key.split(".")
            r[outer] = {**r[outer], inner: value}
        else:
            r[key] = value
        (root / f"base2new/toy/x/bad{i}.json").write_text(json.dumps(r))
    build_leaderboards(root, tmp_path / "out")
    build_html_leaderboards(root, tmp_path / "out")
    assert "good.json" in (tmp_path / "out/base2new/toy/README.md").read_text()
