"""Run identity and resume: every ``vlprompt fit|validate|test`` gets a run id and a run folder.

``<runs_dir>/<run_id>/`` holds everything a run produces besides its result JSON::

    run.json                    what was run (stage, argv, config hash), status, the result path when done
    log.txt                     the run's log
    seed<N>/seed.json           the seed's metrics, written the moment the seed finishes
    seed<N>/prompts.safetensors the seed's learned tensors (sha256 recorded in seed.json and the result)
    seed<N>/checkpoints/last.ckpt  Lightning checkpoint of the unfinished seed (learner tensors, optimiser,
                                scheduler, loop and RNG state; loaded with ``weights_only=True``)

A killed run is resumed by running the same command with ``--resume <run folder>`` (or ``--run_id <id>``):
finished seeds are read back from their ``seed.json``, the interrupted seed continues from ``last.ckpt``,
and the metrics equal those of an uninterrupted run. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import secrets
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from vlprompt.data.atomic import (
    atomic_path,
    atomic_write_text,
    check_writable,
    sha256_file,
)

log = logging.getLogger(__name__)

__all__ = ["RunError", "RunInterrupted", "RunFolder", "ResumeCheckpoint", "RUN_ID_PATTERN", "check_run_id", "new_run_id", "config_hash", "interrupt_signals"]


class RunError(ValueError):
    """A run folder cannot be created, resumed or trusted; the message names the folder and the fix."""


class RunInterrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, it is not an Exception
    """SIGTERM / SIGINT arrived; carries the signal number and, once known, what was saved."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or signal.Signals(signum).name)
        self.signum = signum
        self.message = message

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


