"""Episodic test-time evaluation: one generic Lightning module, backbone and learner injected.

For every test image, a :class:`TestTimeMethod` learner (TPT, DiffTPT, C-TPT, ZERO, TDA or a third-party one)
is reset to its initial tunable tensors and its optimiser to its initial state (episodic: no tuned tensor
carries over between images), builds the image's views, selects confident views, takes its optimiser steps
and predicts the original image. Training-free methods (ZERO, TDA) tune nothing and have no optimiser; a
method that keeps state along the test stream (TDA's caches) is told when each test set starts
(:meth:`TestTimeMethod.start_test_set`). A plain learner (zero-shot, CoOp...) is evaluated on
the test-transformed original with the same data, so baselines share the protocol and the image subset.
The module never branches on the learner's identity: it only uses the :class:`TestTimeMethod` interface and
the learner's test-time tensors (:meth:`PromptLearner.tunable_parameters`, ``snapshot_tunable``,
``restore_tunable``).
"""

from __future__ import annotations

import copy
import logging
import time

import lightning.pytorch as pl
import torch

from vlprompt.backbones.base import VLBackbone
from vlprompt.data.tta_views import TPTViews
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.prompts.tta import TestTimeMethod
from vlprompt.metrics import calibration_bins, ece_from_bins

log = logging.getLogger(__name__)


class TestTimeClassifier(pl.LightningModule):
    """Frozen backbone + learner, evaluated image by image with episodic test-time tuning.

    Args:
        backbone: the frozen model.
        learner: a :class:`TestTimeMethod` learner (``tpt``, ``ctpt``, ``difftpt``, ``zero``, ``tda``) or any learner
            (evaluated as is).
        task: label spaces and test sets; linked from the data module by ``vlprompt tta``.
    """

    __test__ = False

    def __init__(self, backbone: VLBackbone, learner: PromptLearner, *, task: dict | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.learner = learner
        self.task = task or {}
        self._space: str | None = None
        self._counts: dict[str, list[int]] = {}
        self._stats: dict[str, list[float]] = {}
        self.eval_results: dict[str, dict[str, float]] = {}
        self.eval_stats: dict[str, float] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self._opt_state: dict | None = None
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._test_set: str | None = None
        self._views = TPTViews(backbone.preprocess, 2)
        spaces = self.task.get("label_spaces") or {}
        train_space = self.task.get("train_space")
        if spaces and train_space:
            self.learner.setup(self.backbone, spaces[train_space])

    @property
    def adapts(self) -> bool:
        return isinstance(self.learner, TestTimeMethod)

    def _use_space(self, space: str) -> None:
        if space != self._space:
            self.learner.set_classnames(self.task["label_spaces"][space])
            self._space = space

    def on_test_epoch_start(self) -> None:
        if not self.task.get("label_spaces"):
            raise RuntimeError("TestTimeClassifier has no task: run it through `vlprompt tta` (which links data.task)")
        self._counts, self._stats = {}, {"seconds": [], "selected": [], "loss": []}
        self._bins: dict[str, torch.Tensor] = {}  # per test set: calibration_bins sums
        self.learner.eval()
        if self.adapts:
            params = list(self.learner.tunable_parameters().values())
            self._snapshot = self.learner.snapshot_tunable()
            self._optimizer = self.learner.make_optimizer(params)  # None for a training-free method
            self._opt_state = copy.deepcopy(self._optimizer.state_dict()) if self._optimizer is not None else None
        self._test_set = None

    def predict_image(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[1, C]`` of one raw image ``[3, H, W]`` after its (episodic) test-time tuning."""
        if not self.adapts:
            with torch.no_grad():
                return self.learner(self._views.original(image)[None])
        assert self._snapshot is not None
        if self._snapshot:
            self.learner.restore_tunable(self._snapshot)
        if self._optimizer is not None:
            self._optimizer.load_state_dict(self._opt_state)
        views = self.learner.build_views(image)
        out = self.learner.adapt(views, self._optimizer)
        self._stats["selected"].append(float(out.selected.numel()))
        self._stats["loss"].append(float(out.loss))
        return out.logits

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        name, space = self.task["test_sets"][dataloader_idx]
        self._use_space(space)
        if name != self._test_set:
            self._test_set = name
            if self.adapts:
                self.learner.start_test_set(name)
        images, targets = batch
        counts = self._counts.setdefault(name, [0, 0])
        for image, target in zip(images, targets):
            t0 = time.perf_counter()
            logits = self.predict_image(image)
            pred = int(logits.argmax(dim=1)[0])
            self._stats["seconds"].append(time.perf_counter() - t0)
            bins = calibration_bins(logits.detach(), target.reshape(1))
            self._bins[name] = self._bins[name] + bins if name in self._bins else bins
            counts[0] += int(pred == int(target))
            counts[1] += 1

    def on_test_epoch_end(self) -> None:
        results = {name: 100.0 * c / max(1, n) for name, (c, n) in self._counts.items()}
        results.update({f"{name}_ece": ece_from_bins(b) for name, b in self._bins.items()})
        self.eval_results["test"] = results
        self.eval_stats = {f"mean_{k}": sum(v) / len(v) for k, v in self._stats.items() if v}
        self._space = None
        if self.adapts and self._snapshot is not None:
            self.learner.restore_tunable(self._snapshot)

    def configure_optimizers(self):  # pragma: no cover - never fitted
        return None
