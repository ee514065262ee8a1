"""The prompt-learner plugin interface.

A learner is an ``nn.Module`` holding only its own parameters; the host module hands it the frozen
backbone and the class names of the current label space. The same learner object serves several
protocols (base-to-new, few-shot, cross-dataset, ...) because it never knows which one it is in: it
only sees :meth:`set_classnames` calls.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.data.atomic import save_safetensors

log = logging.getLogger(__name__)

FAMILIES = ("text", "visual", "multimodal", "meta-learned", "test-time", "baseline")


def _tensor_key(named: list[tuple[str, torch.Tensor]]) -> tuple:
    """Identity, storage, shape and in-place version of each tensor (inference tensors have no version)."""
    return tuple((k, id(v), v.data_ptr(), tuple(v.shape), -1 if v.is_inference() else v._version) for k, v in named)


#: the words of a resource track (:attr:`PromptLearner.resources`), beyond the protocol's labelled images
RESOURCES = ("LLM text", "teacher model", "unlabeled images", "image-text corpus", "test image", "earlier test images")

#: learner attributes :meth:`PromptLearner.prompt_record` reports when a learner sets them (hand-written text and
#: the initialisation of learned context)
PROMPT_ATTRIBUTES = ("template", "templates", "ctx_init", "n_ctx", "descriptions_path")

#: True inside :func:`fresh_text_features`: no cached text features are reused
_FRESH_TEXT: ContextVar[bool] = ContextVar("vlprompt_fresh_text", default=False)


@contextlib.contextmanager
def fresh_text_features(active: bool = True) -> Iterator[None]:
    """Inside this block (when ``active``) text features are computed afresh: :meth:`PromptLearner.cached_text_features`
    and :func:`~vlprompt.learners.prompts.layers.template_features` neither reuse nor fill their caches.

    A host uses it when its backbone must see every text encoding of a step, e.g. a segmentation backbone whose
    decoder reads the prompt's word states (:attr:`~vlprompt.backbones.base.VLBackbone.decoder_reads_words`)."""
    token = _FRESH_TEXT.set(bool(active) or _FRESH_TEXT.get())
    try:
        yield
    finally:
        _FRESH_TEXT.reset(token)


def text_caches_allowed() -> bool:
    """False inside :func:`fresh_text_features`: text-feature caches must be bypassed."""
    return not _FRESH_TEXT.get()


class LearnerError(ValueError):
    """A learner cannot do what it was asked; the message names the value and the fix."""


