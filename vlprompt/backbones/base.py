"""The frozen vision-language backbone: a closed box with a narrow interface.

Learners reach the model only through :class:`VLBackbone`. The interface serves every learner family
and protocol: text prompts (token embeddings in, features out), deep prompts at chosen layers of either
tower, visual prompt tokens, dense patch features for segmentation, and a preprocessing config for data
and test-time augmentation. A backbone never knows which learner is attached.

Images given to a backbone are float tensors in ``[0, 1]``, ``[B, 3, H, W]`` at ``preprocess.image_size``;
the backbone applies its own mean/std normalisation.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


class BackboneError(RuntimeError):
    """A backbone could not be built or cannot serve a request; the message names the value and the fix."""


@dataclass(frozen=True)
class PreprocessConfig:
    """What a data pipeline needs to feed a backbone (from open_clip's ``PreprocessCfg``)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BackboneInfo:
    """Provenance of the loaded weights, written into every result JSON."""

    name: str
    model: str
    pretrained: str | None
    checkpoint_sha256: str | None
    precision: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class VLBackbone(nn.Module, abc.ABC):
    """Frozen dual-encoder. All parameters have ``requires_grad=False`` and the module stays in eval mode.

    Attributes every implementation sets: ``embed_dim`` (joint space D), ``text_width`` (Wt),
    ``text_layers``, ``context_length`` (L), ``vision_width`` (Wv), ``vision_layers``, ``grid_size``
    (patches per side), ``supports_visual_prompts``, ``preprocess`` and ``info``.
    """

    embed_dim: int
    text_width: int
    text_layers: int
    context_length: int
    vision_width: int
    vision_layers: int
    grid_size: tuple[int, int]
    supports_visual_prompts: bool
    preprocess: PreprocessConfig
    info: BackboneInfo
    #: what the backbone can predict: ``classification`` (image-text similarity) and, for vision-language
    #: segmentation models (VLSMs), ``segmentation`` (a mask decoder, see :meth:`record_activations`).
    tasks: tuple[str, ...] = ("classification",)
    #: channels of the feature map the mask decoder's last layer reads (CLIPSeg: ``reduce_dim``), for a trainable
    #: branch beside it (``decode_masks(..., branch=)``); ``None``: the backbone offers no such features
    decoder_width: int | None = None
    #: the decoder's upsampling from that feature map to its logits (CLIPSeg: the patch size)
    decoder_stride: int | None = None
    #: True for a VLSM whose mask decoder attends to the word states of each image's prompt, not only to its pooled
    #: text feature (CRIS). The host then encodes the prompts inside :meth:`record_activations`, without cached text
    #: features, so that the backbone records every text encoding with its word states for :meth:`decode_masks`.
    decoder_reads_words: bool = False
    #: position of the first text token in :meth:`tokenize`'s ids: 1 after a start token (CLIP's
    #: ``<start_of_text>``), 0 for tokenizers without one (SigLIP). Prompt learners put their context there.
    text_start: int = 1
    #: True for a backbone that takes prompt tokens entering at a middle layer: ``insert_deep_prompts=True`` in
    #: :meth:`encode_text_embeddings` and :meth:`encode_image`, and ``encode_image(..., prompt_states=True)``
    #: (MMRL's representation tokens). Backbones without it refuse those requests.
    supports_inserted_prompts: bool = False

    def train(self, mode: bool = True) -> "VLBackbone":  # noqa: D102 - frozen: always eval
        return super().train(False)

    def freeze(self) -> None:
        """Turn off gradients and dropout for every parameter and module."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    # ----------------------------------------------------------------- text tower
    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[N, L]`` (long) from the model's own tokenizer."""

    @abc.abstractmethod
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[N, L, Wt]`` (float32) of ids ``[N, L]``."""

    @abc.abstractmethod
    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index ``[N]`` of the token whose final state is pooled (EOT for CLIP)."""

    def text_end(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index ``[N]`` of the end-of-text token of ids ``[N, L]`` (the tokens of a text are
        ``text_start : text_end``). Default: :meth:`pool_index` (CLIP pools its end token); a backbone that
        pools elsewhere (SigLIP: the last position) overrides it."""
        return self.pool_index(tokens)

    @abc.abstractmethod
    def encode_text_embeddings(
        self,
        embeddings: torch.Tensor,
        pool_index: torch.Tensor,
        *,
        deep_prompts: Sequence[torch.Tensor | None] | None = None,
        deep_prompt_start: int | None = None,
        insert_deep_prompts: bool = False,
    ) -> torch.Tensor:
        """Projected text features ``[N, D]`` from token embeddings ``[N, L, Wt]``.

        ``deep_prompts[i]`` (``[n, Wt]`` or ``[N, n, Wt]``), for transformer layer ``i >= 1``, replaces
        the hidden states at positions ``deep_prompt_start : deep_prompt_start + n`` at that layer's
        input (deep prompting as in MaPLe, eq. 5-7); ``None`` leaves a layer untouched. Entry 0 is ignored:
        layer 0's prompts are part of ``embeddings``. ``deep_prompt_start=None`` means :attr:`text_start`.

        ``insert_deep_prompts=True`` (backbones with :attr:`supports_inserted_prompts`): the first given deep
        prompt is *inserted* before position ``deep_prompt_start`` at its layer's input (the sequence grows by
        ``n``, a causal mask grows with it, the pooled token moves by ``n``), and later ones replace that span
        (MMRL's representation tokens, which enter the text tower after the start token at a middle layer).
        """

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projected text features ``[N, D]`` of token ids ``[N, L]``."""
        return self.encode_text_embeddings(self.embed_tokens(tokens), self.pool_index(tokens))

    # ----------------------------------------------------------------- image tower
    @abc.abstractmethod
    def encode_image(
        self,
        images: torch.Tensor,
        *,
        prompts: torch.Tensor | None = None,
        deep_prompts: Sequence[torch.Tensor | None] | None = None,
        dense: bool = False,
        prompt_states: bool = False,
        insert_deep_prompts: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Projected image features ``[B, D]`` of images ``[B, 3, H, W]`` in ``[0, 1]``.

        ``prompts`` (``[n, Wv]`` or ``[B, n, Wv]``) are extra tokens appended to the patch sequence at the
        first layer's input (VPT-shallow, Jia et al. 2022, eq. 4); ``deep_prompts[i]`` replaces those ``n``
        tokens at layer ``i >= 1`` (VPT-deep, eq. 5). With ``dense=True`` also returns projected patch
        tokens ``[B, Hg*Wg, D]`` for segmentation. Raises :class:`BackboneError` for prompts on a tower that
        is not a plain transformer (``supports_visual_prompts`` is False).

        Backbones with :attr:`supports_inserted_prompts` also take ``insert_deep_prompts=True`` (no shallow
        ``prompts``): the first given ``deep_prompts[k]`` (``k >= 1``) is appended at layer ``k``'s input and later
        entries replace it; and ``prompt_states=True`` adds, last in the returned tuple, the prompt tokens' final hidden states
        after the tower's final LayerNorm, unprojected, ``[B, n, Wv]``.
        """

    @property
    @abc.abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """The pretrained temperature, already exponentiated (a 0-d float32 tensor)."""

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """The pretrained logit bias added to ``logit_scale * cos`` (a 0-d float32 tensor; SigLIP's sigmoid
        loss learns one), or ``None`` for models without one (CLIP). A constant over classes: softmax
        probabilities, cross-entropy and accuracy do not change with it; sigmoid probabilities do."""
        return None

    @property
    def supports_dense_features(self) -> bool:
        """Whether ``encode_image(dense=True)`` returns projected patch tokens (default: a tower that takes
        visual prompts, :attr:`supports_visual_prompts`). Learners that read patch tokens check it in ``setup``."""
        return bool(getattr(self, "supports_visual_prompts", False))

    # ----------------------------------------------------------------- attention adapters (LoRA...)
    def attention_layers(self) -> dict[str, int]:
        """Towers (``"text"``, ``"vision"``) whose self-attention q/k/v projections take an
        :meth:`attention_adapter` (and whose blocks take a :meth:`residual_adapter`), with their layer counts;
        ``{}``: this backbone takes none."""
        return {}

    @contextlib.contextmanager
    def attention_adapter(self, adapter: Callable[[str, int, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
        """Inside this block, every text and image encoding adds ``adapter(tower, layer, x)`` to the packed q/k/v
        input projection ``[B, L, 3W]`` (q, k, v in that order) of the self-attention of layer ``layer`` of
        ``tower``, where ``x [B, L, W]`` is that attention's input (after the block's LayerNorm); ``None`` leaves a
        layer as it is. The frozen weights are never changed: a learner keeps its deltas (e.g. LoRA) and applies
        them through this hook. Backbones without support (:meth:`attention_layers` empty) raise."""
        raise BackboneError(
            f"backbone {self.info.name!r} (model {self.info.model!r}) takes no attention adapter (LoRA): use an "
            "open_clip CLIP model (e.g. model: ViT-B-16)."
        )
        yield  # pragma: no cover

    @contextlib.contextmanager
    def residual_adapter(self, adapter: Callable[[str, int, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
        """Inside this block, every text and image encoding adds ``adapter(tower, layer, h)`` (``[B, L, W]``) to the
        output of residual block ``layer`` (0-based) of ``tower`` (``"text"``, ``"vision"``), where ``h [B, L, W]``
        is that block's input after its first LayerNorm (``ln_1``, the attention's input); ``None`` leaves a block as
        it is. A parallel adapter beside the block (e.g. MMA), kept in the learner: the frozen weights never change.
        The towers that take it are those of :meth:`attention_layers` (the same plain blocks); backbones without
        support raise."""
        raise BackboneError(
            f"backbone {self.info.name!r} (model {self.info.model!r}) takes no residual adapter: use an open_clip "
            "CLIP model (e.g. model: ViT-B-16)."
        )
        yield  # pragma: no cover

    # ----------------------------------------------------------------- segmentation (VLSMs only)
    #: the open :meth:`record_activations` record (None outside the context)
    _recording: "ActivationRecord | None" = None

    @contextlib.contextmanager
    def record_activations(self) -> Iterator["ActivationRecord"]:
        """Record, during every :meth:`encode_image` call made inside the context, what the mask decoder reads.

        The host segmentation module wraps the learner's own image encoding (``learner.encode_images``, with
        whatever visual prompts the learner inserts) and text encoding (``learner.paired_text_features``) in this
        context, so learners never call the decoder and never know the task. A backbone whose decoder reads word
        states (:attr:`decoder_reads_words`) also records the text encodings made inside. Backbones without a
        decoder raise :class:`BackboneError`.

        The record is held in ``self._recording`` while the context is open (contexts cannot be nested); a VLSM's
        ``encode_image`` / text encoding writes what its decoder reads into it.
        """
        self.require_task("segmentation", "record_activations()")
        if self._recording is not None:
            raise BackboneError("record_activations() contexts cannot be nested on one backbone")
        record = ActivationRecord()
        self._recording = record
        try:
            yield record
        finally:
            self._recording = None

    def decode_masks(
        self,
        record: "ActivationRecord",
        conditional: torch.Tensor,
        *,
        output_size: tuple[int, int] | None = None,
        branch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mask logits ``[B, H, W]`` from recorded activations of ``B`` images and one conditional (projected
        text) embedding per image ``[B, D]`` (e.g. the learner's text feature of that image's prompt).

        ``output_size`` defaults to the input image size. ``branch`` (backbones with :attr:`decoder_width`): a
        trainable module called as ``branch(features [B, decoder_width, h, w], logits [B, 1, h * s, w * s])`` on
        the decoder's last feature map and its logits (``s`` = :attr:`decoder_stride`), before any resize, returning
        the logits to use (e.g. :class:`~vlprompt.modules.segmentation.DecoderBranch`). Backbones without a decoder
        raise :class:`BackboneError`.
        """
        self.require_task("segmentation", "decode_masks()")
        raise NotImplementedError  # pragma: no cover

    def require_task(self, task: str, who: str) -> None:
        """Raise a clear error if this backbone cannot serve ``task`` (asked for by ``who``)."""
        if task not in self.tasks:
            raise BackboneError(
                f"{who} needs a backbone that serves {task!r}, but backbone {self.info.name!r} (model "
                f"{self.info.model!r}) serves {list(self.tasks)}. For segmentation use a vision-language "
                "segmentation model (class_path: clipseg) or the embedded toy VLSM."
            )

    # ----------------------------------------------------------------- helpers
    def require_visual_prompts(self, who: str) -> None:
        """Raise a clear error if ``who`` asks for visual prompts that this image tower cannot take."""
        if not self.supports_visual_prompts:
            raise BackboneError(
                f"{who} inserts prompt tokens into the image encoder, but backbone {self.info.name!r} "
                f"(model {self.info.model!r}) has no plain transformer image tower. Use a ViT model "
                "(e.g. model: ViT-B-16) or a learner that only prompts the text encoder (e.g. coop)."
            )


@dataclass
class ActivationRecord:
    """What a VLSM's decoder reads, filled by :meth:`VLBackbone.record_activations`.

    ``activations``: the image encoder's hidden states at the decoder's extract layers, each ``[B, T, Wv]``
    (class token + patch tokens, visual prompt tokens already removed); ``image_size``: ``(H, W)`` of the
    encoded images. Backbones may keep further private entries in ``extra``.
    """

    activations: list[torch.Tensor] = field(default_factory=list)
    image_size: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)
