"""HTML leaderboards (vlprompt.leaderboard_html): content, reported numbers, reproducibility, real browser."""

import logging
import shutil
from pathlib import Path

import pytest

from vlprompt.leaderboard import leaderboard_main
from vlprompt.leaderboard_html import ReportedError, build_html_leaderboards, load_reported

pytest.importorskip("plotly")

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "leaderboards" / "results" / "base2new" / "toy"
REPORTED = REPO / "leaderboards" / "reported"


@pytest.fixture
def toy_results(tmp_path):
    """The committed toy base-to-new results (real runs), two datasets, in a temporary folder."""
    root = tmp_path / "results" / "base2new" / "toy"
    for d in ("toy_colors", "toy_patterns"):
        shutil.copytree(TOY / d, root / d)
    return tmp_path / "results"


def test_reported_yaml_entries_all_cited():
    entries = load_reported(REPORTED)
    assert {e["learner"] for e in entries} >= {"CoOp", "CoCoOp"}
    assert all(e["source"] and e["protocol"] == "base2new" for e in entries)
    coop = next(e for e in entries if e["learner"] == "CoOp")
    assert (coop["base"], coop["new"], coop["hm"]) == (82.69, 63.22, 71.66)


def test_reported_entry_without_source_is_an_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("protocol: base2new\nentries:\n  - learner: Foo\n    base: 1.0\n")
    with pytest.raises(ReportedError, match=r"bad.yaml: entry 0 \('Foo'\) has no 'source'"):
        load_reported(tmp_path)


def test_cli_bad_reported_fails_before_writing(toy_results, tmp_path, caplog):
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "x.yaml").write_text("protocol: base2new\nentries:\n  - learner: Foo\n    hm: 1.0\n")
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        code = leaderboard_main(["build", str(toy_results), "--out", str(out), "--html", "--reported", str(tmp_path / "rep")])
    assert code == 1 and "has no 'source'" in caplog.text
    assert not out.exists()


def test_html_content_and_reproducible(toy_results, tmp_path):
    out1, out2 = tmp_path / "a", tmp_path / "b"
    assert leaderboard_main(["build", str(toy_results), "--out", str(out1), "--html", "--reported", str(REPORTED)]) == 0
    page = (out1 / "base2new" / "toy" / "index.html").read_text()
    assert (out1 / "base2new" / "toy" / "README.md").exists()
    # plotly.js inlined (no network at view time), fixed div ids, no external scripts
    found = {k: page.count(k) for k in ('id="plot-scatter"', 'id="plot-bars"', "<script src", "<link ",
                                          "CoCoOp (reported)", "CVPR 2022", 'class="reported"', "zero_shot", "kgcoop",
                                          "<h2>toy_colors</h2>", "<h2>toy_patterns</h2>", "plotly.js v")}
    assert found["<script src"] == 0 and found["<link "] == 0, found
    assert all(v > 0 for k, v in found.items() if k not in {"<script src", "<link "}), found
    build_html_leaderboards(toy_results, out2, reported_dir=REPORTED)
    same = (out2 / "base2new" / "toy" / "index.html").read_bytes() == page.encode()
    assert same, "two builds of the same results differ"
