"""Lightning DDP on CPU (gloo, 2 processes) gives the metrics of one process.

A 2-process ``vlprompt fit --trainer.strategy ddp --trainer.devices 2`` (Lightning re-launches the command for
rank 1) trains CoOp on one shared few-shot draw and evaluates with each test image seen by exactly one process
and the counts summed; a 1-process ``vlprompt test`` of the prompts it saved must give the same metrics to the
last digit. A spawn-based run (``ddp_spawn``) of zero-shot CLIP must equal its 1-process run as well.
The test sets (7 images per class) do not split evenly over 2 processes and the evaluation batch (5) does not
divide them, so padding or a per-process mean would show.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlprompt.runs.driver import run_experiment

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quickstart.yaml")
ZERO_SHOT = str(REPO / "configs" / "learners" / "zero_shot" / "default.yaml")


def _tiny(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return ["--config", QUICK, "--seeds", "[1]", "--trainer.max_epochs", "2", "--model.warmup_epochs", "0",
            "--data.init_args.dataset.init_args.per_class", "[16, 4, 7]", "--data.init_args.eval_batch_size", "5",
            "--data.init_args.batch_size", "8", "--check_images", "none",
            "--results_dir", str(tmp_path / name / "results"), "--trainer.default_root_dir", str(tmp_path / name / "runs"),
            *extra]


def _results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))]


def test_ddp_two_processes_fit_then_one_process_test_of_its_prompts(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1", "PYTHONPATH": str(REPO)}
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "vlprompt.cli", "fit", *_tiny(tmp_path, "ddp", "--trainer.strategy", "ddp",
                                                                "--trainer.devices", "2")]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ddp,) = _results(tmp_path / "ddp" / "results")  # rank 1 wrote no result and no run folder
    assert len(list((tmp_path / "ddp" / "runs").iterdir())) == 1
    assert ddp["per_seed"][0]["epochs"] == 2 and str(ddp["config"]["trainer"]["devices"]) == "2"
    prompts = ddp["per_seed"][0]["prompts"]
    one = run_experiment("test", _tiny(tmp_path, "one", "--prompts", prompts), show_summary=False)
    assert one["per_seed"][0]["metrics"] == ddp["per_seed"][0]["metrics"]
    # the calibration bins are summed over processes like the counts: the ECE equals the one-process ECE above
    assert set(ddp["per_seed"][0]["metrics"]) == {"base", "new", "hm", "base_ece", "new_ece"}


def test_ddp_spawn_two_processes_equal_one_process(tmp_path):
    one = run_experiment("test", _tiny(tmp_path, "one", "--config", ZERO_SHOT), show_summary=False)
    spawn = run_experiment("test", _tiny(tmp_path, "spawn", "--config", ZERO_SHOT, "--trainer.strategy", "ddp_spawn",
                                         "--trainer.devices", "2"), show_summary=False)
    assert spawn["per_seed"][0]["metrics"] == one["per_seed"][0]["metrics"]


def test_eval_counts_rebuilt_from_logged_counts():
    from vlprompt.modules.classification import PromptClassifier
    from vlprompt.learners.testing import tiny_clip

    import torch

    from vlprompt.learners.zero_shot import ZeroShot

    task = {"label_spaces": {"base": ["a", "b"], "new": ["c", "d"]}, "train_space": "base",
            "val_sets": [["base", "base"]], "test_sets": [["base", "base"], ["new", "new"]]}
    module = PromptClassifier(tiny_clip(), ZeroShot(), task=task)
    metrics = {"test/new_correct": torch.tensor(3.0), "test/new_total": torch.tensor(7.0),
               "test/base_correct": torch.tensor(5.0), "test/base_total": torch.tensor(7.0)}
    assert module.eval_results_from(metrics, "test") == {"base": 100.0 * 5 / 7, "new": 100.0 * 3 / 7}
    assert list(module.eval_results_from(metrics, "test")) == ["base", "new"]  # the task's order
    assert module.eval_results_from({}, "val") == {}


def test_eval_sampler_and_draw_check_are_noops_on_one_process():
    from vlprompt.data.distributed import check_same_in_every_process, eval_sampler, fingerprint, is_secondary_process

    assert eval_sampler(None, list(range(5))) is None
    check_same_in_every_process(None, "x", "anything")
    assert fingerprint([3, 1, 2]) == fingerprint([3, 1, 2]) != fingerprint([1, 2, 3])
    assert not is_secondary_process()
