"""Grids of ``vlprompt fit`` (or ``test``, ``validate``, ``tta``) runs: ``vlprompt sweep --config sweeps/<name>.yaml [--workers N] [--executor ...]``.

A sweep file::

    name: toy_smoke                     # folder sweeps-out/<name>/ (run folders, cell states, submitit logs)
    stage: fit                          # fit | test | validate | tta (test-time evaluation, `vlprompt tta`)
    args: [--config, configs/protocols/base2new.yaml, --config, configs/trainer/cpu.yaml,
           --config, configs/backbones/toyclip.yaml, --results_dir, results]   # common to every cell
    grid:                               # the cartesian product of these axes is the list of cells
      learner: [zero_shot/default, coop/ctx4_init]    # -> --config configs/learners/<v>.yaml (or a .yaml path)
      dataset: [toy_colors]                           # -> --config configs/datasets/<v>.yaml
      shots: [4, 16]                                  # -> --data.init_args.shots <v>
      seeds: [[1, 2, 3]]                              # -> --seeds <v> (one result per cell holds all its seeds)
      trainer.max_epochs: [1]                         # any other key: a LightningCLI key, -> --<key> <v>
    executor: local                     # local (N worker processes on this machine) | slurm
    workers: 2
    slurm: {slurm_partition: gpu, timeout_min: 120, gpus_per_node: 1}   # submitit's update_parameters
    timeout_min: 10080                  # per cell; default: 7 days locally, submitit's default (5) on SLURM

Shorthand axes: ``learner``, ``dataset``, ``protocol``, ``backbone`` (config files under ``configs/<kind>s/``),
``trainer`` (``configs/trainer/``), ``shots``, ``seeds``. Every other key must be a dotted LightningCLI key.

Each cell gets a deterministic run id (``sweep-<name>-<cell hash>``), so its run folder is found again: a cell
whose run folder is complete and whose result file exists is skipped; an interrupted cell resumes from its run
folder (per-seed rows and per-epoch checkpoints, :mod:`vlprompt.runs.folders`). Before any cell runs, every cell's
argument list is parsed by the same parser as ``vlprompt fit`` (no model is built), so an unknown key, a missing
config file or an unknown plugin class stops the sweep with the cell named. A cell that fails is recorded (its
error in ``cells/<id>.json``) and the sweep goes on; the summary table lists done / failed / pending cells.

Why submitit (not Ray): the target is the SLURM clusters research groups already have. submitit submits each cell
as a SLURM job (array-free, one job per cell, with the cluster's own queue, accounting and preemption) and has a
local executor with the same API for laptops and tests; Ray would need a Ray cluster started on top of SLURM
(head node, ports) and brings its own scheduler, which is what we want to avoid. submitit moves the cell's
argument list to its worker with (cloud)pickle inside its own job folder; we never load a user-supplied pickle.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml

from vlprompt.data.atomic import atomic_write_text
from vlprompt.runs.config import VlpromptCLI, build_cli, check_seeds, validate_config
from vlprompt.runs.driver import run_experiment
from vlprompt.runs.test_time import TestTimeCLI, build_tta_cli, run_tta

log = logging.getLogger(__name__)

__all__ = ["SweepError", "SweepInterrupted", "Cell", "load_sweep", "expand_cells", "cell_status", "run_sweep", "sweep_main",
           "check_slurm_block", "SLURM_KEYS_HELP", "parse_cell", "check_cells",
           "cell_argv", "run_cell"]

_FILE_AXES = {"learner": "learners", "dataset": "datasets", "protocol": "protocols", "backbone": "backbones",
              "trainer": "trainer"}
_VALUE_AXES = {"shots": "--data.init_args.shots", "seeds": "--seeds"}
_TOP_KEYS = {"name", "stage", "args", "grid", "executor", "workers", "slurm", "out", "timeout_min"}
# submitit's AutoExecutor kills a job after timeout_min (default 5) on every executor, the local one included;
# a toy cell with 3 seeds takes longer than that, so local cells get a week unless the sweep file says otherwise.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
EXECUTORS = ("local", "slurm")


class SweepError(ValueError):
    """A sweep file is malformed, or a cell's configuration is invalid (raised before any cell runs)."""


