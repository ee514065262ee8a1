"""Tests for vlprompt.metrics (pure functions)."""

import math

import pytest
import torch

from vlprompt.metrics import accuracy, harmonic_mean, summarize_seeds, warmup_cosine_factor


def test_accuracy_percent():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    targets = torch.tensor([0, 1, 1, 1])
    assert accuracy(logits, targets) == pytest.approx(75.0)


def test_accuracy_perfect_and_zero():
    logits = torch.eye(3)
    assert accuracy(logits, torch.tensor([0, 1, 2])) == pytest.approx(100.0)
    assert accuracy(logits, torch.tensor([1, 2, 0])) == pytest.approx(0.0)


def test_accuracy_empty_raises():
    with pytest.raises(ValueError, match="N=0"):
        accuracy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))


def test_accuracy_shape_mismatch_raises():
    with pytest.raises(ValueError, match="targets"):
        accuracy(torch.zeros(4, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        accuracy(torch.zeros(4), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(80.0, 80.0, 80.0), (100.0, 0.0, 0.0), (0.0, 0.0, 0.0), (60.0, 90.0, 72.0), (90.0, 60.0, 72.0)],
)
def test_harmonic_mean(a, b, expected):
    assert harmonic_mean(a, b) == pytest.approx(expected)


def test_summarize_seeds_hm_of_means_convention():
    per_seed = [
        {"base": 90.0, "new": 50.0, "hm": harmonic_mean(90.0, 50.0)},
        {"base": 70.0, "new": 70.0, "hm": 70.0},
    ]
    s = summarize_seeds(per_seed)
    assert s["n_seeds"] == 2
    assert s["base"] == pytest.approx(80.0)
    assert s["new"] == pytest.approx(60.0)
    # HM of the averaged base/new, not the mean of per-seed HMs
    assert s["hm"] == pytest.approx(harmonic_mean(80.0, 60.0))
    seed_hms = [harmonic_mean(90.0, 50.0), 70.0]
    assert s["hm_seed_mean"] == pytest.approx(sum(seed_hms) / 2)
    assert s["hm"] != pytest.approx(s["hm_seed_mean"])
    # sample std (ddof=1)
    assert s["base_std"] == pytest.approx(math.sqrt(((90 - 80) ** 2 + (70 - 80) ** 2) / 1))
    assert s["hm_std"] == pytest.approx(abs(seed_hms[0] - seed_hms[1]) / math.sqrt(2))


def test_summarize_seeds_computes_hm_when_missing():
    s = summarize_seeds([{"base": 80.0, "new": 60.0}, {"base": 60.0, "new": 80.0}])
    assert s["hm"] == pytest.approx(70.0)
    assert s["hm_seed_mean"] == pytest.approx(harmonic_mean(80.0, 60.0))
    assert "hm_std" in s


def test_summarize_seeds_single_seed_std_zero_and_generic_keys():
    s = summarize_seeds([{"accuracy": 55.5}])
    assert s == {"accuracy": 55.5, "accuracy_std": 0.0, "n_seeds": 1}


def test_summarize_seeds_errors():
    with pytest.raises(ValueError, match="no seeds"):
        summarize_seeds([])
    with pytest.raises(ValueError, match="'new' is missing in seed #1"):
        summarize_seeds([{"base": 1.0, "new": 2.0}, {"base": 1.0}])
    with pytest.raises(ValueError, match="must be numbers"):
        summarize_seeds([{"accuracy": "high"}])


def test_warmup_cosine_factor():
    kw = {"max_epochs": 10, "warmup_epochs": 2, "warmup_factor": 1e-3}
    assert warmup_cosine_factor(0, **kw) == pytest.approx(1e-3)
    assert warmup_cosine_factor(1, **kw) == pytest.approx(1e-3)
    assert warmup_cosine_factor(2, **kw) == pytest.approx(1.0)  # cosine starts at 1 after warm-up
    assert warmup_cosine_factor(6, **kw) == pytest.approx(0.5)  # mid-way
    assert warmup_cosine_factor(10, **kw) == pytest.approx(0.0, abs=1e-12)  # end
    assert warmup_cosine_factor(12, **kw) == pytest.approx(0.0, abs=1e-12)  # clamped past the end


def test_warmup_cosine_factor_no_warmup_and_degenerate():
    assert warmup_cosine_factor(0, max_epochs=4, warmup_epochs=0, warmup_factor=0.1) == pytest.approx(1.0)
    assert warmup_cosine_factor(2, max_epochs=4, warmup_epochs=0, warmup_factor=0.1) == pytest.approx(0.5)
    # warm-up as long as training: span max(1, 0) = 1
    assert warmup_cosine_factor(3, max_epochs=3, warmup_epochs=3, warmup_factor=0.1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="max_epochs"):
        warmup_cosine_factor(0, max_epochs=0, warmup_epochs=0, warmup_factor=0.1)


def test_linear_warmup_cosine_schedule_per_step() -> None:
    from vlprompt.metrics import linear_warmup_cosine_schedule

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    cfg = linear_warmup_cosine_schedule(opt, max_steps=10, warmup_steps=2)
    assert cfg["interval"] == "step"
    f = cfg["scheduler"].lr_lambdas[0]
    assert f(0) == 0.5 and f(1) == 1.0 and f(2) == 1.0
    assert abs(f(6) - 0.5) < 1e-12 and f(10) == 0.0 and f(50) == 0.0
    g = linear_warmup_cosine_schedule(opt, max_steps=-1, warmup_steps=2)["scheduler"].lr_lambdas[0]
    assert abs(g(5001) - 0.5) < 1e-12  # no max_steps: cosine over 10,000 steps


def _logits_from_probs(rows):
    return torch.tensor(rows, dtype=torch.float64).log()


def test_expected_calibration_error_hand_computed():
    from vlprompt.metrics import calibration_bins, expected_calibration_error

    # confidences 0.9 (right), 0.9 (wrong), 0.7 (right), 0.55 (right); 15 bins of width 1/15:
    # 0.9 -> bin 13 (|B|=2, acc 0.5, conf 0.9), 0.7 -> bin 10 (acc 1, conf 0.7), 0.55 -> bin 8 (acc 1, conf 0.55)
    # ECE = 2/4 * 0.4 + 1/4 * 0.3 + 1/4 * 0.45 = 0.3875 -> 38.75 %
    logits = _logits_from_probs([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.55, 0.45]])
    targets = torch.tensor([0, 1, 1, 0])
    assert expected_calibration_error(logits, targets) == pytest.approx(38.75)
    bins = calibration_bins(logits, targets)
    assert bins.shape == (15, 3)
    assert bins[:, 0].tolist() == [0] * 8 + [1, 0, 1, 0, 0, 2, 0]
    # batches add up: the ECE of the sums equals the ECE of all samples at once
    from vlprompt.metrics import ece_from_bins
    halves = calibration_bins(logits[:2], targets[:2]) + calibration_bins(logits[2:], targets[2:])
    assert ece_from_bins(halves) == pytest.approx(38.75)


def test_expected_calibration_error_perfectly_calibrated_and_empty():
    from vlprompt.metrics import ece_from_bins, expected_calibration_error

    # two samples at confidence 0.5, one right and one wrong: accuracy 0.5 = confidence 0.5 -> ECE 0
    logits = _logits_from_probs([[0.5, 0.5], [0.5, 0.5]])
    assert expected_calibration_error(logits, torch.tensor([0, 1])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="empty"):
        ece_from_bins(torch.zeros(15, 3, dtype=torch.float64))


def test_t_interval_hand_computed():
    from vlprompt.metrics import t_interval

    # values 1, 2, 3: mean 2, sample std 1, t_{0.975, 2} = 4.302652729911275
    # half width = 4.302652729911275 * 1 / sqrt(3) = 2.4841377...
    low, high = t_interval([1.0, 2.0, 3.0])
    assert low == pytest.approx(2 - 2.4841377, abs=1e-6)
    assert high == pytest.approx(2 + 2.4841377, abs=1e-6)
    assert t_interval([70.0]) is None  # one seed: no interval
    assert t_interval([]) is None
