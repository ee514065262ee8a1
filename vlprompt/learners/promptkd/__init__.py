"""PromptKD: Unsupervised Prompt Distillation for Vision-Language Models (Li, Li, Fu, Cheng, Li, Zhang, Yang;
CVPR 2024). Reference code: zhengli97/PromptKD @ec244f7 (``trainers/promptkd.py``, ``clip/model.py``,
``configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml``, ``scripts/promptkd/base2new_train.sh``).

A frozen **teacher** (any vlprompt learner with a shared classifier on its own, usually larger, backbone; in the
paper PromptSRC prompts on ViT-L/14, loaded from a prompts file with the teacher's ``load_prompts``) labels
nothing: its text features of the current classes are computed once per label space and kept (the paper's
"pre-computed teacher text features"), and its logits on the training images are the distillation targets.

The **student** (this learner, on the protocol's backbone) learns only image-side tensors:

- deep visual prompts, as IVLP's image tower (:class:`~vlprompt.learners.prompts.vl_layers.VisualPrompts`:
  ``n_ctx_vision`` tokens, depth ``prompt_depth_vision``; reference: 4 tokens, depth 9, N(0, 0.02^2));
- a projector from the student's image features ``[B, D_s]`` to the teacher's dimension ``D_t``: the reference's
  ``Feature_Trans_Module_two_layer`` (``trainers/promptkd.py:22``), 1x1 conv ``D_s -> D_t`` + BatchNorm + ReLU +
  1x1 conv ``D_t -> D_t`` on ``[B, D, 1, 1]``, i.e. ``Linear -> BatchNorm1d -> ReLU -> Linear`` here
  (:class:`FeatureProjector`; the same arithmetic and the same default initialisation).

Logits, in training and at test time, are ``student_logit_scale * cos(projector(student image features), teacher
text features)``: the student has no text encoder of its own. Training loss (``forward_backward``, no label)::

    L = kd_weight * T^2 * sum_{b,c} KL(softmax(teacher_logits / T) || softmax(student_logits / T)) / (B * C)

(:func:`vlprompt.metrics.losses.logit_kl_loss`; reference ``TEMPERATURE`` 1 and ``KD_WEIGHT`` 1000, 200 for
FGVC-Aircraft, Flowers102 and DTD), with ``teacher_logits = teacher_logit_scale * cos(teacher image features,
teacher text features)``. The images are the unlabeled pool the protocol serves (``unlabeled_pool``): the
reference trains on the training images of **all** classes, base and new, without their labels
(``datasets/*.py``: ``subsample_classes(..., subsample='all')`` with ``NUM_SHOTS 0``), so the label space of the
distillation is every class of the dataset. This learner declares the pool it needs; the protocol must serve
the same one (``--data.init_args.unlabeled_pool train_all_classes``), and both are recorded with the result.

Deliberate differences: fp32 throughout (the reference's ``PREC fp16`` halves the student, the projector and
the teacher); the projector's widths come from the two backbones instead of the literal ``512 -> 768``; the
BatchNorm running statistics are part of the learned state (saved with the prompts), where the reference keeps
them in its full model checkpoint; the teacher's text features are computed once per label space instead of on
every batch (the same numbers: the teacher is frozen); the reference picks the checkpoint with the best accuracy
on the *base test* images (``val = test_base``, ``FINAL_MODEL best_val``): here the protocol's validation split is
used and the last epoch is what is tested.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner, cosine_logits
from vlprompt.learners.ivlp import IVLP
from vlprompt.learners.prompts.vl_layers import (
    PromptConfigError,
    VisualPrompts,
    check_reference_depth,
    reference_deep_prompts,
    reference_keys,
    resolve_depth,
    take_reference_tensor,
)
from vlprompt.metrics.losses import logit_kl_loss

log = logging.getLogger(__name__)

#: the unlabeled pools a PromptKD student can distil on (see :data:`vlprompt.protocols.base2new.UNLABELED_POOLS`)
POOLS = ("train_all_classes",)


class StatsBatchNorm(nn.Module):
    """``BatchNorm1d`` over ``[B, D]`` whose running statistics are parameters without gradient (so that
    :meth:`PromptLearner.learned_state` / ``load_prompts`` carry them and a saved student evaluates as trained).

    Training: normalise with the batch statistics and update the running ones (momentum 0.1, unbiased variance);
    evaluation: normalise with the running statistics, as ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` on
    ``[B, D, 1, 1]`` (the reference)."""

    def __init__(self, dim: int, *, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.running_mean = nn.Parameter(torch.zeros(dim), requires_grad=False)
        self.running_var = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            raise LearnerError(f"promptkd: the projector's BatchNorm needs at least 2 images per training batch, got "
                               f"{x.shape[0]}: raise --data.init_args.batch_size (the reference uses 8)")
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)


class FeatureProjector(nn.Module):
    """``[B, D_in] -> [B, D_out]``: ``Linear(D_in, D_out) -> BatchNorm -> ReLU -> Linear(D_out, D_out)`` (the
    reference's ``Feature_Trans_Module_two_layer``, whose 1x1 convolutions on ``[B, D, 1, 1]`` are these linear
    maps and whose default initialisation is ``nn.Linear``'s)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, dim_out)
        self.norm = StatsBatchNorm(dim_out)
        self.fc2 = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.norm(self.fc1(x))))


class PromptKD(PromptLearner):
    """Student of PromptKD: deep visual prompts + projector, scored against a frozen teacher's text features.

    Args:
        teacher: the teacher learner (configured like any learner, e.g. ``class_path: promptsrc``); ``None``: IVLP
            with 4 + 4 tokens from "a photo of a" (the reference teacher's architecture; untrained unless
            ``teacher_prompts`` is given).
        teacher_backbone: the teacher's frozen backbone (paper: ViT-L/14); ``None``: the student's own backbone.
        teacher_prompts: a safetensors prompts file of the teacher (``vlprompt fit`` writes one), loaded with the
            teacher's ``load_prompts`` (its training classes must equal this run's); ``None``: the teacher is used
            as set up (a warning says so).
        n_ctx_vision: visual prompt tokens per layer (4).
        prompt_depth_vision: image layers ``0..J-1`` with prompts (9); ``None`` = 9 capped at the tower's layers.
        temperature: distillation temperature ``T`` (1).
        kd_weight: weight of the distillation loss (1000; 200 for FGVC-Aircraft, Flowers102, DTD).
        unlabeled_pool: the unlabeled images distilled on, which the protocol must serve (``train_all_classes``).
        init_std: std of the N(0, std^2) initialisation of the visual prompts.
    """

    family = "multimodal"
    modifies_image_encoder = True
    resources = ("teacher model", "unlabeled images")
    paper_depth = 9

    def __init__(
        self,
        teacher: PromptLearner | None = None,
        teacher_backbone: VLBackbone | None = None,
        teacher_prompts: str | None = None,
        *,
        n_ctx_vision: int = 4,
        prompt_depth_vision: int | None = None,
        temperature: float = 1.0,
        kd_weight: float = 1000.0,
        unlabeled_pool: str = "train_all_classes",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if n_ctx_vision < 1:
            raise LearnerError(f"promptkd: n_ctx_vision={n_ctx_vision} must be at least 1 (the reference uses 4)")
        if not temperature > 0:
            raise LearnerError(f"promptkd: temperature={temperature} must be positive (the reference uses 1.0)")
        if not kd_weight > 0:
            raise LearnerError(f"promptkd: kd_weight={kd_weight} must be positive (the reference uses 1000, or 200)")
        if unlabeled_pool not in POOLS:
            raise LearnerError(f"promptkd: unlabeled_pool={unlabeled_pool!r} is not one of {POOLS}")
        if teacher is not None and not isinstance(teacher, PromptLearner):
            raise LearnerError(f"promptkd: teacher is a {type(teacher).__name__}, expected a prompt learner "
                               "(e.g. class_path: promptsrc)")
        self.n_ctx_vision = n_ctx_vision
        self.prompt_depth_vision = prompt_depth_vision
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight)
        self.unlabeled_pool = unlabeled_pool
        self.init_std = init_std
        self.teacher_prompts = teacher_prompts
        # the teacher and its backbone are frozen resources, as the student's backbone: not submodules, so that
        # neither enters the learner's parameters, optimiser, checkpoints or train/eval switches
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "_teacher_backbone", teacher_backbone)
        self._teacher_text: dict[tuple[str, ...], torch.Tensor] = {}
        self._stash: tuple[torch.Tensor, torch.Tensor] | None = None  # (student features, teacher image features)

    # ------------------------------------------------------------------ set-up
    @property
    def teacher_backbone(self) -> VLBackbone:
        return self._teacher_backbone if self._teacher_backbone is not None else self.backbone

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        try:
            self.depth_vision = resolve_depth(self.prompt_depth_vision, paper=self.paper_depth,
                                              layers=backbone.vision_layers, name="prompt_depth_vision",
                                              owner="promptkd")
            self.visual = VisualPrompts(self.n_ctx_vision, backbone.vision_width, self.depth_vision, std=self.init_std)
        except PromptConfigError as exc:
            raise LearnerError(str(exc)) from exc
        tb = self.teacher_backbone
        if tb.preprocess.image_size != backbone.preprocess.image_size:
            raise LearnerError(
                f"promptkd: the teacher backbone takes {tb.preprocess.image_size} px images but the student's takes "
                f"{backbone.preprocess.image_size} px; both see the same images: pick a teacher backbone with the "
                "student's input size (the reference: ViT-L/14 and ViT-B/16 at 224 px)")
        self.projector = FeatureProjector(backbone.embed_dim, tb.embed_dim)
        if self.teacher is None:
            object.__setattr__(self, "teacher", IVLP(4, 4, ctx_init="a photo of a"))
        with torch.random.fork_rng(devices=[]):  # the teacher's initialisation: fixed, and the student's RNG untouched
            torch.manual_seed(0)  # (an untrained teacher is then the same in every run, a saved student reloads)
            self.teacher.setup(tb, classnames)
        if self.teacher_prompts is not None:
            self.teacher.load_prompts(Path(self.teacher_prompts))
        else:
            log.warning("promptkd: no teacher_prompts given: distilling from the teacher as initialised (%s), not a "
                        "trained one", type(self.teacher).__name__)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._teacher_text = {}

    def _teacher_to(self, device: torch.device) -> None:
        tb = self.teacher_backbone
        here = next(iter(tb.parameters()), None)
        if here is not None and here.device != device:
            tb.to(device)
        ref = next(iter(self.teacher.parameters()), None)
        if ref is not None and ref.device != device:
            self.teacher.to(device)
            self._teacher_text = {}

    # ------------------------------------------------------------------ teacher
    def teacher_text_features(self) -> torch.Tensor:
        """The teacher's normalised text features ``[C, D_t]`` of the current classes, computed once per label
        space (the teacher is frozen) without gradients."""
        device = self.projector.fc1.weight.device
        self._teacher_to(device)
        key = tuple(self.classnames)
        feats = self._teacher_text.get(key)
        if feats is None:
            if self.teacher.classnames != self.classnames:
                self.teacher.set_classnames(self.classnames)
            self.teacher.eval()
            with torch.no_grad():
                try:
                    feats = self.teacher.text_features()
                except NotImplementedError as exc:
                    raise LearnerError(f"promptkd: the teacher {type(self.teacher).__name__} has no shared class "
                                       "text features (text_features()); use a teacher with a shared classifier, "
                                       "e.g. promptsrc, ivlp, maple, coop") from exc
            feats = F.normalize(feats.float(), dim=-1)
            self._teacher_text[key] = feats
        return feats

    def teacher_logits(self, teacher_image_features: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``[B, C]`` of teacher image features ``[B, D_t]`` over the current classes."""
        tb = self.teacher_backbone
        return cosine_logits(teacher_image_features, self.teacher_text_features(), tb.logit_scale, tb.logit_bias)

    # ------------------------------------------------------------------ forward
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Projected student image features ``[B, D_t]`` (unnormalised)."""
        feats = self.projector(self.visual.encode(self.backbone, images))
        if self.training and torch.is_grad_enabled():
            self._teacher_to(images.device)
            self.teacher.eval()
            with torch.no_grad():
                teacher_feats = self.teacher.encode_images(images)
            self._stash = (feats, teacher_feats)
        return feats

    def text_features(self) -> torch.Tensor:
        return self.teacher_text_features()

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(image_features, self.cached_text_features(), self.backbone.logit_scale,
                             self.backbone.logit_bias)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """``kd_weight * KL(teacher || student)`` at temperature ``T`` (module docstring); ``targets`` are unused
        (the images are unlabeled)."""
        if self._stash is None or self._stash[0] is not image_features:
            raise LearnerError("promptkd.loss needs the teacher's view of this step's images: call "
                               "learner.encode_images(images) in training mode (with gradients) first")
        teacher = self.teacher_logits(self._stash[1])
        self._stash = None
        return self.kd_weight * logit_kl_loss(logits, teacher, temperature=self.temperature)

    # ------------------------------------------------------------------ reference checkpoints
    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a reference PromptKD student state dict (``VLPromptLearner/model-best.pth.tar``) to
        :meth:`learned_state` names.

        Reference names: ``image_encoder.VPT`` ``[n_v, Wv]``, ``image_encoder.transformer.resblocks.{i}.VPT_shallow``
        (image layers ``1..J-1``), ``VPT_image_trans.conv1.{0,3}.weight`` ``[D_out, D_in, 1, 1]`` / ``.bias`` (the two
        1x1 convolutions) and ``VPT_image_trans.conv1.1.{weight,bias,running_mean,running_var}`` (the BatchNorm).
        """
        ref = reference_keys(state)
        wv, d_in = self.backbone.vision_width, self.projector.fc1.in_features
        d_out = self.projector.fc1.out_features
        try:
            out = {"visual.shallow": take_reference_tensor(ref, "image_encoder.VPT", (self.n_ctx_vision, wv),
                                                           owner="promptkd", meaning="[n_ctx_vision, vision width]")}
            deep = reference_deep_prompts(ref, "image_encoder")
            check_reference_depth(list(deep), list(range(1, self.depth_vision)), owner="promptkd", what="visual prompts")
            for i in deep:
                out[f"visual.deep.prompts.{i - 1}"] = take_reference_tensor(
                    ref, f"image_encoder.transformer.resblocks.{i}.VPT_shallow", (self.n_ctx_vision, wv),
                    owner="promptkd", meaning=f"layer {i} visual prompts [n_ctx_vision, vision width]")
            for ours, theirs, shape in (("fc1", "0", (d_out, d_in, 1, 1)), ("fc2", "3", (d_out, d_out, 1, 1))):
                out[f"projector.{ours}.weight"] = take_reference_tensor(
                    ref, f"VPT_image_trans.conv1.{theirs}.weight", shape, owner="promptkd",
                    meaning="projector 1x1 convolution [D_out, D_in, 1, 1]").reshape(shape[:2])
                out[f"projector.{ours}.bias"] = take_reference_tensor(
                    ref, f"VPT_image_trans.conv1.{theirs}.bias", (d_out,), owner="promptkd", meaning="[D_out]")
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[f"projector.norm.{name}"] = take_reference_tensor(
                    ref, f"VPT_image_trans.conv1.1.{name}", (d_out,), owner="promptkd",
                    meaning="projector BatchNorm [D_out]")
        except PromptConfigError as exc:
            raise LearnerError(str(exc)) from exc
        return {k: v.float() for k, v in out.items()}

    # ------------------------------------------------------------------ state and records
    def learned_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors plus the projector's BatchNorm running statistics (used at test time)."""
        state = super().learned_state()
        for name in ("projector.norm.running_mean", "projector.norm.running_var"):
            state[name] = self.get_parameter(name).detach().cpu().contiguous()
        return state

    def prompt_record(self) -> dict[str, Any]:
        """No text prompt of its own: the teacher's prompt record, the teacher file and the unlabeled pool."""
        teacher = self.teacher
        return {
            "learned": True,
            "text": "teacher text features",
            "teacher": {
                "learner": type(teacher).__name__ if teacher is not None else "IVLP",
                "prompt": teacher.prompt_record() if teacher is not None else None,
                "backbone": self._teacher_backbone.info.to_dict() if self._teacher_backbone is not None else "student's",
                "prompts": self.teacher_prompts,
            },
            "unlabeled_pool": self.unlabeled_pool,
        }
