"""Shared machinery of the visual and multimodal prompt learners (VPT, IVLP, MaPLe, PromptSRC).

- :func:`resolve_depth`: a prompt depth checked against a tower's layer count (``None`` = the paper's).
- :func:`lead_context`: context vectors = the first ``n_ctx`` token embeddings of words such as
  ``"a photo of a"``; the remaining words stay fixed text (MaPLe/IVLP/PromptSRC ``CTX_INIT``).
- :class:`VisualPrompts`: VPT prompt tokens for the image tower (Jia et al., ECCV 2022): ``n`` tokens
  appended after the patch tokens at the first layer's input (eq. 4, VPT-shallow), replaced by new learned
  tokens at layers ``1..J-1`` (eq. 5, VPT-deep), as the MaPLe repository's modified CLIP does.
- :class:`GaussianPromptAggregation`: PromptSRC's Gaussian-weighted prompt aggregation over epochs
  (Khattak et al., ICCV 2023, "regulating prompts with self-ensembling"); :func:`gaussian_epoch_weights`
  its weights.
- Helpers for importing prompt tensors saved by the Dassl-based reference repositories
  (muzairkhattak/multimodal-prompt-learning, muzairkhattak/PromptSRC): :func:`reference_keys`,
  :func:`guess_reference_learner`, :func:`reference_deep_prompts`, :func:`take_reference_tensor`.
- Joint prompts of TuneVLSeg's shared strategies (Adhikari et al., ACCV 2024): :class:`JointPrompts` (one learned
  tensor projected to both towers, per-step pairing of stochastic projectors), :class:`JointPromptLearner` (their
  text/image plumbing), :func:`mlp_projection` and :func:`layer_copies` (the reference's projector builders).
"""

from __future__ import annotations

import abc
import copy
import logging
import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.layers import ClassPrompts, DeepPrompts, count_tokens, deep_prompt_list, random_context, text_features
from vlprompt.learners.base import LearnerError, PromptLearner

log = logging.getLogger(__name__)


class PromptConfigError(ValueError):
    """A prompt configuration does not fit the backbone (re-raised as ``LearnerError`` by learners)."""


def resolve_depth(depth: int | None, *, paper: int, layers: int, name: str, owner: str) -> int:
    """The prompt depth ``J`` to use: ``depth`` checked against ``layers``, or ``min(paper, layers)`` if ``None``.

    Depth ``J`` prompts layers ``0..J-1`` (``J = 1``: shallow prompting). Raises :class:`PromptConfigError`
    naming the value and the fix when ``depth`` is below 1 or above the tower's layer count.
    """
    if depth is None:
        if layers < paper:
            log.info("%s: %s defaults to the tower's %d layers (the paper uses %d)", owner, name, layers, paper)
        return max(1, min(paper, layers))
    if depth < 1 or depth > layers:
        raise PromptConfigError(
            f"{owner}: {name}={depth} but the backbone's tower has {layers} transformer layers: set {name} "
            f"between 1 (shallow prompts) and {layers}"
        )
    return int(depth)


def lead_context(backbone: VLBackbone, words: str, n_ctx: int) -> torch.Tensor:
    """Context ``[n_ctx, Wt]`` = embeddings of the first ``n_ctx`` tokens of ``words``.

    With ``words = "a photo of a"`` and ``n_ctx = 2`` the context starts as "a photo" and "of a" stays
    fixed text before the class name (MaPLe/IVLP/PromptSRC). ``n_ctx`` above the token count is an error.
    """
    words = words.replace("_", " ").strip()
    n = count_tokens(backbone, words)
    if n_ctx < 1 or n_ctx > n:
        raise PromptConfigError(
            f"ctx_init={words!r} has {n} tokens but n_ctx={n_ctx}: use 1 <= n_ctx <= {n}, or ctx_init: null for "
            "random context"
        )
    with torch.no_grad():
        emb = backbone.embed_tokens(backbone.tokenize([words]))[0]
    start = backbone.text_start
    return emb[start : start + n_ctx].clone()


def text_context(
    backbone: VLBackbone, n_ctx: int, ctx_init: str | None, *, std: float = 0.02
) -> tuple[torch.Tensor, str | None]:
    """``(ctx [n_ctx, Wt], lead_text)``: from the first ``n_ctx`` tokens of ``ctx_init`` (which then stays the
    prompt's lead text, see :class:`~vlprompt.learners.prompts.layers.ClassPrompts`), or N(0, std^2) with ``"X"`` placeholders."""
    if n_ctx < 1:
        raise PromptConfigError(f"n_ctx={n_ctx} must be at least 1")
    if ctx_init:
        words = ctx_init.replace("_", " ").strip()
        return lead_context(backbone, words, n_ctx), words
    return random_context(n_ctx, backbone.text_width, std=std), None


