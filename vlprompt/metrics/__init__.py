"""Metrics and losses: classification metrics and schedules (re-exported here), segmentation metrics, losses."""

from vlprompt.metrics.classification import (
    SCHEDULERS,
    WARMUP_TYPES,
    accuracy,
    dassl_lr_factor,
    harmonic_mean,
    linear_warmup_cosine_schedule,
    summarize_seeds,
    warmup_cosine_factor,
)

__all__ = ["SCHEDULERS", "WARMUP_TYPES", "accuracy", "dassl_lr_factor", "harmonic_mean", "linear_warmup_cosine_schedule",
           "summarize_seeds", "warmup_cosine_factor"]
