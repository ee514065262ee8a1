"""Issue 25, item 5: our rows beside the numbers papers report, per dataset, flagged where they disagree.

Everything here runs on hand-made results (no weights can be loaded on this machine): the matching rules (learner,
dataset, architecture, weights, shots), the flag rule (|diff| > range of our seeds + tolerance), the 11-dataset
average, and the Markdown / HTML tables.
"""

from __future__ import annotations

import json

import pytest

from vlprompt.leaderboards.build import build_leaderboards
from vlprompt.leaderboards.html import render_html
from vlprompt.leaderboards.reported import (
    rank_agreement,
    AVERAGE_DATASET,
    COOP_DATASETS,
    ReportedError,
    backbone_key,
    compare_with_reported,
    disagrees,
    load_reported,
    published_checksums,
    reported_for_page,
    result_weights,
)
from vlprompt.metrics import summarize_seeds

OPENAI_B16_SHA = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"


def _row(learner, pairs, *, dataset="eurosat", model="ViT-B-16-quickgelu", pretrained="openai", sha=None, shots=16):
    per_seed = [{"seed": i + 1, "metrics": {"base": b, "new": n}} for i, (b, n) in enumerate(pairs)]
    return {"protocol": "base2new", "benchmark": "coop11", "dataset": dataset, "learner": learner,
            "backbone": {"model": model, "pretrained": pretrained, **({"checkpoint_sha256": sha} if sha else {})},
            "shots": shots, "per_seed": per_seed, "summary": summarize_seeds([p["metrics"] for p in per_seed]),
            "created": "2026-01-01T00:00:00+00:00", "command": "vlprompt fit", "_rel": f"{learner}-{dataset}.json",
            "device": "cuda"}


def _entry(learner, dataset, base, new, hm, **kw):
    return {"protocol": "base2new", "backbone": "ViT-B/16", "weights": "openai", "learner": learner,
            "learner_id": kw.pop("learner_id", learner.lower()), "dataset": dataset, "shots": 16,
            "source": "hand-made", "base": base, "new": new, "hm": hm, **kw}


def test_disagrees_hand_computed():
    # seeds 90, 92, 94 -> range 4; tolerance 1 -> flagged beyond 5 points
    assert not disagrees(92.0, 87.0, 4.0, 1.0)     # |5| is not > 5
    assert disagrees(92.0, 86.9, 4.0, 1.0)         # 5.1 > 5
    assert disagrees(80.0, 81.01, 0.0, 1.0) and not disagrees(80.0, 81.0, 0.0, 1.0)


def test_backbone_key_meets_paper_spelling():
    assert backbone_key("ViT-B/16") == backbone_key("ViT-B-16-quickgelu") == backbone_key("vit_b_16") == "vitb16"
    assert backbone_key("ViT-L/14") != backbone_key("ViT-B/16")


def test_weights_by_tag_or_by_published_checksum():
    assert result_weights(_row("coop", [(1, 1)])) == "openai"
    local = _row("coop", [(1, 1)], pretrained="/models/ViT-B-16.pt", sha=OPENAI_B16_SHA)
    assert result_weights(local) is None  # unknown without the published checksums
    assert result_weights(local, published_checksums()) == "openai"  # open_clip's download address carries it
    other = _row("coop", [(1, 1)], pretrained="/models/mine.pt", sha="0" * 64)
    assert result_weights(other, published_checksums()) is None


def test_pairs_and_flags_per_dataset():
    ours = _row("coop", [(90, 50), (92, 52), (94, 54)])  # base 92 [90, 94], new 52 [50, 54]
    reported = [_entry("CoOp", "eurosat", 92.19, 54.74, 68.69),
                _entry("CoOp", "dtd", 79.44, 41.18, 54.24),                   # another dataset: not paired
                _entry("CoCoOp", "eurosat", 87.49, 60.04, 71.21)]             # another learner: not paired
    pairs = compare_with_reported("base2new", [ours], reported)
    assert [(p["metric"], p["dataset"]) for p in pairs] == [("base", "eurosat"), ("new", "eurosat"), ("hm", "eurosat")]
    base, new, hm = pairs
    assert base["ours"] == pytest.approx(92.0) and (base["low"], base["high"]) == (90.0, 94.0)
    assert base["diff"] == pytest.approx(-0.19) and not base["flag"]
    assert new["diff"] == pytest.approx(-2.74) and not new["flag"]           # 2.74 < 4 + 1
    # hm of means 2*92*52/144 = 66.444; per-seed hm range: hm(90,50)=64.29 .. hm(94,54)=68.59 -> 4.30
    assert hm["ours"] == pytest.approx(66.4444, abs=1e-3) and not hm["flag"]
    far = _row("coop", [(80, 50), (80.5, 50.5)])
    flagged = {p["metric"]: p["flag"] for p in compare_with_reported("base2new", [far], reported)}
    assert flagged == {"base": True, "new": True, "hm": True}  # 12.0 > 0.5 + 1 ...


