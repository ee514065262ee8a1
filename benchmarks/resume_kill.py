"""Kill a real `vlprompt fit` with SIGKILL mid-seed, resume it, and compare with an uninterrupted run.

    python benchmarks/resume_kill.py --out /tmp/resume --seeds "[1,2,3]" --epochs 50 --kill 9:2:29

Prints per-seed metrics of both runs, whether the learned prompts are bit-identical, and the wall time of the
uninterrupted run against the interrupted part + the resume (the time lost to the kill). The kill point is
`signum:seed:epoch` (vlprompt.runs.folders.SignalAt), so the experiment is reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="[1,2,3]")
    ap.add_argument("--epochs", default="50")
    ap.add_argument("--kill", default="9:2:29", help="signum:seed:epoch (0-based epoch)")
    ap.add_argument("--config", default="configs/quickstart.yaml")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    killer = out / "killer.yaml"
    killer.write_text("trainer:\n  callbacks:\n    - class_path: vlprompt.runs.folders.SignalAt\n")
    env = dict(os.environ, CI="1")
    env.pop("VLPROMPT_TEST_SIGNAL", None)
    base = ["vlprompt", "fit", "--config", args.config, "--seeds", args.seeds, "--trainer.max_epochs", args.epochs,
            "--config", str(killer)]

    def run(cmd: list[str], extra_env: dict | None = None) -> tuple[int, float]:
        t = time.perf_counter()
        rc = subprocess.run(cmd, env={**env, **(extra_env or {})}, capture_output=True, text=True).returncode
        return rc, time.perf_counter() - t

    rc_full, t_full = run([*base, "--results_dir", str(out / "full"), "--trainer.default_root_dir", str(out / "runs_full")])
    run_dir = out / "runs_killed" / "killed"
    rc_kill, t_kill = run([*base, "--results_dir", str(out / "killed"), "--trainer.default_root_dir", str(out / "runs_killed"),
                           "--run_id", "killed"], {"VLPROMPT_TEST_SIGNAL": args.kill})
    rc_res, t_res = run(["vlprompt", "fit", "--resume", str(run_dir)])
    a = json.loads(next((out / "full").rglob("*.json")).read_text())
    b = json.loads(next((out / "killed").rglob("*.json")).read_text())
    print(f"command: {' '.join(base)}")
    print(f"exit codes: uninterrupted {rc_full}, killed {rc_kill}, resumed {rc_res}")
    print("| seed | uninterrupted (base / new / HM) | killed + resumed (base / new / HM) | identical metrics | bit-identical prompts |")
    print("|---:|---|---|---|---|")
    for x, y in zip(a["per_seed"], b["per_seed"]):
        ta, tb = load_file(x["prompts"]), load_file(y["prompts"])
        same = ta.keys() == tb.keys() and all(bool((ta[k] == tb[k]).all()) for k in ta)
        fx = " / ".join(f"{x['metrics'][k]:.2f}" for k in ("base", "new", "hm"))
        fy = " / ".join(f"{y['metrics'][k]:.2f}" for k in ("base", "new", "hm"))
        print(f"| {x['seed']} | {fx} | {fy} | {x['metrics'] == y['metrics']} | {same} |")
    print(f"summary identical: {a['summary'] == b['summary']}")
    print(f"wall: uninterrupted {t_full:.1f}s; killed part {t_kill:.1f}s + resume {t_res:.1f}s = {t_kill + t_res:.1f}s; "
          f"lost {t_kill + t_res - t_full:.1f}s ({(t_kill + t_res) / t_full:.2f}x)")
    sys.exit(0 if a["summary"] == b["summary"] else 1)


if __name__ == "__main__":
    main()
