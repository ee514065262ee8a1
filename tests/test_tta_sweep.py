"""Issue 25: test-time grids as sweep files (``stage: tta``): each cell runs ``vlprompt tta`` with a run folder,
a finished cell is skipped on the next run, ``--plan`` counts its test images at a test-time cost per image."""

from __future__ import annotations

import json

import pytest
import yaml

from vlprompt.cli.sweep import sweep_main
from vlprompt.runs.folders import RunError
from vlprompt.runs.sweep import SweepError, load_sweep
from vlprompt.runs.test_time import run_tta

SMALL = ["--config", "configs/protocols/test_time/toy_shifts.yaml", "--config", "configs/backbones/toyclip.yaml",
         "--data.init_args.images_per_set", "3", "--data.init_args.targets",
         '[{"class_path": "toy_mixtures", "init_args": {"style": "clean", "test_style": "noise"}}]']


def _sweep(tmp_path, **over):
    spec = {"name": "tta_toy", "stage": "tta", "args": [*SMALL, "--results_dir", str(tmp_path / "results")],
            "grid": {"learner": ["tpt/default"], "seeds": [[1]], "model.learner.init_args.views": [8],
                     "model.learner.init_args.selection": [0.25]},
            "executor": "local", "workers": 1, **over}
    path = tmp_path / "tta.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_tta_cells_run_once_and_are_skipped_when_done(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    path = _sweep(tmp_path, grid={"learner": ["tpt/default"], "seeds": [[1, 2]], "model.learner.init_args.views": [8],
                                  "model.learner.init_args.selection": [0.25]})
    out = tmp_path / "out"
    assert sweep_main(["--config", str(path), "--out", str(out)]) == 0
    results = sorted((tmp_path / "results").rglob("*.json"))
    assert len(results) == 1
    result = json.loads(results[0].read_text())
    assert result["stage"] == "tta" and result["learner"] == "tpt" and [r["seed"] for r in result["per_seed"]] == [1, 2]
    record = json.loads((out / "runs" / result["run_id"] / "run.json").read_text())
    assert record["status"] == "complete" and record["result"] == str(results[0])
    assert (out / "runs" / result["run_id"] / "seed2" / "seed.json").is_file()
    capsys.readouterr()
    assert sweep_main(["--config", str(path), "--out", str(out)]) == 0  # done: skipped, nothing new written
    assert sorted((tmp_path / "results").rglob("*.json")) == results


def test_tta_run_folder_continues_unfinished_seeds_and_refuses_a_finished_run(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    argv = [*SMALL, "--config", "configs/learners/zero_shot/default.yaml", "--results_dir", str(tmp_path / "r"),
            "--trainer.default_root_dir", str(tmp_path / "runs"), "--run_id", "tta-a", "--seeds", "[1, 2]"]
    first = run_tta(argv, show_summary=False)
    seed1 = json.loads((tmp_path / "runs" / "tta-a" / "seed1" / "seed.json").read_text())
    assert seed1["metrics"] == first["per_seed"][0]["metrics"]
    with pytest.raises(RunError, match="already complete"):
        run_tta(argv, show_summary=False)
    # an interrupted run (status running, seed 2 never finished) continues from its saved seed 1
    record = json.loads((tmp_path / "runs" / "tta-a" / "run.json").read_text())
    (tmp_path / "runs" / "tta-a" / "run.json").write_text(json.dumps({**record, "status": "interrupted"}))
    (tmp_path / "runs" / "tta-a" / "seed2" / "seed.json").unlink()
    marked = {**seed1, "wall_seconds": 12345.0}
    (tmp_path / "runs" / "tta-a" / "seed1" / "seed.json").write_text(json.dumps(marked))
    again = run_tta(argv, show_summary=False)
    assert again["per_seed"][0]["wall_seconds"] == 12345.0  # read back, not rerun
    assert again["per_seed"][1]["metrics"] == first["per_seed"][1]["metrics"]  # seed 2 rerun: same numbers


def test_tta_plan_counts_test_images_at_the_test_time_cost(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert sweep_main(["--config", str(_sweep(tmp_path)), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "test images 3" in out and "0.9 s per test image assumed" in out
    assert "optimizer steps per seed 0" in out


def test_unknown_stage_is_refused(tmp_path):
    path = _sweep(tmp_path, stage="tune")
    with pytest.raises(SweepError, match="fit, test, validate, tta"):
        load_sweep(path)