def test_nothing_paired_across_backbone_weights_shots_or_protocol():
    reported = [_entry("CoOp", "eurosat", 92.19, 54.74, 68.69)]
    pairs = [(60, 60)]
    for row in (_row("coop", pairs, model="vlprompt-toyclip", pretrained="vlprompt:backbones/assets/x.safetensors"),
                _row("coop", pairs, model="ViT-L-14"), _row("coop", pairs, pretrained="laion2b_s34b_b88k"),
                _row("coop", pairs, shots=4)):
        assert compare_with_reported("base2new", [row], reported) == []
    assert compare_with_reported("fewshot", [_row("coop", pairs)], reported) == []


def test_eleven_dataset_average_only_when_all_covered():
    rows = [_row("coop", [(80 + i, 60), (82 + i, 62)], dataset=d) for i, d in enumerate(COOP_DATASETS)]
    avg = _entry("CoOp", AVERAGE_DATASET, 82.69, 63.22, 71.66)
    pairs = [p for p in compare_with_reported("base2new", rows, [avg]) if p["dataset"] == AVERAGE_DATASET]
    by = {p["metric"]: p for p in pairs}
    # base per seed: mean(80..90) = 85, mean(82..92) = 87 -> ours 86, range 2; new 60, 62 -> 61
    assert by["base"]["ours"] == pytest.approx(86.0) and (by["base"]["low"], by["base"]["high"]) == (85.0, 87.0)
    assert by["hm"]["ours"] == pytest.approx(2 * 86 * 61 / 147)
    assert by["base"]["flag"] and by["new"]["n_seeds"] == 2
    assert not [p for p in compare_with_reported("base2new", rows[:-1], [avg]) if p["dataset"] == AVERAGE_DATASET]


def test_reported_for_page_shows_only_the_pages_datasets_and_averages():
    reported = [_entry("CoOp", "eurosat", 1, 1, 1), _entry("CoOp", "dtd", 1, 1, 1),
                _entry("CoOp", AVERAGE_DATASET, 1, 1, 1)]
    page = reported_for_page("base2new", [_row("coop", [(1, 1)])], reported)
    assert [e["dataset"] for e in page] == ["eurosat", AVERAGE_DATASET]
    toy = reported_for_page("base2new", [_row("coop", [(1, 1)], dataset="toy_archive")], reported)
    assert [e["dataset"] for e in toy] == [AVERAGE_DATASET]


def test_loader_checks_learner_id_and_source_kind(tmp_path):
    (tmp_path / "r.yaml").write_text("protocol: base2new\nbackbone: ViT-B/16\nentries:\n"
                                     "  - {learner: CLIP (zero-shot), learner_id: zero_shot, dataset: eurosat, base: 1, "
                                     "source: x, source_kind: paper table}\n"
                                     "  - {learner: CoOp, dataset: eurosat, base: 1, source: y}\n")
    a, b = load_reported(tmp_path)
    assert (a["learner_id"], a["weights"], a["source_kind"]) == ("zero_shot", "openai", "paper table")
    assert b["learner_id"] == "coop" and "source_kind" not in b
    (tmp_path / "r.yaml").write_text("protocol: base2new\nentries:\n  - {learner: A, base: 1, source: x, "
                                     "source_kind: my memory}\n")
    with pytest.raises(ReportedError, match="source_kind.*paper table"):
        load_reported(tmp_path)


