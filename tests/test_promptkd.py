"""PromptKD (issue 28): the learner's resource track and records, the unlabeled pool a protocol serves (a generic
option any learner may ask for), the host module's refusal of a learner / pool mismatch, the teacher's text features
computed once per label space, and the student's BatchNorm statistics travelling with its prompts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vlprompt.data.base import DataError
from vlprompt.data.toyworld.datasets import ToyPatterns
from vlprompt.learners.base import RESOURCES, LearnerError
from vlprompt.learners.coop import CoOp
from vlprompt.learners.promptkd import PromptKD
from vlprompt.learners.testing import tiny_clip, torch_threads
from vlprompt.modules.classification import PromptClassifier
from vlprompt.protocols.base2new import UNLABELED_SPACE, BaseToNew, FewShot

REPO = Path(__file__).resolve().parents[1]
NAMES = ["red circle", "blue square", "green triangle", "yellow star"]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def student(**kwargs) -> PromptKD:
    learner = PromptKD(**kwargs)
    learner.setup(tiny_clip(), NAMES[:2])
    return learner


def test_resource_track_and_prompt_record() -> None:
    learner = student()
    assert learner.resource_track() == ("teacher model", "unlabeled images")
    assert set(learner.resource_track()) <= set(RESOURCES)
    record = learner.prompt_record()
    assert record["unlabeled_pool"] == "train_all_classes" and record["teacher"]["learner"] == "IVLP"
    assert learner.unlabeled_pool == "train_all_classes" and CoOp().unlabeled_pool is None


def test_bad_arguments_are_named() -> None:
    for kwargs, word in (({"kd_weight": 0}, "kd_weight"), ({"temperature": -1}, "temperature"),
                         ({"unlabeled_pool": "test"}, "unlabeled_pool"), ({"n_ctx_vision": 0}, "n_ctx_vision")):
        with pytest.raises(LearnerError, match=word):
            PromptKD(**kwargs)


def test_teacher_text_features_are_computed_once_per_label_space(monkeypatch) -> None:
    learner = student()
    calls = []
    original = type(learner.teacher).text_features
    monkeypatch.setattr(type(learner.teacher), "text_features", lambda self: calls.append(1) or original(self))
    learner.set_classnames(NAMES)
    learner.train()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        feats = learner.encode_images(images)
        learner.loss(learner.logits(feats), torch.full((4,), -1), feats).backward()
    assert len(calls) == 1
    assert not any(p.grad is not None for p in learner.teacher.parameters())
    learner.set_classnames(NAMES[2:])
    learner.eval()
    with torch.no_grad():
        assert learner(images).shape == (4, 2)
    assert len(calls) == 2


def test_loss_without_teacher_view_is_refused() -> None:
    learner = student()
    feats = torch.randn(4, learner.teacher_backbone.embed_dim)
    with pytest.raises(LearnerError, match="encode_images"):
        learner.loss(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), feats)


def test_batchnorm_statistics_are_learned_state(tmp_path: Path) -> None:
    learner = student()
    learner.train()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    feats = learner.encode_images(images)  # updates the running statistics
    learner.loss(learner.logits(feats), torch.full((4,), -1), feats)
    state = learner.learned_state()
    assert {"projector.norm.running_mean", "projector.norm.running_var"} <= set(state)
    assert not torch.equal(state["projector.norm.running_mean"], torch.zeros_like(state["projector.norm.running_mean"]))
    path = learner.save_prompts(tmp_path / "student.safetensors")
    other = student()
    other.load_prompts(path)
    assert torch.equal(other.projector.norm.running_var, learner.projector.norm.running_var)


def toy(**kwargs) -> BaseToNew:
    return BaseToNew(ToyPatterns(per_class=(6, 2, 2)), shots=2, seed=1, batch_size=4, **kwargs)


def test_unlabeled_pool_serves_every_training_image_without_labels() -> None:
    data = toy(unlabeled_pool="train_all_classes")
    task = data.task
    names = data.dataset.classnames
    assert task["unlabeled_pool"] == "train_all_classes" and task["unlabeled_space"] == UNLABELED_SPACE
    assert task["label_spaces"][UNLABELED_SPACE] == names  # base and new classes
    assert data.identity()["unlabeled_pool"] == "train_all_classes"
    loader = data.train_dataloader()
    assert len(loader.dataset) == len(data.dataset.labels("train")) == 6 * len(names)  # shots do not subsample it
    _, targets = next(iter(loader))
    assert bool((targets == -1).all())
    plain = toy()
    assert "unlabeled_pool" not in plain.task and "unlabeled_pool" not in plain.identity()
    assert len(plain.train_dataloader().dataset) == 2 * len(plain.task["label_spaces"]["base"])
    assert FewShot(ToyPatterns(per_class=(6, 2, 2)), unlabeled_pool="train_all_classes").task["unlabeled_space"]
    with pytest.raises(DataError, match="unlabeled_pool"):
        toy(unlabeled_pool="test_images")


def test_module_refuses_a_learner_pool_mismatch() -> None:
    labelled = toy().task
    pooled = toy(unlabeled_pool="train_all_classes").task
    for learner, task, fix in ((CoOp(n_ctx=2), pooled, "remove --data.init_args.unlabeled_pool"),
                               (PromptKD(), labelled, "set --data.init_args.unlabeled_pool train_all_classes")):
        module = PromptClassifier(tiny_clip(), learner, task=task)
        with pytest.raises(RuntimeError, match=fix):
            module.on_train_epoch_start()
    module = PromptClassifier(tiny_clip(), PromptKD(), task=pooled)
    module.on_train_epoch_start()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    module.learner.train()
    loss = module.training_step((images, torch.full((4,), -1)), 0)
    assert module.learner.classnames == pooled["label_spaces"][UNLABELED_SPACE] and loss.requires_grad


def test_configs_name_the_reference() -> None:
    text = (REPO / "configs" / "learners" / "promptkd" / "vit_b16_c2_ep20_batch8_4+4ctx.yaml").read_text()
    assert "zhengli97/PromptKD" in text and "ec244f7" in text and "cosine_horizon: max_epochs" in text
    assert "unlabeled_pool: train_all_classes" in text
