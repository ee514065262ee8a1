"""vlprompt sweep: grid expansion, checks before any cell runs, failing cells recorded, resume skips done cells."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlprompt.runs.config import check_config_files
from vlprompt.cli.sweep import sweep_main
from vlprompt.runs.sweep import check_cells, expand_cells, load_sweep, run_sweep, SweepError

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quickstart.yaml")


def _spec(tmp_path: Path, grid: dict, **extra) -> Path:
    spec = {
        "name": "t", "stage": "fit",
        "args": ["--config", QUICK, "--results_dir", str(tmp_path / "results"),
                 "--data.init_args.dataset.init_args.per_class", "[8, 4, 8]", "--model.warmup_epochs", "0"],
        "grid": grid, "executor": "local", "workers": 2, **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_expansion_is_a_product_with_stable_ids(tmp_path):
    spec = load_sweep(_spec(tmp_path, {"learner": ["zero_shot/default", "coop/ctx4_init"], "shots": [1, 2],
                                       "seeds": [[1, 2]], "trainer.max_epochs": [1]}))
    cells = expand_cells(spec)
    assert len(cells) == 4 and len({c.cell_id for c in cells}) == 4
    assert cells[0].argv[-8:] == ("--config", "configs/learners/zero_shot/default.yaml", "--data.init_args.shots", "1",
                                  "--seeds", "[1, 2]", "--trainer.max_epochs", "1")
    assert [c.cell_id for c in expand_cells(spec)] == [c.cell_id for c in cells]


@pytest.mark.parametrize("grid, match", [
    ({"lerner": ["coop"]}, "grid key 'lerner' is neither a shorthand"),
    ({"learner": ["nosuch/default"]}, r"cell \[learner=nosuch/default\]: .*nosuch/default.yaml: no such file"),
    ({"trainer.max_epochz": [1]}, r"cell \[trainer.max_epochz=1\]"),
    ({"model.init_args.learner.class_path": ["nosuch_learner"]}, r"cell \[model.init_args.learner.class_path=nosuch"),
])
def test_bad_sweep_fails_before_any_cell_runs(tmp_path, grid, match, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SweepError, match=match):
        run_sweep(load_sweep(_spec(tmp_path, grid)), out=tmp_path / "out")
    assert not (tmp_path / "out" / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_two_cell_sweep_local_workers_failure_recorded_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # cell 1 trains (CoOp, toy CLIP, 1 epoch); cell 2 asks for more shots than the data has: fails at run time
    path = _spec(tmp_path, {"shots": [2, 12], "seeds": [[1]], "trainer.max_epochs": [1]})
    out = tmp_path / "out"
    assert sweep_main(["--config", str(path), "--out", str(out)]) == 1  # not all done
    spec = load_sweep(path)
    status = run_sweep(spec, out=out, workers=1)  # resume: the done cell is skipped, the failed one retried
    done, failed = (status[c.cell_id] for c in expand_cells(spec))
    assert done[0] == "done" and Path(done[1]).is_file()
    assert failed[0] == "failed" and "shots=12" in failed[1]
    results = sorted((tmp_path / "results").rglob("*.json"))
    assert len(results) == 1  # the done cell did not run twice
    assert (out / "cells").is_dir()


def test_local_cells_are_not_killed_after_submitits_default_timeout(tmp_path):
    # submitit's AutoExecutor defaults to timeout_min=5 on every executor, the local one included: a 3-seed toy
    # cell was killed after about 2 minutes ("timed-out and not checkpointable") before local cells got a week.
    from vlprompt.runs.sweep import LOCAL_TIMEOUT_MIN, _make_executor

    grid = {"learner": ["zero_shot/default"]}
    ex = _make_executor(load_sweep(_spec(tmp_path, grid)), tmp_path / "out")
    assert ex.parameters["timeout_min"] == LOCAL_TIMEOUT_MIN >= 24 * 60
    ex = _make_executor(load_sweep(_spec(tmp_path, grid, timeout_min=90)), tmp_path / "out")
    assert ex.parameters["timeout_min"] == 90
    with pytest.raises(SweepError, match="timeout_min must be a positive number of minutes per cell, got 0"):
        load_sweep(_spec(tmp_path, grid, timeout_min=0))


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_committed_sweep_files_name_existing_configs_and_their_first_cell_parses(path, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_sweep(path)
    cells = expand_cells(spec)
    assert len({c.cell_id for c in cells}) == len(cells) > 0
    for cell in cells:  # the parser's own file check (exists, YAML mapping) on every cell, without parsing
        assert "--config" in cell.argv, cell.label()
        check_config_files(list(cell.argv))
    check_cells(spec, cells[:1], tmp_path / "out")  # the full parser (class paths, keys) on the first cell only


def _processes_mentioning(text: str) -> list[int]:
    import os

    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if text.encode() in fh.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_its_workers_and_records_the_cells(tmp_path, monkeypatch):
    """Issue 23: SIGTERM to `vlprompt sweep` stops its local workers (no orphan keeps training), records the
    interrupted cell, says how to resume and exits 143."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    path = _spec(tmp_path, {"shots": [2, 4], "seeds": [[1]], "trainer.max_epochs": [400]}, workers=1)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "vlprompt.cli", "sweep", "--config", str(path), "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((out / "runs").glob("*/seed1/checkpoints/last.ckpt")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        assert list((out / "runs").glob("*/seed1/checkpoints/last.ckpt")), "the cell never checkpointed"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=180)
        err = stdout + stderr  # the log goes to the console (stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted by SIGTERM" in err and "to resume" in err, err[-3000:]
    states = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert [s["status"] for s in states] == ["interrupted"]  # the second cell was never started
    time.sleep(2)
    assert _processes_mentioning(str(out)) == []  # no worker left training
