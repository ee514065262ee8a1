"""Leaderboard selection rules (stated in every leaderboard header) and robustness against stale, partial,
foreign and hostile result files; atomic writes under concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading
from pathlib import Path

import pytest

from vlprompt.data.atomic import atomic_write_text
from vlprompt.cli.leaderboard import leaderboard_main
from vlprompt.leaderboards.build import DEFAULT_OUT, build_leaderboards
from vlprompt.leaderboards.select import SELECTION_RULES, select_results
from vlprompt.metrics import summarize_seeds
from vlprompt.runs.results import SCHEMA, load_result, make_result, write_result


def _result(*, learner="coop", seeds=3, epochs=50, created="2026-01-01T00:00:00.000+00:00", base=80.0,
            command="vlprompt fit --config x.yaml", split="aaa", sha="c0ffee", extra=None, dataset="toy_colors"):
    per_seed = [{"seed": s, "epochs": epochs, "metrics": {"base": base, "new": 60.0, "hm": 68.6}} for s in range(1, seeds + 1)]
    r = {
        "schema": SCHEMA, "protocol": "base2new", "benchmark": "toy", "dataset": dataset, "learner": learner,
        "learner_config": {}, "backbone": {"model": "toyclip-s", "pretrained": "/w/toy.pt", "checkpoint_sha256": sha},
        "data": {"name": dataset, "split_sha256": split}, "shots": 16, "seeds": list(range(1, seeds + 1)),
        "per_seed": per_seed, "summary": summarize_seeds([p["metrics"] for p in per_seed]), "config": {},
        "command": command, "versions": {}, "device": "cpu", "wall_seconds": 1.0, "created": created,
        "git": {"commit": None, "dirty": None},
    }
    r.update(extra or {})
    return r


def _write(root: Path, name: str, result: dict) -> Path:
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result))
    return p


def _rows(results: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    for i, r in enumerate(results):
        r.setdefault("_rel", f"f{i}.json")
    return select_results(results)


def test_untrained_test_result_never_replaces_the_trained_row() -> None:
    trained = _result(base=80.69, created="2026-01-01T00:00:00+00:00")
    untrained = _result(base=72.92, seeds=1, command="vlprompt test --config x.yaml", created="2026-02-01T00:00:00+00:00")
    rows, left = _rows([trained, untrained])
    assert rows == [trained]
    assert "without --prompts: it scores untrained prompts" in left[0][1]


def test_evaluated_checkpoint_counts_but_fewer_seeds_never_win() -> None:
    fit = _result(seeds=3)
    ckpt = _result(seeds=1, command="vlprompt test --prompts p", created="2026-03-01T00:00:00+00:00",
                   extra={"stage": "test", "evaluated_checkpoint": {"path": "p", "sha256": "x"}})
    rows, left = _rows([fit, ckpt])
    assert rows == [fit] and "fewer seeds (1 < 3)" in left[0][1]
    rows, _ = _rows([ckpt])
    assert rows == [ckpt]  # alone, an explicitly evaluated checkpoint is a row


def test_test_time_results_are_rows_and_unknown_stages_are_not() -> None:
    tta = _result(seeds=3, command="vlprompt tta --config x.yaml", extra={"stage": "tta"})
    rows, left = _rows([tta])
    assert rows == [tta] and not left
    odd = _result(seeds=3, command="vlprompt frobnicate", extra={"stage": "frobnicate"})
    rows, left = _rows([odd])
    assert rows == [] and "unknown stage 'frobnicate'" in left[0][1]


def test_a_short_smoke_run_on_another_split_does_not_replace_a_full_run() -> None:
    full = _result(epochs=50, created="2026-01-01T00:00:00+00:00")
    smoke = _result(epochs=1, created="2026-02-01T00:00:00+00:00")
    rows, left = _rows([full, smoke])
    assert rows == [full] and "fewer epochs (1 < 50)" in left[0][1]
    other_split = _result(epochs=1, split="bbb", created="2026-02-01T00:00:00+00:00")
    rows, left = _rows([full, other_split])
    assert len(rows) == 2 and not left  # its own row, marked so that the two are told apart
    assert sorted(r["_mark"] for r in rows) == [" [split aaa]", " [split bbb]"]
    other_ckpt = _result(sha="deadbeef")
    rows, _ = _rows([full, other_ckpt])
    assert len(rows) == 2 and all("ckpt" in r["_mark"] for r in rows)


def test_incomplete_results_are_skipped() -> None:
    rows, left = _rows([_result(extra={"complete": False})])
    assert rows == [] and "incomplete" in left[0][1]


def test_bad_files_are_listed_and_never_abort_the_build(tmp_path: Path, capsys) -> None:
    root = tmp_path / "results"
    good = _write(root, "base2new/toy/toy_colors/coop-good.json", _result())
    _write(root, "a/truncated.json", _result())
    (root / "a/truncated.json").write_text(json.dumps(_result())[:100])
    _write(root, "a/foreign.json", {"name": "package.json", "version": "1.0"})
    _write(root, "a/list.json", [1, 2, 3])
    (root / "a/binary.json").write_bytes(b"\xff\xfe\x00garbage")
    _write(root, "a/bad-created.json", _result(created="yesterday"))
    _write(root, "a/bad-protocol.json", _result(extra={"protocol": ["x"]}))
    out = tmp_path / "lb"
    assert leaderboard_main(["build", str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    for name in ("truncated.json", "foreign.json", "list.json", "binary.json", "bad-created.json", "bad-protocol.json"):
        assert name in err
    assert "not valid JSON" in err and "schema is None" in err
    text = (out / "base2new/toy/README.md").read_text()
    assert good.name in text
    for i, rule in enumerate(SELECTION_RULES, 1):
        assert f"{i}. {rule}" in text  # the rules are in the header


def test_default_out_is_never_the_committed_leaderboards(tmp_path: Path, monkeypatch) -> None:
    assert Path(DEFAULT_OUT).resolve() != Path("leaderboards").resolve()
    root = tmp_path / "results"
    _write(root, "base2new/toy/toy_colors/c.json", _result())
    monkeypatch.chdir(tmp_path)
    assert leaderboard_main(["build", str(root)]) == 0
    assert (tmp_path / DEFAULT_OUT / "base2new/toy/README.md").is_file()
    assert not (tmp_path / "leaderboards").exists()


def test_building_never_imports_modules_named_in_data(tmp_path: Path, monkeypatch) -> None:
    evil = tmp_path / "evil_pkg_for_vlprompt_test.py"
    marker = tmp_path / "imported"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\nclass Learner:\n    def __init__(self, a=1): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    root = tmp_path / "results"
    _write(root, "base2new/toy/toy_colors/c.json",
           _result(extra={"learner_config": {"class_path": "evil_pkg_for_vlprompt_test.Learner", "init_args": {"a": 1}}}))
    build_leaderboards(root, tmp_path / "lb")
    assert not marker.exists() and "evil_pkg_for_vlprompt_test" not in sys.modules


# --------------------------------------------------------------------------- concurrent writers
def _write_many(args: tuple[str, int]) -> list[str]:
    out_dir, worker = args
    paths = []
    for i in range(15):
        r = make_result(protocol="base2new", benchmark="toy", dataset="toy_colors", learner="coop", learner_config={},
                        backbone={"model": "m"}, data={}, shots=16, seeds=[worker], config={}, command="vlprompt fit",
                        wall_seconds=0.0, per_seed=[{"seed": worker, "metrics": {"base": float(i), "new": 1.0}}],
                        device="cpu")
        r["created"] = "2026-01-01T00:00:00.000+00:00"  # same second: names differ only by their random part
        paths.append(str(write_result(r, out_dir)))
    return paths


def test_concurrent_result_writers_never_clash_or_truncate(tmp_path: Path, monkeypatch) -> None:
    import vlprompt.runs.results as results

    monkeypatch.setattr(results, "git_state", lambda *_a, **_k: {"commit": None, "dirty": None})
    monkeypatch.setattr(results, "collect_versions", lambda: {})
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        written = [p for ps in pool.map(_write_many, [(str(tmp_path), w) for w in range(4)]) for p in ps]
    assert len(written) == len(set(written)) == 60
    files = sorted(tmp_path.rglob("*"))
    assert sorted(Path(p) for p in written) == [f for f in files if f.is_file()]  # no temp files left behind
    for p in written:
        load_result(p)


def test_concurrent_replacements_of_one_file_are_always_complete(tmp_path: Path) -> None:
    """Writers replacing one cache / leaderboard file while a reader reads it: the reader only ever sees a whole
    version (atomic_write_text is used for result JSONs, leaderboards, few-shot and feature caches)."""
    target = tmp_path / "cache.json"
    atomic_write_text(target, json.dumps({"v": -1, "pad": "x" * 50000}))
    stop = threading.Event()
    errors: list[str] = []

    def writer(k: int) -> None:
        for i in range(40):
            atomic_write_text(target, json.dumps({"v": k * 1000 + i, "pad": "x" * 50000}))

    def reader() -> None:
        while not stop.is_set():
            try:
                json.loads(target.read_text())
            except ValueError as exc:  # a torn read
                errors.append(str(exc))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]


def test_concurrent_fewshot_cache_and_feature_cache_writes(tmp_path: Path) -> None:
    import torch

    from vlprompt.data.feature_cache import cached_features
    from vlprompt.learners.testing import tiny_clip

    backbone = tiny_clip()
    size = backbone.preprocess.image_size
    data = torch.utils.data.TensorDataset(torch.rand(6, 3, size, size), torch.arange(6))
    results: list = []

    def run() -> None:
        results.append(cached_features(backbone, data, cache_dir=tmp_path, key="k"))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    assert [p.name for p in (tmp_path / "features").iterdir()] == ["k.safetensors"]
    again = cached_features(backbone, data, cache_dir=tmp_path, key="k")
    assert torch.allclose(again.features, results[0].features)


@pytest.mark.parametrize("n", [3])
def test_make_result_paths_use_unique_temporary_names(tmp_path: Path, n: int) -> None:
    r = make_result(protocol="p", benchmark="b", dataset="d", learner="l", learner_config={}, backbone={}, data={},
                    shots=None, seeds=[1], per_seed=[{"seed": 1, "metrics": {"accuracy": 1.0}}], config={},
                    command="vlprompt fit", wall_seconds=0.0, device="cpu")
    paths = {write_result(r, tmp_path) for _ in range(n)}
    assert len(paths) == n and not list(tmp_path.rglob("*.partial"))
