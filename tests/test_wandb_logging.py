"""W&B logging layer (vlprompt.runs.wandb_logging), run offline: per-seed runs, summary, curves, grouping, push, fallback."""

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from vlprompt.runs.driver import run_experiment
from vlprompt.cli.leaderboard import leaderboard_main
from vlprompt.runs.tracking import seed_group, summary_metrics

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quickstart.yaml")
WANDB_YAML = str(REPO / "configs" / "trainer" / "wandb.yaml")


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline into a temporary WANDB_DIR, with no credentials anywhere (no key, empty netrc). W&B keeps the
    settings of the first run of a process (here: another test's WANDB_MODE=disabled), so its session is torn down
    before and after."""
    wandb = pytest.importorskip("wandb")
    wandb.teardown()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    yield tmp_path / "wandb-dir"
    wandb.teardown()


def test_summary_metrics_puts_dashboard_keys_first():
    assert list(summary_metrics({"target_mean": 1, "hm": 3.0, "new": 2, "base": 1.5, "flag": True, "x": "a"})) == [
        "base", "new", "hm", "target_mean"]
    assert summary_metrics({"iou": 40.0, "dice": 55.5, "nan": float("nan")}) == {"dice": 55.5, "iou": 40.0}
    assert seed_group("toy", "toy_colors", "coop") == "toy/toy_colors/coop"


def test_only_the_logging_layer_imports_wandb():
    pattern = re.compile(r"^\s*(import wandb|from wandb\b)", re.MULTILINE)
    importers = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "vlprompt").rglob("*.py")
                       if pattern.search(p.read_text(encoding="utf-8")))
    assert importers == ["vlprompt/leaderboards/wandb.py", "vlprompt/modules/overlays.py", "vlprompt/runs/wandb_logging.py"]


def test_fit_logs_one_offline_run_per_seed_with_config_curves_and_summary(tmp_path, wandb_offline):
    from vlprompt.runs.wandb_logging import read_offline_run

    result = run_experiment("fit", [
        "--config", QUICK, "--config", WANDB_YAML, "--seeds", "[1, 2]", "--trainer.max_epochs", "2",
        "--model.warmup_epochs", "0", "--results_dir", str(tmp_path / "results"),
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--data.init_args.dataset.init_args.per_class", "[16, 4, 8]",
    ], show_summary=False)
    runs = sorted((wandb_offline / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    by_seed = {}
    for run_dir in runs:
        run = read_offline_run(run_dir)
        by_seed[run["config"]["vlprompt"]["seed"]] = run
    assert sorted(by_seed) == [1, 2]
    for row in result["per_seed"]:
        run = by_seed[row["seed"]]
        # summary: the seed's base, new, HM (and their ECEs) exactly as in the result JSON
        assert {k: run["summary"][k] for k in ("base", "new", "hm", "base_ece", "new_ece")} == row["metrics"]
        assert run["run"]["group"] == "toy/toy_patterns/coop"
        assert run["run"]["id"] == f"{result['run_id']}-seed{row['seed']}"
        assert {"family:text", "learner:coop", "dataset:toy_patterns", "benchmark:toy"} <= set(run["run"]["tags"])
        # resolved config (learner class path and its init args), and vlprompt's identity
        assert run["config"]["model"]["learner"]["class_path"] == "vlprompt.learners.coop.CoOp"
        assert run["config"]["model"]["learner"]["init_args"]["n_ctx"] == 4
        assert run["config"]["vlprompt"]["family"] == "text"
        # per-epoch curves: one epoch/train_loss point per epoch
        epochs = [h for h in run["history"] if "epoch/train_loss" in h]
        assert [h["epoch"] for h in epochs] == [0, 1]
        assert all(h["epoch/train_loss"] > 0 and 0 <= h["epoch/train_acc"] <= 100 for h in epochs)
        assert "test/base_acc" in run["summary"] and "test/new_acc" in run["summary"]


def test_not_logged_in_falls_back_to_offline_with_one_message(tmp_path, monkeypatch, caplog):
    from vlprompt.runs import wandb_logging

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setattr(wandb_logging, "_WARNED", set())
    assert not wandb_logging.is_logged_in()
    with caplog.at_level(logging.WARNING, logger="vlprompt.runs.wandb_logging"):
        a = wandb_logging.WandbLogger(save_dir=str(tmp_path / "w"))
        b = wandb_logging.WandbLogger(save_dir=str(tmp_path / "w"))
    assert a._offline and b._offline  # no run was started: nothing could wait for a login prompt
    messages = [r.getMessage() for r in caplog.records if "not logged in" in r.getMessage()]
    assert len(messages) == 1 and "wandb sync" in messages[0] and "wandb login" in messages[0]
    # credentials present (here: a netrc entry for the W&B host): online as asked, no message
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password " + "0" * 40 + "\n")
    (tmp_path / "netrc").chmod(0o600)
    assert wandb_logging.is_logged_in() and wandb_logging.choose_offline(False, "runs") is False
    assert wandb_logging.choose_offline(True, "runs") is True


def test_leaderboard_push_wandb_offline_tables_and_plots(tmp_path, wandb_offline):
    from vlprompt.runs.wandb_logging import read_offline_run

    results = tmp_path / "results" / "base2new" / "toy"
    for d in ("toy_colors", "toy_patterns"):
        shutil.copytree(REPO / "leaderboards" / "results" / "base2new" / "toy" / d, results / d)
    assert leaderboard_main(["push", str(tmp_path / "results"), "--wandb", "--project", "lb-test",
                             "--reported", str(REPO / "leaderboards" / "reported")]) == 0
    (run_dir,) = sorted((wandb_offline / "wandb").glob("offline-run-*"))
    run = read_offline_run(run_dir)
    assert run["complete"] and run["run"]["job_type"] == "leaderboard" and run["run"]["project"] == "lb-test"
    assert "protocol:base2new" in run["run"]["tags"]
    # the leaderboard table holds the same rows as the built CSV
    assert leaderboard_main(["build", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "base2new" / "toy" / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    (table_file,) = (run_dir / "files" / "media" / "table").glob("leaderboard_*.table.json")
    table = json.loads(table_file.read_text())
    assert len(table["data"]) == len(csv_rows) == run["summary"]["rows"]
    assert table["columns"] == list(csv_rows[0])  # the same columns: intervals, HM conventions, cost (issue 29)
    assert {"hm_ci95_low", "hm_seed_mean", "not_separated", "test_s_per_image"} <= set(table["columns"])
    assert sorted(r[table["columns"].index("dataset")] for r in table["data"]) == sorted(r["dataset"] for r in csv_rows)
    assert run["summary"]["leaderboard/_type"] == "table-file"
    assert list((run_dir / "files" / "media" / "table").glob("reported_*.table.json"))
    plots = sorted(p.name.split("_")[0] for p in (run_dir / "files" / "media" / "plotly" / "plots").glob("*.plotly.json"))
    assert plots == ["bars", "scatter"]


def test_leaderboard_push_needs_a_service(tmp_path, caplog):
    (tmp_path / "r").mkdir()
    with caplog.at_level(logging.ERROR):
        assert leaderboard_main(["push", str(tmp_path / "r")]) == 2
    assert "--wandb" in caplog.text


def test_leaderboard_push_under_wandb_disabled_says_nothing_was_pushed(tmp_path, monkeypatch, caplog):
    (tmp_path / "r").mkdir()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with caplog.at_level(logging.INFO):
        assert leaderboard_main(["push", str(tmp_path / "r"), "--wandb", "--save_dir", str(tmp_path / "w")]) == 1
    assert "nothing pushed" in caplog.text and "WANDB_MODE=disabled" in caplog.text
    assert "pushed base2new" not in caplog.text and not (tmp_path / "w").exists()


def test_leaderboard_push_uses_one_fixed_run_id_per_leaderboard(tmp_path, wandb_offline, caplog):
    from vlprompt.leaderboards.wandb import leaderboard_run_id, push_leaderboards
    from vlprompt.runs.wandb_logging import read_offline_run

    assert leaderboard_run_id("base2new", "toy") == leaderboard_run_id("base2new", "toy")
    assert leaderboard_run_id("a b", "c") != leaderboard_run_id("a_b", "c")
    results = tmp_path / "results" / "base2new" / "toy"
    shutil.copytree(REPO / "leaderboards" / "results" / "base2new" / "toy" / "toy_colors", results / "toy_colors")
    first = push_leaderboards(tmp_path / "results", project="lb-test", offline=True)
    second = push_leaderboards(tmp_path / "results", project="lb-test", offline=True)
    assert [p["run_id"] for p in first] == [p["run_id"] for p in second] == [leaderboard_run_id("base2new", "toy")]
    ids = {read_offline_run(d)["run"]["id"] for d in (wandb_offline / "wandb").glob("offline-run-*")}
    assert ids == {leaderboard_run_id("base2new", "toy")}  # two pushes, one run id: `wandb sync` updates, never duplicates
    with caplog.at_level(logging.INFO, logger="vlprompt"):
        assert leaderboard_main(["push", str(tmp_path / "results"), "--wandb", "--project", "lb-test", "--offline"]) == 0
    assert any("1 leaderboard run(s) written offline with fixed ids" in r.getMessage() for r in caplog.records)
