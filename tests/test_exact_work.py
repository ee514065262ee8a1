"""Work the default path does once instead of once per seed: a learner with nothing to train is evaluated once."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl

from vlprompt.runs.driver import run_experiment

REPO = Path(__file__).resolve().parents[1]


def test_zero_shot_is_evaluated_once_and_written_for_every_seed(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    real = pl.Trainer.test

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "test", counting)
    result = run_experiment("fit", [
        "--config", str(REPO / "configs" / "quickstart.yaml"), "--config", str(REPO / "configs" / "learners" / "zero_shot" / "default.yaml"),
        "--seeds", "[1, 2, 3]", "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.dataset.init_args.per_class", "[8, 2, 4]", "--data.init_args.cache_dir", str(tmp_path / "cache"),
    ])
    assert len(calls) == 1
    rows = result["per_seed"]
    assert [r["seed"] for r in rows] == [1, 2, 3] and result["seed_independent"] is True
    assert all(r["seed_independent"] for r in rows) and rows[0]["metrics"] == rows[1]["metrics"] == rows[2]["metrics"]
    for seed in (1, 2, 3):  # each seed's row is written in the run folder
        saved = json.loads((Path(result["run_dir"]) / f"seed{seed}" / "seed.json").read_text(encoding="utf-8"))
        assert saved["seed"] == seed and saved["seed_independent"] is True
