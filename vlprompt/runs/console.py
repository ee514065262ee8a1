"""What a run prints while it trains: one progress style (rich), epochs counted from 1 as in the result JSON.

On a terminal the trainer's rich progress bar says ``Epoch k/N`` (k from 1, as ``selected_epoch`` and the log
lines do; Lightning's own bar counts from 0). When the output is not a terminal (a log file, CI) there is no bar
and no carriage-return updates: :class:`EpochLines` logs one line per epoch instead.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar

log = logging.getLogger("vlprompt.runs")

__all__ = ["EpochLines", "OneBasedRichProgressBar", "configure_progress", "output_is_terminal"]


def output_is_terminal() -> bool:
    """Whether progress can be drawn: stderr (where bars go) is a terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class OneBasedRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar with epochs counted from 1 (``Epoch 1/5`` ... ``Epoch 5/5``)."""

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's epoch label
        text = f"Epoch {current_epoch + 1}" + (f"/{self.trainer.max_epochs}" if self.trainer.max_epochs else "")
        width = len(self.validation_description)
        return f"{text:{width}}" if width > len(text) else text


class EpochLines(pl.Callback):
    """One log line per training epoch (``epoch 2/5: train loss 0.4123, val dice 61.20``), for output that is not
    a terminal."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        parts = []
        for key in ("train/loss", "val/loss", "val/dice", "val/iou", "val/acc", "val/base_acc", "val/new_acc"):
            value = trainer.callback_metrics.get(key)
            if value is not None and math.isfinite(float(value)):
                parts.append(f"{key.replace('/', ' ')} {float(value):.4g}")
        total = f"/{trainer.max_epochs}" if trainer.max_epochs else ""
        log.info("epoch %d%s: %s", trainer.current_epoch + 1, total, ", ".join(parts) or "done")


def configure_progress(trainer: Any, enabled: bool) -> None:
    """Before a seed runs: swap Lightning's default rich bar for :class:`OneBasedRichProgressBar`, or, when
    progress is off or the output is not a terminal, add :class:`EpochLines` (the bar itself is then off)."""
    callbacks = trainer.callbacks
    for i, cb in enumerate(callbacks):
        if type(cb) is RichProgressBar:
            callbacks[i] = OneBasedRichProgressBar()
    if not enabled and not any(isinstance(cb, EpochLines) for cb in callbacks):
        callbacks.append(EpochLines())
