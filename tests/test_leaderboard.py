"""Tests for vlprompt.leaderboards.build: tables, dedupe, averages, CSV, determinism, CLI."""

import csv
import json
import logging

import pytest

from vlprompt.cli.leaderboard import leaderboard_main
from vlprompt.leaderboards.build import CSV_COLUMNS, build_leaderboards
from vlprompt.metrics import harmonic_mean, summarize_seeds
from vlprompt.runs.results import SCHEMA


def _result(*, dataset, learner, base, new, created, command=None, protocol="base2new", sha="c0ffee" * 10 + "abcd",
            shots=16, metrics=None):
    per_seed = metrics or [
        {"base": b, "new": n, "hm": harmonic_mean(b, n)} for b, n in zip(base, new)
    ]
    return {
        "schema": SCHEMA, "protocol": protocol, "benchmark": "toy", "dataset": dataset, "learner": learner,
        "learner_config": {}, "backbone": {"name": "ToyCLIP", "model": "toyclip-s", "pretrained": "/w/toyclip.pt",
                                           "checkpoint_sha256": sha, "precision": "fp32"},
        "data": {"name": dataset}, "shots": shots, "seeds": list(range(1, len(per_seed) + 1)),
        "per_seed": [{"seed": i + 1, "metrics": m} for i, m in enumerate(per_seed)],
        "summary": summarize_seeds(per_seed), "config": {},
        "command": command or f"vlprompt fit --config configs/{learner}/{dataset}.yaml",
        "versions": {"vlprompt": "0.1.0", "python": "3.11.0"}, "device": "cpu", "wall_seconds": 1.0,
        "created": created, "git": {"commit": None, "dirty": None},
    }


def _write(root, name, result):
    path = root / result["protocol"] / result["benchmark"] / result["dataset"] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return path


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    # coop on toy_colors: an old run (superseded) and a newer one
    _write(root, "coop-old.json", _result(dataset="toy_colors", learner="coop", base=[10.0, 12.0], new=[5.0, 7.0],
                                          created="2025-01-01T00:00:00.000+00:00", command="vlprompt fit OLD COMMAND"))
    _write(root, "coop-new.json", _result(dataset="toy_colors", learner="coop", base=[80.0, 82.0], new=[60.0, 64.0],
                                          created="2025-02-01T00:00:00.000+00:00"))
    _write(root, "coop-shapes.json", _result(dataset="toy_shapes", learner="coop", base=[90.0, 90.0],
                                             new=[70.0, 74.0], created="2025-01-15T00:00:00.000+00:00"))
    _write(root, "zs.json", _result(dataset="toy_colors", learner="zero_shot", base=[50.0], new=[55.0],
                                    created="2025-01-10T00:00:00.000+00:00", sha=None))
    _write(root, "acc.json", _result(dataset="toy_colors", learner="coop", base=None, new=None, protocol="few_shot",
                                     metrics=[{"accuracy": 40.0}, {"accuracy": 44.0}],
                                     created="2025-01-10T00:00:00.000+00:00"))
    return root


def _table_rows(text, heading):
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| learner")]


def test_build_writes_per_group(results_dir, tmp_path):
    out = tmp_path / "lb"
    paths = build_leaderboards(results_dir, out)
    rel = sorted(p.relative_to(out).as_posix() for p in paths)
    assert rel == ["base2new/toy/README.md", "base2new/toy/results.csv",
                   "few_shot/toy/README.md", "few_shot/toy/results.csv"]


