"""GRAM (Li et al., ICCV 2023): the wrapper learner, its regulator, artifacts and the gradient hook."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlprompt.experiment import run_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICK = str(CONFIGS / "quickstart.yaml")


def _fast(tmp_path: Path, config: str, epochs: int, *extra: str) -> list[str]:
    return [
        "--config", QUICK, "--config", str(CONFIGS / "learners" / config), "--seeds", "[1]",
        "--trainer.max_epochs", str(epochs), "--data.init_args.batch_size", "8",
        "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.dataset.init_args.per_class", "[4, 2, 4]", "--data.init_args.shots", "4",
        *extra,
    ]


def _prompts(tmp_path: Path) -> dict[str, torch.Tensor]:
    files = sorted(tmp_path.rglob("prompts.safetensors"))
    assert files, "fit saved no prompts"
    return load_file(str(files[0]))


def test_gram_identity_trains_exactly_like_coop(tmp_path) -> None:
    a = run_experiment("fit", _fast(tmp_path / "coop", "coop/ctx4_init.yaml", 2))
    b = run_experiment("fit", _fast(tmp_path / "gram", "gram/coop_ctx4_init.yaml", 2))
    assert a is not None and b is not None and b["learner"] == "gram"
    pa, pb = _prompts(tmp_path / "coop"), _prompts(tmp_path / "gram")
    assert set(pa) == set(pb) == {"ctx"}
    assert torch.equal(pa["ctx"], pb["ctx"])
