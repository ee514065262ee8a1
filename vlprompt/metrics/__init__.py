"""Metrics and losses: classification metrics and schedules (re-exported here), segmentation metrics, losses."""

from vlprompt.metrics.classification import (
    ECE_BINS,
    SCHEDULERS,
    WARMUP_TYPES,
    accuracy,
    calibration_bins,
    dassl_lr_factor,
    ece_from_bins,
    expected_calibration_error,
    harmonic_mean,
    linear_warmup_cosine_schedule,
    summarize_seeds,
    t_interval,
    warmup_cosine_factor,
)

__all__ = ["ECE_BINS", "SCHEDULERS", "WARMUP_TYPES", "accuracy", "calibration_bins", "dassl_lr_factor", "ece_from_bins",
           "expected_calibration_error", "harmonic_mean", "linear_warmup_cosine_schedule", "summarize_seeds", "t_interval",
           "warmup_cosine_factor"]
