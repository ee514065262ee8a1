"""Metrics, seed aggregation and the learning-rate schedule: pure functions.

Conventions (as the prompt-learning literature reports them):

* accuracies are top-1 **percent** (0-100);
* base-to-new generalisation reports the harmonic mean ``HM = 2 * base * new / (base + new)``
  (Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR 2022);
* a multi-seed summary reports ``HM`` of the seed-averaged base and new accuracies, not the mean of
  per-seed HMs (the latter is kept as ``hm_seed_mean``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

__all__ = ["ECE_BINS", "SCHEDULERS", "WARMUP_TYPES", "accuracy", "calibration_bins", "dassl_lr_factor",
           "ece_from_bins", "expected_calibration_error", "harmonic_mean", "summarize_seeds", "t_interval",
           "warmup_cosine_factor"]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy in percent (0-100).

    Args:
        logits: class scores ``[N, C]``.
        targets: integer class indices ``[N]``.

    Raises:
        ValueError: empty input or mismatched shapes.
    """
    if logits.ndim != 2 or targets.ndim != 1:
        raise ValueError(
            f"vlprompt.metrics.accuracy: expected logits [N, C] and targets [N], got logits "
            f"{tuple(logits.shape)} and targets {tuple(targets.shape)}; flatten extra dims first."
        )
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"vlprompt.metrics.accuracy: logits have N={logits.shape[0]} rows but targets have "
            f"N={targets.shape[0]}; pass one target per row of logits."
        )
    if logits.shape[0] == 0:
        raise ValueError(
            "vlprompt.metrics.accuracy: got N=0 samples; accuracy of an empty split is undefined. "
            "Check that the evaluation split is not empty."
        )
    correct = (logits.argmax(dim=-1) == targets.to(logits.device)).float().mean()
    return float(correct.item()) * 100.0


#: equal-width confidence bins of the expected calibration error (Guo et al., ICML 2017; C-TPT, ICLR 2024)
ECE_BINS = 15


def calibration_bins(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """Per-bin sums for the expected calibration error, so that batches (and processes) can be added up.

    The confidence of a sample is its maximum softmax probability; bin ``m`` (0-based) holds the samples with
    confidence in ``(m / n_bins, (m + 1) / n_bins]`` (a confidence of exactly 0 cannot occur).

    Args:
        logits: class scores ``[N, C]`` (softmax is taken over ``C``).
        targets: integer class indices ``[N]``.
        n_bins: number of equal-width bins over ``[0, 1]``.

    Returns:
        float64 tensor ``[n_bins, 3]``: per bin the sample count, the number of correct predictions and the
        sum of confidences.
    """
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"vlprompt.metrics.calibration_bins: expected logits [N, C] and targets [N], got logits "
            f"{tuple(logits.shape)} and targets {tuple(targets.shape)}."
        )
    probs = torch.softmax(logits.detach().double(), dim=-1)
    conf, pred = probs.max(dim=-1)
    correct = (pred == targets.to(pred.device)).double()
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    out = torch.zeros(n_bins, 3, dtype=torch.float64, device=conf.device)
    out[:, 0].index_add_(0, idx, torch.ones_like(conf))
    out[:, 1].index_add_(0, idx, correct)
    out[:, 2].index_add_(0, idx, conf)
    return out.cpu()


