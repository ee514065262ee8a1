"""Transfer protocol (cross-dataset / domain generalisation) end to end on the toy world."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlprompt.data.base import DataError
from vlprompt.data.toyworld.datasets import ToyColors, ToyPatterns
from vlprompt.runs.driver import run_experiment
from vlprompt.protocols.transfer import Transfer

REPO = Path(__file__).resolve().parents[1]


def test_toy_domain_shift_config_runs(tmp_path) -> None:
    result = run_experiment("fit", [
        "--config", str(REPO / "configs/quickstart.yaml"), "--config", str(REPO / "configs/protocols/toy_domain_shift.yaml"),
        "--seeds", "[1]", "--trainer.max_epochs", "2", "--results_dir", str(tmp_path / "r"),
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    ], show_summary=False)
    metrics = result["per_seed"][0]["metrics"]
    sets = {"source", "toy_mixtures-clean", "toy_mixtures-noise", "toy_mixtures-low_contrast", "toy_mixtures-sketch"}
    assert set(metrics) == sets | {f"{s}_ece" for s in sets} | {"target_mean"}
    assert result["protocol"] == "transfer"
    # target_mean averages the target accuracies only, never the calibration errors
    targets = [v for k, v in metrics.items() if k.startswith("toy_mixtures-") and not k.endswith("_ece")]
    assert metrics["target_mean"] == pytest.approx(sum(targets) / len(targets), abs=1e-3)


def test_cross_dataset_targets_keep_their_own_classes() -> None:
    dm = Transfer(ToyColors(per_class=(16, 4, 4)), [ToyPatterns(per_class=(4, 4, 4))], shots=4)
    task = dm.task
    assert task["train_space"] == "source"
    assert task["label_spaces"]["toy_patterns"] == ToyPatterns().classnames
    assert [s[0] for s in task["test_sets"]] == ["source", "toy_patterns"]
    ds = dm._dataset("test", "toy_patterns", None, train=False)
    assert len(ds) == 12 * 4 and {ds[i][1] for i in range(len(ds))} == set(range(12))


def test_transfer_needs_targets_with_unique_names() -> None:
    with pytest.raises(DataError, match="targets is empty"):
        Transfer(ToyColors(), [])
    with pytest.raises(DataError, match="unique"):
        Transfer(ToyColors(), [ToyPatterns(), ToyPatterns()])
