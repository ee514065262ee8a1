"""``vlprompt sweep --config sweeps/NAME.yaml [--workers N] [--executor local|slurm]``: run a grid, print its status."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vlprompt.runs.sweep import (
    EXECUTORS,
    SweepError,
    SweepInterrupted,
    cell_status,
    expand_cells,
    load_sweep,
    run_sweep,
)

log = logging.getLogger(__name__)


def print_summary(spec: Mapping[str, Any], statuses: Mapping[str, tuple[str, str]]) -> None:
    """Rich table: cell, status, result or error; then counts per status."""
    cells = {c.cell_id: c for c in expand_cells(spec)}
    table = Table(title=f"sweep {spec['name']}")
    for col in ("cell", "status", "result / error"):
        table.add_column(col, overflow="fold")
    colours = {"done": "green", "failed": "red", "partial": "yellow", "pending": "yellow"}
    for cid, (status, detail) in statuses.items():
        table.add_row(cells[cid].label() if cid in cells else cid, f"[{colours.get(status, '')}]{status}", detail)
    counts = {s: sum(1 for st, _ in statuses.values() if st == s) for s in ("done", "failed", "partial", "pending")}
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    console.print(table)
    console.print(", ".join(f"{k}: {v}" for k, v in counts.items()))


def sweep_main(argv: Sequence[str]) -> int:
    """``vlprompt sweep --config FILE [--workers N] [--executor local|slurm] [--out DIR] [--status]``."""
    parser = argparse.ArgumentParser(prog="vlprompt sweep", description="Run a grid of vlprompt runs (submitit).")
    parser.add_argument("--config", required=True, help="sweep file, e.g. sweeps/toy_smoke.yaml")
    parser.add_argument("--workers", type=int, default=None, help="cells at once (default: the file's workers)")
    parser.add_argument("--executor", choices=EXECUTORS, default=None, help="default: the file's executor")
    parser.add_argument("--out", default=None, help="sweep folder (default: sweeps-out/<name>)")
    parser.add_argument("--status", action="store_true", help="only print the summary table, run nothing")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        spec = load_sweep(args.config)
        if args.status:
            root = Path(args.out or spec.get("out") or Path("sweeps-out") / str(spec["name"]))
            statuses = {c.cell_id: cell_status(c, root) for c in expand_cells(spec)}
        else:
            statuses = run_sweep(spec, out=args.out, workers=args.workers, executor=args.executor)
    except SweepInterrupted as exc:  # workers stopped, interrupted cells recorded
        log.error("%s", exc)
        return 128 + exc.signum
    except SweepError as exc:
        log.error("%s", exc)
        return 2
    print_summary(spec, statuses)
    return 0 if all(s == "done" for s, _ in statuses.values()) else 1
