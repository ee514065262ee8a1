"""One generic Lightning module for prompt-learned segmentation on a VLSM: backbone and learner injected.

The same learner plugins as classification serve segmentation (TuneVLSeg, Adhikari et al. ACCV 2024): the
prompts of a batch play the role of class names, the learner encodes the images (inserting its visual prompts,
if any) while the backbone records what its mask decoder reads, the learner gives the text feature of each
image's own prompt, and the backbone decodes mask logits from both:

    with segmentation_text():                                     # vlprompt.learners.prompts.layers: text rules
      learner.set_classnames(unique prompts of the batch)
      with backbone.record_activations() as rec:
          feats = learner.encode_images(images)
          text = learner.paired_text_features(feats, prompt_index)  # [B, D], raw projected text feature
      logits = backbone.decode_masks(rec, text)                    # [B, H, W]
    loss = dice + 0.2 * bce                                        # vlprompt.metrics.segmentation

Inside :func:`~vlprompt.learners.prompts.layers.segmentation_text` every learner follows the same text rules without knowing the
task: the dataset's prompt is inserted verbatim after the learner's context (its full stop is the dataset's
``stop_at_end``, TuneVLSeg's ``insert_stop_at_last``; no learner adds one), and hand-written templates give the
raw projected text feature, which is what CLIPSeg/TuneVLSeg condition the decoder on (no L2 normalisation).

Loop-level choices follow the reference (naamiinepal/tunevlseg ``ImageTextMaskModule`` and its configs):
AdamW lr 2e-4, ReduceLROnPlateau(mode=min, factor=0.2, patience=5) on the validation loss each epoch, and the
learned tensors of the epoch with the best validation Dice are kept (the reference tests its best-``val_dice``
checkpoint; ties keep the earlier epoch, as Lightning's ModelCheckpoint). Deliberate differences:

- weight decay (default 0.01) applies only to Linear/Conv weights (:func:`~vlprompt.metrics.segmentation.weight_decay_groups`).
  The reference's default config sets ``weight_decay: 0.0``, which makes it call ``AdamW(all parameters)``
  with AdamW's own default decay 0.01 on every tensor, prompts included; its hyper-parameter search uses the
  split groups. Here the split groups are always used;
- the learner's own :meth:`~vlprompt.learners.base.PromptLearner.loss` (cross-entropy plus regularisers such
  as KgCoOp's or PromptSRC's) is a classification loss over class logits and is not used: segmentation trains
  on Dice + BCE only, as every TuneVLSeg strategy does. The learner's epoch-end, fit-end and gradient hooks
  do run; at fit end the best-validation-Dice tensors replace whatever the fit-end hook left;
- no early stopping (the reference stops after 12 epochs without a 1e-4 decrease of the validation loss).

``decoder_branch`` adds TuneVLSeg's trainable decoder branch (``use_new_last_layer``, :class:`DecoderBranch`) beside
the frozen decoder; off by default. Its tensors train with the learner's, are kept with the best epoch's, counted
in the run's trainable parameters and saved in the Lightning checkpoint and, per seed, as
``decoder_branch.safetensors`` beside ``prompts.safetensors`` (read back by ``vlprompt test --prompts``).

Checkpoints hold only the learned tensors (the learner's, the branch's, and the best epoch's copy), never the
frozen backbone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from vlprompt.backbones.base import VLBackbone
from vlprompt.data.atomic import save_safetensors
from vlprompt.learners.prompts.layers import segmentation_text
from vlprompt.learners.base import LearnerError, PromptLearner, fresh_text_features
from vlprompt.metrics.segmentation import (
    NSD_TOLERANCE_PX,
    SegmentationScores,
    dice_bce_loss,
    weight_decay_groups,
)
from vlprompt.modules.classification import apply_lr_scales
from vlprompt.modules.overlays import OVERLAYS_ARTIFACT, save_overlays, wandb_mask_images

log = logging.getLogger(__name__)

#: the "text ignored" controls :class:`PromptSegmenter` can evaluate beside the real prompts (``text_controls``)
TEXT_CONTROLS = ("empty", "shuffled")

#: the class names a learner is built with on the segmentation track (prompts then change per batch)
SETUP_PROMPTS = ("object",)
#: the file of the decoder branch's tensors in a seed folder (beside ``prompts.safetensors``)
DECODER_BRANCH_FILE = "decoder_branch.safetensors"
#: how the branch meets the decoder's logits: TuneVLSeg's two forms (see :class:`DecoderBranch`)
BRANCH_MIXES = ("residual", "add")


class DecoderBranch(nn.Module):
    """TuneVLSeg's trainable decoder branch (``use_new_last_layer``; naamiinepal/tunevlseg @7956bcd,
    ``src/models/core_models/coop/base_clipseg.py`` lines 56-72 and 152-155, ``vpt_clipseg.py`` lines 301-302).

    On the feature map ``z [B, C, h, w]`` the decoder's transposed convolution reads (CLIPSeg: ``C = reduce_dim``,
    after dropping the class and prompt tokens) it computes ``e = conv(up(z))``: ``up`` bilinear upsampling by
    ``stride`` (the patch size; ``align_corners=False``), ``conv`` a ``kernel_size`` convolution ``C -> 1`` with
    "same" replicate padding and PyTorch's default init. With the decoder's logits ``y [B, 1, H, W]``:

    - ``mix="residual"``: ``(1 - r) * y + r * e`` with ``r`` learned, starting at ``residual_ratio`` (0.5)
      (TuneVLSeg's ``BaseCLIPSeg.decoder_forward``: MaPLe and the shared learners);
    - ``mix="add"``: ``y + e`` (TuneVLSeg's ``VPTCLIPSeg``, which builds ``r`` but never uses it; not built here).

    TuneVLSeg's CoOp/CoCoOp models (``COOPCLIPSeg``) build the branch but call the HF decoder, so it never reaches
    their logits: their ``tunevlseg`` configs leave it off. On CRIS (``COOPCRIS``, ``coop_cris.py`` lines 72-88 and
    235-242) the branch does reach the logits, with a bias-free 1x1 convolution ``C -> reduce`` (64) first and the
    ``kernel_size`` convolution then from ``reduce`` channels (``reduce``; applied before the upsampling, with which
    a 1x1 convolution commutes).

    Args:
        channels: ``C``, the backbone's :attr:`~vlprompt.backbones.base.VLBackbone.decoder_width`.
        stride: the upsampling factor, the backbone's :attr:`~vlprompt.backbones.base.VLBackbone.decoder_stride`.
        kernel_size: odd convolution size (TuneVLSeg's ``new_last_layer_kernel_size``: 5).
        residual_ratio: the start of ``r`` (TuneVLSeg: 0.5).
        mix: ``residual`` or ``add``.
        reduce: channels of a bias-free 1x1 convolution applied first (TuneVLSeg's CRIS: 64); ``None``: none.
    """

    def __init__(self, channels: int, stride: int, *, kernel_size: int = 5, residual_ratio: float = 0.5,
                 mix: str = "residual", reduce: int | None = None) -> None:
        super().__init__()
        if mix not in BRANCH_MIXES:
            raise ValueError(f"decoder_branch mix={mix!r} is not one of {list(BRANCH_MIXES)}: 'residual' mixes "
                             "(1 - r) * decoder + r * branch (TuneVLSeg's MaPLe/shared models), 'add' adds it (VPT)")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"decoder_branch kernel_size={kernel_size!r} must be an odd positive integer (TuneVLSeg: 5)")
        if channels < 1 or stride < 1:
            raise ValueError(f"decoder_branch needs positive channels and stride, got {channels} and {stride}")
        if reduce is not None and (isinstance(reduce, bool) or not isinstance(reduce, int) or reduce < 1):
            raise ValueError(f"decoder_branch reduce={reduce!r} must be a positive number of channels (TuneVLSeg's "
                             "CRIS: 64) or null")
        self.stride = int(stride)
        self.mix = mix
        if reduce is not None:
            self.reduce = nn.Conv2d(channels, reduce, 1, bias=False)
        self.conv = nn.Conv2d(channels if reduce is None else reduce, 1, kernel_size, padding="same",
                              padding_mode="replicate")
        if mix == "residual":
            self.ratio = nn.Parameter(torch.tensor(float(residual_ratio)))

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``features [B, C, h, w]``, ``logits [B, 1, h * stride, w * stride]`` -> logits of the same shape."""
        if hasattr(self, "reduce"):
            features = self.reduce(features)
        extra = self.conv(F.interpolate(features, scale_factor=float(self.stride), mode="bilinear"))
        if self.mix == "add":
            return logits + extra
        return (1 - self.ratio) * logits + self.ratio * extra


def make_decoder_branch(backbone: VLBackbone, options: Mapping[str, Any]) -> DecoderBranch:
    """The :class:`DecoderBranch` of ``options`` (``kernel_size``, ``residual_ratio``, ``mix``, ``reduce``) for
    ``backbone``; a ``ValueError`` naming the unknown key or the backbone without decoder features."""
    if not isinstance(options, Mapping):
        raise ValueError(f"decoder_branch={options!r} must be a mapping such as {{kernel_size: 5, residual_ratio: 0.5, "
                         "mix: residual}} (or null for none)")
    unknown = sorted(set(options) - {"kernel_size", "residual_ratio", "mix", "reduce"})
    if unknown:
        raise ValueError(f"decoder_branch has unknown keys {unknown}: use kernel_size, residual_ratio, mix and reduce")
    width, stride = getattr(backbone, "decoder_width", None), getattr(backbone, "decoder_stride", None)
    if width is None or stride is None:
        raise ValueError(f"decoder_branch needs the decoder's feature map, which {type(backbone).__name__} does not "
                         "expose (decoder_width/decoder_stride): use a CLIPSeg or CRIS backbone or set "
                         "decoder_branch: null")
    return DecoderBranch(int(width), int(stride), **dict(options))


def require_learner_task(learner: PromptLearner, task: str) -> None:
    """Raise :class:`LearnerError` if ``learner`` does not declare ``task`` in its ``tasks``."""
    tasks = tuple(getattr(learner, "tasks", ()))
    if task not in tasks:
        raise LearnerError(
            f"learner {type(learner).__name__} serves {list(tasks)}, not {task!r} (its class declares `tasks`). "
            f"Pick a learner that serves {task} (e.g. coop, cocoop, vpt, maple) or run it on the other track."
        )


class PromptSegmenter(pl.LightningModule):
    """Frozen VLSM + prompt learner, trained with Dice + BCE on (image, prompt, mask) batches.

    Args:
        backbone: a backbone serving ``segmentation`` (``class_path: clipseg`` / the embedded toy VLSM).
        learner: a prompt learner whose ``tasks`` include ``segmentation``.
        lr: AdamW learning rate (TuneVLSeg: 2e-4); learner groups with ``lr_scale`` / ``lr`` keep them.
        weight_decay: AdamW weight decay of Linear/Conv weights (biases, norms, embeddings, prompts: none).
        lambda_dice / lambda_ce: weights of the Dice and BCE terms (TuneVLSeg: 1 and 0.2).
        threshold: probability threshold of the metrics (0.5).
        plateau_factor / plateau_patience: ReduceLROnPlateau on the validation loss (0.2, 5 epochs).
        keep_best: keep the learned tensors of the best-validation-Dice epoch (TuneVLSeg); ``false`` keeps the last.
        overlays: test images per seed drawn as overlay PNGs (image, ground truth, prediction) in the run folder.
        boundary_metrics: on the test split, also normalised surface Dice (``nsd``, %) and HD95 (``hd95``, pixels)
            per image (:func:`~vlprompt.metrics.segmentation.boundary_scores`, MONAI); validation stays Dice/IoU.
        nsd_tolerance_px: NSD's tolerance in pixels of the evaluated mask (default 2).
        text_controls: "text ignored" controls evaluated on the test split beside the real prompts (issue 29):
            ``empty`` (every prompt replaced by the empty string) and/or ``shuffled`` (each image gets the prompt of
            the image before it in test order; the first image of the split the last one's). Recorded as
            ``dice_text_<control>`` / ``iou_text_<control>``, and for ``shuffled`` the percentage of images whose
            prompt actually changed (``text_shuffled_changed``: 0 on a dataset with one prompt). A learner whose
            Dice barely moves under these controls is not using the text.
        decoder_branch: TuneVLSeg's trainable decoder branch, ``{kernel_size, residual_ratio, mix}``
            (:class:`DecoderBranch`; TuneVLSeg: 5, 0.5, and ``residual`` or ``add`` by model); ``None`` = none.
        task: evaluation sets; linked from the data module by ``vlprompt fit``.
    """

    def __init__(
        self,
        backbone: VLBackbone,
        learner: PromptLearner,
        *,
        lr: float = 2e-4,
        weight_decay: float = 0.01,
        lambda_dice: float = 1.0,
        lambda_ce: float = 0.2,
        threshold: float = 0.5,
        plateau_factor: float = 0.2,
        plateau_patience: int = 5,
        keep_best: bool = True,
        overlays: int = 4,
        boundary_metrics: bool = True,
        nsd_tolerance_px: float = NSD_TOLERANCE_PX,
        text_controls: Sequence[str] = (),
        decoder_branch: dict | None = None,
        task: dict | None = None,
    ) -> None:
        super().__init__()
        backbone.require_task("segmentation", f"the segmentation module (learner {type(learner).__name__})")
        require_learner_task(learner, "segmentation")
        if not learner.transfers_to_new_classes:
            raise LearnerError(
                f"{type(learner).__name__} is configured with parameters tied to fixed class names (e.g. class-specific "
                "context), but segmentation prompts change from batch to batch. Use a class-agnostic configuration "
                "(for CoOp: class_specific: false)."
            )
        unknown = sorted(set(text_controls) - set(TEXT_CONTROLS))
        if unknown:
            raise ValueError(f"text_controls={list(text_controls)}: unknown {unknown}; choose from {list(TEXT_CONTROLS)}")
        if nsd_tolerance_px < 0:
            raise ValueError(f"nsd_tolerance_px={nsd_tolerance_px} must be >= 0 (pixels)")
        if lr <= 0 or weight_decay < 0 or overlays < 0:
            raise ValueError(f"lr={lr} must be > 0, weight_decay={weight_decay} and overlays={overlays} >= 0")
        self.backbone = backbone
        self.learner = learner
        self.lr, self.weight_decay = lr, weight_decay
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce
        self.threshold = threshold
        self.plateau_factor, self.plateau_patience = plateau_factor, plateau_patience
        self.keep_best = keep_best
        self.n_overlays = overlays
        self.task = task or {}
        self.strict_loading = False  # checkpoints carry only the learner
        self.boundary_metrics = boundary_metrics
        self.scores = SegmentationScores(threshold=threshold, tolerance_px=nsd_tolerance_px)
        self.text_controls = tuple(dict.fromkeys(text_controls))
        self.control_scores = {c: SegmentationScores(threshold=threshold) for c in self.text_controls}
        self._previous_prompt: str | None = None
        self._shuffled_changed, self._shuffled_n = 0, 0
        self.eval_results: dict[str, dict[str, float]] = {}
        self.best: dict[str, Any] = {"dice": None, "epoch": None, "state": None}
        self.overlay_samples: list[dict[str, Any]] = []
        self._prompts: list[str] | None = None
        self._loss_sum, self._loss_n = 0.0, 0
        with segmentation_text():
            self.learner.setup(self.backbone, list(self.task.get("setup_prompts") or SETUP_PROMPTS))
        self.decoder_branch = None if decoder_branch is None else make_decoder_branch(backbone, decoder_branch)

    # ------------------------------------------------------------------ the segmentation step
    def _use_prompts(self, prompts: list[str]) -> None:
        if prompts != self._prompts:
            self.learner.set_classnames(prompts)
            self._prompts = prompts

    def mask_logits(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Mask logits ``[B, H, W]`` of images ``[B, 3, H, W]`` (in ``[0, 1]``), each with its own prompt, under
        the segmentation track's text rules (:func:`~vlprompt.learners.prompts.layers.segmentation_text`)."""
        with segmentation_text():
            return self._mask_logits(images, prompts)

    def _mask_logits(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        unique = list(dict.fromkeys(prompts))
        self._use_prompts(unique)
        index = torch.tensor([unique.index(p) for p in prompts], device=images.device)
        # a decoder that reads word states (CRIS) must see this step's text encodings: no cached text features
        with fresh_text_features(self.backbone.decoder_reads_words), self.backbone.record_activations() as record:
            feats = self.learner.encode_images(images)
            text = self.learner.paired_text_features(feats, index)
        branch = {} if self.decoder_branch is None else {"branch": self.decoder_branch}
        return self.backbone.decode_masks(record, text, output_size=tuple(images.shape[-2:]), **branch)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.mask_logits(images, prompts)

    def _step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        masks = batch["mask"]
        masks = masks[:, 0] if masks.dim() == 4 else masks
        logits = self.mask_logits(batch["image"], list(batch["prompt"]))
        if logits.shape[-2:] != masks.shape[-2:]:
            raise RuntimeError(f"the backbone decoded masks of size {tuple(logits.shape[-2:])} for ground-truth masks "
                               f"of size {tuple(masks.shape[-2:])}")
        target = batch.get("target")  # TuneVLSeg's soft target mask / 255 (protocol soft_targets); else the mask
        target = masks if target is None else (target[:, 0] if target.dim() == 4 else target)
        loss = dice_bce_loss(logits, target.to(logits.dtype), lambda_dice=self.lambda_dice, lambda_ce=self.lambda_ce)
        return logits, masks, loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        logits, masks, loss = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=masks.shape[0])
        return loss

    def on_fit_start(self) -> None:
        """Before the first step: the schedule (ReduceLROnPlateau on ``val/loss``) and the best-epoch choice read the
        validation split every epoch, so a trainer that skips validation is refused here, not after an epoch."""
        every = getattr(self.trainer, "check_val_every_n_epoch", 1)
        limit = getattr(self.trainer, "limit_val_batches", 1.0)
        if (every is not None and every > 1) or limit == 0:
            raise LearnerError(
                f"the segmentation module validates every epoch (ReduceLROnPlateau on val/loss, best-validation-Dice "
                f"prompts), but the trainer has check_val_every_n_epoch={every}, limit_val_batches={limit} (e.g. from a "
                "classification trainer config such as configs/trainer/gpu_fp32.yaml): add "
                "--trainer.check_val_every_n_epoch 1")

    def on_train_epoch_start(self) -> None:
        """Tell the training set the epoch (per-epoch random prompts with ``prompt_index: -1``)."""
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        set_epoch = getattr(dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(int(self.current_epoch))

    def on_train_epoch_end(self) -> None:
        self.learner.on_train_epoch_end(int(self.current_epoch), max(1, int(self.trainer.max_epochs or 1)))

    def on_before_optimizer_step(self, optimizer) -> None:
        """Let the learner transform its own gradients (generic hook; default no-op)."""
        self.learner.transform_gradients()

    def on_fit_end(self) -> None:
        self.learner.on_fit_end()
        if self.keep_best and self.best["state"] is not None:
            self.learner.set_learned_state(self.best["state"])
            if self.decoder_branch is not None and self.best.get("branch") is not None:
                self.decoder_branch.load_state_dict(self.best["branch"])
            log.info("kept the learned prompts of epoch %d (best validation Dice %.2f)", self.best["epoch"] + 1,
                     self.best["dice"])

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self, stage: str) -> None:
        self.scores.reset()
        self.scores.boundary = self.boundary_metrics and stage == "test"
        for scores in self.control_scores.values():
            scores.reset()
        self._previous_prompt = None
        self._shuffled_changed, self._shuffled_n = 0, 0
        self._loss_sum, self._loss_n = 0.0, 0

    def _control_prompts(self, control: str, prompts: list[str]) -> list[str]:
        """The prompts of a text-ignored control (see ``text_controls``)."""
        if control == "empty":
            return [""] * len(prompts)
        previous = self._previous_prompt if self._previous_prompt is not None else prompts[-1]
        shuffled = [previous] + prompts[:-1]
        self._previous_prompt = prompts[-1]
        self._shuffled_changed += sum(a != b for a, b in zip(shuffled, prompts))
        self._shuffled_n += len(prompts)
        return shuffled

    def _score_text_controls(self, batch: dict, masks: torch.Tensor) -> None:
        prompts = [str(p) for p in batch["prompt"]]
        for control, scores in self.control_scores.items():
            with torch.no_grad():
                scores.update(self.mask_logits(batch["image"], self._control_prompts(control, prompts)), masks)

    def _eval_step(self, batch, *, keep_overlays: bool) -> torch.Tensor:
        """Score one evaluation batch; returns its ground-truth masks ``[B, H, W]``."""
        logits, masks, loss = self._step(batch)
        self.scores.update(logits, masks)
        self._loss_sum += float(loss) * masks.shape[0]
        self._loss_n += int(masks.shape[0])
        room = self.n_overlays - len(self.overlay_samples)
        if keep_overlays and room > 0:
            for i in range(min(room, masks.shape[0])):
                self.overlay_samples.append({
                    "image": batch["image"][i].detach().float().cpu(), "mask": masks[i].detach().float().cpu(),
                    "prob": torch.sigmoid(logits[i].detach().float()).cpu(), "prompt": str(batch["prompt"][i]),
                    "name": str(batch["name"][i]) if "name" in batch else str(len(self.overlay_samples)),
                })
        return masks

    def _eval_end(self, stage: str) -> dict[str, float]:
        results = self.scores.compute()
        if stage == "test":
            for control, scores in self.control_scores.items():
                results.update({f"{k}_text_{control}": v for k, v in scores.compute().items()})
            if "shuffled" in self.control_scores:
                results["text_shuffled_changed"] = 100.0 * self._shuffled_changed / max(1, self._shuffled_n)
        self.eval_results[stage] = dict(results)
        results["loss"] = self._loss_sum / max(1, self._loss_n)
        for k, v in results.items():
            self.log(f"{stage}/{k}", v)
        self._prompts = None
        return results

    def on_validation_epoch_start(self) -> None:
        self._eval_start("val")

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, keep_overlays=False)

    def on_validation_epoch_end(self) -> None:
        results = self._eval_end("val")
        if self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking:
            dice = results["dice"]
            if self.best["dice"] is None or dice > self.best["dice"]:
                state = {k: v.clone() for k, v in self.learner.learned_state().items()}
                branch = None if self.decoder_branch is None else {
                    k: v.detach().clone() for k, v in self.decoder_branch.state_dict().items()}
                self.best = {"dice": dice, "epoch": int(self.current_epoch), "state": state, "branch": branch}

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")
        self.overlay_samples = []

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        masks = self._eval_step(batch, keep_overlays=True)
        if self.control_scores:
            self._score_text_controls(batch, masks)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
        self._log_masks_to_wandb()

    def _log_masks_to_wandb(self) -> None:
        """With a W&B logger (``configs/trainer/wandb.yaml``), log the overlay samples as W&B mask layers."""
        loggers = [lg for lg in (self.loggers or []) if isinstance(lg, WandbLogger)]
        if not loggers or not self.overlay_samples:
            return
        images = wandb_mask_images(self.overlay_samples, threshold=self.threshold)
        for lg in loggers:
            lg.experiment.log({"test/masks": images})

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        groups = [g for g in self.learner.optimizer_groups() if g["params"]]
        if self.decoder_branch is not None:
            groups.append({"params": list(self.decoder_branch.parameters())})
        if not groups:
            raise RuntimeError(f"{type(self.learner).__name__} has no trainable parameters: evaluate it with `vlprompt test`")
        opt = torch.optim.AdamW(weight_decay_groups(self, groups, self.weight_decay), lr=self.lr)
        apply_lr_scales(opt)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=self.plateau_factor, patience=self.plateau_patience)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch", "frequency": 1}}

    # ------------------------------------------------------------------ checkpoints: learner only
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("backbone.")}
        checkpoint["vlprompt"] = {"backbone": self.backbone.info.to_dict(), "classnames": self.learner.train_classnames}
        checkpoint["vlprompt_best"] = dict(self.best)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        best = checkpoint.get("vlprompt_best")
        if isinstance(best, dict):
            self.best = dict(best)

    # ------------------------------------------------------------------ what the run records
    def result_fields(self) -> dict[str, Any]:
        """Fields added to the result JSON: how the saved prompts were chosen."""
        if not self.learner.trainable:
            return {}
        return {"checkpoint_selection": "best validation Dice epoch (TuneVLSeg)" if self.keep_best else "last epoch"}

    def seed_report(self, seed_dir: Path) -> dict[str, Any]:
        """Per-seed extras: the kept epoch and the overlay PNGs written into ``seed_dir`` (``artifacts``:
        ``{"overlays": [png, ...]}``, recorded in the result as ``seed<k>/overlays``)."""
        out: dict[str, Any] = {}
        if self.decoder_branch is not None:
            path = Path(seed_dir) / DECODER_BRANCH_FILE
            save_safetensors({k: v.detach().cpu() for k, v in self.decoder_branch.state_dict().items()}, path,
                             metadata={"mix": self.decoder_branch.mix})
            out.setdefault("artifacts", {})["decoder_branch"] = str(path)
        if self.keep_best and self.best["epoch"] is not None:
            out["selected_epoch"] = int(self.best["epoch"]) + 1
            out["selected_val_dice"] = round(float(self.best["dice"]), 4)
        if self.overlay_samples:
            paths = save_overlays(self.overlay_samples, Path(seed_dir) / "overlays", threshold=self.threshold)
            # one naming rule, read by the leaderboard's gallery: the result lists them as ``seed<k>/overlays``
            out.setdefault("artifacts", {})[OVERLAYS_ARTIFACT] = [str(p) for p in paths]
        return out

    def load_extra_learned(self, folder: str | Path) -> None:
        """Load the decoder branch saved beside a ``prompts.safetensors`` in ``folder`` (``vlprompt test
        --prompts``); nothing to do without a branch. A missing or mismatched file is an error naming it."""
        if self.decoder_branch is None:
            return
        path = Path(folder) / DECODER_BRANCH_FILE
        if not path.is_file():
            raise LearnerError(
                f"this module has a decoder_branch, but {str(path)!r} does not exist: the prompts were trained "
                "without one, or the file was not copied with them. Pass the seed folder's prompts of a run with "
                "the same decoder_branch, or set model.decoder_branch: null")
        try:
            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
            self.decoder_branch.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - unreadable or another branch shape: name the file and the fix
            raise LearnerError(f"{str(path)!r} does not hold this decoder_branch's tensors ({exc}): use the options "
                               "it was trained with (kernel_size, mix) or re-run `vlprompt fit`") from exc
