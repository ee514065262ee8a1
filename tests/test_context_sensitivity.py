"""The random-context screen of a text tower and the per-step gradient log (docs/toyclip2-design.md, "Web chatter")."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from vlprompt.backbones.toyclip import ToyCLIP2
from vlprompt.learners.testing import torch_threads
from vlprompt.toyworld.context_sensitivity import GradientNormLog, context_sensitivity, main


def test_screen_scores_random_contexts_and_leaves_the_backbone_as_it_was():
    with torch_threads(1):
        backbone = ToyCLIP2(precision="fp32")
        before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
        flags = [p.requires_grad for p in backbone.parameters()]
        out = context_sensitivity(backbone, ["lemon", "lime", "plum"], 2, trials=3)
        again = context_sensitivity(backbone, ["lemon", "lime", "plum"], 2, trials=3)
    assert out == again  # seeded
    assert set(out) == {"loss_median", "grad_median", "grad_p90", "grad_max", "end_position"}
    assert 0.0 <= out["grad_median"] <= out["grad_p90"] <= out["grad_max"] and out["loss_median"] > 0.0
    assert out["end_position"] == pytest.approx(1 + 2 + 1 + 1)  # start, 2 context vectors, a one-token name, "."
    assert [p.requires_grad for p in backbone.parameters()] == flags
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in backbone.named_parameters())


def test_cli_prints_one_row_per_length(capsys):
    with torch_threads(1):
        assert main(["--classes", "lemon,lime", "--lengths", "1,3", "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "random context, 2 classes, 2 trials" in out and out.count("│ 1 ") + out.count("│ 3 ") >= 2


def test_gradient_norm_log_writes_one_line_per_step(tmp_path):
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    module = SimpleNamespace(parameters=lambda: [w, frozen])
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.002}])
    log = GradientNormLog(str(tmp_path / "deep" / "g.jsonl"))
    for step in range(2):
        w.grad = torch.tensor([0.0, 2.0 * (step + 1)])
        log.on_before_optimizer_step(SimpleNamespace(global_step=step), module, optimizer)
        log.on_train_batch_end(None, module, {"loss": torch.tensor(1.5 - step)}, None, step)
    log.on_train_end(None, module)
    rows = [json.loads(line) for line in (tmp_path / "deep" / "g.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "lr": 0.002, "grad_norm": 2.0, "param_norm": 5.0, "loss": 1.5},
                    {"step": 1, "lr": 0.002, "grad_norm": 4.0, "param_norm": 5.0, "loss": 0.5}]
