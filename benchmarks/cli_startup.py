"""Start-up time of the `vlprompt` command (issue 24): `vlprompt --help`, `vlprompt list learners`, a usage error
(`vlprompt list bogus`) and `vlprompt list` against `python -c "import torch"`, all in one run, each a fresh process,
median of --repeats (after one warm-up each). Prints seconds and the ratio to the torch import (< 1: faster).

    python benchmarks/cli_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def _time(cmd: list[str], repeats: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    subprocess.run(cmd, capture_output=True, env=env, check=False)  # warm-up (file cache)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    exe = shutil.which("vlprompt")
    vlp = [exe] if exe else [sys.executable, "-m", "vlprompt.cli"]
    cases = {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "vlprompt --help": [*vlp, "--help"],
        "vlprompt list learners": [*vlp, "list", "learners"],
        "vlprompt list (the kinds)": [*vlp, "list"],
        "vlprompt list bogus (usage error)": [*vlp, "list", "bogus"],
        "vlprompt fit --bogus (usage error, imports Lightning)": [*vlp, "fit", "--bogus"],
    }
    load = os.getloadavg()
    print(f"# cli start-up, median of {args.repeats} (fresh process each), load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    base = None
    print(f"{'command':58s} {'seconds':>8s} {'vs import torch':>16s}")
    for name, cmd in cases.items():
        t = _time(cmd, args.repeats)
        base = t if base is None else base
        print(f"{name:58s} {t:8.3f} {t / base:15.2f}x")


if __name__ == "__main__":
    main()
