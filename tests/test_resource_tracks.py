"""Issue 28 / 25: every result records its learner's resource track and the prompt text it evaluated with, and the
leaderboards show the track so that rows of different tracks are never compared unmarked."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from vlprompt.leaderboards.build import build_leaderboards
from vlprompt.leaderboards.select import track_cell
from vlprompt.learners.base import RESOURCES
from vlprompt.learners.coop import CoOp
from vlprompt.learners.gram import GRAM
from vlprompt.learners.linear_probe import LinearProbe
from vlprompt.learners.zero_shot import ZeroShot
from vlprompt.metrics import summarize_seeds
from vlprompt.runs.driver import run_experiment

REPO = Path(__file__).resolve().parents[1]


def test_learners_declare_their_track_and_prompt_text(tmp_path: Path) -> None:
    assert ZeroShot().resource_track() == ()
    (tmp_path / "d.json").write_text('{"red": ["a red thing."]}')
    assert ZeroShot(descriptions=str(tmp_path / "d.json")).resource_track() == ("LLM text",)
    assert GRAM(CoOp()).resource_track() == ()
    meta = tmp_path / "meta.safetensors"
    meta.write_bytes(b"x")
    assert GRAM(CoOp(), meta=str(meta)).resource_track() == ("image-text corpus",)
    assert set(ZeroShot(descriptions=str(tmp_path / "d.json")).resource_track()) <= set(RESOURCES)
    assert ZeroShot().prompt_record() == {"template": "a photo of a {}.", "templates": ["a photo of a {}."],
                                          "learned": False}
    assert CoOp(n_ctx=4, ctx_init="a photo of a").prompt_record() == {"ctx_init": "a photo of a", "n_ctx": 4,
                                                                      "learned": True}
    assert GRAM(CoOp(n_ctx=16)).prompt_record() == {"n_ctx": 16, "learned": True, "wrapped_by": "GRAM"}
    assert LinearProbe().prompt_record()["template"] == "a photo of a {}."


def test_a_run_records_prompt_and_track(tmp_path: Path) -> None:
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--seeds", "[1]", "--trainer.max_epochs", "2",
            "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--data.init_args.dataset.init_args.per_class", "[16, 4, 8]"]
    result = run_experiment("fit", args)
    assert result["prompt"] == {"ctx_init": "a photo of a", "n_ctx": 4, "learned": True}
    assert result["resources"] == []


def _row(learner: str, resources=None) -> dict:
    per_seed = [{"seed": s, "metrics": {"base": 80.0 + s, "new": 70.0}} for s in (1, 2, 3)]
    row = {"schema": "vlprompt.result/1", "protocol": "base2new", "benchmark": "toy", "dataset": "d",
           "learner": learner, "learner_config": {}, "backbone": {"model": "toyclip"}, "data": {"name": "d"},
           "shots": 16, "seeds": [1, 2, 3], "per_seed": per_seed,
           "summary": summarize_seeds([p["metrics"] for p in per_seed]), "created": "2025-01-01T00:00:00+00:00",
           "command": "vlprompt fit", "config": {}, "versions": {}, "wall_seconds": 1.0, "git": {}, "device": "cpu"}
    if resources is not None:
        row["resources"] = resources
    return row


def test_track_column_in_markdown_and_csv(tmp_path: Path) -> None:
    assert track_cell({"resources": []}) == "standard" and track_cell({}) == "—"
    assert track_cell({"resources": ["LLM text"]}) == "LLM text"
    results = tmp_path / "results" / "base2new" / "toy" / "d"
    results.mkdir(parents=True)
    for name, res in (("zero_shot", ["LLM text"]), ("coop", []), ("old", None)):
        (results / f"{name}.json").write_text(json.dumps(_row(name, res)))
    build_leaderboards(tmp_path / "results", tmp_path / "out")
    md = (tmp_path / "out" / "base2new" / "toy" / "README.md").read_text()
    assert "| track |" in md.replace("| seeds | track |", "| track |") and "`track`:" in md
    assert "| LLM text |" in md and "| standard |" in md and "| — |" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "base2new" / "toy" / "results.csv").read_text())))
    assert sorted(r["track"] for r in rows) == ["", "LLM text", "standard"]