class SweepInterrupted(SweepError):
    """SIGTERM / SIGINT stopped the sweep: its workers were stopped and the interrupted cells recorded."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)


#: seconds the sweep waits, after SIGTERM / SIGINT, for stopped cells to checkpoint and exit (then kills them)
STOP_GRACE_S = 60.0


@dataclass(frozen=True)
class Cell:
    """One grid point: its axis values and the full ``vlprompt <stage>`` argument list."""

    params: tuple[tuple[str, Any], ...]
    argv: tuple[str, ...]
    cell_id: str = field(default="")

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params)


#: what a sweep's cells run: ``vlprompt fit``, ``test``, ``validate`` or ``tta`` (test-time evaluation)
STAGES = ("fit", "test", "validate", "tta")


def _cli_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)


def load_sweep(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a sweep file (structure only); errors name the file, the key and the fix."""
    p = Path(path)
    if not p.is_file():
        raise SweepError(f"--config {p}: no such sweep file; sweeps live in sweeps/<name>.yaml")
    try:
        spec = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SweepError(f"{p}: invalid YAML ({exc}); fix the syntax") from exc
    if not isinstance(spec, Mapping):
        raise SweepError(f"{p}: expected a mapping with name:, args:, grid:")
    unknown = sorted(set(spec) - _TOP_KEYS)
    if unknown:
        raise SweepError(f"{p}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    spec = dict(spec)
    spec.setdefault("name", p.stem)
    spec.setdefault("stage", "fit")
    spec.setdefault("args", [])
    spec.setdefault("executor", "local")
    spec.setdefault("workers", 1)
    if spec["stage"] not in STAGES:
        raise SweepError(f"{p}: stage {spec['stage']!r} must be one of {', '.join(STAGES)}")
    if spec["executor"] not in EXECUTORS:
        raise SweepError(f"{p}: executor {spec['executor']!r} must be one of {EXECUTORS}")
    if not isinstance(spec["args"], list) or not all(isinstance(a, (str, int, float)) for a in spec["args"]):
        raise SweepError(f"{p}: args must be a list of command-line words, e.g. [--config, configs/trainer/cpu.yaml]")
    grid = spec.get("grid")
    if not isinstance(grid, Mapping) or not grid:
        raise SweepError(f"{p}: grid must map axis names to lists of values, e.g. grid: {{learner: [coop/ctx4_init]}}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{p}: grid.{key} must be a non-empty list, got {values!r}")
        if key not in _FILE_AXES and key not in _VALUE_AXES and "." not in str(key):
            raise SweepError(
                f"{p}: grid key {key!r} is neither a shorthand ({sorted({*_FILE_AXES, *_VALUE_AXES})}) nor a dotted "
                "LightningCLI key such as trainer.max_epochs or model.init_args.learner.init_args.n_ctx"
            )
    if not isinstance(spec["workers"], int) or spec["workers"] < 1:
        raise SweepError(f"{p}: workers must be a positive integer, got {spec['workers']!r}")
    timeout = spec.get("timeout_min")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
        raise SweepError(f"{p}: timeout_min must be a positive number of minutes per cell, got {timeout!r}")
    check_slurm_block(spec.get("slurm"), where=str(p))
    return spec


#: submitit's generic job keys; any SLURM sbatch option is ``slurm_<option>`` (slurm_partition, slurm_account, ...)
SLURM_KEYS_HELP = ("use submitit's names: gpus_per_node, tasks_per_node, cpus_per_task, mem_gb, nodes, timeout_min, "
                   "or slurm_<sbatch option> such as slurm_partition, slurm_account, slurm_qos, slurm_constraint")


def check_slurm_block(block: Any, *, where: str) -> None:
    """Check a sweep file's ``slurm:`` mapping against submitit's own parameter names and types (on any machine:
    submitit's debug executor validates the names without needing ``srun``); errors name the key and the fix."""
    if block is None:
        return
    if not isinstance(block, Mapping):
        raise SweepError(f"{where}: slurm must be a mapping such as {{slurm_partition: gpu, gpus_per_node: 1}}, "
                         f"got {block!r}")
    for key, value in block.items():
        with tempfile.TemporaryDirectory(prefix="vlprompt-slurm-check-") as tmp:
            probe = submitit.AutoExecutor(folder=tmp, cluster="debug")
            try:
                probe.update_parameters(**{str(key): value})
            except (NameError, AssertionError, TypeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SweepError(f"{where}: slurm.{key}: {value!r} is not accepted by submitit ({first}); "
                                 f"{SLURM_KEYS_HELP}") from exc


def _axis_args(key: str, value: Any) -> list[str]:
    if key in _FILE_AXES:
        v = str(value)
        path = v if v.endswith((".yaml", ".yml")) else f"configs/{_FILE_AXES[key]}/{v}.yaml"
        return ["--config", path]
    if key in _VALUE_AXES:
        return [_VALUE_AXES[key], _cli_value(value)]
    return [f"--{key}", _cli_value(value)]


def expand_cells(spec: Mapping[str, Any]) -> list[Cell]:
    """The cartesian product of ``spec['grid']`` (axes in file order), each with its argv and a stable id."""
    keys = list(spec["grid"])
    cells = []
    for combo in itertools.product(*(spec["grid"][k] for k in keys)):
        params = tuple(zip(keys, combo))
        argv = [str(a) for a in spec["args"]]
        for k, v in params:
            argv += _axis_args(k, v)
        digest = hashlib.sha256(json.dumps([spec["stage"], argv]).encode()).hexdigest()[:10]
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(spec["name"]))
        cells.append(Cell(params=params, argv=tuple(argv), cell_id=f"sweep-{name}-{digest}"))
    return cells


def _runs_root(cell: Cell, out: Path) -> Path:
    return out / "runs"


def cell_argv(cell: Cell, out: Path) -> list[str]:
    return [*cell.argv, "--trainer.default_root_dir", str(_runs_root(cell, out)), "--run_id", cell.cell_id]


def parse_cell(spec: Mapping[str, Any], cell: Cell, out: Path, extra: Sequence[str] = ()) -> Any:
    """The parsed and validated ``vlprompt <stage>`` config of ``cell`` (nothing is built); errors name the cell."""
    # LightningCLI(run=False) instantiates model and data at the end of parsing; the check only parses, so the
    # sweep driver (single-threaded) turns instantiation off for the duration of the call
    cli_class = TestTimeCLI if spec["stage"] == "tta" else VlpromptCLI
    saved = cli_class.instantiate_classes
    cli_class.instantiate_classes = lambda self: None  # type: ignore[method-assign]
    try:
        if spec["stage"] == "tta":
            cli = build_tta_cli([*cell_argv(cell, out), *extra])
            check_seeds(cli.config.seeds)
        else:
            cli = build_cli(spec["stage"], [*cell_argv(cell, out), *extra])
            validate_config(spec["stage"], cli.config)
        return cli.config
    except SystemExit as exc:  # jsonargparse error exit: its message went to stderr
        raise SweepError(f"cell [{cell.label()}]: invalid arguments (see the parser message above); "
                         f"argv: {' '.join(cell.argv)}") from exc
    except Exception as exc:  # noqa: BLE001 - any parse/validation error stops the sweep before it starts
        raise SweepError(f"cell [{cell.label()}]: {exc}") from exc
    finally:
        cli_class.instantiate_classes = saved  # type: ignore[method-assign]


def check_cells(spec: Mapping[str, Any], cells: Sequence[Cell], out: Path) -> None:
    """Parse every cell's arguments with the ``vlprompt`` parser (nothing is built); the first bad cell raises."""
    for cell in cells:
        parse_cell(spec, cell, out)


def cell_status(cell: Cell, out: Path) -> tuple[str, str]:
    """``(status, detail)``: ``done`` (result path), ``failed`` (error), ``partial`` (interrupted), ``pending``."""
    record_file = _runs_root(cell, out) / cell.cell_id / "run.json"
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if isinstance(record, Mapping) and record.get("status") == "complete" and record.get("result") \
            and Path(str(record["result"])).is_file():
        return "done", str(record["result"])
    state_file = out / "cells" / f"{cell.cell_id}.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = None
    if isinstance(state, Mapping) and state.get("status") == "failed":
        return "failed", str(state.get("error", ""))
    if isinstance(state, Mapping) and state.get("status") == "interrupted":
        return "partial", f"{state.get('error', 'interrupted')}: resumes from its run folder"
    return ("partial", "interrupted: resumes from its run folder") if record is not None else ("pending", "")


def run_cell(stage: str, argv: list[str]) -> str:
    """Run one cell in this process (a submitit worker); returns the result path. Errors propagate."""
    if stage == "tta":
        result = run_tta(list(argv), show_summary=False)
    else:
        result = run_experiment(stage, list(argv), show_summary=False)
    return str((result or {}).get("_path", ""))


def _record(out: Path, cell: Cell, status: str, detail: str) -> None:
    (out / "cells").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cells" / f"{cell.cell_id}.json",
                      json.dumps({"status": status, "params": dict(cell.params), "argv": list(cell.argv),
                                  "error" if status == "failed" else "result": detail}, indent=2, default=str) + "\n")