class VisualPrompts(nn.Module):
    """Learned image-tower prompt tokens: ``shallow`` ``[n, Wv]`` + ``deep.prompts[i]`` for layers ``1..depth-1``.

    ``n = 0`` is the empty prompt set (the image tower is left untouched). Initialisation N(0, 0.02^2),
    as ``VPT``/``VPT_shallow`` in the reference's modified CLIP.
    """

    def __init__(self, n_ctx: int, width: int, depth: int, *, std: float = 0.02) -> None:
        super().__init__()
        if n_ctx < 0:
            raise PromptConfigError(f"n_ctx_vision={n_ctx} must be >= 0 (0 = no visual prompts)")
        self.n_ctx = n_ctx
        self.depth = depth
        if n_ctx > 0:
            self.shallow = nn.Parameter(random_context(n_ctx, width, std=std))
            self.deep = DeepPrompts(depth, n_ctx, width, std=std)

    def layers(self) -> tuple[torch.Tensor | None, list[torch.Tensor | None] | None]:
        """``(prompts, deep_prompts)`` for :meth:`VLBackbone.encode_image`."""
        if self.n_ctx == 0:
            return None, None
        return self.shallow, self.deep.as_layers()

    def encode(self, backbone: VLBackbone, images: torch.Tensor) -> torch.Tensor:
        """Prompted image features ``[B, D]`` of images ``[B, 3, H, W]``."""
        prompts, deep = self.layers()
        return backbone.encode_image(images, prompts=prompts, deep_prompts=deep)


# ---------------------------------------------------------------------------------------- aggregation


def gaussian_epoch_weights(max_epochs: int, mean: float, std: float) -> torch.Tensor:
    """PromptSRC's aggregation weights ``[max_epochs]`` (float64), summing to 1.

    ``w_e ∝ N(e; mean, std^2)`` for epochs ``e = 1..max_epochs`` (1-based, as the reference's
    ``get_gauss`` evaluated at ``range(1, N + 1)``), normalised by their sum.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs={max_epochs} must be at least 1")
    if not std > 0:
        raise ValueError(f"gpa_std={std} must be positive")
    e = torch.arange(1, max_epochs + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    if not float(g.sum()) > 0:
        raise ValueError(f"gpa_mean={mean}, gpa_std={std} give zero weight to every epoch 1..{max_epochs}")
    return g / g.sum()


class GaussianPromptAggregation:
    """Running ``sum_e w_e * theta_e`` of tensors at the end of each epoch ``e`` (PromptSRC GPA).

    Call :meth:`update` at the end of every training epoch (0-based ``epoch``); :meth:`result` returns the
    aggregate once all ``max_epochs`` epochs were added, else ``None`` (the reference only swaps in the
    aggregate after the last epoch).
    """

    def __init__(self, mean: float, std: float) -> None:
        self.mean = mean
        self.std = std
        self.reset()

    def reset(self) -> None:
        self._sum: dict[str, torch.Tensor] | None = None
        self._seen: set[int] = set()
        self._max_epochs: int | None = None

    def update(self, tensors: Mapping[str, torch.Tensor], epoch: int, max_epochs: int) -> None:
        """Add ``w[epoch] * tensors`` (``epoch`` 0-based) to the running sum."""
        if self._max_epochs not in (None, max_epochs):
            self.reset()
        if epoch in self._seen:  # a repeated epoch index means a new fit: start over
            self.reset()
        self._max_epochs = max_epochs
        w = float(gaussian_epoch_weights(max_epochs, self.mean, self.std)[epoch])
        weighted = {k: v.detach().clone() * w for k, v in tensors.items()}
        if self._sum is None:
            self._sum = weighted
        else:
            self._sum = {k: self._sum[k] + weighted[k] for k in self._sum}
        self._seen.add(epoch)

    def state_dict(self) -> dict:
        """The running state (tensors, ints and lists only: loadable with ``weights_only=True``)."""
        return {"sum": self._sum, "seen": sorted(self._seen), "max_epochs": self._max_epochs}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (a resumed run continues the same aggregate)."""
        self._sum = None if state.get("sum") is None else dict(state["sum"])
        self._seen = set(int(e) for e in state.get("seen", []))
        self._max_epochs = state.get("max_epochs")

    def result(self) -> dict[str, torch.Tensor] | None:
        """The aggregate if every epoch ``0..max_epochs-1`` was added, else ``None``."""
        if self._sum is None or self._max_epochs is None or len(self._seen) != self._max_epochs:
            return None
        return dict(self._sum)