def _write(root, rows):
    for r in rows:
        r = {k: v for k, v in r.items() if not k.startswith("_")}
        r.update({"schema": "vlprompt.result/1", "learner_config": {}, "data": {"name": r["dataset"]},
                  "seeds": [p["seed"] for p in r["per_seed"]], "config": {}, "versions": {}, "wall_seconds": 1.0,
                  "git": {}})
        folder = root / "base2new" / "coop11" / r["dataset"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{r['learner']}.json").write_text(json.dumps(r))


def test_markdown_and_html_show_ours_beside_reported(tmp_path):
    (tmp_path / "reported").mkdir()
    (tmp_path / "reported" / "b2n.yaml").write_text(
        "protocol: base2new\nbackbone: ViT-B/16\nshots: 16\nentries:\n"
        "  - {learner: CoOp, dataset: eurosat, base: 92.19, new: 54.74, hm: 68.69, source_kind: paper table, "
        "source: 'CoCoOp, Table 1'}\n")
    _write(tmp_path / "results", [_row("coop", [(80, 50), (80.5, 50.5)])])
    build_leaderboards(tmp_path / "results", tmp_path / "lb", reported_dir=tmp_path / "reported")
    text = (tmp_path / "lb" / "base2new" / "coop11" / "README.md").read_text()
    assert "## Ours beside reported" in text and "1 percentage points" in text
    line = next(x for x in text.splitlines() if x.startswith("| CoOp | eurosat | base |"))
    assert "80.25 [80.00, 80.50]" in line and "92.19" in line and "-11.94" in line and "disagrees" in line
    rows = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    page = render_html("base2new", "coop11", rows, reported_for_page("base2new", rows, load_reported(tmp_path / "reported")),
                       plotly_src="p.js")
    assert 'id="table-comparison"' in page and "disagrees" in page


def test_page_says_why_nothing_is_compared(tmp_path):
    (tmp_path / "reported").mkdir()
    (tmp_path / "reported" / "b2n.yaml").write_text(
        "protocol: base2new\nbackbone: ViT-B/16\nentries:\n  - {learner: CoOp, dataset: eurosat, base: 92.19, "
        "source: x}\n")
    _write(tmp_path / "results", [_row("coop", [(80, 50)], model="vlprompt-toyclip", pretrained="vlprompt:x")])
    build_leaderboards(tmp_path / "results", tmp_path / "lb", reported_dir=tmp_path / "reported")
    text = (tmp_path / "lb" / "base2new" / "coop11" / "README.md").read_text()
    assert "no row here ran that backbone (ours: vlprompt-toyclip)" in text


def _csv_row(dataset, learner, base, new, model="toy"):
    return {"protocol": "base2new", "dataset": dataset, "learner": learner, "backbone_model": model,
            "base": str(base), "new": str(new)}


def _average(learner, hm, learner_id=None):
    entry = {"protocol": "base2new", "learner": learner, "dataset": "average (11 datasets)", "hm": hm,
             "source": f"paper of {learner}"}
    return {**entry, "learner_id": learner_id or learner.lower()}


def test_rank_agreement_averages_base_and_new_over_the_datasets_then_ranks():
    rows = [_csv_row(d, "zero_shot", 70, 80) for d in ("a", "b")]
    rows += [_csv_row("a", "coop", 90, 60), _csv_row("b", "coop", 80, 70)]           # HM(85, 65) = 73.67
    rows += [_csv_row("a", "maple (prompt_depth=3)", 90, 80), _csv_row("b", "maple (prompt_depth=3)", 90, 80)]
    rows += [_csv_row("a", "coop (n_ctx=4)", 99, 99), _csv_row("b", "coop (n_ctx=4)", 99, 99)]
    rows += [_csv_row("a", "vpt", 99, 99)]                                         # not on every dataset: left out
    rows += [_csv_row("a", "coop", 0, 0, model="other")]                           # another backbone: ignored
    reported = [_average("CLIP", 71.5, "zero_shot"), _average("CoOp", 71.66), _average("MaPLe", 78.55),
                _average("MaPLe", 10.0), _average("VPT", 76.68), {**_average("KgCoOp", 77.0), "hm": None}]
    out = rank_agreement(rows, reported, backbone_model="toy")
    assert out["datasets"] == ["a", "b"] and set(out["pairs"]) == {"zero_shot", "coop", "maple"}
    assert out["pairs"]["coop"]["label"] == "coop" and out["pairs"]["coop"]["ours"] == pytest.approx(2 * 85 * 65 / 150)
    assert out["pairs"]["maple"]["reported"] == 78.55  # the first average of a learner
    assert out["spearman"] == pytest.approx(0.5) and out["n"] == 3  # ours coop < zero_shot < maple, reported the swap
    labelled = rank_agreement(rows, reported, backbone_model="toy", labels={"coop": "coop (n_ctx=4)"})
    assert labelled["pairs"]["coop"]["ours"] == pytest.approx(99.0) and labelled["spearman"] == pytest.approx(0.5)
    assert rank_agreement(rows[:2], reported, backbone_model="toy")["spearman"] is None


def test_leaderboard_correlate_prints_the_measurement(tmp_path, capsys):
    import csv

    from vlprompt.cli.leaderboard import leaderboard_main

    rows = [_csv_row(d, name, b, n) for d in ("a", "b") for name, b, n in
            (("zero_shot", 70, 80), ("coop", 90, 60), ("maple", 90, 85))]
    with (tmp_path / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "reported").mkdir()
    (tmp_path / "reported" / "b2n.yaml").write_text(
        "protocol: base2new\nbackbone: ViT-B/16\nentries:\n"
        "  - {learner: CLIP (zero-shot), learner_id: zero_shot, dataset: average (11 datasets), hm: 71.7, source: s}\n"
        "  - {learner: CoOp, dataset: average (11 datasets), hm: 71.66, source: s}\n"
        "  - {learner: MaPLe, dataset: average (11 datasets), hm: 78.55, source: s}\n")
    argv = ["correlate", str(tmp_path / "results.csv"), "--backbone", "toy", "--reported", str(tmp_path / "reported")]
    assert leaderboard_main(argv) == 0
    assert "Spearman rank correlation +1.000 over 3 learners" in capsys.readouterr().out
    assert leaderboard_main(["correlate", str(tmp_path / "missing.csv"), "--backbone", "toy"]) == 2
