"""Shared prompt machinery, written once for every learner.

- :func:`context_from_words`: context vectors initialised from words (CoOp, Zhou et al. IJCV 2022, Sec. 3.2).
- :func:`random_context`: N(0, 0.02) context, unified ``[n, Wt]`` or class-specific ``[C, n, Wt]``.
- :class:`ClassPrompts`: the frozen token embeddings around the context for each class name, with the class
  token at the ``end``, ``middle`` or ``front`` (CoOp eq. 2-3), assembling ``[C, L, Wt]`` prompt embeddings.
- :func:`deep_prompt_list` / :class:`DeepPrompts`: learnable prompts for transformer layers ``1..J-1``
  (deep prompting: VPT-deep eq. 5, MaPLe eq. 5-7), in the per-layer list form the backbone accepts.
- :func:`text_features`: text features from assembled token embeddings; :func:`template_features`: the
  hand-crafted classifier (zero-shot CLIP, Radford et al. 2021), optionally a template ensemble.
- :func:`cosine_logits`: ``scale * norm(img) @ norm(text).T`` for shared or per-image text features.
- :func:`segmentation_text` / :func:`prompt_end` / :func:`raw_text_features`: the text rules of the segmentation
  track (the one place that decides the full stop of a prompt and whether text features are normalised).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import text_caches_allowed

ClassTokenPosition = Literal["end", "middle", "front"]
PLACEHOLDER = "X"
#: the full stop that ends a prompt built from a bare class name (CoOp/MaPLe references: ``"X X X X {name}."``)
FULL_STOP = "."

#: True inside :func:`segmentation_text` (the segmentation track's text rules), False otherwise
_SEGMENTATION_TEXT: ContextVar[bool] = ContextVar("vlprompt_segmentation_text", default=False)


@contextlib.contextmanager
def segmentation_text() -> Iterator[None]:
    """The text rules of the segmentation track, for every learner, inside this block.

    The host segmentation module (:class:`~vlprompt.modules.segmentation.PromptSegmenter`) wraps everything a
    learner does with text in it, so no learner branches on the task:

    * **one full-stop rule** (:func:`prompt_end`): the "class names" are the dataset's prompts, complete
      sentences whose full stop the dataset decides (``stop_at_end``, TuneVLSeg's ``insert_stop_at_last``), so a
      learner inserts them verbatim after its context and adds no punctuation of its own. On the classification
      track a prompt built from a bare class name ends with :data:`FULL_STOP` (``"X X X X {name}."``, as the
      CoOp and MaPLe references build it). Templates (``"{}"``, ``"a photo of a {}."``) are the user's text and
      are formatted verbatim on both tracks.
    * **raw conditional** (:func:`raw_text_features`): the mask decoder is FiLM-conditioned on the projected text
      feature as the text tower returns it (CLIPSeg's ``get_conditional_embeddings``, TuneVLSeg's
      ``get_text_features``), so :func:`template_features` returns unnormalised features here.
    """
    token = _SEGMENTATION_TEXT.set(True)
    try:
        yield
    finally:
        _SEGMENTATION_TEXT.reset(token)


def prompt_end() -> str:
    """The text that ends a prompt a learner builds around a name: :data:`FULL_STOP` on the classification track,
    nothing inside :func:`segmentation_text` (the dataset's prompt is already the whole sentence)."""
    return "" if _SEGMENTATION_TEXT.get() else FULL_STOP


def raw_text_features() -> bool:
    """Whether text features handed on must stay unnormalised (inside :func:`segmentation_text`): the mask
    decoder reads the raw projected text feature, classification normalises in :func:`cosine_logits` anyway."""
    return _SEGMENTATION_TEXT.get()


def count_tokens(backbone: VLBackbone, text: str) -> int:
    """Number of tokens of ``text`` (without start/end tokens): ``text_end - text_start`` of the backbone."""
    tokens = backbone.tokenize([text])
    return int(backbone.text_end(tokens)[0]) - backbone.text_start


def context_from_words(backbone: VLBackbone, words: str, n_ctx: int | None = None) -> torch.Tensor:
    """Context vectors ``[n, Wt]`` = token embeddings of ``words`` (e.g. ``"a photo of a"``).

    ``n`` is the number of tokens of ``words``; a different ``n_ctx`` is an error (say which to change).
    """
    words = words.replace("_", " ").strip()
    n = count_tokens(backbone, words)
    if n < 1:
        raise ValueError(f"ctx_init={words!r} has no tokens; give words such as 'a photo of a' or null for random")
    if n_ctx is not None and n_ctx != n:
        raise ValueError(
            f"ctx_init={words!r} is {n} tokens but n_ctx={n_ctx}: set n_ctx: {n} (or null) or change ctx_init"
        )
    with torch.no_grad():
        emb = backbone.embed_tokens(backbone.tokenize([words]))[0]
    start = backbone.text_start
    return emb[start : start + n].clone()


def random_context(n_ctx: int, width: int, *, n_cls: int | None = None, std: float = 0.02) -> torch.Tensor:
    """Random context ``[n_ctx, width]`` (or ``[n_cls, n_ctx, width]`` class-specific), N(0, std^2)."""
    if n_ctx < 1:
        raise ValueError(f"n_ctx={n_ctx} must be at least 1")
    shape = (n_ctx, width) if n_cls is None else (n_cls, n_ctx, width)
    return torch.empty(shape).normal_(0.0, std)


class ClassPrompts(nn.Module):
    """Frozen token embeddings of ``"X X ... X {class}{end}"`` for every class, ready to take a context.

    ``end`` is ``suffix_text`` when given, otherwise :func:`prompt_end` (``"."`` for class names; nothing on the
    segmentation track, whose prompts carry the dataset's own full stop).

    Buffers: ``prefix`` ``[C, s, Wt]`` (the ``s = backbone.text_start`` start tokens: 1 for CLIP, 0 for
    SigLIP), ``suffix`` ``[C, L-s-n, Wt]`` (class tokens, period,
    end and padding), ``name_lens`` ``[C]``, ``pool_index`` ``[C]``, ``tokens`` ``[C, L]``.

    With ``lead_text`` (e.g. ``"a photo of a"``) the prompt is ``"{lead_text} {class}."`` and its first ``n``
    tokens are the context slots: the rest of ``lead_text`` stays fixed text (MaPLe/IVLP ``CTX_INIT``).
    """

    def __init__(
        self,
        backbone: VLBackbone,
        classnames: Sequence[str],
        n_ctx: int,
        *,
        position: ClassTokenPosition = "end",
        suffix_text: str | None = None,
        lead_text: str | None = None,
    ) -> None:
        super().__init__()
        if suffix_text is None:
            suffix_text = prompt_end()
        if position not in ("end", "middle", "front"):
            raise ValueError(f"class_token_position={position!r} must be 'end', 'middle' or 'front'")
        names = [c.replace("_", " ") for c in classnames]
        if lead_text is None:
            prompts = [" ".join([PLACEHOLDER] * n_ctx + [name]) + suffix_text for name in names]
        else:  # "<lead_text> {class}." whose first n_ctx tokens are the context slots (MaPLe/IVLP ctx_init)
            if position != "end":
                raise ValueError(f"lead_text={lead_text!r} needs class_token_position='end', got {position!r}")
            n_lead = count_tokens(backbone, lead_text)
            if n_lead < n_ctx:
                raise ValueError(
                    f"lead_text={lead_text!r} is {n_lead} tokens, fewer than n_ctx={n_ctx}: lower n_ctx or use longer words"
                )
            prompts = [f"{lead_text} {name}{suffix_text}" for name in names]
        tokens = backbone.tokenize(prompts)
        ends = backbone.text_end(tokens)
        if int(ends.max()) >= tokens.shape[1] - 1:
            longest = prompts[int(ends.argmax())]
            raise ValueError(
                f"prompt {longest!r} does not fit the context length {tokens.shape[1]}: shorten n_ctx or the class name"
            )
        with torch.no_grad():
            emb = backbone.embed_tokens(tokens)
        self.n_ctx = n_ctx
        self.position = position
        self.register_buffer("tokens", tokens, persistent=False)
        start = backbone.text_start
        self.register_buffer("prefix", emb[:, :start].clone(), persistent=False)
        self.register_buffer("suffix", emb[:, start + n_ctx :].clone(), persistent=False)
        self.register_buffer("name_lens", torch.tensor([count_tokens(backbone, n) for n in names]), persistent=False)
        self.register_buffer("pool_index", backbone.pool_index(tokens), persistent=False)

    @property
    def n_cls(self) -> int:
        return int(self.prefix.shape[0])

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``[C, L, Wt]`` from context ``[n, Wt]`` (shared) or ``[C, n, Wt]`` (per class)."""
        c = self.n_cls
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(c, -1, -1)
        ctx = ctx.to(self.prefix.dtype)
        if self.position == "end":
            return torch.cat([self.prefix, ctx, self.suffix], dim=1)
        parts = []
        half = self.n_ctx // 2
        for i in range(c):
            n = int(self.name_lens[i])
            name, rest = self.suffix[i : i + 1, :n], self.suffix[i : i + 1, n:]
            if self.position == "middle":
                parts.append(torch.cat([self.prefix[i : i + 1], ctx[i : i + 1, :half], name, ctx[i : i + 1, half:], rest], 1))
            else:  # front
                parts.append(torch.cat([self.prefix[i : i + 1], name, ctx[i : i + 1], rest], 1))
        return torch.cat(parts, dim=0)


#: prompts encoded at once by :func:`text_features` before it switches to chunks (see ``chunk_size``)
TEXT_CHUNK = 256
_DEFAULT_CHUNK: int | None = TEXT_CHUNK  # changed only inside :func:`chunked_text_encoding`


def text_features(
    backbone: VLBackbone,
    embeddings: torch.Tensor,
    pool_index: torch.Tensor,
    deep_prompts: Sequence[torch.Tensor | None] | None = None,
    *,
    chunk_size: int | None | str = "default",
    insert_deep_prompts: bool = False,
) -> torch.Tensor:
    """Projected text features ``[N, D]`` from prompt embeddings ``[N, L, Wt]`` (deep prompts at layers >= 1).

    ``insert_deep_prompts=True`` is passed on to :meth:`~vlprompt.backbones.base.VLBackbone.encode_text_embeddings`
    (the first deep prompt is inserted, not replacing tokens).

    With more than ``chunk_size`` prompts they are encoded ``chunk_size`` at a time (``None``: all at once).
    Under autograd each chunk is gradient-checkpointed (``torch.utils.checkpoint``, recomputed in backward),
    so the text tower's saved activations are those of one chunk, not of the whole label space: a
    1000-class CoOp step needs ~chunk_size/1000 of the memory, for one extra text forward. Per-prompt deep
    prompts ``[N, n, Wt]`` are chunked along with the prompts. Up to ``chunk_size`` prompts the call is
    exactly the unchunked one.
    """
    if chunk_size == "default":
        chunk_size = _DEFAULT_CHUNK
    n = embeddings.shape[0]
    extra = {"insert_deep_prompts": True} if insert_deep_prompts else {}
    if chunk_size is None or n <= chunk_size:
        return backbone.encode_text_embeddings(embeddings, pool_index, deep_prompts=deep_prompts, **extra)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be a positive number of prompts or None")

    def encode(start: int, emb: torch.Tensor, *deep: torch.Tensor | None) -> torch.Tensor:
        stop = start + emb.shape[0]
        return backbone.encode_text_embeddings(emb, pool_index[start:stop], deep_prompts=list(deep) if deep else None,
                                               **extra)

    out = []
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        deep = [
            None if d is None else (d[start:stop] if d.dim() == 3 and d.shape[0] == n else d)
            for d in (deep_prompts or [])
        ]
        emb = embeddings[start:stop]
        if torch.is_grad_enabled() and (emb.requires_grad or any(d is not None and d.requires_grad for d in deep)):
            out.append(torch.utils.checkpoint.checkpoint(encode, start, emb, *deep, use_reentrant=False))
        else:
            out.append(encode(start, emb, *deep))
    return torch.cat(out)


#: hand-crafted classifiers per frozen model object (weakly held): {(classnames, templates, device): [C, D]}
_TEMPLATE_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def chunked_text_encoding(chunk: int | None) -> Iterator[None]:
    """Inside this block, :func:`text_features` calls that leave ``chunk_size`` at its default encode
    ``chunk`` prompts at a time (``None``: all at once), e.g. test-time tuning of 1000-class label spaces."""
    global _DEFAULT_CHUNK
    if chunk is not None and chunk < 1:
        raise ValueError(f"text chunk {chunk} must be a positive number of prompts or None")
    before = _DEFAULT_CHUNK
    _DEFAULT_CHUNK = chunk
    try:
        yield
    finally:
        _DEFAULT_CHUNK = before


@torch.no_grad()
def template_features(
    backbone: VLBackbone,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = TEXT_CHUNK,
    normalize_each: bool = True,
    cache: bool = True,
) -> torch.Tensor:
    """Normalised hand-crafted classifier ``[C, D]``: mean over templates of normalised features, renormalised.

    ``normalize_each=False`` averages the raw (unnormalised) features before the final normalisation, as
    PromptSRC's frozen text targets do.

    Inside :func:`segmentation_text` the result is the mean of the raw projected features, not normalised at
    all (for one template: the text tower's own output, which CLIPSeg's decoder is conditioned on).

    Computed once per process for each (frozen model, class names, templates, device) and reused across
    seeds, label-space switches and learners (zero-shot, KgCoOp's frozen targets, ...): the key holds the
    model object itself (``backbone.clip`` for open_clip backbones, which share one frozen model per
    weights/precision), so two random-weight models never share an entry. ``cache=False`` recomputes.
    """
    if not templates:
        raise ValueError("at least one template such as 'a photo of a {}.' is needed")
    owner = getattr(backbone, "clip", backbone)
    raw = raw_text_features()
    cache = cache and text_caches_allowed()  # a host asked for fresh text features (fresh_text_features)
    key = (tuple(classnames), tuple(templates), str(backbone.logit_scale.device), getattr(backbone, "dtype", None), normalize_each)
    key = key + ("raw",) if raw else key
    if cache:
        hit = _TEMPLATE_CACHE.get(owner, {}).get(key)
        if hit is not None:
            return hit.clone()
    texts = [t.format(name.replace("_", " ")) for name in classnames for t in templates]
    tokens = backbone.tokenize(texts)
    feats = torch.cat([backbone.encode_text(chunk) for chunk in tokens.split(batch_size)])
    if raw:  # the segmentation track: the decoder's conditional is the unnormalised projected feature
        out = feats.view(len(classnames), len(templates), -1).mean(dim=1)
    else:
        feats = (F.normalize(feats, dim=-1) if normalize_each else feats).view(len(classnames), len(templates), -1)
        out = F.normalize(feats.mean(dim=1), dim=-1)
    if cache:
        _TEMPLATE_CACHE.setdefault(owner, {})[key] = out.clone()
    return out


class DeepPrompts(nn.Module):
    """Learnable prompts ``[n, width]`` for transformer layers ``1 .. depth-1`` (layer 0 is the shallow prompt)."""

    def __init__(self, depth: int, n_ctx: int, width: int, *, std: float = 0.02) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"prompt depth {depth} must be at least 1")
        self.prompts = nn.ParameterList([nn.Parameter(random_context(n_ctx, width, std=std)) for _ in range(depth - 1)])

    def as_layers(self) -> list[torch.Tensor | None]:
        """Per-layer list ``[None, p_1, ..., p_{depth-1}]`` for the backbone's ``deep_prompts``."""
        return deep_prompt_list(list(self.prompts))


def deep_prompt_list(per_layer: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """``[None, *per_layer]``: prompts for layers ``1..len(per_layer)``, layer 0 left to the embeddings."""
    return [None, *per_layer]