# ---------------------------------------------------------------------------------------- reference import

_DEEP_KEY = re.compile(r"^(image_encoder|text_encoder)\.transformer\.resblocks\.(\d+)\.VPT_shallow$")


def reference_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference state dict with ``module.`` (DataParallel) and ``prompt_learner.`` prefixes removed.

    Frozen CLIP weights saved alongside (Dassl saves the whole ``CustomCLIP``) are dropped, as are the
    class-dependent buffers ``token_prefix``/``token_suffix`` the reference also ignores when loading.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise PromptConfigError(f"reference state entry {key!r} is a {type(value).__name__}, not a tensor")
        k = key[len("module.") :] if key.startswith("module.") else key
        k = k[len("prompt_learner.") :] if k.startswith("prompt_learner.") else k
        if k == "image_encoder.VPT" or _DEEP_KEY.match(k):
            out[k] = value
        elif k.startswith(("image_encoder.", "text_encoder.", "ZS_image_encoder.")) or k in (
            "logit_scale", "token_prefix", "token_suffix"
        ):
            continue  # frozen CLIP weights and class-dependent buffers
        else:
            out[k] = value
    return out


def guess_reference_learner(keys: Sequence[str] | set[str]) -> str:
    """Which reference trainer saved prompt tensors with these (:func:`reference_keys`) names."""
    keys = set(keys)
    if any(k.startswith("compound_prompt") for k in keys) or "proj.weight" in keys:
        return "maple"
    if any(k.startswith("meta_net.") for k in keys):
        return "cocoop"
    has_visual = "image_encoder.VPT" in keys
    if "ctx" in keys:
        return "ivlp" if has_visual or any(k.startswith("text_encoder.") for k in keys) else "coop"
    if has_visual:
        return "vpt"
    return "unknown"


def reference_deep_prompts(state: Mapping[str, torch.Tensor], tower: str) -> dict[int, torch.Tensor]:
    """``{layer: prompt}`` of ``{tower}.transformer.resblocks.{layer}.VPT_shallow`` entries (``tower`` is
    ``image_encoder`` or ``text_encoder``)."""
    out = {}
    for k, v in state.items():
        m = _DEEP_KEY.match(k)
        if m and m.group(1) == tower:
            out[int(m.group(2))] = v
    return dict(sorted(out.items()))


def take_reference_tensor(
    state: Mapping[str, torch.Tensor], key: str, shape: Sequence[int], *, owner: str, meaning: str
) -> torch.Tensor:
    """``state[key]`` checked to have ``shape``; the error names the key, both shapes and ``meaning``."""
    if key not in state:
        raise PromptConfigError(f"{owner}: the reference state has no {key!r} ({meaning}); keys: {sorted(state)[:12]}")
    value = state[key]
    if tuple(value.shape) != tuple(shape):
        raise PromptConfigError(
            f"{owner}: reference tensor {key!r} has shape {tuple(value.shape)} but this learner expects "
            f"{tuple(shape)} ({meaning}): the checkpoint was trained with another n_ctx, width (backbone) or "
            "configuration"
        )
    return value.detach().float().clone()


def check_reference_depth(found: Sequence[int], expected: Sequence[int], *, owner: str, what: str) -> None:
    """Raise if the reference's prompted layers ``found`` differ from this learner's ``expected`` layers."""
    if list(found) != list(expected):
        raise PromptConfigError(
            f"{owner}: the reference state has {what} for layers {list(found)} but this learner prompts layers "
            f"{list(expected)}: set the prompt depth to {max(found, default=0) + 1} to match the checkpoint"
        )


# ---------------------------------------------------------------------------------------- joint prompts
# TuneVLSeg's joint multimodal strategies (Adhikari et al., ACCV 2024, arXiv 2410.05239, multimodal prompt tuning;
# reference naamiinepal/tunevlseg, src/models/core_models/coop/context_learner/): one learned tensor per
# prompted layer feeds both towers through a projector (`shared_separate`, `shared_attention` learners).


