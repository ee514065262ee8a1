"""Zero-shot CLIP (Radford et al., ICML 2021): a hand-written template, or an ensemble of templates.

The classifier weight of class ``c`` is the normalised text feature of ``template.format(c)``; with
several templates, the mean of the normalised features, renormalised (the paper's prompt ensembling,
Sec. 3.1.4). ``descriptions`` adds class-specific sentences (CuPL, Pratt et al. ICCV 2023) to the ensemble.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.layers import template_features
from vlprompt.learners.base import LearnerError, PromptLearner

#: the 7-template ensemble CoOp/Tip-Adapter use for ImageNet zero-shot (subset of CLIP's 80)
ENSEMBLE_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


class ZeroShot(PromptLearner):
    """Zero-shot classifier from hand-written prompts; nothing is trained.

    Args:
        template: the prompt, with ``{}`` for the class name.
        ensemble: average over ``templates`` instead of the single ``template``.
        templates: the ensemble (default: the 7 templates CoOp uses for ImageNet).
        descriptions: optional JSON file ``{classname: [sentences]}`` (CuPL-style) whose sentences join the
            ensemble for each class.
    """

    family = "text"
    trainable = False

    def __init__(
        self,
        template: str = "a photo of a {}.",
        *,
        ensemble: bool = False,
        templates: list[str] | None = None,
        descriptions: str | None = None,
    ) -> None:
        super().__init__()
        if "{}" not in template:
            raise LearnerError(f"template={template!r} has no '{{}}' for the class name, e.g. 'a photo of a {{}}.'")
        self.template = template
        self.templates = list(templates or ENSEMBLE_TEMPLATES) if ensemble else [template]
        self.descriptions_path = descriptions
        self._descriptions: dict[str, list[str]] | None = None

    def resource_track(self) -> tuple[str, ...]:
        """``("LLM text",)`` with ``descriptions`` (CuPL's sentences are written by a language model), else ()."""
        return ("LLM text",) if self.descriptions_path else ()

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        if self.descriptions_path:
            path = Path(self.descriptions_path)
            if not path.is_file():
                raise LearnerError(f"descriptions file {str(path)!r} does not exist (expected JSON {{class: [sentences]}})")
            try:
                self._descriptions = {k.lower(): list(v) for k, v in json.loads(path.read_text()).items()}
            except (json.JSONDecodeError, AttributeError) as exc:
                raise LearnerError(f"descriptions file {str(path)!r} is not JSON of the form {{class: [sentences]}}: {exc}") from exc

    def text_features(self) -> torch.Tensor:
        base = template_features(self.backbone, self.classnames, self.templates)
        if not self._descriptions:
            return base
        feats = []
        for name, f in zip(self.classnames, base):
            sentences = self._descriptions.get(name.lower()) or self._descriptions.get(name.replace("_", " ").lower())
            if not sentences:
                raise LearnerError(
                    f"descriptions file {self.descriptions_path!r} has no entry for class {name!r}; its keys must be the "
                    "dataset's class names"
                )
            with torch.no_grad():
                d = F.normalize(self.backbone.encode_text(self.backbone.tokenize(sentences)), dim=-1)
            n = len(self.templates)
            feats.append(F.normalize((f * n + d.sum(0)) / (n + d.shape[0]), dim=-1))
        return torch.stack(feats)
