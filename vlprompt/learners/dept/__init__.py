"""DePT: Decomposed Prompt Tuning (Shi & Lipani, ICLR 2024, "DePT: Decomposed Prompt Tuning for
Parameter-Efficient Fine-tuning"), applied to CLIP's text encoder.

A soft prompt of length ``L`` (here CoOp's ``n_ctx = 16`` context vectors) is decomposed into a shorter prompt
``P [m, d]`` (``m < L``) and a low-rank pair ``A [s, r]``, ``B [r, d]`` whose product offsets the frozen input
token embeddings of the words that follow the prompt (``E' = E + A B``); the prompt of class ``i`` is
``[SOS] P_1 .. P_m  (words of class_i + A B)``. Fewer prompt tokens make every text-encoder pass
shorter, hence the paper's time and memory savings (>20% at equal parameter count, reported). ``P`` and
``A, B`` train with two learning rates (the paper: a larger one for the prompt, a smaller one for the pair),
implemented as two optimiser parameter groups (:meth:`optimizer_groups`): the prompt at the configured
``lr``, the pair at ``lowrank_lr_scale * lr``.

Source: we could read the paper's abstract and public summaries, not its full text; equation numbers are
therefore not cited, and every form below that the abstract does not fix is marked as our choice.

Where the paper (written for T5 / encoder inputs) is silent for CLIP, we chose (and made configurable):
- the "words" are the tokens of ``f"{words_before} {classname}{words_after}"`` (default: class name and
  period, exactly CoOp's suffix; e.g. ``words_before: "a photo of a"``), after the start token and the prompt;
- the offsets cover ``n_positions`` positions starting right after the prompt (default: all remaining
  positions; positions past the end-of-text token cannot change the features under CLIP's causal mask);
- ``A`` Kaiming-uniform, ``B`` zero (the product starts at zero, so DePT starts as CoOp with ``m``
  vectors); no LoRA scaling factor;
- ``lowrank_lr_scale = 0.1`` by default (paper: the pair's lr is smaller than the prompt's).

Invariant (tested): with ``A B = 0`` DePT's logits equal CoOp's with the same ``m`` context vectors.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.layers import ClassPrompts, context_from_words, random_context, text_features
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.prompts.lowrank import LowRankEmbeddingUpdate, decomposed_budget

log = logging.getLogger(__name__)


class DePT(PromptLearner):
    """Short context prompt + low-rank offsets of the class-name/template token embeddings.

    Args:
        n_ctx: ``m``, the short prompt's length (must be shorter than ``original_n_ctx``).
        rank: ``r`` of ``A [s, r] B [r, d]`` (at most the text width ``d``).
        n_positions: ``s``, positions after the prompt whose embeddings are offset; ``None`` = all of them
            (``context_length - 1 - m``).
        original_n_ctx: length ``L`` of the soft prompt being decomposed (CoOp's 16); only validated and used
            to log the parameter budget ``L * d`` against DePT's ``m d + r (s + d)``.
        ctx_init: words initialising the short prompt (``n_ctx`` must match their token count) or ``None``.
        words_before: words between the prompt and the class name (default none).
        words_after: text right after the class name (default ``"."``, CoOp's suffix).
        lowrank_lr_scale: learning rate of ``A, B`` relative to the configured optimiser ``lr``.
        init_std: std of the random short prompt.
    """

    family = "text"

    def __init__(
        self,
        n_ctx: int = 7,
        *,
        rank: int = 8,
        n_positions: int | None = None,
        original_n_ctx: int = 16,
        ctx_init: str | None = None,
        words_before: str = "",
        words_after: str = ".",
        lowrank_lr_scale: float = 0.1,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if ctx_init is None and (n_ctx is None or n_ctx < 1):
            raise LearnerError(f"n_ctx={n_ctx} must be a positive integer when ctx_init is not given")
        if n_ctx is not None and n_ctx >= original_n_ctx:
            raise LearnerError(
                f"n_ctx={n_ctx}: the short prompt must be shorter than the original prompt it decomposes "
                f"(original_n_ctx={original_n_ctx}); lower n_ctx (e.g. {max(1, original_n_ctx // 2)}) or raise original_n_ctx"
            )
        if rank < 1:
            raise LearnerError(f"rank={rank} must be at least 1")
        if lowrank_lr_scale <= 0:
            raise LearnerError(f"lowrank_lr_scale={lowrank_lr_scale} must be positive")
        self.n_ctx = n_ctx
        self.rank = rank
        self.n_positions = n_positions
        self.original_n_ctx = original_n_ctx
        self.ctx_init = ctx_init
        self.words_before = words_before.strip()
        self.words_after = words_after
        self.lowrank_lr_scale = lowrank_lr_scale
        self.init_std = init_std
        self.prompts: ClassPrompts | None = None

    # ------------------------------------------------------------------ parameters
    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        if self.ctx_init:
            ctx = context_from_words(backbone, self.ctx_init, self.n_ctx)
            self.n_ctx = ctx.shape[0]
            if self.n_ctx >= self.original_n_ctx:
                raise LearnerError(
                    f"ctx_init={self.ctx_init!r} is {self.n_ctx} tokens, not shorter than original_n_ctx={self.original_n_ctx}"
                )
        else:
            ctx = random_context(int(self.n_ctx), backbone.text_width, std=self.init_std)
        self.ctx = nn.Parameter(ctx)
        free = backbone.context_length - 1 - int(self.n_ctx)
        s = free if self.n_positions is None else int(self.n_positions)
        if not 1 <= s <= free:
            raise LearnerError(
                f"n_positions={self.n_positions}: with n_ctx={self.n_ctx} and context length {backbone.context_length} "
                f"at most {free} positions follow the prompt; set n_positions between 1 and {free} (or null)"
            )
        if self.rank > backbone.text_width:
            raise LearnerError(
                f"rank={self.rank} is larger than the token-embedding width {backbone.text_width} of backbone "
                f"{backbone.info.name!r}: a low-rank update needs rank <= {backbone.text_width}; lower rank"
            )
        try:
            self.lowrank = LowRankEmbeddingUpdate(s, backbone.text_width, self.rank)
        except ValueError as exc:
            raise LearnerError(str(exc)) from exc
        self.build_extra(backbone)
        budget = self.original_n_ctx * backbone.text_width
        count = sum(p.numel() for p in self.parameters() if p.requires_grad)
        log.info(
            "%s: %d trainable parameters (decomposed part %d) vs %d of a %d-vector prompt (%.1f%%)",
            type(self).__name__, count,
            decomposed_budget(width=backbone.text_width, n_ctx=int(self.n_ctx), rank=self.rank, n_positions=s),
            budget, self.original_n_ctx, 100.0 * count / budget,
        )

    def build_extra(self, backbone: VLBackbone) -> None:
        """Hook for subclasses (EPT) to add parameters after the prompt and low-rank pair exist."""

    def on_classnames_changed(self, classnames: list[str]) -> None:
        device = self.ctx.device if hasattr(self, "ctx") else None
        words = [" ".join(filter(None, [self.words_before, c.replace("_", " ")])) + self.words_after for c in classnames]
        self.prompts = ClassPrompts(self.backbone, words, int(self.n_ctx), suffix_text="")
        if device is not None:
            self.prompts.to(device)

    def optimizer_groups(self) -> list[dict]:
        lowrank = [p for p in self.lowrank.parameters() if p.requires_grad]
        ids = {id(p) for p in lowrank}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest}, {"params": lowrank, "lr_scale": self.lowrank_lr_scale}]

    # ------------------------------------------------------------------ forward
    def prompt_vectors(self) -> torch.Tensor:
        """The ``[m, d]`` context vectors fed to the text encoder (DePT: the short prompt itself)."""
        return self.ctx

    def text_features(self) -> torch.Tensor:
        embeddings = self.prompts(self.prompt_vectors())
        embeddings = self.lowrank(embeddings, start=1 + int(self.n_ctx))
        return text_features(self.backbone, embeddings, self.prompts.pool_index)
