"""Names that became public in the layout change because other modules use them, tested where they carry logic."""

from __future__ import annotations

import pytest
import torch

from vlprompt.data.toyworld.datasets import stable_seed
from vlprompt.leaderboards.select import backbone_label, learner_key, ordered_metrics
from vlprompt.learners.base import cosine_logits
from vlprompt.learners.registry import ConfigError, resolve_config_names
from vlprompt.runs.config import benchmark_name, plugin_name, resolve_argv, rounded_metrics, user_error
from vlprompt.runs.results import ResultError, safe_name


def test_rounded_metrics_adds_hm_or_target_mean() -> None:
    assert rounded_metrics({"base": 80.123456, "new": 60.0}) == {"base": 80.1235, "new": 60.0, "hm": 68.6168}
    assert rounded_metrics({"source": 70.0, "a": 50.0, "b": 40.0})["target_mean"] == 45.0
    assert rounded_metrics({"accuracy": 1 / 3}) == {"accuracy": 0.3333}


def test_benchmark_and_plugin_names() -> None:
    assert benchmark_name({"kind": "toyworld", "benchmark": "x"}) == "toy"
    assert benchmark_name({"benchmark": "coop"}) == "coop"
    assert benchmark_name({"name": "kvasir_seg"}) == "kvasir_seg"  # never a "custom" nobody chose (issue 24)
    assert benchmark_name({"name": "x"}, "kvasir_seg") == "kvasir_seg" and benchmark_name({}) == "data"

    class Unregistered:
        pass

    assert plugin_name("learners", Unregistered()) == "unregistered"


def test_resolve_argv_and_config_names_use_the_registry() -> None:
    argv = ["--model.learner", "coop", "--model.backbone.class_path", "toyclip", "--seeds", "[1]"]
    assert resolve_argv(argv) == ["--model.learner", "vlprompt.learners.coop.CoOp", "--model.backbone.class_path",
                                  "vlprompt.backbones.toyclip.ToyCLIP", "--seeds", "[1]"]
    node = {"model": {"learner": {"class_path": "coop"}, "inner": {"class_path": "zero_shot"}}}
    assert resolve_config_names(node) == {"model": {"learner": {"class_path": "vlprompt.learners.coop.CoOp"},
                                                    "inner": {"class_path": "vlprompt.learners.zero_shot.ZeroShot"}}}
    with pytest.raises(ConfigError, match="unknown learner 'nope' under 'learner'"):
        resolve_config_names({"learner": {"class_path": "nope"}})
    # the command line's class wins over an unusable name in a config file
    assert resolve_config_names({"learner": {"class_path": "nope"}}, overridden={"learner": "a.B"}) == {
        "learner": {"class_path": "a.B"}}


def test_user_error_finds_our_errors_in_a_chain() -> None:
    try:
        try:
            raise ResultError("bad result")
        except ResultError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert user_error(outer) == "bad result"
    assert user_error(ValueError("a bug")) is None


def test_leaderboard_row_helpers() -> None:
    row = {"learner": "coop", "backbone": {"model": "ViT-B-16", "pretrained": "openai"}, "shots": 16,
           "summary": {"new": 1.0, "base": 2.0, "hm": 1.3, "dice": 0.5}, "per_seed": [], "learner_config": {}}
    assert backbone_label(row) == "ViT-B-16 (openai)"
    assert learner_key(row)[1:] == learner_key({**row, "dataset": "other"})[1:]
    assert ordered_metrics([{"schema": 1, "summary": row["summary"]}]) == ordered_metrics([row])


def test_safe_name_and_stable_seed() -> None:
    assert safe_name("a b/c") == "a_b_c"
    assert safe_name("..") == "unknown"
    assert stable_seed("spec", "label-order", 3) == stable_seed("spec", "label-order", 3) != stable_seed("spec", 3)


def test_cosine_logits_scales_cosine_similarity() -> None:
    img = torch.tensor([[3.0, 4.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(cosine_logits(img, txt, 10.0), torch.tensor([[6.0, 8.0]]))
    assert cosine_logits(img, txt.unsqueeze(0), 1.0).shape == (1, 2)
