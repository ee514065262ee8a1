"""``vlprompt sweep --config sweeps/NAME.yaml [--workers N] [--executor local|slurm] [--plan] [--dry-run]``: run a grid,
print its status, or check what it needs (``--plan``) and that every cell builds (``--dry-run``) without running it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vlprompt.runs.plan import DEFAULT_IMAGE_S, DEFAULT_STEP_S, CostModel, calibrate, dry_run_cell, plan_cell
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


def print_plan(spec: Mapping[str, Any], cost: CostModel, out: Path) -> int:
    """``--plan``: one block per cell on stdout, the totals, then every missing item; 1 when something is missing."""
    cells = expand_cells(spec)
    total_h, missing = 0.0, []
    print(f"sweep {spec['name']}: {len(cells)} cell(s); cost model: {cost.step_s:.4g} s/step, "
          f"{cost.image_s:.4g} s/test image ({cost.source})")
    for cell in cells:
        plan = plan_cell(spec, cell, out, cost)
        steps = "?" if plan.steps_per_seed is None else str(plan.steps_per_seed)
        images = "?" if plan.test_images is None else str(plan.test_images)
        hours = "?" if plan.device_hours is None else f"{plan.device_hours:.3f}"
        print(f"[{plan.label}]\n  weights: {plan.weights}\n  data: {plan.data}\n"
              f"  seeds {plan.seeds}, train images {plan.train_images if plan.train_images is not None else '?'}, "
              f"optimizer steps per seed {steps}, test images {images}, devices {plan.devices}, "
              f"device-hours {hours}")
        for note in plan.notes:
            print(f"  note: {note}")
        total_h += plan.device_hours or 0.0
        missing += [f"[{plan.label}] {m}" for m in plan.missing]
    print(f"total: {total_h:.3f} device-hours (cells with unknown counts not included)")
    if missing:
        print(f"MISSING ({len(missing)}):")
        for m in missing:
            print(f"  {m}")
        return 1
    return 0


def print_dry_run(spec: Mapping[str, Any], out: Path) -> int:
    """``--dry-run``: one line per cell (ok / skipped / failed with the reason); 1 when a cell failed."""
    results = [dry_run_cell(spec, cell, out) for cell in expand_cells(spec)]
    for r in results:
        print(f"{r.status:8s} [{r.label}] {r.detail}")
    counts = {s: sum(1 for r in results if r.status == s) for s in ("ok", "skipped", "failed")}
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 1 if counts["failed"] else 0


def sweep_main(argv: Sequence[str]) -> int:
    """``vlprompt sweep --config FILE [--workers N] [--executor local|slurm] [--out DIR] [--status]``."""
    parser = argparse.ArgumentParser(prog="vlprompt sweep", description="Run a grid of vlprompt runs (submitit).")
    parser.add_argument("--config", required=True, help="sweep file, e.g. sweeps/toy_smoke.yaml")
    parser.add_argument("--workers", type=int, default=None, help="cells at once (default: the file's workers)")
    parser.add_argument("--executor", choices=EXECUTORS, default=None, help="default: the file's executor")
    parser.add_argument("--out", default=None, help="sweep folder (default: sweeps-out/<name>)")
    parser.add_argument("--status", action="store_true", help="only print the summary table, run nothing")
    parser.add_argument("--plan", action="store_true",
                        help="run nothing: print per cell the weights, data, optimizer steps, test images and "
                             "estimated device-hours; exit 1 naming every missing item")
    parser.add_argument("--step-s", type=float, default=DEFAULT_STEP_S,
                        help=f"--plan: seconds per optimizer step (default {DEFAULT_STEP_S})")
    parser.add_argument("--image-s", type=float, default=DEFAULT_IMAGE_S,
                        help=f"--plan: seconds per test image (default {DEFAULT_IMAGE_S})")
    parser.add_argument("--calibrate", action="append", default=[], metavar="RESULT.json",
                        help="--plan: fit the step and image costs to a measured result file (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build every cell and run 1 training step and 1 test batch on CPU with a tiny backbone")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        spec = load_sweep(args.config)
        if args.plan:
            given = args.step_s != DEFAULT_STEP_S or args.image_s != DEFAULT_IMAGE_S  # test-time cells keep their own default otherwise
            cost = calibrate(args.calibrate) if args.calibrate else CostModel(
                args.step_s, args.image_s, source="--step-s/--image-s" if given else "defaults")
            return print_plan(spec, cost, Path(args.out or Path("sweeps-out") / str(spec["name"])))
        if args.dry_run:
            return print_dry_run(spec, Path(args.out or Path("sweeps-out") / str(spec["name"])))
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