def _make_executor(spec: Mapping[str, Any], out: Path) -> Any:
    cluster = spec["executor"]
    executor = submitit.AutoExecutor(folder=str(out / "submitit" / "%j"), cluster=cluster)
    params: dict[str, Any] = {"name": f"vlprompt-{spec['name']}"}
    timeout = spec.get("timeout_min")
    if timeout is None and cluster == "local":
        timeout = LOCAL_TIMEOUT_MIN
    if timeout is not None:
        params["timeout_min"] = int(timeout)
    if cluster == "slurm":  # submitit's own names: slurm_partition, timeout_min, gpus_per_node, cpus_per_task, ...
        params.update(dict(spec.get("slurm") or {}))
    executor.update_parameters(**params)
    return executor


def run_sweep(spec: Mapping[str, Any], *, out: str | os.PathLike | None = None, workers: int | None = None,
              executor: str | None = None, poll_s: float = 0.5) -> dict[str, tuple[str, str]]:
    """Run every cell that is not done; returns ``{cell_id: (status, detail)}`` after the sweep.

    At most ``workers`` cells run at once (local executor; on SLURM the scheduler queues them, ``workers`` caps how
    many are submitted at a time). A failed cell is recorded and the others go on.
    """
    spec = dict(spec)
    if executor is not None:
        spec["executor"] = executor
    n_workers = int(workers or spec.get("workers") or 1)
    root = Path(out or spec.get("out") or Path("sweeps-out") / str(spec["name"]))
    cells = expand_cells(spec)
    check_cells(spec, cells, root)
    todo = [c for c in cells if cell_status(c, root)[0] != "done"]
    log.info("sweep %s: %d cells, %d done before, %d to run (%s, %d worker(s))", spec["name"], len(cells),
             len(cells) - len(todo), len(todo), spec["executor"], n_workers)
    if todo:
        ex = _make_executor(spec, root)
        queue, running = list(todo), {}
        stop = {"signum": None, "hard": False, "deadline": None}

        def on_signal(signum, _frame):  # first: stop the workers gently; second: kill them at once
            if stop["signum"] is not None:
                stop["hard"] = True
                for _, job in list(running.values()):
                    _stop_job(job, spec["executor"], hard=True)
                return
            stop["signum"] = signum
            log.warning("sweep %s: %s received: stopping %d running cell(s) (their run folders keep finished seeds "
                        "and per-epoch checkpoints); send it again to kill them at once", spec["name"],
                        signal.Signals(signum).name, len(running))
            for _, job in list(running.values()):
                _stop_job(job, spec["executor"], hard=False)
            stop["deadline"] = time.monotonic() + STOP_GRACE_S

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, on_signal)
            except ValueError:  # not the main thread: leave signals alone
                pass
        try:
            while queue or running:
                if stop["signum"] is not None:
                    queue.clear()  # nothing new is submitted
                    if stop["hard"] or time.monotonic() > stop["deadline"]:
                        break
                while queue and len(running) < n_workers:
                    cell = queue.pop(0)
                    running[cell.cell_id] = (cell, ex.submit(run_cell, spec["stage"], cell_argv(cell, root)))
                for cid, (cell, job) in list(running.items()):
                    if not job.done():
                        continue
                    del running[cid]
                    _collect(root, cell, job, ex, stop["signum"])
                if running:
                    time.sleep(poll_s)
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        if stop["signum"] is not None:
            name = signal.Signals(stop["signum"]).name
            for cell, job in running.values():  # still running after the grace period or a second signal
                _stop_job(job, spec["executor"], hard=True)
                _record(root, cell, "interrupted", f"interrupted by {name}")
            statuses = {c.cell_id: cell_status(c, root) for c in cells}
            stopped = [c.label() for c in cells if statuses[c.cell_id][0] == "partial"]
            left = [c for c in cells if statuses[c.cell_id][0] != "done"]
            raise SweepInterrupted(stop["signum"], (
                f"sweep {spec['name']} interrupted by {name}: {len(stopped)} cell(s) interrupted "
                f"({'; '.join(stopped) or 'none'}), {len(left) - len(stopped)} not finished otherwise, "
                f"{len(cells) - len(left)} done; run the same `vlprompt sweep --config ...` command again (sweep "
                f"folder {root}) to resume: done cells are skipped, interrupted ones resume from their run folders"))
    return {c.cell_id: cell_status(c, root) for c in cells}