def check_prompt_tensors(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse learned tensors that are not floating point or hold NaN / infinite values, naming ``source``
    and the tensor: such prompts evaluate at chance (or truncate silently) instead of failing."""
    for name, t in state.items():
        if not torch.is_tensor(t) or not t.is_floating_point():
            raise LearnerError(f"{source}: tensor {name!r} has dtype {getattr(t, 'dtype', type(t).__name__)}, expected a "
                               "floating-point tensor; the file is damaged or not a prompts file.")
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise LearnerError(f"{source}: tensor {name!r} holds {bad} NaN or infinite value(s) of {t.numel()}; "
                               "these prompts cannot be evaluated. Re-train them, or use a checkpoint from before "
                               "the training diverged.")


class PromptLearner(nn.Module, abc.ABC):
    """Base class of every prompt learner (built-in or third-party).

    Class attributes a plugin sets:
        family: one of ``text``, ``visual``, ``multimodal``, ``meta-learned``, ``test-time``, ``baseline`` (not a
            prompt learner: e.g. the linear probe on image features).
        trainable: ``False`` for learners with nothing to fit (zero-shot): ``fit`` only evaluates them.
        modifies_image_encoder: ``True`` if image features depend on learned parameters (visual prompts);
            ``False`` lets protocols cache frozen image features.
        transfers_to_new_classes: ``False`` if learned parameters are tied to the training classes
            (e.g. class-specific context), so evaluating on unseen classes is refused.

    Subclasses implement :meth:`build` and either :meth:`text_features` (shared classifier) or override
    :meth:`logits` (instance-conditioned classifiers, e.g. CoCoOp).
    """

    family: ClassVar[str] = "text"
    #: the tracks the learner serves: ``classification`` and/or ``segmentation`` (prompted VLSM mask decoding).
    #: A host module refuses a learner whose ``tasks`` lacks its track, before any work starts.
    tasks: ClassVar[tuple[str, ...]] = ("classification", "segmentation")
    trainable: ClassVar[bool] = True
    modifies_image_encoder: ClassVar[bool] = False
    transfers_to_new_classes: ClassVar[bool] = True
    #: the unlabeled image pool the learner trains on instead of the protocol's labelled images (a name of
    #: :data:`vlprompt.protocols.base2new.UNLABELED_POOLS`, e.g. ``train_all_classes``), or ``None`` (labelled
    #: training). The protocol must serve the same pool (``--data.init_args.unlabeled_pool``): the host module
    #: refuses a mismatch before training; targets of unlabeled images are ``-1``.
    unlabeled_pool: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self._backbone: VLBackbone | None = None
        self.classnames: list[str] = []
        self.train_classnames: list[str] = []
        self._text_cache: torch.Tensor | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def backbone(self) -> VLBackbone:
        if self._backbone is None:
            raise LearnerError(f"{type(self).__name__} is not set up: call learner.setup(backbone, classnames) first")
        return self._backbone

    @property
    def on_training_classes(self) -> bool:
        """True while the label space is the one the learner was set up (trained) on: :attr:`classnames` equals
        :attr:`train_classnames`. Learners whose rule differs between base and new classes (MMRL's fused head, DPC's
        parallel prompt, DePT's decoupled head) read it; the host tells a learner its label space only through
        :meth:`set_classnames`."""
        return self.classnames == self.train_classnames

    def setup(self, backbone: VLBackbone, classnames: Sequence[str]) -> None:
        """Bind the frozen backbone (not registered as a submodule) and build parameters for ``classnames``."""
        object.__setattr__(self, "_backbone", backbone)
        if self.modifies_image_encoder:
            backbone.require_visual_prompts(type(self).__name__)
        self.train_classnames = list(classnames)
        self.build(backbone, list(classnames))
        self.set_classnames(classnames)

    @abc.abstractmethod
    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        """Create parameters and buffers for this backbone and the training classes."""

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Switch the label space (e.g. base -> new classes); learned parameters are kept."""
        classnames = list(classnames)
        if not self.transfers_to_new_classes and self.train_classnames and classnames != self.train_classnames:
            raise LearnerError(
                f"{type(self).__name__} has parameters tied to its {len(self.train_classnames)} training classes "
                "and cannot score other classes (e.g. new classes in base-to-new). Use a class-agnostic "
                "configuration (for CoOp: class_specific: false)."
            )
        self.classnames = classnames
        self._text_cache = None
        self.on_classnames_changed(classnames)

    def on_classnames_changed(self, classnames: list[str]) -> None:
        """Hook: rebuild class-dependent buffers (token embeddings of the names)."""

    def train(self, mode: bool = True) -> "PromptLearner":
        self._text_cache = None
        return super().train(mode)

    # ------------------------------------------------------------------ what a result records
    def resource_track(self) -> tuple[str, ...]:
        """The resources this configured learner uses beyond the standard track (the protocol's labelled images and
        the frozen backbone), in :data:`RESOURCES` words, e.g. ``("LLM text",)`` or ``("teacher model", "unlabeled
        images")``; ``()`` is the standard track. Default: the class attribute ``resources`` where a learner (or a
        mixin such as :class:`~vlprompt.learners.prompts.tta.TestTimeMethod`) sets one, else ``()``. Results record it
        (``resources``) and leaderboards show it, so rows of different tracks are never compared unmarked."""
        return tuple(getattr(self, "resources", ()))

    def prompt_record(self) -> dict[str, Any]:
        """The prompt text the learner evaluates with, for the result JSON (``prompt``): the hand-written template(s)
        and the words initialising learned context, from the attributes in :data:`PROMPT_ATTRIBUTES` that this
        learner sets (``None`` values left out), plus ``learned: true`` when trained tensors enter the prompts.
        A learner whose prompt is built otherwise overrides it."""
        out: dict[str, Any] = {}
        for name in PROMPT_ATTRIBUTES:
            value = getattr(self, name, None)
            if isinstance(value, (str, int)) and not isinstance(value, bool) or (
                    isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) and value):
                out["descriptions" if name == "descriptions_path" else name] = list(value) if isinstance(value, tuple) else value
        out["learned"] = bool(self.trainable)
        return out

    # ------------------------------------------------------------------ forward
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Image features ``[B, D]`` of images ``[B, 3, H, W]`` in ``[0, 1]``."""
        return self.backbone.encode_image(images)

    def text_features(self) -> torch.Tensor:
        """Class text features ``[C, D]`` for the current class names."""
        raise NotImplementedError(f"{type(self).__name__} must implement text_features() or logits()")

    def cached_text_features(self) -> torch.Tensor:
        """:meth:`text_features`, cached while evaluating without gradients.

        The cache is per label space and per state of the learner's tensors: any change (``load_state_dict``,
        :meth:`set_learned_state`, in-place edits, optimiser steps) recomputes it.
        """
        if self.training or torch.is_grad_enabled() or not text_caches_allowed():
            return self.text_features()
        if self._text_cache is None or not self._text_cache_is_current():
            self._text_cache = self.text_features()
            self._text_cache_state = self._tensor_fingerprint()
        return self._text_cache

    # ------------------------------------------------------------------ text-cache validity
    def _tensor_fingerprint(self) -> tuple[tuple, dict[str, torch.Tensor]]:
        """What the cached text features were computed from: ``(key, parameter values)``.

        ``key`` holds each parameter's and buffer's identity, storage pointer, shape and in-place version
        counter (bumped by ``copy_``, optimiser steps, ``load_state_dict``...); the parameter values are
        also kept (learners are small) so that writes through ``.data``, which bypass the version counter,
        are caught too.
        """
        tensors = [*self.named_parameters(), *self.named_buffers()]
        key = _tensor_key(tensors)
        return key, {k: v.detach().clone() for k, v in self.named_parameters()}

    def _text_cache_is_current(self) -> bool:
        state = getattr(self, "_text_cache_state", None)
        if state is None:
            return False
        key, values = state
        tensors = [*self.named_parameters(), *self.named_buffers()]
        if key != _tensor_key(tensors):
            return False
        return all(torch.equal(v.detach(), values[k]) for k, v in self.named_parameters())

    def invalidate_text_cache(self) -> None:
        """Forget cached class text features (done automatically on any change of the learner's tensors)."""
        self._text_cache = None
        self._text_cache_state = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        self.invalidate_text_cache()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of image features ``[B, D]`` over the current class names."""
        return cosine_logits(image_features, self.cached_text_features(), self.backbone.logit_scale, self.backbone.logit_bias)

    def paired_text_features(self, image_features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Text feature ``[B, D]`` of each image's own prompt: row ``index[b]`` of the class text features for
        image ``b`` (image features ``[B, D]``, ``index [B]`` long into :attr:`classnames`).

        Segmentation conditions the mask decoder on it (one prompt per image). The default indexes the shared
        :meth:`cached_text_features`; instance-conditioned learners (CoCoOp) override it to encode only the
        ``B`` needed prompts.
        """
        return self.cached_text_features()[index.to(device=image_features.device)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of images ``[B, 3, H, W]``."""
        return self.logits(self.encode_images(images))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Training loss (default cross-entropy). ``logits [B, C]``, ``targets [B]``, ``image_features [B, D]``."""
        return F.cross_entropy(logits, targets)

    # ------------------------------------------------------------------ training-loop hooks
    def on_train_epoch_end(self, epoch: int, max_epochs: int) -> None:
        """Hook: called by the host module after each training epoch (``epoch`` 0-based). No-op by default.

        Learners that average or schedule their own tensors over epochs (e.g. PromptSRC's Gaussian prompt
        aggregation) use it.
        """

    def on_fit_end(self) -> None:
        """Hook: called by the host module once training has finished, before evaluation and saving."""

    def transform_gradients(self) -> None:
        """Hook: called by the host module after backward, before each optimiser step. No-op by default.

        A learner may rewrite the ``.grad`` of its own parameters in place here (e.g. GRAM's meta-learned
        gradient regulator, Li et al. ICCV 2023); gradient clipping and weight decay apply afterwards.
        """

    def optimizer_groups(self) -> list[dict]:
        """Optimiser parameter groups (torch ``param_groups`` dicts) over the trainable parameters.

        Default: one group with every parameter that requires grad. A learner that trains parts at different
        rates (e.g. DePT's short prompt and low-rank pair) returns several groups; a group may set its own
        ``lr`` (absolute) or ``lr_scale`` (a factor applied to the optimiser's configured ``lr``); the module's
        warm-up + cosine schedule then runs on each group's own base rate.
        """
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    # ------------------------------------------------------------------ learned prompts on disk
    def learned_state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors (what a prompt checkpoint holds)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.named_parameters() if v.requires_grad}

    def save_prompts(self, path: str | Path, *, metadata: dict | None = None) -> Path:
        """Write the learned tensors to a safetensors file with the class names and learner in its metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"learner": type(self).__name__, "classnames": json.dumps(self.train_classnames)}
        meta.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (metadata or {}).items()})
        save_safetensors(self.learned_state(), path, metadata=meta)  # atomic, normal permissions
        return path

    def load_prompts(self, path: str | Path, *, check_classnames: bool = True) -> None:
        """Load tensors saved by :meth:`save_prompts`.

        The checkpoint's training class names must equal this learner's (same dataset, protocol and label
        order): prompts trained on other classes are refused unless ``check_classnames=False``, which a
        class-tied learner (class-specific context) never allows.
        """
        path = Path(path)
        if not path.is_file():
            raise LearnerError(f"prompt checkpoint {str(path)!r} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "classnames" not in meta:
            if not self.transfers_to_new_classes:
                raise LearnerError(f"prompt checkpoint {str(path)!r} has no 'classnames' metadata, so its classes cannot "
                                   "be checked; class-specific prompts need them. Re-save it with `vlprompt fit`.")
            log.warning("prompt checkpoint %s has no 'classnames' metadata: its training classes could not be checked", path)
            saved = list(self.train_classnames)
        else:
            try:
                saved = json.loads(meta["classnames"])
            except (ValueError, RecursionError) as exc:
                saved, why = None, f"not JSON ({exc})"
            else:
                why = "not a JSON list of class names"
            if not isinstance(saved, list) or not all(isinstance(c, str) for c in saved):
                raise LearnerError(f"prompt checkpoint {str(path)!r}: metadata 'classnames' is {why}: the file is damaged "
                                   "or was not written by vlprompt. Re-run `vlprompt fit` or pass the right file.")
        if check_classnames and self.transfers_to_new_classes and saved != self.train_classnames:
            diff = next((f"{a!r} vs {b!r}" for a, b in zip(saved, self.train_classnames) if a != b), f"{len(saved)} vs {len(self.train_classnames)} classes")
            raise LearnerError(
                f"prompt checkpoint {str(path)!r} was trained on other classes than this run's training classes "
                f"(first difference: {diff}). Evaluate it with the dataset and protocol it was trained with."
            )
        if not self.transfers_to_new_classes and saved != self.train_classnames:
            raise LearnerError(
                f"prompt checkpoint {str(path)!r} was trained on classes {saved[:5]}... but this run's classes are "
                f"{self.train_classnames[:5]}...: class-specific prompts need the same classes in the same order"
            )
        state = load_file(str(path))
        check_prompt_tensors(state, f"prompt checkpoint {str(path)!r}")
        own = dict(self.named_parameters())
        missing = sorted(set(k for k, v in own.items() if v.requires_grad) - set(state))
        unknown = sorted(set(state) - set(own))
        if missing or unknown:
            raise LearnerError(
                f"prompt checkpoint {str(path)!r} does not match {type(self).__name__}: missing {missing}, unexpected "
                f"{unknown}. Was it saved by another learner or configuration?"
            )
        with torch.no_grad():
            for k, v in state.items():
                if own[k].shape != v.shape:
                    raise LearnerError(f"{str(path)!r}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
                own[k].copy_(v)
        self._text_cache = None

    def set_learned_state(self, state: dict[str, torch.Tensor], *, strict: bool = True) -> None:
        """Set learned tensors in memory (names as in :meth:`learned_state`) and invalidate cached text features.

        The public way to put tensors into a learner without a file (e.g. from another learner, an
        importer, an aggregation of checkpoints). Every trainable tensor must be given when ``strict``;
        unknown names and wrong shapes always raise :class:`LearnerError` before anything is changed.
        """
        own = dict(self.named_parameters())
        trainable = {k for k, v in own.items() if v.requires_grad}
        unknown = sorted(set(state) - set(own))
        missing = sorted(trainable - set(state)) if strict else []
        if unknown or missing:
            raise LearnerError(
                f"{type(self).__name__}.set_learned_state: unexpected tensors {unknown}, missing {missing} "
                f"(expected the names of learned_state(): {sorted(trainable)})"
            )
        check_prompt_tensors(state, f"{type(self).__name__}.set_learned_state")
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise LearnerError(
                    f"{type(self).__name__}.set_learned_state: tensor {k} has shape {tuple(v.shape)}, expected "
                    f"{tuple(own[k].shape)} (another n_ctx or backbone width?)"
                )
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to(device=own[k].device, dtype=own[k].dtype))
        self.invalidate_text_cache()

    # ------------------------------------------------------------------ checkpoints of the reference code
    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a state dict saved by the method's reference code to this learner's :meth:`learned_state` names.

        Called on a set-up learner (its shapes are known) by ``vlprompt import dassl``; the result goes to
        :meth:`set_learned_state`. Implementations drop the reference's frozen buffers and raise
        :class:`LearnerError` naming the mismatch (a checkpoint of another learner, another n_ctx, another
        backbone width) and the fix.
        """
        raise LearnerError(f"{type(self).__name__} has no reference-checkpoint importer")

    # ------------------------------------------------------------------ test-time tuning interface
    # Test-time methods (TPT, DiffTPT: vlprompt/tta.py, vlprompt/modules/test_time.py) tune a learner's
    # tensors on each test image and reset them before the next one. A learner opts in through these
    # four methods; the defaults cover learners whose trainable parameters are their prompts.

    def tunable_parameters(self) -> dict[str, nn.Parameter]:
        """The tensors a test-time method tunes per test image, by name (default: every parameter with
        ``requires_grad``, i.e. the context / prompt vectors). Override to tune fewer (e.g. only the
        generated context of an instance-conditioned learner). Raises :class:`LearnerError` when empty."""
        params = {k: p for k, p in self.named_parameters() if p.requires_grad}
        if not params:
            raise LearnerError(
                f"{type(self).__name__} exposes nothing to tune at test time (no trainable parameters). Tune a "
                "prompt learner instead, e.g. coop with ctx_init: 'a photo of a' (equal to zero-shot CLIP before "
                "tuning), or override tunable_parameters()."
            )
        return params

    def snapshot_tunable(self) -> dict[str, torch.Tensor]:
        """Detached copies of :meth:`tunable_parameters` (the state a test-time method resets to)."""
        return {k: p.detach().clone() for k, p in self.tunable_parameters().items()}

    def restore_tunable(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Copy a :meth:`snapshot_tunable` back in place (optimisers keep their parameter objects) and
        invalidate cached text features."""
        params = self.tunable_parameters()
        if set(params) != set(snapshot):
            raise LearnerError(f"snapshot holds {sorted(snapshot)} but {type(self).__name__} tunes {sorted(params)}")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(snapshot[k])
        self.invalidate_text_cache()


def cosine_logits(
    image_features: torch.Tensor,
    text_feats: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Logits ``[B, C]`` = ``scale * cos + bias`` between images ``[B, D]`` and texts ``[C, D]`` or ``[B, C, D]``.

    ``bias`` is the backbone's :attr:`~vlprompt.backbones.base.VLBackbone.logit_bias` (``None``: no bias, CLIP);
    callers pass ``backbone.logit_bias`` so that a model trained with one (SigLIP) gives its own logits.
    """
    img = F.normalize(image_features, dim=-1)
    txt = F.normalize(text_feats, dim=-1)
    if txt.dim() == 3:
        out = scale * torch.einsum("bd,bcd->bc", img, txt)
    else:
        out = scale * img @ txt.t()
    return out if bias is None else out + bias
