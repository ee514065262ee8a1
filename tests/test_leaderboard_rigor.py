"""Issue 29 on the leaderboards: 95% intervals over seeds, "not separated" rows, both HM conventions, cost columns,
and the reported rows' ``hm_convention``."""

from __future__ import annotations

import csv
import io
import json

import pytest

from vlprompt.leaderboards.build import build_leaderboards
from vlprompt.leaderboards.html import render_html
from vlprompt.leaderboards.reported import HM_CONVENTIONS, ReportedError, load_reported
from vlprompt.leaderboards.select import cost, cost_cells, interval, not_separated
from vlprompt.metrics import summarize_seeds


def _row(learner, per_seed, *, dataset="d", extra=None, top=None):
    metrics = [p["metrics"] for p in per_seed]
    r = {"protocol": "base2new", "benchmark": "toy", "dataset": dataset, "learner": learner,
         "backbone": {"model": "toyclip"}, "shots": 16, "per_seed": per_seed, "summary": summarize_seeds(metrics),
         "created": "2025-01-01T00:00:00+00:00", "command": "vlprompt fit", "_rel": f"{learner}.json",
         "device": "cpu"}
    r.update(top or {})
    return r


def _seeds(*pairs, **extra):
    return [{"seed": i + 1, "metrics": {"base": b, "new": n}, **extra} for i, (b, n) in enumerate(pairs)]


def test_interval_and_not_separated_hand_computed():
    # hm per seed: a: 2*80*80/160 = 80, 82, 84 -> mean 82, s 2, half 4.3027 * 2 / sqrt(3) = 4.968 -> [77.03, 86.97]
    a = _row("a", _seeds((80, 80), (82, 82), (84, 84)))
    # b: 86, 86.5, 87 -> mean 86.5, s 0.5, half 1.242 -> [85.26, 87.74]: overlaps a's (ranked just above a)
    b = _row("b", _seeds((86, 86), (86.5, 86.5), (87, 87)))
    # c: 70, 70.5, 71 -> [69.26, 71.74]: below a, no overlap with a's interval
    c = _row("c", _seeds((70, 70), (70.5, 70.5), (71, 71)))
    low, high = interval(a, "hm")
    assert (round(low, 2), round(high, 2)) == (77.03, 86.97)
    # rank on hm: b (86.5) > a (82) > c (70.5); a overlaps b, c does not overlap a; b is first
    assert not_separated([a, b, c], "hm") == [True, False, False]
    one = _row("one", _seeds((85, 85)))
    assert interval(one, "hm") is None and not_separated([b, one], "hm") == [False, False]


def test_rows_are_never_ranked_across_resource_tracks():
    # b (86.5, standard) would be ranked just above a (82) and overlap it; with b on the LLM-text track and a on the
    # standard one, a has no row above it in its own track
    a = _row("a", _seeds((80, 80), (82, 82), (84, 84)), top={"resources": []})
    b = _row("b", _seeds((86, 86), (86.5, 86.5), (87, 87)), top={"resources": ["LLM text"]})
    c = _row("c", _seeds((81, 81), (82, 82), (83, 83)), top={"resources": []})
    assert not_separated([a, b], "hm") == [False, False]
    assert not_separated([a, b, c], "hm") == [False, False, True]  # c overlaps a, the next-higher standard row


def test_seed_independent_results_have_no_interval():
    r = _row("zs", _seeds((70, 80), (70, 80)), top={"seed_independent": True})
    assert interval(r, "base") is None


def test_cost_from_recorded_fields_and_dash_for_old_results():
    per_seed = _seeds((80, 70), (82, 72), train_seconds=10.0, train_images=100, epochs=5, test_seconds=2.0,
                      test_images=400, peak_rss_mib=512.0)
    per_seed[1]["peak_rss_mib"] = 600.0
    r = _row("coop", per_seed, top={"trainable_params": 2048})
    c = cost(r)
    assert c["train s/image"] == pytest.approx(10.0 / (100 * 5))  # 0.02 s per training image per epoch
    assert c["test s/image"] == pytest.approx(2.0 / 400)
    assert c["peak RSS (MiB)"] == 600.0 and c["trainable params"] == 2048 and c["device"] == "cpu"
    assert cost_cells(r) == ["0.02", "0.005", "600", "2,048", "cpu"]
    old = _row("old", _seeds((80, 70)), top={"device": None})
    assert cost_cells(old) == ["—"] * 5


def _build(tmp_path, rows):
    """Write ``rows`` as result files and build their leaderboard: (README text, CSV rows)."""
    root = tmp_path / "results" / "base2new" / "toy" / "d"
    root.mkdir(parents=True)
    for r in rows:
        r = {k: v for k, v in r.items() if not k.startswith("_")}
        r.update({"schema": "vlprompt.result/1", "learner_config": {}, "data": {"name": "d"}, "seeds": [1, 2, 3],
                  "config": {}, "versions": {}, "wall_seconds": 1.0, "git": {}})
        (root / f"{r['learner']}.json").write_text(json.dumps(r))
    build_leaderboards(tmp_path / "results", tmp_path / "lb")
    folder = tmp_path / "lb" / "base2new" / "toy"
    return (folder / "README.md").read_text(), list(csv.DictReader(io.StringIO((folder / "results.csv").read_text())))


def test_csv_has_interval_hm_and_cost_columns(tmp_path):
    _, rows = _build(tmp_path, [_row("a", _seeds((80, 80), (82, 82), (84, 84)))])
    assert rows[0]["hm_ci95_low"] == "77.0317" and rows[0]["hm_ci95_high"] == "86.9683"
    assert rows[0]["hm_seed_mean"] == "82.0" and rows[0]["not_separated"] == "False"
    assert rows[0]["train_s_per_image"] == "" and rows[0]["device"] == "cpu"


def test_html_labels_both_hm_conventions_and_states_the_interval(tmp_path):
    a = _row("a", _seeds((80, 80), (82, 82), (84, 84)))
    page = render_html("base2new", "toy", [a], plotly_src="plotly.min.js")
    assert "HM of means" in page and "mean of per-seed HM" in page and "per-seed HM 95% CI" in page
    assert "t(0.975, n-1)" in page and "train s/image" in page and "peak RSS (MiB)" in page


def test_markdown_marks_not_separated(tmp_path):
    text, _ = _build(tmp_path, [_row("a", _seeds((80, 80), (82, 82), (84, 84))),
                                _row("b", _seeds((86, 86), (86.5, 86.5), (87, 87)))])
    line_a = next(line for line in text.splitlines() if line.startswith("| a |"))
    line_b = next(line for line in text.splitlines() if line.startswith("| b |"))
    assert "not separated" in line_a and "not separated" not in line_b
    assert "[77.03, 86.97]" in line_a


def test_reported_hm_convention_is_read_and_checked(tmp_path):
    entries = load_reported("leaderboards/reported")
    assert all(e.get("hm_convention") in HM_CONVENTIONS for e in entries if "hm" in e)
    (tmp_path / "x.yaml").write_text("protocol: base2new\nentries:\n  - learner: X\n    hm: 70\n"
                                     "    hm_convention: median\n    source: paper\n")
    with pytest.raises(ReportedError, match="hm_convention"):
        load_reported(tmp_path)
    (tmp_path / "x.yaml").write_text("protocol: base2new\nentries:\n  - learner: X\n    hm: 70\n    source: paper\n")
    assert "hm_convention" not in load_reported(tmp_path)[0]  # unknown convention: left out
