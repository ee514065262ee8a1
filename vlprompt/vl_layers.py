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
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.layers import DeepPrompts, count_tokens, random_context

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
    return emb[1 : 1 + n_ctx].clone()


def text_context(
    backbone: VLBackbone, n_ctx: int, ctx_init: str | None, *, std: float = 0.02
) -> tuple[torch.Tensor, str | None]:
    """``(ctx [n_ctx, Wt], lead_text)``: from the first ``n_ctx`` tokens of ``ctx_init`` (which then stays the
    prompt's lead text, see :class:`~vlprompt.layers.ClassPrompts`), or N(0, std^2) with ``"X"`` placeholders."""
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
