"""Weights & Biases: the only vlprompt module that imports ``wandb`` (always lazily, inside functions).

* :class:`WandbLogger` (``configs/trainer/wandb.yaml``): one W&B run per seed, holding the resolved config,
  the per-step and per-epoch curves (:class:`vlprompt.runs.tracking.EpochCurves`), the test metrics and a summary
  (base, new, HM; Dice, IoU for segmentation), grouped ``benchmark/dataset/learner`` and tagged with the
  learner family, benchmark, dataset, learner and protocol. The run id is ``<vlprompt run id>-seed<N>``, so a
  resumed ``vlprompt fit --resume`` continues the same W&B runs.
* :func:`push_leaderboards` (``vlprompt leaderboard push RESULTS --wandb``): one W&B run per leaderboard with
  its rows as W&B Tables and its plots (plotly).

Not logged in (no ``WANDB_API_KEY``, no netrc entry for the W&B host) and not asked for offline: both fall back
to offline mode with one warning saying how to upload later (``wandb sync``); nothing waits for a login prompt.
``WANDB_MODE=offline|disabled`` in the environment is obeyed as is.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from vlprompt.runs.tracking import seed_group

log = logging.getLogger(__name__)

__all__ = ["WandbLogger", "is_logged_in", "choose_offline", "push_leaderboards"]

_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def is_logged_in() -> bool:
    """Whether W&B credentials exist locally (``WANDB_API_KEY`` or a netrc entry for the W&B host); no network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(offline: bool) -> str:
    """The explicit ``wandb.init(mode=...)``: ``disabled`` when ``WANDB_MODE=disabled``, else offline / online. Given
    explicitly because W&B's process-wide settings keep the mode of the first run of the process."""
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return "disabled"
    return "offline" if offline else "online"


def choose_offline(offline: bool, where: str) -> bool:
    """The ``offline`` to use: as asked, or ``True`` (with one warning) when online is asked but no credentials exist.

    ``WANDB_MODE`` offline/dryrun/disabled in the environment wins without a message.
    """
    mode = os.environ.get("WANDB_MODE", "").lower()
    if offline or mode in {"offline", "dryrun", "disabled"}:
        return offline or mode in {"offline", "dryrun"}
    if is_logged_in():
        return False
    _warn_once(f"W&B: not logged in (no WANDB_API_KEY, no netrc entry for the W&B host): logging offline under "
               f"{where}/wandb; upload later with `wandb sync {where}/wandb/offline-run-*` after `wandb login`.")
    return True


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with vlprompt's per-seed runs and the offline fallback.

    Args:
        project: W&B project.
        offline: log offline (``wandb sync`` later); also chosen automatically when not logged in.
        save_dir: where W&B writes (``<save_dir>/wandb/``); default ``$WANDB_DIR``, else ``runs``.
        entity: W&B entity (team or user); default: the logged-in user's.
        **kwargs: more :class:`lightning.pytorch.loggers.WandbLogger` / ``wandb.init`` arguments.
    """

    def __init__(self, *, project: str = "vlprompt", offline: bool = False, save_dir: str | None = None,
                 entity: str | None = None, **kwargs: Any) -> None:
        save_dir = save_dir or os.environ.get("WANDB_DIR") or "runs"
        offline = choose_offline(offline, str(save_dir))
        if entity is not None:
            kwargs["entity"] = entity
        kwargs.setdefault("mode", wandb_mode(offline))
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(project=project, offline=offline, save_dir=save_dir, **kwargs)
        # Lightning always passes anonymous=None, which wandb answers with "The anonymous setting has no effect"
        # on every run; leave it out unless it was asked for
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @rank_zero_only
    def start_seed(self, info: Mapping[str, Any]) -> None:
        """Set the next run's identity (called by :func:`vlprompt.runs.tracking.start_seed_logging` before the seed runs)."""
        if self._experiment is not None:  # a run of an earlier seed is still open
            self._finish(0)
        learner, dataset, benchmark = str(info["learner"]), str(info["dataset"]), str(info["benchmark"])
        seed = info["seed"]
        config = dict(info.get("config") or {})
        config["vlprompt"] = {k: info[k] for k in ("benchmark", "dataset", "learner", "family", "protocol", "seed",
                                                   "run_id", "stage") if k in info}
        tags = [f"family:{info.get('family', '?')}", f"benchmark:{benchmark}", f"dataset:{dataset}",
                f"learner:{learner}", f"protocol:{info.get('protocol', '?')}"]
        user_tags = list(self._wandb_init.get("tags") or [])
        run_id = str(info.get("run_id") or "run")
        self._wandb_init.update(
            name=f"{learner}-{dataset}-seed{seed}", id=f"{run_id}-seed{seed}"[-128:], group=seed_group(benchmark, dataset, learner),
            job_type=str(info.get("stage") or "fit"), tags=sorted(set(user_tags) | set(tags)), config=config,
        )
        self._id, self._name = self._wandb_init["id"], self._wandb_init["name"]

    @rank_zero_only
    def end_seed(self, summary: Mapping[str, float]) -> None:
        """Write the seed's summary metrics into its run and close the run."""
        run = self.experiment
        if run is not None and hasattr(run, "summary"):
            run.summary.update(dict(summary))
        self._finish(0)

    def _finish(self, exit_code: int) -> None:
        run = self._experiment
        self._experiment = None
        if run is not None and hasattr(run, "finish"):
            run.finish(exit_code=exit_code)


# --------------------------------------------------------------------------- reading offline runs back
def _log_records(path: Path):
    """The records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks of checksummed chunks, after a 7-byte
    ``:W&B`` header), as raw protobuf bytes."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (no :W&B header)")
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
            pending = b""


def read_offline_run(run_dir: str | Path, *, wait_s: float = 60.0) -> dict[str, Any]:
    """What an offline W&B run folder (``.../wandb/offline-run-*``) holds, before ``wandb sync``: ``run`` (id, name,
    group, job type, tags), ``config`` (top-level keys to values), ``summary`` (key to value), ``history`` (one
    dict per logged step) and ``complete`` (the run's exit record was written). Values are decoded from W&B's JSON;
    nested keys are joined with ``/``. W&B's service may still be flushing a just-finished run: the file is re-read
    until its exit record is there, for at most ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        out = _read_offline_run_once(run_dir)
        if out["complete"] or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_offline_run_once(run_dir: str | Path) -> dict[str, Any]:
    from google.protobuf.message import DecodeError  # deferred: wandb's protobuf (offline W&B runs only)
    from wandb.proto import wandb_internal_pb2 as pb  # deferred: wandb is slow to import (W&B runs only)

    files = sorted(Path(run_dir).glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no *.wandb file; pass a wandb/offline-run-* folder")
    out: dict[str, Any] = {"run": {}, "config": {}, "summary": {}, "history": [], "complete": False}

    def key(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    for raw in _log_records(files[0]):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except DecodeError:  # a chunk still being written: read again later
            break
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "name": r.display_name, "group": r.run_group, "job_type": r.job_type,
                          "tags": list(r.tags), "project": r.project}
            out["config"].update({key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            out["config"].update({key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "exit":
            out["complete"] = True
    return out