def ece_from_bins(bins: torch.Tensor) -> float:
    """Expected calibration error in percent from :func:`calibration_bins` sums ``[n_bins, 3]``:
    ``sum_m |B_m| / N * |acc(B_m) - conf(B_m)| * 100`` over the non-empty bins.

    Raises:
        ValueError: no samples at all.
    """
    counts = bins[:, 0]
    n = float(counts.sum())
    if n <= 0:
        raise ValueError("vlprompt.metrics.ece_from_bins: got N=0 samples; the ECE of an empty split is undefined.")
    nonempty = counts > 0
    gaps = (bins[nonempty, 1] - bins[nonempty, 2]).abs()  # |correct - sum conf| = |B_m| * |acc - conf|
    return float(gaps.sum()) / n * 100.0


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error (ECE) in percent (0-100), Guo et al. (ICML 2017) as C-TPT reports it.

    ``ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|`` over ``n_bins`` equal-width bins of the confidence (the
    maximum softmax probability of each sample), times 100.

    Args:
        logits: class scores ``[N, C]``.
        targets: integer class indices ``[N]``.
        n_bins: number of bins (15, as Guo et al. and C-TPT).
    """
    return ece_from_bins(calibration_bins(logits, targets, n_bins))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Student-t confidence interval of the mean of ``values`` (one value per seed).

    ``mean ± t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample std (ddof=1).

    Args:
        values: ``[n]`` numbers, e.g. one accuracy per seed.
        confidence: the interval's level (0.95: a 95% interval).

    Returns:
        ``(low, high)``, or None for ``n < 2`` (one seed has no interval).
    """
    from scipy.stats import t as student_t  # deferred: scipy is heavy and only the leaderboards need it

    n = len(values)
    if n < 2:
        return None
    m = _mean(values)
    half = float(student_t.ppf((1.0 + confidence) / 2.0, n - 1)) * _std(values) / math.sqrt(n)
    return (m - half, m + half)


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean ``2ab / (a + b)`` of two accuracies (base-to-new HM); 0 when ``a + b == 0``."""
    a, b = float(a), float(b)
    if a + b == 0:
        return 0.0
    return 2.0 * a * b / (a + b)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _std(values: Sequence[float]) -> float:
    """Sample std (ddof=1) for ``n > 1``; 0 for a single value."""
    n = len(values)
    if n < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def summarize_seeds(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Aggregate per-seed metric dicts into one summary.

    Args:
        per_seed: one dict per seed, all with the same keys, e.g. ``{"base": 80.1, "new": 70.2, "hm": 74.8}``.

    Returns:
        For every key ``k``: ``k`` (mean over seeds) and ``k_std`` (**sample** std, ``ddof=1``, over seeds;
        0.0 for a single seed), plus ``n_seeds``. When both ``base`` and ``new`` are present, ``hm`` is
        ``harmonic_mean(mean base, mean new)`` (how the field reports it), ``hm_std`` is the std of per-seed
        HMs and ``hm_seed_mean`` the mean of per-seed HMs (per-seed HM computed from base/new where a seed
        has no ``hm``).

    Raises:
        ValueError: no seeds, a key missing in some seed, or a non-numeric value.
    """
    if not per_seed:
        raise ValueError(
            "vlprompt.metrics.summarize_seeds: got no seeds; pass one metrics dict per seed, "
            "e.g. [{'base': 80.1, 'new': 70.2}]."
        )
    keys: list[str] = []
    for metrics in per_seed:
        for k in metrics:
            if k not in keys:
                keys.append(k)
    has_b2n = "base" in keys and "new" in keys
    columns: dict[str, list[float]] = {}
    for k in keys:
        if has_b2n and k == "hm":
            continue  # handled below (seeds without "hm" get it from base/new)
        vals: list[float] = []
        for i, metrics in enumerate(per_seed):
            if k not in metrics:
                raise ValueError(
                    f"vlprompt.metrics.summarize_seeds: metric {k!r} is missing in seed #{i} (keys "
                    f"{sorted(metrics)}); every seed must report the same metrics."
                )
            v = metrics[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(
                    f"vlprompt.metrics.summarize_seeds: metric {k!r} of seed #{i} is {v!r} "
                    f"({type(v).__name__}); metrics must be numbers (use float(tensor.item()))."
                )
            vals.append(float(v))
        columns[k] = vals

    out: dict[str, float] = {}
    for k, vals in columns.items():
        out[k] = _mean(vals)
        out[f"{k}_std"] = _std(vals)
    if has_b2n:
        hms = [
            float(m["hm"]) if "hm" in m else harmonic_mean(m["base"], m["new"])
            for m in per_seed
        ]
        out["hm"] = harmonic_mean(out["base"], out["new"])
        out["hm_std"] = _std(hms)
        out["hm_seed_mean"] = _mean(hms)
    out["n_seeds"] = len(per_seed)
    return out


def linear_warmup_cosine_schedule(optimizer: torch.optim.Optimizer, *, max_steps: int, warmup_steps: int) -> dict:
    """Lightning ``lr_scheduler`` config (per step) of the pretraining runs: linear warm-up over ``warmup_steps``
    (factor ``(step + 1) / warmup_steps``), then a cosine from 1 to 0 until ``max_steps`` (10,000 when the trainer
    sets no ``max_steps``, i.e. ``max_steps <= 0``), clamped at 0 afterwards."""
    total = max(1, int(max_steps if max_steps > 0 else 10_000))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def warmup_cosine_factor(epoch: int, *, max_epochs: int, warmup_epochs: int, warmup_factor: float) -> float:
    """Learning-rate multiplier for epoch ``epoch`` (0-based).

    During the first ``warmup_epochs`` epochs: the constant ``warmup_factor`` (Dassl's "constant"
    warm-up, e.g. ``1e-5 / lr``). Afterwards a cosine from 1 to 0 over the remaining epochs:
    ``0.5 * (1 + cos(pi * (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs)))``, clamped at 0
    past ``max_epochs``.
    """
    if max_epochs < 1 or warmup_epochs < 0:
        raise ValueError(
            f"vlprompt.metrics.warmup_cosine_factor: need max_epochs >= 1 and warmup_epochs >= 0, got "
            f"max_epochs={max_epochs}, warmup_epochs={warmup_epochs}; fix the optimisation config."
        )
    if epoch < warmup_epochs:
        return float(warmup_factor)
    span = max(1, max_epochs - warmup_epochs)
    progress = min(max(epoch - warmup_epochs, 0), span) / span
    return 0.5 * (1.0 + math.cos(math.pi * progress))


#: the base schedules of Dassl's ``build_lr_scheduler`` (``OPTIM.LR_SCHEDULER``)
SCHEDULERS = ("cosine", "single_step", "multi_step")
#: its warm-ups (``OPTIM.WARMUP_TYPE``)
WARMUP_TYPES = ("constant", "linear")


def _steps_passed(start: int, end: int, milestones: Sequence[int]) -> int:
    """How many of ``milestones`` lie in ``(start, end]``."""
    return sum(1 for m in milestones if start < m <= end)


def dassl_lr_factor(
    epoch: int,
    *,
    max_epochs: int,
    scheduler: str = "cosine",
    warmup_epochs: int = 0,
    warmup_type: str = "constant",
    warmup_factor: float = 0.0,
    warmup_recount: bool = True,
    stepsize: int | Sequence[int] = -1,
    gamma: float = 0.1,
) -> float:
    """Learning-rate multiplier for epoch ``epoch`` (0-based) under Dassl's ``build_lr_scheduler``, which every
    Dassl-based reference (CoOp, CoCoOp, MaPLe, PromptSRC, ...) uses, stepped once at the end of each epoch.

    The formulas are what torch's schedulers give inside Dassl's warm-up wrapper (checked against it in the tests):

    * warm-up (``warmup_epochs > 0``), epochs ``e < W``: ``constant`` gives ``warmup_factor`` (``WARMUP_CONS_LR /
      LR``); ``linear`` gives ``warmup_factor`` (``WARMUP_MIN_LR / LR``) at epoch 0, then ``e / W``;
    * ``cosine`` over ``T = max_epochs`` (``MAX_EPOCH``, not the epochs left after warm-up): with
      ``warmup_recount`` (Dassl's default) the cosine restarts after the warm-up,
      ``0.5 * (1 + cos(pi * (e - W) / T))``; without it the cosine was set to epoch ``W`` before the warm-up, and
      torch's recursive cosine then gives ``(1 + cos(pi * e / T)) / (1 + cos(pi * W / T))`` from epoch ``W`` on;
    * ``single_step``: ``gamma ** floor((e - W) / stepsize)`` (``stepsize <= 0`` means ``max_epochs``; a list
      uses its last entry), counted from ``W`` with recount, from 0 (steps after ``W`` only) without;
    * ``multi_step``: ``gamma`` to the number of milestones passed, counted the same way.

    Args:
        epoch: the epoch index, 0-based.
        max_epochs: ``OPTIM.MAX_EPOCH``.
        scheduler: one of :data:`SCHEDULERS`.
        warmup_epochs: ``OPTIM.WARMUP_EPOCH`` (``<= 0``: no warm-up).
        warmup_type: one of :data:`WARMUP_TYPES`.
        warmup_factor: the warm-up learning rate divided by the base learning rate.
        warmup_recount: ``OPTIM.WARMUP_RECOUNT``.
        stepsize: ``OPTIM.STEPSIZE``: an int for ``single_step``, milestones for ``multi_step``.
        gamma: ``OPTIM.GAMMA``.
    """
    if max_epochs < 1 or epoch < 0:
        raise ValueError(f"vlprompt.metrics.dassl_lr_factor: need max_epochs >= 1 and epoch >= 0, got "
                         f"max_epochs={max_epochs}, epoch={epoch}; fix the optimisation config.")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"lr_scheduler={scheduler!r} is not one of {SCHEDULERS} (Dassl's OPTIM.LR_SCHEDULER)")
    if warmup_type not in WARMUP_TYPES:
        raise ValueError(f"warmup_type={warmup_type!r} is not one of {WARMUP_TYPES} (Dassl's OPTIM.WARMUP_TYPE)")
    w = max(0, int(warmup_epochs))
    if epoch < w:
        if warmup_type == "constant" or epoch == 0:
            return float(warmup_factor)
        return epoch / w
    # the base schedule's own epoch count: from the end of the warm-up (recount), or continuing from W
    start = w if warmup_recount else 0
    if scheduler == "cosine":
        t = float(max_epochs)
        if warmup_recount or w == 0:
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - start) / t))
        return (1.0 + math.cos(math.pi * epoch / t)) / (1.0 + math.cos(math.pi * w / t))
    if scheduler == "single_step":
        size = stepsize[-1] if isinstance(stepsize, (list, tuple)) else stepsize
        size = int(size) if int(size) > 0 else max_epochs
        if warmup_recount or w == 0:
            return float(gamma) ** ((epoch - start) // size)
        return float(gamma) ** (epoch // size - w // size)
    milestones = [int(m) for m in (stepsize if isinstance(stepsize, (list, tuple)) else [stepsize])]
    if warmup_recount or w == 0:
        return float(gamma) ** _steps_passed(0, epoch - start, milestones)
    return float(gamma) ** _steps_passed(w, epoch, milestones)
