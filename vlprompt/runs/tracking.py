"""Experiment tracking hooks that any Lightning logger can serve (no ``wandb`` import here).

``vlprompt fit|validate|test`` builds one trainer per seed. Before a seed runs, :func:`start_seed_logging`
hands every logger that understands it (duck-typed ``start_seed``, e.g. :class:`vlprompt.runs.wandb_logging.WandbLogger`)
the seed's identity: resolved config, grouping (benchmark / dataset / learner), tags (learner family) and a
stable run id; it also adds :class:`EpochCurves` so that every logger gets per-epoch curves. After the seed's
evaluation, :func:`end_seed_logging` hands the seed's summary metrics (:func:`summary_metrics`) to each logger
(``end_seed``), which closes that seed's run. Only :mod:`vlprompt.runs.wandb_logging` imports ``wandb``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)

__all__ = ["EpochCurves", "SUMMARY_KEYS", "batch_size_of", "end_seed_logging", "seed_group", "start_seed_logging", "summary_metrics"]

#: the metrics a dashboard shows first: base-to-new (base, new, HM) and segmentation (Dice, IoU)
SUMMARY_KEYS = ("base", "new", "hm", "dice", "iou", "accuracy")


def summary_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite metrics of one seed (``{"base": 80.1, "new": 70.2, "hm": 74.8}``, or ``dice``/``iou``
    for segmentation), :data:`SUMMARY_KEYS` first, then the rest sorted by name. Booleans and non-numbers are dropped.
    """
    nums = {str(k): float(v) for k, v in metrics.items()
            if not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(float(v))}
    first = {k: nums[k] for k in SUMMARY_KEYS if k in nums}
    return {**first, **{k: nums[k] for k in sorted(nums) if k not in first}}


def seed_group(benchmark: str, dataset: str, learner: str) -> str:
    """The group name of a seed's run: ``benchmark/dataset/learner`` (the seeds of one result share it)."""
    return f"{benchmark}/{dataset}/{learner}"


def start_seed_logging(trainer: pl.Trainer, info: Mapping[str, Any]) -> None:
    """Before a seed runs: give each logger with a ``start_seed(info)`` method the seed's identity, and add
    :class:`EpochCurves` when the trainer has a logger.

    ``info`` holds ``config`` (resolved), ``benchmark``, ``dataset``, ``learner``, ``family``, ``protocol``,
    ``seed``, ``run_id`` and ``stage``.
    """
    loggers = list(getattr(trainer, "loggers", []) or [])
    for lg in loggers:
        hook = getattr(lg, "start_seed", None)
        if callable(hook):
            hook(dict(info))
    if loggers and not any(isinstance(cb, EpochCurves) for cb in trainer.callbacks):
        trainer.callbacks.append(EpochCurves())


def end_seed_logging(trainer: pl.Trainer, metrics: Mapping[str, Any]) -> None:
    """After a seed's evaluation: hand its :func:`summary_metrics` to each logger with an ``end_seed`` method."""
    summary = summary_metrics(metrics)
    for lg in list(getattr(trainer, "loggers", []) or []):
        hook = getattr(lg, "end_seed", None)
        if callable(hook):
            hook(summary)


def batch_size_of(batch: Any) -> int:
    """The number of samples in a batch of any of vlprompt's formats: a classification ``(images, labels, ...)``
    tuple, a segmentation dict (``image``, ``mask``, ``prompt``, ...) or a bare tensor; 1 when it cannot tell."""
    if isinstance(batch, Mapping):
        candidates = [batch[k] for k in ("mask", "image", "label") if k in batch] + list(batch.values())
    elif isinstance(batch, (list, tuple)):
        candidates = list(batch[1:2]) + list(batch)
    else:
        candidates = [batch]
    for value in candidates:
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
        if isinstance(value, (list, tuple)) and value and not isinstance(batch, (list, tuple)):
            return len(value)
    return 1


class EpochCurves(pl.Callback):
    """Per-epoch training curves for every logger: ``epoch/train_loss`` and ``epoch/train_acc`` (means over the
    epoch's samples, counted with :func:`batch_size_of`, so classification and segmentation batches both work, reduced across processes under DDP) and ``epoch/lr`` (first param group), logged at the end
    of each training epoch."""

    def __init__(self) -> None:
        self._sums = [0.0, 0.0, 0]  # loss * n, acc * n, n

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sums = [0.0, 0.0, 0]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        n = batch_size_of(batch)
        acc = trainer.callback_metrics.get("train/acc")
        self._sums[0] += float(loss.detach()) * n
        self._sums[1] += (float(acc) if acc is not None else math.nan) * n
        self._sums[2] += n

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss_sum, acc_sum, n = self._sums
        if n == 0:
            return
        totals = torch.tensor([loss_sum, acc_sum, float(n)], dtype=torch.float64)
        totals = trainer.strategy.reduce(totals, reduce_op="sum") if trainer.world_size > 1 else totals
        values = {"epoch/train_loss": float(totals[0] / totals[2]), "epoch/train_acc": float(totals[1] / totals[2])}
        opts = trainer.optimizers
        if opts:
            values["epoch/lr"] = float(opts[0].param_groups[0]["lr"])
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        pl_module.log_dict(values, on_step=False, on_epoch=True, rank_zero_only=True)
