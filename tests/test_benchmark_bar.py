"""Issue 26: the embedded benchmarks' bar (vlprompt/toyworld/benchmark_bar.py) on rows built here."""

from __future__ import annotations

import pytest

from vlprompt.runs.results import read_leaderboard_csv
from vlprompt.toyworld.benchmark_bar import (
    COOP4,
    COOP16,
    ZERO_SHOT,
    classification_bar,
    main,
    segmentation_bar,
    tradeoff,
)


def row(dataset, learner, base, new, hm, base_ci=None, new_ci=None, backbone="vlprompt-toyclip2"):
    out = {"protocol": "base2new", "dataset": dataset, "learner": learner, "backbone_model": backbone,
           "base": str(base), "new": str(new), "hm": str(hm), "base_ci95_low": "", "base_ci95_high": "",
           "new_ci95_low": "", "new_ci95_high": ""}
    if base_ci:
        out["base_ci95_low"], out["base_ci95_high"] = map(str, base_ci)
    if new_ci:
        out["new_ci95_low"], out["new_ci95_high"] = map(str, new_ci)
    return out


def test_tradeoff_needs_both_intervals_on_the_right_side_of_zero_shot():
    zs = row("d", ZERO_SHOT, 70, 80, 74.7)
    held = tradeoff(row("d", COOP16, 90, 70, 78.8, (85, 95), (65, 75)), zs)
    assert held["holds"] and held["base_gain"] == 20 and held["new_gain"] == -10
    assert held["base_ci"] == (15, 25) and held["new_ci"] == (-15, -5)
    assert not tradeoff(row("d", COOP16, 90, 70, 78.8, (85, 95), (65, 81)), zs)["holds"]  # new interval spans 0
    assert not tradeoff(row("d", COOP16, 90, 70, 78.8, (69, 95), (65, 75)), zs)["holds"]  # base interval spans 0
    assert not tradeoff(row("d", COOP16, 90, 70, 78.8), zs)["holds"]  # one seed: no interval, no claim


def suite(n_datasets, coop16_ok, coop4_ok, zs_base=70.0, best_hm=90.0):
    rows = []
    for i in range(n_datasets):
        d = f"toy_{i}"
        rows.append(row(d, ZERO_SHOT, zs_base, 80, 74.7))
        ok16, ok4 = i < coop16_ok, i < coop4_ok
        rows.append(row(d, COOP16, 90, 70 if ok16 else 85, best_hm, (85, 95), (65, 75) if ok16 else (80, 90)))
        rows.append(row(d, COOP4, 85, 75 if ok4 else 82, 80, (80, 90), (70, 79) if ok4 else (78, 86)))
    return rows


def test_classification_bar_counts_datasets_and_saturation():
    assert classification_bar(suite(5, 3, 2))["passes"]
    verdict = classification_bar(suite(5, 2, 2))
    assert not verdict["passes"] and verdict["coop16_holds"] == ["toy_0", "toy_1"]
    assert not classification_bar(suite(5, 3, 1))["passes"]
    assert not classification_bar(suite(4, 4, 4))["passes"]  # fewer than 5 datasets
    assert classification_bar(suite(5, 3, 2, zs_base=90.0))["saturated"] == [f"toy_{i}" for i in range(5)]
    assert not classification_bar(suite(5, 3, 2, best_hm=98.0))["passes"]
    # rows of another toy CLIP are not this suite's
    assert classification_bar(suite(5, 3, 2), backbone="vlprompt-toyclip")["datasets"] == {}


def seg_row(learner, dice, std, ci, shots=""):
    return {"protocol": "segmentation", "dataset": "toy_seg_scan", "learner": learner, "shots": shots,
            "dice": str(dice), "dice_std": str(std), "dice_ci95_low": str(ci[0]), "dice_ci95_high": str(ci[1])}


def test_segmentation_bar():
    rows = [seg_row("zero_shot (template='{}')", 28.0, 0.0, (28.0, 28.0)),
            seg_row("coop (n_ctx=4)", 41.0, 1.0, (39.8, 42.2)), seg_row("vpt", 55.0, 2.0, (52.5, 57.5)),
            seg_row("coop (n_ctx=4)", 30.0, 0.1, (29.9, 30.1), shots="80")]  # a label fraction: not a learner
    verdict = segmentation_bar(rows)
    assert verdict["passes"] and verdict["coop_gain"] == pytest.approx(13.0)
    assert verdict["spread"] == pytest.approx(14.0) and verdict["largest_std"] == 2.0
    rows[1] = seg_row("coop (n_ctx=4)", 37.6, 6.1, (30.1, 45.1))
    assert not segmentation_bar(rows)["checks"]["gain"]  # +9.6 < 10
    rows[0] = seg_row("zero_shot (template='{}')", 5.4, 0.0, (5.4, 5.4))
    assert not segmentation_bar(rows)["checks"]["band"]


def test_missing_leaderboard_names_the_build_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="vlprompt leaderboard build"):
        read_leaderboard_csv(tmp_path / "results.csv")
    with pytest.raises(FileNotFoundError, match="results.csv"):
        main([str(tmp_path)])


def test_committed_segmentation_benchmark_meets_the_bar(repo):
    verdict = segmentation_bar(read_leaderboard_csv(repo / "leaderboards" / "segmentation" / "toy" / "results.csv"))
    assert verdict["passes"], verdict


def test_committed_second_toy_suite_meets_the_bar_with_every_row_at_five_seeds(repo):
    """Issue 26's classification bar on the committed rows (docs/toyclip2-design.md), and every row it is judged on."""
    rows = read_leaderboard_csv(repo / "leaderboards" / "base2new" / "toy" / "results.csv")
    verdict = classification_bar(rows)
    assert verdict["passes"], verdict
    assert len(verdict["datasets"]) == 7
    assert all(e["coop16"] and e["coop4"] for e in verdict["datasets"].values())
    toy2 = [r for r in rows if r["backbone_model"] == "vlprompt-toyclip2"]
    suite = [r for r in toy2 if r["learner"].split(" (")[0] in ("zero_shot", "coop")]
    assert len(suite) == 21 and {r["n_seeds"] for r in suite} == {"5"}
    zoo = [r for r in toy2 if r not in suite]  # toy2_zoo.yaml (six learners) and toy2_cocoop.yaml, seven datasets
    assert len(zoo) == 49 and {r["n_seeds"] for r in zoo} == {"3"}
