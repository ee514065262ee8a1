"""One generic Lightning module for prompt-learned classification: backbone and learner are injected.

The module owns the loop-level logic every method shares (optimiser, CoOp's constant warm-up + cosine
schedule, accuracy and expected calibration error per evaluation set, label-space switching); it never branches on the learner.
Checkpoints hold only the learner's tensors, never the frozen backbone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Literal

import lightning.pytorch as pl
import torch

from vlprompt.backbones.base import VLBackbone
from vlprompt.data.distributed import is_distributed
from vlprompt.learners.base import PromptLearner
from vlprompt.metrics import calibration_bins, dassl_lr_factor, ece_from_bins, warmup_cosine_factor

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def coop_sgd(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """CoOp's optimiser: SGD, lr 0.002, momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)


class PromptClassifier(pl.LightningModule):
    """Frozen backbone + prompt learner, trained with the learner's loss.

    Args:
        backbone: the frozen model (``class_path: toyclip`` / ``openclip``...).
        learner: the prompt learner (``class_path: coop``...).
        optimizer: a callable building the optimiser from the learner's parameters (default CoOp's SGD).
        warmup_epochs: warm-up epochs before the schedule (CoOp: 1 epoch at 1e-5; Dassl's ``OPTIM.WARMUP_EPOCH``).
        warmup_lr: the warm-up learning rate (``WARMUP_CONS_LR`` for a constant warm-up, ``WARMUP_MIN_LR`` for the
            first epoch of a linear one).
        lr_scheduler: Dassl's ``OPTIM.LR_SCHEDULER``: ``cosine``, ``single_step`` or ``multi_step``.
        cosine_horizon: ``max_epochs`` (default): Dassl's schedule exactly (:func:`~vlprompt.metrics.dassl_lr_factor`:
            the cosine spans ``max_epochs`` and restarts after the warm-up), what every Dassl-based reference
            trains with; ``after_warmup``: the cosine stretched over the epochs after the warm-up
            (:func:`~vlprompt.metrics.warmup_cosine_factor`), vlprompt's default before 2026-12-06, kept in the toy
            configs whose committed leaderboard rows ran with it so that they reproduce. The two differ most on
            short schedules (10 epochs: up to 9.5% of the base rate; 200 epochs: 0.46%).
        warmup_type: Dassl's ``OPTIM.WARMUP_TYPE``: ``constant`` or ``linear``.
        warmup_recount: Dassl's ``OPTIM.WARMUP_RECOUNT`` (default True, as Dassl's).
        stepsize: Dassl's ``OPTIM.STEPSIZE``: the step of ``single_step`` (``<= 0``: ``max_epochs``), the milestones
            of ``multi_step``.
        gamma: Dassl's ``OPTIM.GAMMA``.
        task: label spaces and evaluation sets; linked from the data module by ``vlprompt fit``.
    """

    def __init__(
        self,
        backbone: VLBackbone,
        learner: PromptLearner,
        *,
        optimizer: OptimizerFactory = coop_sgd,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        lr_scheduler: Literal["cosine", "single_step", "multi_step"] = "cosine",
        cosine_horizon: Literal["max_epochs", "after_warmup"] = "max_epochs",
        warmup_type: Literal["constant", "linear"] = "constant",
        warmup_recount: bool = True,
        stepsize: int | list[int] = -1,
        gamma: float = 0.1,
        task: dict | None = None,
    ) -> None:
        super().__init__()
        if cosine_horizon == "after_warmup" and (lr_scheduler != "cosine" or warmup_type != "constant"
                                                 or not warmup_recount):
            raise ValueError(
                f"cosine_horizon='after_warmup' is vlprompt's earlier cosine with a constant, recounted warm-up; it "
                f"does not combine with lr_scheduler={lr_scheduler!r}, warmup_type={warmup_type!r}, "
                f"warmup_recount={warmup_recount}. Set --model.cosine_horizon max_epochs (Dassl's schedule).")
        if gamma <= 0:
            raise ValueError(f"gamma={gamma} must be > 0 (Dassl's OPTIM.GAMMA, e.g. 0.1)")
        self.lr_scheduler, self.cosine_horizon = lr_scheduler, cosine_horizon
        self.warmup_type, self.warmup_recount = warmup_type, warmup_recount
        self.stepsize, self.gamma = stepsize, gamma
        self.backbone = backbone
        self.learner = learner
        self.optimizer_factory = optimizer
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.task = task or {}
        self.strict_loading = False  # checkpoints carry only the learner
        self._space: str | None = None
        self._counts: dict[str, list[int]] = {}
        self._bins: dict[str, torch.Tensor] = {}  # per evaluation set: calibration_bins sums [15, 3]
        self.eval_results: dict[str, dict[str, float]] = {}
        spaces = self.task.get("label_spaces") or {}
        train_space = self.task.get("train_space")
        if spaces and train_space:
            self.learner.setup(self.backbone, spaces[train_space])

    # ------------------------------------------------------------------ label spaces
    def _use_space(self, space: str) -> None:
        if space != self._space:
            names = self.task["label_spaces"][space]
            self.learner.set_classnames(names)
            self._space = space

    def _require_task(self) -> None:
        if not self.task.get("label_spaces"):
            raise RuntimeError(
                "PromptClassifier has no task: run it through `vlprompt fit` (which links data.task to model.task) "
                "or pass task={'label_spaces': ..., 'train_space': ..., 'val_sets': ..., 'test_sets': ...}"
            )

    # ------------------------------------------------------------------ steps
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.learner(images)

    def _features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Image features ``[B, D]``: images ``[B, 3, H, W]`` are encoded; cached features ``[B, D]`` pass through."""
        return inputs if inputs.dim() == 2 else self.learner.encode_images(inputs)

    def on_train_epoch_start(self) -> None:
        self._require_task()
        self._check_unlabeled_pool()

    def _check_unlabeled_pool(self) -> None:
        """The learner's :attr:`~vlprompt.learners.base.PromptLearner.unlabeled_pool` and the data's must agree: a
        labelled learner must not get hidden labels (``-1``), an unlabeled one must get its pool."""
        want, have = getattr(self.learner, "unlabeled_pool", None), self.task.get("unlabeled_pool")
        if want == have:
            return
        name = type(self.learner).__name__
        if want is None:
            raise RuntimeError(f"{name} trains on labelled images but the protocol serves the unlabeled pool {have!r}: "
                               "remove --data.init_args.unlabeled_pool")
        raise RuntimeError(f"{name} trains on the unlabeled pool {want!r} but the protocol serves "
                           f"{'labelled images' if have is None else repr(have)}: set "
                           f"--data.init_args.unlabeled_pool {want}")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # a learner trained on an unlabeled pool scores its images over the pool's label space (every class)
        self._use_space(self.task.get("unlabeled_space") or self.task["train_space"])
        inputs, targets = batch
        feats = self._features(inputs)
        logits = self.learner.logits(feats)
        loss = self.learner.loss(logits, targets, feats)
        self.log("train/loss", loss, prog_bar=True, batch_size=targets.shape[0])
        if not self.task.get("unlabeled_space"):  # hidden labels (-1) have no accuracy
            acc = (logits.argmax(dim=1) == targets).float().mean() * 100
            self.log("train/acc", acc, prog_bar=True, batch_size=targets.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        self.learner.on_train_epoch_end(int(self.current_epoch), max(1, int(self.trainer.max_epochs or 1)))

    def on_fit_end(self) -> None:
        self.learner.on_fit_end()

    def on_before_optimizer_step(self, optimizer) -> None:
        """Let the learner transform its own gradients (generic hook; default no-op)."""
        self.learner.transform_gradients()

    def _eval_step(self, batch, dataloader_idx: int, sets: list) -> None:
        name, space = sets[dataloader_idx]
        self._use_space(space)
        inputs, targets = batch
        logits = self.learner.logits(self._features(inputs))
        pred = logits.argmax(dim=1)
        bins = calibration_bins(logits, targets)
        self._bins[name] = self._bins[name] + bins if name in self._bins else bins
        counts = self._counts.setdefault(name, [0, 0])
        counts[0] += int((pred == targets).sum())
        counts[1] += int(targets.numel())

    def _eval_end(self, stage: str) -> None:
        self._reduce_counts(stage)
        results = {name: 100.0 * c / max(1, n) for name, (c, n) in self._counts.items()}
        eces = {f"{name}_ece": ece_from_bins(b) for name, b in self._bins.items() if float(b[:, 0].sum()) > 0}
        self._counts, self._bins = {}, {}
        for name, acc in results.items():
            self.log(f"{stage}/{name}_acc", acc)
        for key, ece in eces.items():  # float64, so that a ddp_spawn parent rebuilds the same value
            self.log(f"{stage}/{key}", torch.tensor(ece, dtype=torch.float64), rank_zero_only=True)
        self.eval_results[stage] = {**results, **eces}  # e.g. {"base": acc, "new": acc, "base_ece": ..., "new_ece": ...}
        self._space = None

    def _reduce_counts(self, stage: str) -> None:
        """Under DDP, sum each evaluation set's correct / total counts over processes (every process then holds the
        one-process counts; each image is evaluated in exactly one process) and log them as
        ``<stage>/<name>_correct`` / ``_total``, from which :meth:`eval_results_from` rebuilds the accuracies in a
        ``ddp_spawn`` parent process. A no-op on one process."""
        if not is_distributed(self._trainer):
            return
        names = [name for name, _ in self.task.get("val_sets" if stage == "val" else "test_sets", [])]
        names += [n for n in self._counts if n not in names]
        for name in names:  # the calibration bins are summed like the counts
            bins = self._bins.get(name, torch.zeros(15, 3, dtype=torch.float64))
            self._bins[name] = self.trainer.strategy.reduce(bins.to(self.device), reduce_op="sum").cpu()
        counts = torch.tensor([self._counts.get(n, [0, 0]) for n in names], dtype=torch.float64,
                              device=self.device).reshape(-1, 2)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self._counts = {n: [int(c), int(t)] for n, (c, t) in zip(names, counts.cpu().tolist()) if t > 0}
        for name, (c, t) in self._counts.items():
            self.log(f"{stage}/{name}_correct", float(c), rank_zero_only=True)
            self.log(f"{stage}/{name}_total", float(t), rank_zero_only=True)

    def eval_results_from(self, metrics: dict, stage: str) -> dict[str, float]:
        """Accuracies per evaluation set rebuilt from logged ``<stage>/<name>_correct`` / ``_total`` counts (what a
        ``ddp_spawn`` parent process gets back in ``trainer.callback_metrics``), in the task's set order, then the
        logged ``<name>_ece`` of those sets."""
        names = [name for name, _ in self.task.get("val_sets" if stage == "val" else "test_sets", [])]
        out = {}
        for name in names:
            c, t = metrics.get(f"{stage}/{name}_correct"), metrics.get(f"{stage}/{name}_total")
            if c is not None and t is not None:
                out[name] = 100.0 * int(round(float(c))) / max(1, int(round(float(t))))
        for name in names:
            ece = metrics.get(f"{stage}/{name}_ece")
            if ece is not None and name in out:
                out[f"{name}_ece"] = float(ece)
        return out

    def on_validation_epoch_start(self) -> None:
        self._require_task()
        self._counts, self._bins = {}, {}

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, self.task["val_sets"])

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._require_task()
        self._counts, self._bins = {}, {}

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, self.task["test_sets"])

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        groups = [g for g in self.learner.optimizer_groups() if g["params"]]
        if not groups:
            raise RuntimeError(f"{type(self.learner).__name__} has no trainable parameters: evaluate it with `vlprompt test`")
        opt = self.optimizer_factory(groups)
        apply_lr_scales(opt)
        max_epochs = max(1, int(self.trainer.max_epochs or 1))
        base_lrs = [g["lr"] for g in opt.param_groups]

        def factor(epoch: int, base_lr: float) -> float:
            if self.cosine_horizon == "after_warmup":
                return warmup_cosine_factor(epoch, max_epochs=max_epochs, warmup_epochs=self.warmup_epochs,
                                            warmup_factor=self.warmup_lr / base_lr)
            return dassl_lr_factor(
                epoch, max_epochs=max_epochs, scheduler=self.lr_scheduler, warmup_epochs=self.warmup_epochs,
                warmup_type=self.warmup_type, warmup_factor=self.warmup_lr / base_lr,
                warmup_recount=self.warmup_recount, stepsize=self.stepsize, gamma=self.gamma)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda e, b=b: factor(e, b) for b in base_lrs])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------------ checkpoints: learner only
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("backbone.")}
        checkpoint["vlprompt"] = {"backbone": self.backbone.info.to_dict(), "classnames": self.learner.train_classnames}


def apply_lr_scales(opt: torch.optim.Optimizer) -> None:
    """Turn each param group's ``lr_scale`` (set by :meth:`PromptLearner.optimizer_groups`) into its ``lr``."""
    for group in opt.param_groups:
        scale = group.pop("lr_scale", None)
        if scale is not None:
            group["lr"] = group["lr"] * float(scale)
