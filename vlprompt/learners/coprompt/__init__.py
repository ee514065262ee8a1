"""CoPrompt: Consistency-guided Prompt learning (Roy, Etemad; ICLR 2024).

Prompts: MaPLe's coupled multimodal prompts (:class:`~vlprompt.learners.maple.MaPLe`: learned text context from
"a photo of a", deep text prompts at layers ``1..J-1``, visual prompts projected from them). On top, two residual
adapters on the encoders' outputs, kept at evaluation::

    f_img = 0.1 * A_img(f_img) + 0.9 * f_img          A = Linear(D, D/4) -> ReLU -> Linear(D/4, D) -> ReLU
    f_txt = 0.2 * A_txt(f_txt) + 0.8 * f_txt          (both Linear without bias)

Training loss, consistency between the trainable model and the frozen pretrained one on both modalities::

    L = CE(scale * cos(f_img, f_txt), y)
        + W * [ (1 - mean_c cos(f_txt_c, g(d_c)))        d_c: one LLM description of class c, g the frozen text tower
              + (1 - mean_b cos(f_img_b, h(x'_b))) ]    x'_b: another augmented view of image b, h the frozen image tower

The description index is drawn at random each step, one index for all classes (the reference's
``random.randint`` over its stacked ``[N, C, D]`` bank). The prompted model sees one RandAugment view of each
training image, the frozen model an independent second one (the reference's ``K_TRANSFORMS: 2`` with
``TRANSFORMS: [randaugment, normalize]``). ``distill="mse"`` swaps both cosine terms for mean squared errors of the
normalised features (the reference's ``DISTILL`` other than ``cosine``).

Reference: ShuvenduRoy/CoPrompt @ a2a6c12e3622cfe4b3a127f4ba0c4f3eb841418c, ``trainers/coprompt.py``
(``MultiModalPromptLearner``, ``Adapter``, ``CustomCLIP.forward``, ``gpt_clip_classifier``), ``clip/model.py``
(MaPLe's blocks), ``configs/trainers/coprompt.yaml`` and ``trainers/constants.py`` (per-dataset depth, N_CTX, W).
Faithfulness: ``tests/test_coprompt_equivalence.py`` (logits, loss, gradients and one SGD step against that code).

Deliberate differences, each also noted beside the code:

- fp32 throughout (the reference config's ``PREC: fp16``); widths come from the backbone (the reference hard-codes
  512 for the text prompts and adapters, 768 for the visual prompts: ViT-B/16).
- descriptions with unequal counts per class: with one drawn index ``r``, class ``c`` takes its description
  ``r mod n_c`` (``r`` uniform below the largest count). The reference stacks the descriptions, so it needs equal
  counts (the CuPL files have 18-21 per EuroSAT class); with equal counts this is its draw. The index comes from
  torch's generator (seeded by ``vlprompt fit``), not Python's ``random``.
- without ``descriptions`` (not the paper's setting) the text targets are the frozen features of ``template``, so
  the learner builds in contract tests and on data without an LLM file; the resource track is then standard.
- the two views: the host's training image (``augment: none`` in the configs: resize + centre crop, where Dassl
  resizes to 224 x 224 without a crop) is RandAugmented twice, independently, by torchvision's ``RandAugment``
  (``num_ops=2, magnitude=10`` of 31 bins, on uint8), the reference by Dassl's own RandAugment (n=2, m=10 of 30,
  its op list differs slightly). ``view_augment="none"`` gives both models the host's image unchanged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError
from vlprompt.learners.coprompt.losses import CONSISTENCY, Adapter, blend
from vlprompt.learners.maple import MaPLe
from vlprompt.learners.prompts.layers import template_features
from vlprompt.learners.prompts.vl_layers import PromptConfigError, reference_keys, take_reference_tensor

log = logging.getLogger(__name__)

#: the reference's residual ratios (``coprompt.py:303-304``)
IMAGE_ADAPTER_RATIO = 0.1
TEXT_ADAPTER_RATIO = 0.2
VIEW_AUGMENTS = ("randaugment", "none")


def read_descriptions(path: str | Path) -> dict[str, list[str]]:
    """``{class name: [sentences]}`` from a JSON file (CuPL layout), checked; :class:`LearnerError` names the file."""
    path = Path(path)
    if not path.is_file():
        raise LearnerError(
            f"coprompt: descriptions file {str(path)!r} does not exist; pass a JSON file {{class name: [sentences]}} "
            "(e.g. a CuPL file such as CuPL_prompts_eurosat.json) as descriptions, or descriptions: null for the "
            "template targets"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise LearnerError(f"coprompt: descriptions file {str(path)!r} is not valid JSON ({exc}); expected "
                           "{class name: [sentences]}") from None
    if not isinstance(data, dict) or not data:
        raise LearnerError(f"coprompt: descriptions file {str(path)!r} holds a {type(data).__name__}, expected a non-empty "
                           "JSON object {class name: [sentences]}")
    for name, sentences in data.items():
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
            raise LearnerError(f"coprompt: descriptions file {str(path)!r}: entry {name!r} must be a non-empty list of "
                               f"non-empty sentences, got {str(sentences)[:80]}")
    return data


def lookup_descriptions(descriptions: dict[str, list[str]], name: str, source: str) -> list[str]:
    """The sentences of class ``name``: key ``name`` with ``_`` as spaces (the reference's lookup), ``name`` itself,
    or a case-insensitive match; :class:`LearnerError` naming ``source`` when none."""
    spaced = name.replace("_", " ")
    for key in (spaced, name):
        if key in descriptions:
            return descriptions[key]
    lowered = {k.lower(): v for k, v in descriptions.items()}
    for key in (spaced.lower(), name.lower()):
        if key in lowered:
            return lowered[key]
    raise LearnerError(f"coprompt: descriptions file {source!r} has no entry for class {name!r} (keys such as "
                       f"{sorted(descriptions)[:3]}); its keys must be the dataset's class names")


def random_augment(images: torch.Tensor, transform) -> torch.Tensor:
    """``transform`` applied to each image of ``[B, 3, H, W]`` in ``[0, 1]`` on its own (uint8 in between)."""
    u8 = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)
    return torch.stack([transform(img) for img in u8]).to(images.dtype) / 255.0


class CoPrompt(MaPLe):
    """MaPLe prompts, residual adapters, and consistency with the frozen model on LLM descriptions and image views.

    Args:
        n_ctx, ctx_init, prompt_depth, init_std: the multimodal prompts, as :class:`~vlprompt.learners.maple.MaPLe`
            (reference: 2 tokens from "a photo of a", depth 9; per dataset 2 or 4 tokens, depth 9 or 12).
        descriptions: JSON file ``{class name: [sentences]}`` of LLM-written class descriptions (the reference's
            ``gpt_file/<dataset>_prompt.json``; CuPL files have this layout); ``None`` = ``template`` targets.
        consistency_weight: ``W``, the weight of the two consistency terms (reference default 1.0; per dataset
            0.1-8.0, ``trainers/constants.py``).
        distill: ``cosine`` (reference) or ``mse``.
        image_adapter_ratio, text_adapter_ratio: residual ratios of the adapters (0.1, 0.2).
        adapter_reduction: the adapters' bottleneck is ``D // adapter_reduction`` (4).
        view_augment: ``randaugment``: both training views are independent RandAugment draws; ``none``: both models
            see the host's training image.
        randaugment_ops, randaugment_magnitude: RandAugment's ops per image and magnitude (of 31 bins; 2, 10).
        template: the frozen text target without ``descriptions``.
    """

    family = "multimodal"
    tasks = ("classification",)
    modifies_image_encoder = True
    paper_depth = 9

    def __init__(
        self,
        n_ctx: int = 2,
        *,
        ctx_init: str | None = "a photo of a",
        prompt_depth: int | None = None,
        init_std: float = 0.02,
        descriptions: str | None = None,
        consistency_weight: float = 1.0,
        distill: str = "cosine",
        image_adapter_ratio: float = IMAGE_ADAPTER_RATIO,
        text_adapter_ratio: float = TEXT_ADAPTER_RATIO,
        adapter_reduction: int = 4,
        view_augment: str = "randaugment",
        randaugment_ops: int = 2,
        randaugment_magnitude: int = 10,
        template: str = "a photo of a {}.",
    ) -> None:
        super().__init__(n_ctx, ctx_init=ctx_init, prompt_depth=prompt_depth, init_std=init_std)
        if consistency_weight < 0:
            raise LearnerError(f"coprompt: consistency_weight={consistency_weight} must be >= 0 (reference: 0.1-8.0; "
                               "0 = cross-entropy only)")
        if distill not in CONSISTENCY:
            raise LearnerError(f"coprompt: distill={distill!r} must be one of {sorted(CONSISTENCY)} (reference: cosine)")
        for key, ratio in (("image_adapter_ratio", image_adapter_ratio), ("text_adapter_ratio", text_adapter_ratio)):
            if not 0.0 <= ratio <= 1.0:
                raise LearnerError(f"coprompt: {key}={ratio} must be in [0, 1] (reference: 0.1 image, 0.2 text)")
        if adapter_reduction < 1:
            raise LearnerError(f"coprompt: adapter_reduction={adapter_reduction} must be a positive integer (reference: 4)")
        if view_augment not in VIEW_AUGMENTS:
            raise LearnerError(f"coprompt: view_augment={view_augment!r} must be one of {list(VIEW_AUGMENTS)}")
        if "{}" not in template:
            raise LearnerError(f"coprompt: template={template!r} has no '{{}}' for the class name, e.g. 'a photo of a {{}}.'")
        self.descriptions_path = None if descriptions is None else str(descriptions)
        self.consistency_weight = float(consistency_weight)
        self.distill = distill
        self.image_adapter_ratio = float(image_adapter_ratio)
        self.text_adapter_ratio = float(text_adapter_ratio)
        self.adapter_reduction = int(adapter_reduction)
        self.view_augment = view_augment
        self.randaugment_ops = int(randaugment_ops)
        self.randaugment_magnitude = int(randaugment_magnitude)
        self.template = template
        self._descriptions: dict[str, list[str]] | None = None
        self._bank: tuple[tuple[str, ...], torch.Tensor, torch.Tensor] | None = None
        self._stash_images: tuple[torch.Tensor, torch.Tensor] | None = None  # (prompted, frozen) image features
        self._stash_text: torch.Tensor | None = None
        self._augment = v2.RandAugment(num_ops=self.randaugment_ops, magnitude=self.randaugment_magnitude)

    def resource_track(self) -> tuple[str, ...]:
        """``("LLM text",)`` with ``descriptions`` (the paper's setting), else the standard track."""
        return ("LLM text",) if self.descriptions_path else ()

    def prompt_record(self) -> dict:
        """The base record; ``template`` only where it is the text target (no ``descriptions``)."""
        out = super().prompt_record()
        if self.descriptions_path:
            out.pop("template", None)
        return out

    # ------------------------------------------------------------------ build
    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        if self.descriptions_path:  # read and check before anything is built: a bad file fails at once
            self._descriptions = read_descriptions(self.descriptions_path)
            for name in classnames:
                lookup_descriptions(self._descriptions, name, self.descriptions_path)
        super().build(backbone, classnames)
        d = backbone.embed_dim  # the reference's literal 512 (ViT-B/16's embedding width), coprompt.py:301-302
        self.adapter_image = Adapter(d, self.adapter_reduction)
        self.adapter_text = Adapter(d, self.adapter_reduction)

    def on_classnames_changed(self, classnames: list[str]) -> None:
        super().on_classnames_changed(classnames)
        self._stash_text = None

    # ------------------------------------------------------------------ forward
    def prompted_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """MaPLe's prompted image features ``[B, D]`` through the image adapter (``coprompt.py:327-330``)."""
        feats = super().encode_images(images)
        return blend(feats, self.adapter_image(feats), self.image_adapter_ratio)

    def training_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(view for the prompted model, view for the frozen model) of training images ``[B, 3, H, W]``."""
        if self.view_augment == "none":
            return images, images
        return random_augment(images, self._augment), random_augment(images, self._augment)

    def encode_pair(self, prompted_view: torch.Tensor, frozen_view: torch.Tensor) -> torch.Tensor:
        """Prompted features ``[B, D]`` of ``prompted_view``; keeps them with the frozen model's features of
        ``frozen_view`` (no prompts, no adapter) for :meth:`loss` (the reference's ``image1``/``image2``)."""
        feats = self.prompted_image_features(prompted_view)
        with torch.no_grad():
            frozen = self.backbone.encode_image(frozen_view)
        self._stash_images = (feats, frozen)
        return feats

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            if self.consistency_weight > 0:
                return self.encode_pair(*self.training_views(images))
            if self.view_augment != "none":
                return self.prompted_image_features(self.training_views(images)[0])
        return self.prompted_image_features(images)

    def text_features(self) -> torch.Tensor:
        """MaPLe's prompted text features ``[C, D]`` through the text adapter (``coprompt.py:332-335``)."""
        feats = super().text_features()
        out = blend(feats, self.adapter_text(feats), self.text_adapter_ratio)
        self._stash_text = out if (self.training and out.requires_grad) else None
        return out

    # ------------------------------------------------------------------ frozen targets
    def description_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen, normalised features of every description of the current classes, padded: ``[C, N_max, D]``,
        and the count of each class ``[C]`` (``gpt_clip_classifier``, ``coprompt.py:379-404``, as ``[C, N, D]``)."""
        device = self.ctx.device
        key = (*self.classnames, str(device))
        if self._bank is not None and self._bank[0] == key:
            return self._bank[1], self._bank[2]
        assert self._descriptions is not None and self.descriptions_path is not None
        per_class = [lookup_descriptions(self._descriptions, name, self.descriptions_path) for name in self.classnames]
        feats = []
        with torch.no_grad():
            for sentences in per_class:
                tokens = self.backbone.tokenize(sentences).to(device)
                feats.append(F.normalize(self.backbone.encode_text(tokens).float(), dim=-1))
        n_max = max(f.shape[0] for f in feats)
        bank = torch.zeros(len(feats), n_max, feats[0].shape[-1], device=device)
        for i, f in enumerate(feats):
            bank[i, : f.shape[0]] = f
        counts = torch.tensor([f.shape[0] for f in feats], device=device)
        self._bank = (key, bank, counts)
        return bank, counts

    def draw_description_index(self, n: int) -> int:
        """The step's description index, uniform in ``0..n-1`` (the reference's ``random.randint(0, N - 1)``)."""
        return int(torch.randint(n, (1,)))

    def text_targets(self) -> torch.Tensor:
        """The frozen text targets ``[C, D]`` of this step: one drawn description per class (index ``r mod n_c``),
        or the ``template`` features without descriptions."""
        if not self.descriptions_path:
            return template_features(self.backbone, self.classnames, [self.template]).to(self.ctx.device)
        bank, counts = self.description_bank()
        r = self.draw_description_index(int(counts.max()))
        # equal counts: every class takes description r, as the reference; unequal: r mod n_c (see module doc)
        return bank[torch.arange(bank.shape[0], device=bank.device), r % counts]

    # ------------------------------------------------------------------ loss
    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """``CE + W * (text consistency + image consistency)`` (``coprompt.py:337-364``)."""
        ce = F.cross_entropy(logits, targets)
        stash_images, self._stash_images = self._stash_images, None
        text, self._stash_text = self._stash_text, None
        if self.consistency_weight == 0:
            return ce
        if stash_images is None or stash_images[0] is not image_features:
            raise LearnerError(
                "coprompt.loss needs this step's image features from learner.encode_images(images) (or encode_pair) in "
                "training mode with gradients; call it first"
            )
        if text is None or text.shape[0] != logits.shape[1]:
            text = self.text_features()
            self._stash_text = None
        fn = CONSISTENCY[self.distill]
        frozen = stash_images[1]
        text_term = fn(F.normalize(text, dim=-1), F.normalize(self.text_targets(), dim=-1))
        image_term = fn(F.normalize(image_features, dim=-1), F.normalize(frozen, dim=-1))
        return ce + self.consistency_weight * (text_term + image_term)

    def train(self, mode: bool = True) -> "CoPrompt":
        self._stash_images = None
        self._stash_text = None
        return super().train(mode)

    # ------------------------------------------------------------------ reference checkpoints
    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MaPLe's names under ``prompt_learner.`` (:meth:`MaPLe.import_reference_state`) plus the adapters'
        ``adapter_image.fc.{0,2}.weight`` and ``adapter_text.fc.{0,2}.weight``; the frozen distillation CLIP
        (``model_distill.*``) and buffers are dropped."""
        prompt_keys = {k: v for k, v in state.items() if "adapter_" not in k and "model_distill." not in k}
        out = super().import_reference_state(prompt_keys)
        ref = reference_keys({k: v for k, v in state.items() if "adapter_" in k})
        own = self.learned_state()
        try:
            for name in ("adapter_image", "adapter_text"):
                for i in (0, 2):
                    key = f"{name}.fc.{i}.weight"
                    out[key] = take_reference_tensor(ref, key, tuple(own[key].shape), owner="coprompt",
                                                     meaning=f"{name} Linear {i // 2 + 1}")
        except PromptConfigError as exc:
            raise LearnerError(str(exc)) from exc
        return out


__all__ = ["CoPrompt", "IMAGE_ADAPTER_RATIO", "TEXT_ADAPTER_RATIO", "lookup_descriptions", "random_augment",
           "read_descriptions"]
