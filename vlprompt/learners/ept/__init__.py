"""EPT: Efficient Prompt Tuning by Multi-Space Projection and Prompt Fusion (Lan, Yang, Liu, Guo, Jiang,
Zhao, Wang; arXiv 2405.11464, 2024), applied to CLIP's text encoder.

EPT starts from DePT's decomposition (:mod:`vlprompt.learners.dept`): a short prompt ``P [m, d]`` plus
low-rank ``A [s, r] B [r, d]`` offsetting the word embeddings. Two additions:
- **prompt fusion**: the short prompt is enriched with the low-rank matrices and itself as extra
  knowledge sources, :class:`vlprompt.learners.prompts.lowrank.PromptFusion`: ``P_f = P + alpha softmax(P M^T/sqrt d) M``,
  ``M = [P; A B]``;
- **multi-space projection**: ``P_f`` is projected into ``K`` subspaces whose outputs a gating
  network combines with learned softmax weights, :class:`vlprompt.learners.prompts.lowrank.MultiSpaceProjection`.

Source: we could read the paper's abstract and public summaries, not its full text; equation numbers are
therefore not cited, and every form below that the abstract does not fix is marked as our choice.

No public code exists; choices where the paper is silent or does not fit CLIP (all configurable):
- fusion is one parameter-free attention step scaled by a learnable scalar ``alpha`` (init ``fusion_init``
  = 0), not a learned attention block, to stay within CoOp's parameter budget;
- each subspace is a residual low-rank projection ``I + U_k V_k`` of rank ``space_rank`` (``V_k`` zero at
  init), the gate a zero-initialised linear layer on the mean prompt vector (uniform weights at start);
  with ``n_spaces: 1`` the gate is identically 1 and has no parameters;
- fusion and projection parameters train with the prompt's learning rate (group 1), ``A, B`` with
  ``lowrank_lr_scale * lr`` (group 2), as in DePT.

Invariant (tested): with one subspace (constant gate), ``V = 0`` and ``alpha = 0`` EPT equals DePT.
"""

from __future__ import annotations

import torch

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError
from vlprompt.learners.dept import DePT
from vlprompt.learners.prompts.lowrank import MultiSpaceProjection, PromptFusion


class EPT(DePT):
    """DePT + prompt fusion + gated multi-space projection of the short prompt.

    Args (besides :class:`~vlprompt.learners.dept.DePT`'s):
        n_spaces: number of subspaces ``K`` (>= 1).
        space_rank: rank ``q`` of each subspace's residual projection.
        fusion_init: initial fusion weight ``alpha``.
    """

    def __init__(
        self,
        n_ctx: int = 4,
        *,
        rank: int = 5,
        n_positions: int | None = None,
        n_spaces: int = 2,
        space_rank: int = 1,
        fusion_init: float = 0.0,
        original_n_ctx: int = 16,
        ctx_init: str | None = None,
        words_before: str = "",
        words_after: str = ".",
        lowrank_lr_scale: float = 0.1,
        init_std: float = 0.02,
    ) -> None:
        if n_spaces < 1:
            raise LearnerError(f"n_spaces={n_spaces}: EPT needs at least one subspace (n_spaces: 1 turns the gate off)")
        if space_rank < 1:
            raise LearnerError(f"space_rank={space_rank} must be at least 1")
        super().__init__(
            n_ctx, rank=rank, n_positions=n_positions, original_n_ctx=original_n_ctx, ctx_init=ctx_init,
            words_before=words_before, words_after=words_after, lowrank_lr_scale=lowrank_lr_scale, init_std=init_std,
        )
        self.n_spaces = n_spaces
        self.space_rank = space_rank
        self.fusion_init = fusion_init

    def build_extra(self, backbone: VLBackbone) -> None:
        if self.space_rank > backbone.text_width:
            raise LearnerError(f"space_rank={self.space_rank} is larger than the text width {backbone.text_width}; lower it")
        self.fusion = PromptFusion(self.fusion_init)
        self.spaces = MultiSpaceProjection(backbone.text_width, self.n_spaces, self.space_rank)

    def prompt_vectors(self) -> torch.Tensor:
        return self.spaces(self.fusion(self.ctx, self.lowrank.delta()))
