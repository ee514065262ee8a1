"""Wall time of a toy sweep: cells run one by one (``vlprompt fit`` per cell, in series) against ``vlprompt sweep``
with 1 and 2 local submitit workers, all in the same run, each into its own temporary folder.

The grid (default): learners zero_shot/default, coop/ctx4_init x datasets toy_colors, toy_patterns x seeds [1]
x 2 epochs = 4 cells, embedded toy CLIP, CPU, one thread per process (OMP_NUM_THREADS=1). Prints seconds and the
ratio against one by one (> 1: faster). Read the figures with the load average printed in the header: on a shared
machine the 2-worker speed-up is capped by the free cores.

    python benchmarks/sweep_workers.py
    python benchmarks/sweep_workers.py --datasets toy_colors toy_patterns toy_places --seeds 1 2 3 --epochs 5
    python benchmarks/sweep_workers.py --toy-leaderboard --epochs 2   # every learner x toy dataset x seeds 1-3

``--toy-leaderboard`` takes the cells of the toy base-to-new leaderboard (``sweeps/toy_leaderboard.yaml``: every
built-in learner's toy config and the KgCoOp plugin x the seven toy datasets x seeds [1, 2, 3], one result per
cell); ``--epochs`` caps every cell's schedule so that the three variants fit in one sitting on 2 cores (the
learners' own toy schedules make each variant hours long there).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("serial", "sweep1", "sweep2")  # one by one; vlprompt sweep with 1 and with 2 local workers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", nargs="+", default=["zero_shot/default", "coop/ctx4_init"])
    ap.add_argument("--datasets", nargs="+", default=["toy_colors", "toy_patterns"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                    help="which variants to time (default: all three); speed-ups are printed against the first")
    ap.add_argument("--toy-leaderboard", action="store_true",
                    help="learners, datasets and seeds of sweeps/toy_leaderboard.yaml (overrides the three above)")
    args = ap.parse_args()
    if args.toy_leaderboard:
        grid = yaml.safe_load((REPO / "sweeps/toy_leaderboard.yaml").read_text())["grid"]
        args.learners, args.datasets, args.seeds = grid["learner"], grid["dataset"], grid["seeds"][0]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "VLPROMPT_LOG_LEVEL": "WARNING"}
    n_cells = len(args.learners) * len(args.datasets)
    print(f"grid: {n_cells} cells = {len(args.learners)} learners x {len(args.datasets)} datasets, seeds {args.seeds} "
          f"(one result per cell), {args.epochs} epochs; cpus {os.cpu_count()}, load average {os.getloadavg()}")
    seeds = "[" + ",".join(map(str, args.seeds)) + "]"
    times = {}
    with tempfile.TemporaryDirectory(prefix="vlprompt-sweep-bench-") as tmp:
        root = Path(tmp)
        env["VLPROMPT_CACHE"] = str(root / "cache")
        common = ["--config", str(REPO / "configs/protocols/base2new.yaml"), "--config", str(REPO / "configs/trainer/cpu.yaml"),
                  "--config", str(REPO / "configs/backbones/toyclip.yaml")]
        # warm the caches (few-shot draws, datasets) once, untimed, so that no variant pays for them alone
        subprocess.run([sys.executable, "-m", "vlprompt.cli", "fit", *common, "--config",
                        str(REPO / f"configs/datasets/{args.datasets[0]}.yaml"), "--config",
                        str(REPO / "configs/learners/zero_shot/default.yaml"), "--seeds", "[1]",
                        "--results_dir", str(root / "warm"), "--trainer.default_root_dir", str(root / "warm-runs")],
                       env=env, check=True, capture_output=True)
        if "serial" in args.variants:
            t0 = time.perf_counter()
            for learner in args.learners:
                for dataset in args.datasets:
                    subprocess.run([sys.executable, "-m", "vlprompt.cli", "fit", *common,
                                    "--config", str(REPO / f"configs/datasets/{dataset}.yaml"),
                                    "--config", str(REPO / f"configs/learners/{learner}.yaml"), "--seeds", seeds,
                                    "--trainer.max_epochs", str(args.epochs), "--results_dir", str(root / "serial"),
                                    "--trainer.default_root_dir", str(root / "serial-runs")],
                                   env=env, check=True, capture_output=True)
            times["one by one"] = time.perf_counter() - t0
        for workers in [w for w in (1, 2) if f"sweep{w}" in args.variants]:
            spec = {"name": f"bench{workers}", "stage": "fit",
                    "args": [*common, "--results_dir", str(root / f"sweep{workers}")],
                    "grid": {"learner": args.learners, "dataset": args.datasets, "seeds": [args.seeds],
                             "trainer.max_epochs": [args.epochs]},
                    "executor": "local", "workers": workers}
            path = root / f"sweep{workers}.yaml"
            path.write_text(yaml.safe_dump(spec))
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "vlprompt.cli", "sweep", "--config", str(path), "--out",
                                   str(root / f"out{workers}")], env=env, capture_output=True, text=True, cwd=REPO)
            times[f"sweep, {workers} worker(s)"] = time.perf_counter() - t0
            done = len(list((root / f"sweep{workers}").rglob("*.json")))
            if proc.returncode != 0 or done != n_cells:
                print(f"sweep with {workers} worker(s): exit {proc.returncode}, {done}/{n_cells} results\n"
                      f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
                for cell in sorted((root / f"out{workers}" / "cells").glob("*.json")):
                    print(cell.read_text())
    first = next(iter(times))
    base = times[first]
    print(f"{'variant':<22} {'seconds':>8} {'speed-up vs ' + first:>24}")
    for name, t in times.items():
        print(f"{name:<22} {t:8.1f} {base / t:24.2f}   ({t / n_cells:.1f} s per cell)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
