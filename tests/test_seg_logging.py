"""Segmentation runs with Lightning loggers (issue 24): the CSV logger and the W&B logger (offline) each get a
segmentation fit's per-epoch curves, and W&B gets per-seed runs with the Dice/IoU summary and the test masks as
mask layers; the overlays a run writes reach the leaderboard page's gallery (one naming rule, run -> result ->
page)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from vlprompt.learners.testing import torch_threads
from vlprompt.runs.tracking import batch_size_of


@pytest.fixture(autouse=True)
def _single_thread():
    with torch_threads(1):
        yield


def _config(tmp_path: Path, logger: str) -> Path:
    cfg = tmp_path / "seg.yaml"
    cfg.write_text(f"""
model:
  backbone:
    class_path: seg_fakes.FakeVLSM
  learner:
    class_path: coop
  overlays: 2
data:
  class_path: segmentation
  init_args:
    dataset:
      class_path: seg_fakes.FakeSegSource
    batch_size: 4
trainer:
  max_epochs: 2
  log_every_n_steps: 1
  default_root_dir: {tmp_path / 'runs'}
  logger:
{logger}
""")
    return cfg


def test_batch_size_of_every_batch_format():
    x = torch.zeros(5, 3, 8, 8)
    assert batch_size_of((x, torch.zeros(5, dtype=torch.long))) == 5
    assert batch_size_of({"image": x, "mask": torch.zeros(5, 8, 8), "prompt": ["a"] * 5}) == 5
    assert batch_size_of({"prompt": ["a", "b"]}) == 2
    assert batch_size_of(x) == 5 and batch_size_of(object()) == 1


def test_segmentation_fit_with_the_csv_logger_writes_epoch_curves(tmp_path):
    from vlprompt.runs.driver import run_experiment

    logger = (f"    class_path: lightning.pytorch.loggers.CSVLogger\n    init_args:\n"
              f"      save_dir: {tmp_path / 'csv'}\n")
    result = run_experiment("fit", ["--config", str(_config(tmp_path, logger)), "--seeds", "[1]",
                                    "--results_dir", str(tmp_path / "results")], show_summary=False)
    assert 0 <= result["summary"]["dice"] <= 100
    (metrics_csv,) = (tmp_path / "csv").rglob("metrics.csv")
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [r for r in rows if r.get("epoch/train_loss")]
    assert [int(r["epoch"]) for r in epochs] == [0, 1]
    assert all(float(r["epoch/train_loss"]) > 0 for r in epochs)
    assert any(r.get("test/dice") for r in rows) and any(r.get("val/dice") for r in rows)


def test_segmentation_fit_logs_to_wandb_offline_and_overlays_reach_the_page(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from vlprompt.leaderboards.html import build_html_leaderboards
    from vlprompt.runs.driver import run_experiment
    from vlprompt.runs.wandb_logging import read_offline_run

    wandb.teardown()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    logger = "    class_path: vlprompt.runs.wandb_logging.WandbLogger\n    init_args:\n      offline: true\n"
    try:
        result = run_experiment("fit", ["--config", str(_config(tmp_path, logger)), "--seeds", "[1, 2]",
                                        "--results_dir", str(tmp_path / "results")], show_summary=False)
        runs = sorted((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
        assert len(runs) == 2
        by_seed = {}
        for run_dir in runs:
            run = read_offline_run(run_dir)
            by_seed[run["config"]["vlprompt"]["seed"]] = (run_dir, run)
        for row in result["per_seed"]:
            run_dir, run = by_seed[row["seed"]]
            assert {k: run["summary"][k] for k in ("dice", "iou", "nsd", "hd95")} == row["metrics"]
            assert run["run"]["id"] == f"{result['run_id']}-seed{row['seed']}"
            epochs = [h for h in run["history"] if "epoch/train_loss" in h]
            assert [h["epoch"] for h in epochs] == [0, 1]
            # the test masks as W&B mask layers (ground truth and prediction)
            (masks,) = [h for h in run["history"] if "test/masks/_type" in h]
            assert masks["test/masks/_type"] == "images/separated" and masks["test/masks/count"] == 2
            layers = json.dumps(masks["test/masks/all_masks"])
            assert "ground_truth" in layers and "prediction" in layers
            assert list((run_dir / "files" / "media").rglob("*.png"))
    finally:
        wandb.teardown()
    # one naming rule: the result lists each seed's overlays as seed<k>/overlays, and the page embeds them
    assert sorted(k for k in result["artifacts"] if k.endswith("/overlays")) == ["seed1/overlays", "seed2/overlays"]
    saved = json.loads(Path(result["_path"]).read_text())
    assert all(len(saved["artifacts"][f"seed{k}/overlays"]["paths"]) == 2 for k in (1, 2))
    pages = build_html_leaderboards(tmp_path / "results", tmp_path / "lb")
    text = "\n".join(Path(p).read_text() for p in pages)
    assert text.count('<img src="data:image/png;base64,') == 4 and 'id="no-overlays"' not in text
    # sections that apply: no shots column and no few-shot curves on a segmentation page
    assert "Few-shot curves" not in text and ">shots<" not in text


def test_frozen_learner_is_evaluated_once_and_summary_says_units(tmp_path, capsys, caplog):
    import logging

    from vlprompt.runs.driver import run_experiment

    cfg = _config(tmp_path, "    null\n").read_text().replace("class_path: coop", "class_path: zero_shot")
    (tmp_path / "zs.yaml").write_text(cfg)
    with caplog.at_level(logging.INFO, logger="vlprompt"):
        result = run_experiment("fit", ["--config", str(tmp_path / "zs.yaml"), "--seeds", "[1, 2, 3]",
                                        "--results_dir", str(tmp_path / "results")])
    rows = result["per_seed"]
    assert [r["seed"] for r in rows] == [1, 2, 3] and result["seed_independent"] is True
    assert rows[0]["metrics"] == rows[1]["metrics"] == rows[2]["metrics"] and all(r["seed_independent"] for r in rows)
    assert result["summary"]["dice_std"] == 0.0
    assert "seed1/overlays" in result["artifacts"] and "seed2/overlays" not in result["artifacts"]
    assert sum("evaluating it once" in r.getMessage() for r in caplog.records) == 1
    out = capsys.readouterr().out
    assert "averaged over the images" in out and "dataset-level" in out and "holds for every seed" in out
    assert "shots" not in out  # no shots in a segmentation summary title
    # the default benchmark is the dataset's, never "custom"
    assert result["benchmark"] != "custom" and "/custom/" not in result["_path"]


def test_epoch_lines_when_output_is_not_a_terminal(tmp_path, caplog):
    import logging

    from vlprompt.runs.driver import run_experiment

    with caplog.at_level(logging.INFO, logger="vlprompt"):
        result = run_experiment("fit", ["--config", str(_config(tmp_path, "    null\n")), "--seeds", "[1]",
                                        "--results_dir", str(tmp_path / "results")], show_summary=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"] and "val dice" in lines[0]
    assert 1 <= result["per_seed"][0]["selected_epoch"] <= 2 and result["per_seed"][0]["epochs"] == 2
