"""Run identity and resume: a real ``vlprompt fit`` subprocess is stopped by SIGTERM, resumed, SIGKILLed,
resumed again, and ends with exactly the metrics and prompts of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlprompt.runs.driver import run_experiment
from vlprompt.runs.folders import RunError

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quickstart.yaml")


def _args(tmp: Path, name: str, *extra: str) -> list[str]:
    return [
        "--config", QUICK, "--seeds", "[1,2]", "--trainer.max_epochs", "3",
        "--data.init_args.dataset.init_args.per_class", "[4, 2, 4]", "--data.init_args.shots", "4",
        "--results_dir", str(tmp / name / "results"), "--trainer.default_root_dir", str(tmp / name / "runs"), *extra,
    ]


def _vlprompt(args: list[str], signal_spec: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ, CI="1", VLPROMPT_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1")
    env.pop("VLPROMPT_TEST_SIGNAL", None)
    if signal_spec:
        env["VLPROMPT_TEST_SIGNAL"] = signal_spec
    code = "import sys; from vlprompt.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)


def test_sigterm_then_sigkill_then_resume_gives_the_uninterrupted_metrics(tmp_path: Path, monkeypatch, capsys) -> None:
    from vlprompt import cli

    killer = tmp_path / "killer.yaml"
    killer.write_text("trainer:\n  callbacks:\n    - class_path: vlprompt.runs.folders.SignalAt\n")
    base = _args(tmp_path, "killed", "--config", str(killer), "--run_id", "r1")
    run = tmp_path / "killed" / "runs" / "r1"
    # one thread everywhere, like the subprocess, so that float reductions match bit for bit
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    # a real SIGTERM to this process at the end of seed 2's first epoch: exit 143 and one line saying what was
    # saved and how to resume (in process, to save a start-up; the SIGKILL below needs a subprocess)
    monkeypatch.setenv("VLPROMPT_TEST_SIGNAL", f"{int(signal.SIGTERM)}:2:0")
    code = cli.main(["fit", *base])
    monkeypatch.delenv("VLPROMPT_TEST_SIGNAL")
    stderr = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM, stderr[-2000:]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    message = [ln for ln in stderr.splitlines() if ln.startswith("vlprompt: interrupted")]
    assert message, stderr[-2000:]
    assert "finished seed(s) [1] saved" in message[0] and "seed 2 checkpointed after epoch 1" in message[0]
    assert f"--resume {run}" in message[0]
    assert (run / "seed1" / "seed.json").is_file() and (run / "seed2" / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert not list((tmp_path / "killed" / "results").rglob("*.json"))

    # resumed, then SIGKILLed at the end of seed 2's second epoch: nothing can run, the checkpoint survives
    kill = _vlprompt(["fit", "--resume", str(run)], f"{int(signal.SIGKILL)}:2:1")
    assert kill.returncode == -signal.SIGKILL, kill.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["status"] == "running"

    # resumed again (in this process): seed 1 is read back, seed 2 continues from its checkpoint
    try:
        resumed = run_experiment("fit", ["--resume", str(run)], show_summary=False)
        full = run_experiment("fit", _args(tmp_path, "full"), show_summary=False)
    finally:
        torch.set_num_threads(threads)
    assert resumed["resumed"] is True and resumed["run_id"] == "r1"
    assert [r["metrics"] for r in resumed["per_seed"]] == [r["metrics"] for r in full["per_seed"]]
    assert resumed["summary"] == full["summary"]
    for a, b in zip(resumed["per_seed"], full["per_seed"]):
        ta, tb = load_file(a["prompts"]), load_file(b["prompts"])
        assert ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta)  # bit-identical prompts
        assert a["epochs"] == b["epochs"] == 3
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete" and record["result"] == resumed["_path"]
    with pytest.raises(RunError, match="already complete"):
        run_experiment("fit", ["--resume", str(run)], show_summary=False)


def test_run_identity_artifacts_and_permissions(tmp_path: Path) -> None:
    result = run_experiment("fit", _args(tmp_path, "a", "--seeds", "[1]", "--trainer.max_epochs", "2"), show_summary=False)
    run_dir = Path(result["run_dir"])
    assert run_dir.name == result["run_id"] and result["run_id"].startswith("coop-")
    art = result["artifacts"]["seed1/prompts"]
    assert Path(art["path"]).parent == run_dir / "seed1"
    from vlprompt.data.atomic import file_mode, sha256_file

    assert art["sha256"] == sha256_file(art["path"])
    for p in (art["path"], result["_path"], run_dir / "run.json", run_dir / "seed1" / "seed.json"):
        assert stat.S_IMODE(os.stat(p).st_mode) == file_mode(), p  # not 0600
    assert (run_dir / "log.txt").is_file()
    assert result["stage"] == "fit" and result["complete"] is True

    # the prompts are verified when evaluated: tampering is refused, --force_prompts is the deliberate override
    prompts = Path(art["path"])
    test_args = _args(tmp_path, "b", "--seeds", "[1]", "--prompts", str(prompts))
    ok = run_experiment("test", test_args, show_summary=False)
    assert ok["evaluated_checkpoint"]["sha256"] == art["sha256"]
    assert ok["per_seed"][0]["metrics"] == result["per_seed"][0]["metrics"]
    data = bytearray(prompts.read_bytes())
    data[-1] ^= 1
    prompts.write_bytes(bytes(data))
    from vlprompt.learners.base import LearnerError

    with pytest.raises(LearnerError, match="sha256 .* differs .*--force_prompts"):
        run_experiment("test", test_args, show_summary=False)
    run_experiment("test", [*test_args, "--force_prompts", "true"], show_summary=False)
    prompts.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(LearnerError, match="not a readable safetensors file"):
        run_experiment("test", test_args, show_summary=False)


def test_another_experiment_under_the_same_run_id_is_refused(tmp_path: Path) -> None:
    from vlprompt.runs.folders import RunFolder

    folder, resumed = RunFolder.open(tmp_path / "runs", "x", stage="fit", argv=[], cfg_hash="aaa")
    assert not resumed
    with pytest.raises(RunError, match="in use by another vlprompt process"):
        RunFolder.open(tmp_path / "runs", "x", stage="fit", argv=[], cfg_hash="aaa")
    folder.close()
    with pytest.raises(RunError, match="holds another experiment"):
        RunFolder.open(tmp_path / "runs", "x", stage="fit", argv=[], cfg_hash="bbb")
    again, resumed = RunFolder.open(tmp_path / "runs", "x", stage="fit", argv=[], cfg_hash="aaa")
    assert resumed
    again.close()
