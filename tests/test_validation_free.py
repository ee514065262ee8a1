"""Issue 29: the validation-free protocol (CLAP / 2SFS style): no validation image is loaded or evaluated, the last
epoch is tested, the same training images as the legacy CoOp protocol for each seed, recorded as its own protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlprompt.data.toyworld.datasets import ToyPatterns
from vlprompt.learners.registry import ConfigError
from vlprompt.protocols.base2new import BaseToNew, FewShot
from vlprompt.runs.driver import run_experiment

REPO = Path(__file__).resolve().parents[1]


def test_validation_free_protocol_has_no_validation_and_the_legacy_training_draw(tmp_path: Path) -> None:
    for cls, name in ((BaseToNew, "base2new"), (FewShot, "fewshot")):
        legacy = cls(ToyPatterns(), shots=4, seed=2, cache_dir=str(tmp_path))
        free = cls(ToyPatterns(), shots=4, seed=2, cache_dir=str(tmp_path), validation=False)
        assert legacy.name == name and free.name == f"{name}-vf"
        assert free.val_dataloader() == [] and free.task["val_sets"] == [] and legacy.task["val_sets"]
        assert free.task["test_sets"] == legacy.task["test_sets"]
        assert free._fewshot_indices("train", 4) == legacy._fewshot_indices("train", 4)
        assert free.identity()["validation"] is False and "validation" not in legacy.identity()
        assert free.identity()["dataset"] == legacy.identity()["dataset"]


def test_validation_free_run_is_recorded_as_its_own_protocol(tmp_path: Path) -> None:
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--seeds", "[1]", "--trainer.max_epochs", "2",
            "--trainer.check_val_every_n_epoch", "1",  # even when asked to, nothing is validated
            "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--data.init_args.dataset.init_args.per_class", "[16, 4, 8]",
            "--config", str(REPO / "configs" / "protocols" / "base2new_validation_free.yaml"), "--seeds", "[1]"]
    result = run_experiment("fit", args)
    assert result["protocol"] == "base2new-vf" and "/base2new-vf/" in result["_path"].replace("\\", "/")
    assert {"base", "new", "hm"} <= set(result["per_seed"][0]["metrics"])
    assert not any(k.startswith("val") for k in result["per_seed"][0]["metrics"])
    with pytest.raises(ConfigError, match="validation-free protocol has none"):
        run_experiment("validate", args)