def mlp_projection(
    in_dim: int,
    out_dim: int,
    *,
    intermediate_dim: int | Sequence[int] | None = None,
    final_norm: bool = False,
    final_bias: bool = True,
    lora: bool = False,
) -> nn.Module:
    """The reference's prompt projection ``in_dim -> out_dim`` (TuneVLSeg ``BaseProjectorLearner``,
    ``get_mlp_projection`` / ``get_lora_projection`` of ``context_learner/base_projector_learner.py``).

    Without ``intermediate_dim``: one ``nn.Linear`` with bias (``final_norm``, ``final_bias`` and ``lora`` are
    then ignored, as in the reference). With hidden widths ``h_1..h_k``: ``Linear -> ReLU`` per hidden width
    (weights re-drawn Kaiming-normal for ReLU), then ``Linear(h_k, out_dim)`` (bias only when neither
    ``final_norm`` nor ``final_bias=False``) and ``LayerNorm(out_dim)`` if ``final_norm`` (its bias only when
    ``final_bias``; TuneVLSeg's CoCoOp builds it without). ``lora=True`` (the reference's ``use_lora_proj``, one
    hidden width ``r`` only) is the low-rank product instead: ``Linear(in_dim, min(r, out_dim), no bias)``, then
    ``Linear(r, out_dim)`` when ``r <= out_dim`` (same bias rule), then the LayerNorm; PyTorch's default init, no
    ReLU. Parameters are drawn in the reference's order, so equal seeds give equal weights.
    """
    if intermediate_dim is None:
        return nn.Linear(in_dim, out_dim)
    hidden = (intermediate_dim,) if isinstance(intermediate_dim, int) else tuple(intermediate_dim)
    if not hidden or any(h < 1 for h in hidden):
        raise PromptConfigError(f"intermediate_dim={intermediate_dim!r} must be positive widths (or null for one Linear)")
    last_bias = (not final_norm) and final_bias
    if lora:
        if len(hidden) != 1:
            raise PromptConfigError(
                f"lora_proj needs one rank, but intermediate_dim={intermediate_dim!r} lists {len(hidden)} widths: "
                "give one integer (the rank), or set lora_proj: false for an MLP")
        rank = hidden[0]
        layers = nn.Sequential(nn.Linear(in_dim, min(out_dim, rank), bias=False))
        if rank <= out_dim:
            layers.append(nn.Linear(rank, out_dim, bias=last_bias))
    else:
        layers = nn.Sequential(nn.Linear(in_dim, hidden[0]), nn.ReLU(inplace=True))
        for a, b in zip(hidden, hidden[1:]):
            layers.extend((nn.Linear(a, b), nn.ReLU(inplace=True)))
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        layers.append(nn.Linear(hidden[-1], out_dim, bias=last_bias))
    if final_norm:
        layers.append(nn.LayerNorm(out_dim, bias=final_bias))
    return layers


def layer_copies(module: nn.Module, depth: int, *, unified: bool) -> nn.ModuleList:
    """``depth`` deep copies of ``module`` (every layer starts from the same weights, then trains apart), or
    ``[module]`` when ``unified`` (one projector serves every layer: :meth:`JointPrompts.projector` maps any
    layer to it). The reference's ``use_unified_projection``."""
    if unified:
        return nn.ModuleList([module])
    return nn.ModuleList([copy.deepcopy(module) for _ in range(depth)])