def _stop_job(job: Any, executor: str, *, hard: bool) -> None:
    """Stop a running cell: locally SIGTERM to submitit's job process (it forwards it to the cell, which
    checkpoints and exits), or ``cancel`` (locally SIGINT, after which submitit kills the cell; on SLURM
    ``scancel``)."""
    try:
        if executor == "local" and not hard:
            os.kill(int(job.job_id), signal.SIGTERM)
        else:
            job.cancel(check=False)
    except (OSError, ValueError):  # already gone
        pass


def _collect(root: Path, cell: Cell, job: Any, ex: Any, signum: int | None) -> None:
    """Record a finished job: done, failed, or (after a stop signal) interrupted."""
    try:
        path = job.result()
        _record(root, cell, "done", path)
        log.info("cell [%s] done: %s", cell.label(), path)
    except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the sweep goes on
        if signum is not None:
            _record(root, cell, "interrupted", f"interrupted by {signal.Signals(signum).name}")
            log.warning("cell [%s] interrupted", cell.label())
            return
        msg = _last_error_line(exc)
        if "timed-out" in msg:
            msg += (f" (the cell ran past timeout_min={ex.parameters.get('timeout_min', '?')} minutes: "
                    "raise timeout_min in the sweep file, then run the sweep again to resume the cell)")
        _record(root, cell, "failed", msg)
        log.error("cell [%s] failed: %s", cell.label(), msg)


def _last_error_line(exc: BaseException) -> str:
    """The most telling line of a (possibly submitit-wrapped) exception: the last ``...Error: ...`` line."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln.split(":", 1)[0] or "Exception" in ln.split(":", 1)[0]]
    return (errors[-1] if errors else (lines[-1] if lines else type(exc).__name__))[:500]