@contextlib.contextmanager
def interrupt_signals():
    """Turn SIGTERM and SIGINT into :class:`RunInterrupted` while the block runs (handlers restored after).

    Lightning composes its own SIGTERM notifier with this handler, so both see the signal; without it
    SIGTERM would end ``trainer.fit`` with a ``SystemExit`` that has no exit code (status 0).
    """

    def handler(signum, _frame):
        raise RunInterrupted(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


#: a run id is one folder name: a letter or digit, then letters, digits, ``.``, ``_`` or ``-`` (128 at most)
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a name (:data:`RUN_ID_PATTERN`: one path component, no ``..``, no ``/``); else
    :class:`RunError` naming the value and the fix, raised before anything is written."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id) or ".." in run_id:
        raise RunError(f"--run_id {run_id!r} is not a run name: use one folder name of letters, digits, '.', '_' and "
                       "'-' (starting with a letter or digit, no '..', at most 128 characters), e.g. --run_id "
                       "coop-exp1; the run folder is always created inside the runs folder.")
    return run_id


def new_run_id(label: str) -> str:
    """``<label>-<YYYYmmdd-HHMMSS>-<6 hex>`` (UTC), unique across concurrent runs."""
    now = _dt.datetime.now(_dt.timezone.utc)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "run"
    return f"{safe}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 (16 hex) of a resolved config, ignoring keys that do not change results (run management)."""
    cfg = json.loads(json.dumps(config, sort_keys=True, default=str))
    for key in ("run_id", "results_dir", "progress", "check_images", "force_prompts"):
        cfg.pop(key, None)
    trainer = cfg.get("trainer") or {}
    for key in ("enable_progress_bar", "default_root_dir", "logger", "callbacks"):
        trainer.pop(key, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


class RunFolder:
    """The folder of one run; holds an exclusive lock while the run is alive (a second process resuming the
    same run is refused instead of corrupting it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.run_id = self.path.name
        self._lock_fh = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, runs_dir: str | os.PathLike, run_id: str, *, stage: str, argv: list[str], cfg_hash: str) -> tuple["RunFolder", bool]:
        """Create the run folder, or reopen an existing one for resuming; returns ``(folder, resumed)``.

        Refuses a folder whose recorded stage or config hash differs (another experiment under that id).
        """
        folder = cls(Path(runs_dir) / check_run_id(run_id))
        check_writable(folder.path.parent, "runs folder (trainer.default_root_dir)", RunError)
        record = folder.record()
        resumed = record is not None
        if record is not None:
            if record.get("status") == "complete":
                raise RunError(
                    f"run {run_id!r} in {folder.path} is already complete (result {record.get('result')}); "
                    "start a new run without --run_id / --resume to repeat it."
                )
            if record.get("stage") != stage or record.get("config_hash") != cfg_hash:
                raise RunError(
                    f"run folder {folder.path} holds another experiment (stage {record.get('stage')!r}, config "
                    f"hash {record.get('config_hash')}; this one: {stage!r}, {cfg_hash}). Resume it with its own "
                    f"command (`vlprompt {record.get('stage')} --resume {folder.path}`) or choose another --run_id."
                )
        check_writable(folder.path, "run folder", RunError)
        folder._lock()
        if record is None:
            record = {"run_id": run_id, "stage": stage, "argv": argv, "config_hash": cfg_hash,
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "status": "running"}
        else:
            record["status"] = "running"
            record["resumed"] = int(record.get("resumed", 0)) + 1
        folder.write_record(record)
        return folder, resumed

    @staticmethod
    def argv_of(path: str | os.PathLike) -> tuple[str, list[str]]:
        """``(stage, argv)`` recorded in a run folder (for ``--resume``)."""
        p = Path(path)
        rec = p / "run.json"
        if not rec.is_file():
            raise RunError(
                f"--resume {str(p)!r}: no run.json there; pass a run folder printed by an interrupted run, "
                "e.g. runs/coop-20260101-120000-ab12cd."
            )
        try:
            record = json.loads(rec.read_text(encoding="utf-8"))
            return str(record["stage"]), [str(a) for a in record["argv"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(f"{rec}: unreadable run record ({exc}); the run cannot be resumed, start it again.") from exc

    def _lock(self) -> None:
        fh = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for the life of the run
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            raise RunError(
                f"run folder {self.path} is in use by another vlprompt process; wait for it to end (or kill it) "
                "before resuming, or start a new run."
            ) from exc
        self._lock_fh = fh

    def close(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # ------------------------------------------------------------------ records
    def record(self) -> dict[str, Any] | None:
        p = self.path / "run.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunError(f"{p}: unreadable run record ({exc}); delete the folder or choose another --run_id.") from exc

    def write_record(self, record: dict[str, Any]) -> None:
        atomic_write_text(self.path / "run.json", json.dumps(record, indent=2, sort_keys=True) + "\n")

    def update(self, **fields: Any) -> None:
        record = self.record() or {}
        record.update(fields)
        self.write_record(record)

    def seed_dir(self, seed: int) -> Path:
        return self.path / f"seed{seed}"

    def checkpoint(self, seed: int) -> Path:
        return self.seed_dir(seed) / "checkpoints" / "last.ckpt"

    def finished_seed(self, seed: int) -> dict[str, Any] | None:
        """The saved row of a finished seed, or None; a row whose prompts changed on disk is not trusted."""
        p = self.seed_dir(seed) / "seed.json"
        if not p.is_file():
            return None
        try:
            row = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s is unreadable: seed %d is run again", p, seed)
            return None
        prompts = row.get("prompts")
        if prompts and (not Path(prompts).is_file() or sha256_file(prompts) != row.get("prompts_sha256")):
            log.warning("%s changed or vanished since seed %d finished: the seed is run again", prompts, seed)
            return None
        return row

    def save_seed(self, seed: int, row: dict[str, Any]) -> None:
        atomic_write_text(self.seed_dir(seed) / "seed.json", json.dumps(row, indent=2, sort_keys=True) + "\n")
        ckpt = self.checkpoint(seed)
        if ckpt.is_file():  # the seed is done: its mid-training checkpoint is no longer needed
            ckpt.unlink()

    def usable_checkpoint(self, seed: int) -> Path | None:
        """The seed's ``last.ckpt`` if it loads (``weights_only=True``), else None. A damaged or refused file
        is reported with its path and the reason, and moved aside to ``last.ckpt.damaged`` so the seed is
        redone from scratch (its last good state is gone with it)."""
        ckpt = self.checkpoint(seed)
        if not ckpt.is_file():
            return None
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "state_dict" not in state:
                raise ValueError("not a Lightning checkpoint (no state_dict)")
        except Exception as exc:  # noqa: BLE001 - truncated, damaged or unsafe: never loaded
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                why = "it holds objects other than tensors and plain values (refused, never unpickled)"
            damaged = ckpt.with_name(ckpt.name + ".damaged")
            try:
                os.replace(ckpt, damaged)
            except OSError:
                damaged = ckpt
            log.warning("seed %d: checkpoint %s is damaged (%s); the seed is redone from scratch (file kept as %s)",
                        seed, ckpt, why, damaged)
            return None
        return ckpt

    def checkpoint_epoch(self, seed: int) -> int | None:
        """Epochs completed in the seed's checkpoint, or None when there is none."""
        ckpt = self.checkpoint(seed)
        if not ckpt.is_file():
            return None
        try:
            return int(torch.load(ckpt, map_location="cpu", weights_only=True).get("epoch", -1)) + 1
        except Exception:  # noqa: BLE001 - a damaged checkpoint is simply not used
            return None


# --------------------------------------------------------------------------- Lightning checkpointing
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype("int64")),
        "numpy_meta": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_version": int(py_state[0]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    meta = state["numpy_meta"]
    np.random.set_state((meta[0], state["numpy_keys"].numpy().astype("uint32"), int(meta[1]), int(meta[2]), float(meta[3])))
    random.setstate((int(state["python_version"]), tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeCheckpoint(Checkpoint):
    """Save ``last.ckpt`` (atomically) at the end of every training epoch, with the RNG states, so a resumed
    seed draws the same batches as an uninterrupted one. As a ``Checkpoint`` callback it runs after the
    module's own epoch-end hook, so learner state updated there (e.g. PromptSRC's running aggregate) is saved. The module's ``on_save_checkpoint`` keeps only the
    learner's tensors (never the frozen backbone)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            _set_rng_state(state_dict["rng"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= (trainer.max_epochs or 0):
            return  # the last epoch: the seed is about to finish and save its prompts
        with atomic_path(self.path) as tmp:
            # the whole training state (optimiser, scheduler, loops, this callback's RNG states): resuming needs it.
            # Said explicitly: left unset, Lightning logs "`weights_only` was not set" at every epoch. (It is read
            # back with weights_only=True: only tensors and plain containers.)
            trainer.save_checkpoint(tmp, weights_only=False)


class SignalAt(pl.Callback):
    """Fault injection for tests and drills: when ``VLPROMPT_TEST_SIGNAL="<signum>:<seed>:<epoch>"`` is set,
    send that signal to this very process at the end of that training epoch (0-based) of that seed, after
    the epoch's resume checkpoint is written. Lets a test interrupt a real ``vlprompt fit`` subprocess at a
    reproducible point (``SIGKILL`` included). Does nothing without the variable."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        spec = os.environ.get("VLPROMPT_TEST_SIGNAL", "")
        if not spec:
            return
        signum, seed, epoch = (int(v) for v in spec.split(":"))
        if os.environ.get("PL_GLOBAL_SEED") == str(seed) and trainer.current_epoch == epoch:
            for cb in trainer.callbacks:
                if isinstance(cb, ResumeCheckpoint):
                    cb.on_train_epoch_end(trainer, pl_module)
            os.kill(os.getpid(), signal.Signals(signum))
