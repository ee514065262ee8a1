"""VPT, MaPLe and PromptSRC train end to end through `vlprompt fit` on toy data (small, 1-2 epochs).

PromptSRC: the prompts saved and evaluated after fit are the Gaussian aggregate of the epoch-end prompts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from vlprompt.runs.driver import run_experiment
from vlprompt.learners.promptsrc import PromptSRC
from vlprompt.learners.prompts.vl_layers import gaussian_epoch_weights

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICK = str(CONFIGS / "quickstart.yaml")


def _fast(tmp_path: Path, config: str, epochs: int, *extra: str) -> list[str]:
    return [
        "--config", QUICK, "--config", str(CONFIGS / "learners" / config), "--seeds", "[1]",
        "--trainer.max_epochs", str(epochs), "--data.init_args.batch_size", "16",
        "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.dataset.init_args.per_class", "[4, 2, 4]", "--data.init_args.shots", "4",
        *(["--model.warmup_epochs", "0"] if epochs <= 1 else []), *extra,
    ]


def _prompts(tmp_path: Path) -> dict[str, torch.Tensor]:
    files = sorted(tmp_path.rglob("prompts.safetensors"))
    assert files, "fit saved no prompts"
    return load_file(str(files[0]))


def test_vpt_fit_end_to_end(tmp_path) -> None:
    result = run_experiment(
        "fit", _fast(tmp_path, "vpt/vit_b16_c8_ep5_batch4_deep12.yaml", 1, "--model.learner.init_args.prompt_depth", "3")
    )
    assert result is not None and result["learner"] == "vpt"
    assert set(_prompts(tmp_path)) == {"visual.shallow", "visual.deep.prompts.0", "visual.deep.prompts.1"}


def test_maple_fit_end_to_end(tmp_path) -> None:
    result = run_experiment(
        "fit", _fast(tmp_path, "maple/vit_b16_c2_ep5_batch4_2ctx.yaml", 1, "--model.learner.init_args.prompt_depth", "3")
    )
    assert result is not None and result["learner"] == "maple"
    assert "projections.1.weight" in _prompts(tmp_path)


def test_promptsrc_fit_saves_the_gaussian_aggregate(tmp_path, monkeypatch) -> None:
    snapshots: list[dict[str, torch.Tensor]] = []
    original = PromptSRC.on_train_epoch_end

    def record(self, epoch: int, max_epochs: int) -> None:
        snapshots.append({k: v.clone() for k, v in self.learned_state().items()})
        original(self, epoch, max_epochs)

    monkeypatch.setattr(PromptSRC, "on_train_epoch_end", record)
    result = run_experiment(
        "fit",
        _fast(
            tmp_path, "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx.yaml", 3,
            "--model.learner.init_args.prompt_depth_text", "2", "--model.learner.init_args.prompt_depth_vision", "2",
            "--model.learner.init_args.gpa_mean", "1", "--model.learner.init_args.gpa_std", "1",
            "--model.warmup_epochs", "0", "--model.optimizer.init_args.lr", "0.5",
        ),
    )
    assert result is not None and result["learner"] == "promptsrc"
    assert len(snapshots) == 3
    w = gaussian_epoch_weights(3, 1, 1)
    saved = _prompts(tmp_path)
    for k, v in saved.items():
        expected = sum(float(w[e]) * snapshots[e][k] for e in range(3))
        assert torch.allclose(v, expected, atol=1e-6), k
    assert not torch.allclose(saved["ctx"], snapshots[-1]["ctx"], atol=1e-6), "saved the last epoch, not the aggregate"
