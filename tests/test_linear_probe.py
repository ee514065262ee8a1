"""Issue 29: the linear-probe baseline: zero-shot initialisation equals zero-shot CLIP, unseen classes get the
zero-shot rows (or a clear refusal), one optimisation step is CLIP_benchmark's (nn.Linear on normalised features,
cross-entropy, AdamW), and a run through ``vlprompt fit`` trains it and records the result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlprompt.learners.base import LearnerError, cosine_logits
from vlprompt.learners.linear_probe import LinearProbe
from vlprompt.learners.prompts.layers import template_features
from vlprompt.learners.testing import tiny_clip
from vlprompt.runs.driver import run_experiment

REPO = Path(__file__).resolve().parents[1]
BASE, NEW = ["red", "green", "blue"], ["cyan", "plum"]
N_BASE = 6  # toy_patterns: 12 classes, the first 6 are base


def features(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 64, generator=torch.Generator().manual_seed(0))


def test_text_init_equals_zero_shot_and_unseen_classes_use_zero_shot_rows() -> None:
    bb = tiny_clip()
    probe = LinearProbe(init="text")
    probe.setup(bb, BASE)
    x = features()[:, : template_features(bb, BASE, ["a photo of a {}."]).shape[1]]
    for names in (BASE, NEW, BASE + NEW):
        probe.set_classnames(names)
        zs = cosine_logits(x, template_features(bb, names, ["a photo of a {}."]), bb.logit_scale)
        torch.testing.assert_close(probe.logits(x), zs, rtol=1e-5, atol=1e-5)
    refuse = LinearProbe(unseen_classes="refuse")
    refuse.setup(bb, BASE)
    with pytest.raises(LearnerError, match="unseen_classes: zero_shot"):
        refuse.set_classnames(NEW)
    refuse.set_classnames(list(reversed(BASE)))  # the same classes in another order: the learned rows, permuted
    with pytest.raises(LearnerError, match="init='ones'"):
        LinearProbe(init="ones")


def test_one_step_is_clip_benchmarks_linear_layer_with_adamw() -> None:
    """CLIP_benchmark: nn.Linear on L2-normalised features, CrossEntropyLoss, AdamW(lr, weight_decay)."""
    bb = tiny_clip()
    torch.manual_seed(3)
    probe = LinearProbe()
    probe.setup(bb, BASE)
    d = probe.weight.shape[1]
    torch.manual_seed(3)
    ref = torch.nn.Linear(d, len(BASE))          # the same default init from the same seed
    torch.testing.assert_close(probe.weight.detach(), ref.weight.detach())
    x, y = features(8)[:, :d], torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opts = [torch.optim.AdamW(m, lr=0.1, weight_decay=1e-3) for m in ([probe.weight, probe.bias], ref.parameters())]
    for _ in range(3):
        for opt in opts:
            opt.zero_grad()
        F.cross_entropy(probe.logits(x), y).backward()
        F.cross_entropy(ref(F.normalize(x, dim=-1)), y).backward()
        for opt in opts:
            opt.step()
    torch.testing.assert_close(probe.weight.detach(), ref.weight.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(probe.bias.detach(), ref.bias.detach(), rtol=1e-6, atol=1e-6)


def test_fit_trains_the_probe_on_the_toy_world(tmp_path: Path) -> None:
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--seeds", "[1]", "--trainer.max_epochs", "3",
            "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--data.init_args.dataset.init_args.per_class", "[16, 4, 8]",
            "--config", str(REPO / "configs" / "learners" / "linear_probe" / "clip_benchmark.yaml")]
    result = run_experiment("fit", args)
    assert result["learner"] == "linear_probe"
    metrics = result["per_seed"][0]["metrics"]
    assert {"base", "new", "hm", "base_ece", "new_ece"} <= set(metrics)
    assert metrics["base"] > 2 * 100 / N_BASE  # well above chance after 3 epochs
    dim = result["trainable_params"] // N_BASE - 1   # weights [C, D] + bias [C]
    assert result["trainable_params"] == N_BASE * (dim + 1) and dim in (32, 64, 128, 256, 512)
