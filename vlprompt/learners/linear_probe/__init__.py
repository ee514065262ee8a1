"""Linear probe on frozen CLIP image features: the baseline reviewers ask for beside prompt learners.

Radford et al. (ICML 2021, Sec. 3.2 and App. A.3) fit an L2-regularised logistic regression (scikit-learn
L-BFGS) on frozen image features; CoOp (Zhou et al., IJCV 2022, Fig. 3) compares against it. CLIP_benchmark
(LAION-AI/CLIP_benchmark @48de38c, ``clip_benchmark/metrics/linear_probe.py``) does the same with a
``torch.nn.Linear`` on L2-normalised features (``Featurizer(normalize=True)``), trained with cross-entropy and
AdamW (lr 0.1, weight decay 0 without a validation split, else swept over ``logspace(-6, 2, 97)``), a per-step
cosine without warm-up, 10 epochs, batch 64, default ``nn.Linear`` initialisation under the run seed. This
learner is that probe, trained by vlprompt's classification module like any learner (features cached, seeds,
results): ``configs/learners/linear_probe/clip_benchmark.yaml`` sets CLIP_benchmark's optimiser and schedule.

Choices where the references are silent or differ, each an option:

- ``init``: ``random`` (``nn.Linear``'s default, CLIP_benchmark) or ``text``: the weights start as the zero-shot
  classifier ``logit_scale * normalize(text(template.format(c)))`` and the bias at 0, so before training the probe
  equals zero-shot CLIP (the ZS-initialised probe of LP++ and CLAP, CVPR 2024) and ``zeros``.
- ``unseen_classes``: a class the probe was not trained on has no learned row. ``zero_shot`` (default) scores it with
  the zero-shot row above (so a base-to-new "new" accuracy of a probe is zero-shot CLIP's, which the result says
  through this option); ``refuse`` raises, as a probe strictly cannot score unseen classes.
- deliberate differences from CLIP_benchmark: the weight-decay sweep on a validation split is not run (the
  protocol's fixed hyper-parameters apply; pass ``model.optimizer`` with another ``weight_decay``); the cosine
  runs per epoch in vlprompt's module, per step there.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.prompts.layers import template_features


class LinearProbe(PromptLearner):
    """Logistic regression (a linear layer, cross-entropy) on frozen image features; nothing passes the text
    tower except the zero-shot rows of ``init: text`` and of unseen classes.

    Args:
        init: ``random`` (``nn.Linear`` default), ``text`` (zero-shot classifier, bias 0) or ``zeros``.
        normalize: L2-normalise the image features first (CLIP_benchmark: true).
        template: the zero-shot template of ``init: text`` and of unseen classes.
        unseen_classes: ``zero_shot`` (score them with the zero-shot row) or ``refuse``.
    """

    family = "baseline"
    tasks = ("classification",)

    def __init__(
        self,
        *,
        init: Literal["random", "text", "zeros"] = "random",
        normalize: bool = True,
        template: str = "a photo of a {}.",
        unseen_classes: Literal["zero_shot", "refuse"] = "zero_shot",
    ) -> None:
        super().__init__()
        if init not in ("random", "text", "zeros"):
            raise LearnerError(f"init={init!r}: choose random, text or zeros")
        if unseen_classes not in ("zero_shot", "refuse"):
            raise LearnerError(f"unseen_classes={unseen_classes!r}: choose zero_shot or refuse")
        if "{}" not in template:
            raise LearnerError(f"template={template!r} has no '{{}}' for the class name, e.g. 'a photo of a {{}}.'")
        self.init, self.normalize, self.template, self.unseen_classes = init, normalize, template, unseen_classes
        self.weight: nn.Parameter | None = None
        self.bias: nn.Parameter | None = None

    def zero_shot_rows(self, classnames: list[str]) -> torch.Tensor:
        """The zero-shot classifier ``[C, D]`` of ``classnames``: ``logit_scale * normalize(text feature)``."""
        with torch.no_grad():
            text = template_features(self.backbone, classnames, [self.template])
            return float(self.backbone.logit_scale) * F.normalize(text.float(), dim=-1)

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        rows = self.zero_shot_rows(classnames)
        layer = nn.Linear(rows.shape[1], rows.shape[0])  # default init, drawn from the run's seeded generator
        if self.init == "text":
            layer.weight.data.copy_(rows)
            layer.bias.data.zero_()
        elif self.init == "zeros":
            layer.weight.data.zero_()
            layer.bias.data.zero_()
        self.weight = nn.Parameter(layer.weight.data.to(rows.device))
        self.bias = nn.Parameter(layer.bias.data.to(rows.device))

    def on_classnames_changed(self, classnames: list[str]) -> None:
        unseen = [c for c in classnames if c not in self.train_classnames]
        if unseen and self.unseen_classes == "refuse":
            raise LearnerError(
                f"the linear probe was trained on {len(self.train_classnames)} classes and has no weights for "
                f"{len(unseen)} others (e.g. {unseen[0]!r}); set unseen_classes: zero_shot to score them with the "
                "zero-shot classifier, or evaluate on the training classes only")

    def classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights ``[C, D]`` and bias ``[C]`` over the current class names: learned rows for training classes,
        zero-shot rows (bias 0) for the others."""
        index = {c: i for i, c in enumerate(self.train_classnames)}
        if all(c in index for c in self.classnames):
            rows = torch.tensor([index[c] for c in self.classnames], device=self.weight.device)
            return self.weight[rows], self.bias[rows]
        fallback = self.zero_shot_rows(self.classnames).to(self.weight)
        weights = [self.weight[index[c]] if c in index else fallback[i] for i, c in enumerate(self.classnames)]
        biases = [self.bias[index[c]] if c in index else self.bias.new_zeros(()) for c in self.classnames]
        return torch.stack(weights), torch.stack(biases)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` over the current class names; ``x`` = the (normalised) image features ``[B, D]``."""
        x = image_features.float()
        x = F.normalize(x, dim=-1) if self.normalize else x
        weight, bias = self.classifier()
        return x @ weight.t() + bias

    def paired_text_features(self, image_features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        raise LearnerError("the linear probe classifies image features; it has no text feature per prompt "
                           "(segmentation needs a prompt learner)")