class JointPrompts(nn.Module, abc.ABC):
    """One learned tensor ``context [J, n, d]`` projected into text prompts ``[n, Wt]`` and visual prompts
    ``[n, Wv]`` for layers ``0..J-1`` (TuneVLSeg's joint strategies; subclasses define :meth:`project`).

    Layer 0's prompts are the shallow ones (text: after the start token; image: after the patch tokens),
    layers ``1..J-1`` replace them (deep prompting, as MaPLe/VPT-deep). ``context`` starts N(0, std^2)
    (the reference's ``init_random_context_vectors``; joint learners take no word initialisation).

    Stochastic projectors (dropout) are evaluated once per training step for both towers, as the
    reference does (its first tower's call caches the other tower's half): while training with autograd,
    the first of :meth:`text` / :meth:`visual` projects every layer and keeps the other tower's half, which
    the other call takes if the learner's tensors have not changed since (no optimiser step in between);
    each kept half is used once. Deterministic projectors simply project on each call.
    """

    def __init__(self, depth: int, n_ctx: int, dim: int, *, std: float = 0.02) -> None:
        super().__init__()
        if n_ctx < 1:
            raise PromptConfigError(f"n_ctx={n_ctx} must be at least 1")
        if depth < 1:
            raise PromptConfigError(f"prompt_depth={depth} must be at least 1")
        self.depth = depth
        self.n_ctx = n_ctx
        self.context = nn.Parameter(random_context(n_ctx, dim, n_cls=depth, std=std))
        self._kept: dict[str, tuple[tuple, list[torch.Tensor]]] = {}

    #: True when :meth:`project` is random in training mode (dropout): pair the towers per step
    stochastic: bool = False

    @abc.abstractmethod
    def project(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(text, visual)``: ``J`` text prompts ``[n, Wt]`` and ``J`` visual prompts ``[n, Wv]``."""

    def _state_key(self) -> tuple:
        return tuple((id(p), p._version) for p in self.parameters())

    def _take(self, tower: str) -> list[torch.Tensor]:
        kept = self._kept.pop(tower, None)
        if kept is not None and kept[0] == self._state_key():
            return kept[1]
        text, visual = self.project()
        if self.stochastic and self.training and torch.is_grad_enabled():
            other = "visual" if tower == "text" else "text"
            self._kept = {other: (self._state_key(), visual if other == "visual" else text)}
        else:
            self._kept = {}
        return text if tower == "text" else visual

    def text(self) -> list[torch.Tensor]:
        """Text prompts ``[n, Wt]`` for layers ``0..J-1``."""
        return self._take("text")

    def visual(self) -> list[torch.Tensor]:
        """Visual prompts ``[n, Wv]`` for layers ``0..J-1``."""
        return self._take("visual")

    def train(self, mode: bool = True) -> "JointPrompts":
        self._kept = {}
        return super().train(mode)

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_kept": {}}  # kept halves hold autograd graphs: never copied or pickled


class JointPromptLearner(PromptLearner):
    """Plumbing of the joint (shared-space) multimodal learners: text prompts ``[SOS] p_1..p_n <class>. [EOS]``
    with deep text prompts at layers ``1..J-1``, visual prompt tokens appended after the patch tokens with
    deep replacements (both from :class:`JointPrompts`); logits ``scale * cos``.

    One depth ``J`` for both towers, checked against the shallower tower (the reference's
    ``max_network_depth = min(text layers, vision layers)``). Subclasses implement :meth:`make_prompts`.
    """

    family = "multimodal"
    modifies_image_encoder = True

    def __init__(self, n_ctx: int, prompt_depth: int, *, init_std: float = 0.02, suffix_text: str | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if n_ctx < 1:
            raise LearnerError(f"{name}: n_ctx={n_ctx} must be at least 1")
        if prompt_depth < 1:
            raise LearnerError(f"{name}: prompt_depth={prompt_depth} must be at least 1 (1 = shallow prompts)")
        self.n_ctx = n_ctx
        self.prompt_depth = prompt_depth
        self.init_std = init_std
        self.suffix_text = suffix_text
        self.prompts: ClassPrompts | None = None

    @abc.abstractmethod
    def make_prompts(self, backbone: VLBackbone, depth: int) -> JointPrompts:
        """The :class:`JointPrompts` of this strategy for the backbone's widths (raise PromptConfigError)."""

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        owner = type(self).__name__
        try:
            self.depth = resolve_depth(
                self.prompt_depth, paper=1, layers=min(backbone.text_layers, backbone.vision_layers),
                name="prompt_depth", owner=owner,
            )
            self.joint = self.make_prompts(backbone, self.depth)
        except PromptConfigError as exc:
            raise LearnerError(str(exc)) from exc

    def on_classnames_changed(self, classnames: list[str]) -> None:
        device = self.joint.context.device if hasattr(self, "joint") else None
        try:
            self.prompts = ClassPrompts(self.backbone, classnames, self.n_ctx, suffix_text=self.suffix_text)
        except ValueError as exc:
            raise LearnerError(f"{type(self).__name__}: {exc}") from exc
        if device is not None:
            self.prompts.to(device)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.joint.visual()
        return self.backbone.encode_image(images, prompts=visual[0], deep_prompts=deep_prompt_list(visual[1:]))

    def text_features(self) -> torch.Tensor:
        text = self.joint.text()
        return text_features(
            self.backbone, self.prompts(text[0]), self.prompts.pool_index, deep_prompts=deep_prompt_list(text[1:])
        )