def test_readme_tables_dedupe_and_average(results_dir, tmp_path):
    out = tmp_path / "lb"
    build_leaderboards(results_dir, out)
    text = (out / "base2new/toy/README.md").read_text()
    assert text.startswith("# Leaderboard: base2new / toy\n")
    assert "harmonic mean of the seed-averaged base and new" in text

    colors = _table_rows(text, "toy_colors")
    assert len(colors) == 2  # coop (newest only) and zero_shot
    coop = next(r for r in colors if r.startswith("| coop "))
    hm = harmonic_mean(81.0, 62.0)
    # 95% CI by hand, n = 2: t(0.975, 1) = 12.7062; base s = 1.4142 -> half 12.7062 * 1.4142 / sqrt(2) = 12.71,
    # new s = 2.8284 -> half 25.41; per-seed HMs 2*80*60/140 = 68.571 and 2*82*64/146 = 71.890: mean 70.23,
    # s = 2.3469 -> half 21.09 -> [49.15, 91.32]
    assert coop == (f"| coop | toyclip-s (toyclip.pt) | 16 | 2 | 81.00 ± 1.41 | [68.29, 93.71] | 62.00 ± 2.83 | "
                    f"[36.59, 87.41] | {hm:.2f} ± 2.35 | 70.23 | [49.15, 91.32] |  | — | — | — | — | cpu |")
    zs = next(r for r in colors if r.startswith("| zero_shot "))
    # one seed: no interval; old results without cost fields: "—"
    assert zs == (f"| zero_shot | toyclip-s (toyclip.pt) | 16 | 1 | 50.00 | — | 55.00 | — | "
                  f"{harmonic_mean(50, 55):.2f} | {harmonic_mean(50, 55):.2f} | — |  | — | — | — | — | cpu |")
    assert "| HM of means | mean of per-seed HM | per-seed HM 95% CI | vs next-higher row | train s/image |" in text
    assert "t(0.975, n-1)" in text and "docs/metrics.md" in text
    # the superseded run is no row and has no provenance entry; it is listed, with the reason, at the end
    shown, not_shown = text.split("## Results not shown\n", 1)
    assert "10.00" not in shown and "OLD COMMAND" not in shown and "coop-old" not in shown
    assert "coop-old.json` | superseded: older than base2new/toy/toy_colors/coop-new.json (same seeds and epochs)" in not_shown

    avg = _table_rows(text, "Average over datasets")
    assert len(avg) == 1  # only coop has several datasets
    b, n = (81.0 + 90.0) / 2, (62.0 + 72.0) / 2
    assert avg[0] == f"| coop | toyclip-s (toyclip.pt) | 16 | 2 | {b:.2f} | {n:.2f} | {harmonic_mean(b, n):.2f} |"

    prov = text.split("## How these numbers were produced\n", 1)[1]
    assert "vlprompt fit --config configs/coop/toy_colors.yaml" in prov
    assert "vlprompt fit --config configs/zero_shot/toy_colors.yaml" in prov
    assert "`c0ffeec0ffee`" in prov and "2025-02-01 00:00:00 UTC" in prov and "vlprompt 0.1.0" in prov
    assert prov.count("- **") == 3


def test_generic_metric_group(results_dir, tmp_path):
    out = tmp_path / "lb"
    build_leaderboards(results_dir, out)
    text = (out / "few_shot/toy/README.md").read_text()
    assert "| learner | backbone | shots | seeds | accuracy |" in text
    assert "42.00 ± 2.83" in text
    assert "harmonic" not in text and "Average over datasets" not in text


def test_csv_columns_and_rows(results_dir, tmp_path):
    out = tmp_path / "lb"
    build_leaderboards(results_dir, out)
    with open(out / "base2new/toy/results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0])[: len(CSV_COLUMNS)] == CSV_COLUMNS
    assert [(r["dataset"], r["learner"]) for r in rows] == [
        ("toy_colors", "coop"), ("toy_colors", "zero_shot"), ("toy_shapes", "coop")]
    coop = rows[0]
    assert float(coop["base"]) == pytest.approx(81.0) and float(coop["new_std"]) == pytest.approx(2.8284, abs=1e-4)
    assert float(coop["hm"]) == pytest.approx(harmonic_mean(81.0, 62.0), abs=1e-4)
    assert coop["n_seeds"] == "2" and coop["shots"] == "16"
    assert coop["path"] == "base2new/toy/toy_colors/coop-new.json"
    assert coop["backbone_model"] == "toyclip-s" and coop["backbone_sha256"].startswith("c0ffee")
    assert rows[1]["backbone_sha256"] == ""


def test_rebuild_is_deterministic(results_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    pa, pb = build_leaderboards(results_dir, a), build_leaderboards(results_dir, b)
    assert [p.relative_to(a) for p in pa] == [p.relative_to(b) for p in pb]
    for x, y in zip(pa, pb):
        assert x.read_bytes() == y.read_bytes()
    before = {p: p.read_bytes() for p in pa}
    build_leaderboards(results_dir, a)
    assert {p: p.read_bytes() for p in pa} == before


def test_leaderboard_main(results_dir, tmp_path, caplog):
    out = tmp_path / "cli"
    with caplog.at_level(logging.INFO, logger="vlprompt"):
        assert leaderboard_main(["build", str(results_dir), "--out", str(out)]) == 0
    assert (out / "base2new/toy/README.md").is_file()
    assert "README.md" in caplog.text


def test_leaderboard_main_bad_folder(tmp_path, caplog):
    missing = tmp_path / "no-such-results"
    with caplog.at_level(logging.ERROR, logger="vlprompt"):
        assert leaderboard_main(["build", str(missing)]) == 2
    assert str(missing) in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert leaderboard_main(["build", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert leaderboard_main([]) == 2  # usage error


def test_leaderboard_main_invalid_result(tmp_path, caplog):
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "nope"}))
    with caplog.at_level(logging.WARNING, logger="vlprompt"):
        assert leaderboard_main(["build", str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # nothing usable
    assert "skipping bad.json: schema is 'nope'" in caplog.text
