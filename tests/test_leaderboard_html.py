"""HTML leaderboards (vlprompt.leaderboards.html): content, reported numbers, reproducibility, real browser."""

import logging
import shutil
from pathlib import Path

import pytest

from vlprompt.cli.leaderboard import leaderboard_main
from vlprompt.leaderboards.html import build_html_leaderboards
from vlprompt.leaderboards.reported import ReportedError, load_reported

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


# --------------------------------------------------------------------------- segmentation pages
def test_segmentation_page_has_dice_bars_and_overlay_gallery(tmp_path):
    from seg_fixtures import write_seg_results

    write_seg_results(tmp_path / "results", tmp_path / "results" / "overlays")  # recorded as results:<path>
    out1, out2 = tmp_path / "a", tmp_path / "b"
    assert leaderboard_main(["build", str(tmp_path / "results"), "--out", str(out1), "--html", "--reported",
                             str(REPORTED)]) == 0
    page = (out1 / "referring" / "seg-toy" / "index.html").read_text()
    assert 'id="plot-dice"' in page and 'id="plot-bars"' not in page and 'id="plot-scatter"' not in page
    assert "Dice / IoU of the predicted masks" in page and "<h2>Dice per dataset</h2>" in page
    # table columns dice and iou, with mean ± std over the 2 seeds
    assert "72.30 ± 1.13" in page and "<th data-col=\"3\">dice</th>" in page
    # only the sections that apply: segmentation results have no shots, so no shots column and no few-shot curves
    assert ">shots</th>" not in page and "Few-shot curves" not in page
    # gallery: kvasir (coop only; zero_shot has none) and toy_referring (coop + zero_shot), 4 of 6 overlays per row
    assert page.count('<img src="data:image/png;base64,') == 3 * 4
    assert 'id="gallery-0"' in page and 'id="gallery-1"' in page and "2 more overlay(s) not embedded" in page
    assert "coop, seed2: 00.png" in page and "<script src" not in page
    build_html_leaderboards(tmp_path / "results", out2, reported_dir=REPORTED)
    assert (out2 / "referring" / "seg-toy" / "index.html").read_bytes() == page.encode()


def test_overlay_paths_forms_and_missing_files(tmp_path, caplog, monkeypatch):
    from vlprompt.leaderboards.html import overlay_paths

    monkeypatch.chdir(tmp_path)  # overlays are read only inside the results tree or the working directory (issue 23)

    folder = tmp_path / "ov"
    folder.mkdir()
    for name in ("b.png", "a.png", "c.txt"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    result = {"_path": str(tmp_path / "r" / "x.json"), "artifacts": {
        "seed2/overlays": {"path": str(folder)},           # a folder: its *.png, sorted
        "seed1/overlays": [str(folder / "b.png"), "../ov/a.png", str(tmp_path / "gone.png")],  # relative to the JSON
        "seed1/prompts": {"path": str(folder / "a.png")},   # not an overlay key
    }}
    (tmp_path / "r").mkdir()
    with caplog.at_level(logging.WARNING):
        paths = overlay_paths(result)
    assert [p.name for p in paths] == ["b.png", "a.png", "a.png", "b.png"]
    assert "gone.png" in caplog.text
    assert overlay_paths({"artifacts": None}) == [] and overlay_paths({}) == []


def test_segmentation_page_without_overlays_says_so(tmp_path):
    from seg_fixtures import write_seg_results

    for p in write_seg_results(tmp_path / "results", tmp_path / "overlays"):
        import json

        data = json.loads(p.read_text())
        data["artifacts"] = {}
        p.write_text(json.dumps(data))
    (page,) = [p for p in build_html_leaderboards(tmp_path / "results", tmp_path / "out", reported_dir=None)]
    text = page.read_text()
    assert 'id="no-overlays"' in text and "<img" not in text and 'id="plot-dice"' in text


def test_committed_html_rebuilds_byte_for_byte(tmp_path):
    """leaderboards/**/index.html and the shared plotly asset are what `vlprompt leaderboard build leaderboards/results
    --out leaderboards --html --plotly shared` writes from the committed result JSONs."""
    committed = REPO / "leaderboards"
    pages = sorted(p.relative_to(committed) for p in committed.rglob("index.html"))
    assert {p.parent.as_posix() for p in pages} >= {"base2new/toy", "transfer/toy", "test_time/toy", "base2new/gram-toy"}
    written = build_html_leaderboards(committed / "results", tmp_path, reported_dir=REPORTED, plotly="shared")
    rebuilt = sorted(p.relative_to(tmp_path) for p in written)
    (asset,) = [p for p in rebuilt if p.parts[0] == "assets"]
    assert sorted(p for p in rebuilt if p.name == "index.html") == pages
    for rel in [*pages, asset]:
        assert (tmp_path / rel).read_bytes() == (committed / rel).read_bytes(), f"{rel} differs: rebuild it"
    page = (committed / pages[0]).read_text()
    assert f'src="../../assets/{asset.name}"' in page and "plotly.js v" not in page


@pytest.mark.parametrize("engine", ["auto", "orjson"])
def test_pages_do_not_depend_on_plotly_json_engine(tmp_path, engine):
    """plotly's global JSON engine ("auto" takes orjson where installed, which writes "±" raw where json writes
    "\\u00b1") does not reach the pages: the builder chooses the engine explicitly, and restores the global.
    The orjson case runs where orjson is installed (it is no dependency; CI's clean environment lacks it)."""
    import plotly.io as pio

    if engine == "orjson":
        pytest.importorskip("orjson")
    results = REPO / "leaderboards" / "results" / "segmentation" / "toy"
    previous = pio.json.config.default_engine
    try:
        pio.json.config.default_engine = "json"
        a = build_html_leaderboards(results, tmp_path / "a", reported_dir=REPORTED, plotly="shared")
        pio.json.config.default_engine = engine
        b = build_html_leaderboards(results, tmp_path / "b", reported_dir=REPORTED, plotly="shared")
        assert pio.json.config.default_engine == engine
    finally:
        pio.json.config.default_engine = previous
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    for p, q in zip(a, b):
        assert p.read_bytes() == q.read_bytes(), p
    page = next(p for p in a if p.name == "index.html").read_text(encoding="utf-8")
    assert "\\u00b1" in page
