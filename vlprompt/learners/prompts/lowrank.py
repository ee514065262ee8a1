"""Low-rank prompt machinery shared by DePT and EPT (a sibling of :mod:`vlprompt.learners.prompts.layers`).

- :class:`LowRankEmbeddingUpdate`: DePT's pair ``A [s, r]``, ``B [r, d]`` whose product offsets the frozen
  input token embeddings at ``s`` consecutive positions (Shi & Lipani, ICLR 2024, method section: ``E' = E + A B``).
- :class:`PromptFusion`: EPT's prompt fusion, the short prompt enriched by attending over itself and the
  low-rank offsets ``A B`` (Lan et al. 2024, "Efficient Prompt Tuning by Multi-Space Projection and Prompt
  Fusion", its "prompt fusion" module; the attention form is our choice, see the class).
- :class:`MultiSpaceProjection`: EPT's multi-space projection, the prompt projected into ``K`` subspaces
  combined by a gating network's softmax weights (its "multi-space projection" module; the projection form is our choice).
- :func:`decomposed_budget`: trainable parameters of a decomposed prompt, to match CoOp's ``n_ctx * d``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def decomposed_budget(*, width: int, n_ctx: int, rank: int, n_positions: int) -> int:
    """Trainable parameters of a short prompt ``[m, d]`` plus ``A [s, r]`` and ``B [r, d]``: ``m d + r (s + d)``."""
    return n_ctx * width + rank * (n_positions + width)


class LowRankEmbeddingUpdate(nn.Module):
    """``A [s, r] @ B [r, d]`` added to the token embeddings at positions ``start .. start + s - 1``.

    Initialisation (DePT leaves it to its code; we follow LoRA's convention): ``A`` Kaiming-uniform,
    ``B`` zero, so the update starts at zero and training starts from the un-updated embeddings.

    Args:
        n_positions: ``s``, the number of consecutive positions the offsets cover.
        width: ``d``, the token-embedding width.
        rank: ``r``; at least 1 and at most ``min(s, d)`` (a larger rank is not low-rank).
    """

    def __init__(self, n_positions: int, width: int, rank: int) -> None:
        super().__init__()
        if n_positions < 1:
            raise ValueError(f"n_positions={n_positions} must be at least 1 (positions whose embeddings are updated)")
        if rank < 1:
            raise ValueError(f"rank={rank} must be at least 1")
        if rank > width:
            raise ValueError(
                f"rank={rank} is larger than the token-embedding width {width}: a low-rank update needs rank <= {width}; "
                f"lower rank (e.g. rank: {max(1, min(8, width))})"
            )
        if rank > n_positions:
            raise ValueError(f"rank={rank} is larger than n_positions={n_positions}: lower rank to at most {n_positions}")
        self.n_positions, self.width, self.rank = n_positions, width, rank
        self.lowrank_a = nn.Parameter(torch.empty(n_positions, rank))
        nn.init.kaiming_uniform_(self.lowrank_a, a=math.sqrt(5))
        self.lowrank_b = nn.Parameter(torch.zeros(rank, width))

    def delta(self) -> torch.Tensor:
        """The offsets ``A B`` ``[s, d]``."""
        return self.lowrank_a @ self.lowrank_b

    def forward(self, embeddings: torch.Tensor, start: int) -> torch.Tensor:
        """``embeddings [N, L, d]`` with ``A B`` added at positions ``start .. start + s - 1`` (clipped to ``L``)."""
        end = min(start + self.n_positions, embeddings.shape[1])
        delta = self.delta()[: end - start].to(embeddings.dtype)
        pad_after = embeddings.shape[1] - end
        offset = F.pad(delta, (0, 0, start, pad_after))
        return embeddings + offset.unsqueeze(0)


class PromptFusion(nn.Module):
    """EPT prompt fusion: ``P + alpha * softmax(P M^T / sqrt(d)) M`` with knowledge ``M = [P; A B]``.

    The paper fuses the short prompt with "the low-rank matrices and the short prompt as additional knowledge
    sources"; it gives no public code. We read it as one attention step of the short prompt over the rows of
    itself and of the low-rank offsets ``A B`` (no extra projections, keeping the budget of CoOp), scaled by
    a learnable scalar ``alpha`` that starts at ``alpha_init`` (0: EPT starts as DePT).
    """

    def __init__(self, alpha_init: float = 0.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, prompt: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Fused prompt ``[m, d]`` of ``prompt [m, d]`` and low-rank offsets ``delta [s, d]``."""
        knowledge = torch.cat([prompt, delta], dim=0)
        attn = torch.softmax(prompt @ knowledge.t() / math.sqrt(prompt.shape[-1]), dim=-1)
        return prompt + self.alpha * (attn @ knowledge)


class MultiSpaceProjection(nn.Module):
    """EPT multi-space projection: ``sum_k g_k(P) * (P + P U_k V_k)``, ``g = softmax(W mean(P) + b)``.

    Each subspace ``k`` is a residual low-rank projection ``I + U_k V_k`` (``U_k [d, q]`` ~ N(0, 0.02^2),
    ``V_k [q, d]`` zero, so every subspace starts as the identity); the gating network is one linear layer on
    the mean prompt vector (zero-initialised: uniform weights at the start). The paper's subspaces are full
    projections; low-rank residual ones keep EPT within CoOp's parameter budget. With one subspace the
    softmax gate is identically 1 (no gate parameters are created).

    Args:
        width: ``d``.
        n_spaces: ``K`` >= 1.
        space_rank: ``q``, the rank of each subspace's residual projection.
    """

    def __init__(self, width: int, n_spaces: int, space_rank: int = 1, *, std: float = 0.02) -> None:
        super().__init__()
        if n_spaces < 1:
            raise ValueError(f"n_spaces={n_spaces}: EPT needs at least one subspace (n_spaces: 1 disables the gate)")
        if not 1 <= space_rank <= width:
            raise ValueError(f"space_rank={space_rank} must be between 1 and the prompt width {width}")
        self.n_spaces = n_spaces
        self.space_u = nn.Parameter(torch.empty(n_spaces, width, space_rank).normal_(0.0, std))
        self.space_v = nn.Parameter(torch.zeros(n_spaces, space_rank, width))
        self.gate = nn.Linear(width, n_spaces) if n_spaces > 1 else None
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)

    def gate_weights(self, prompt: torch.Tensor) -> torch.Tensor:
        """Softmax weights ``[K]`` of the subspaces for ``prompt [m, d]``."""
        if self.gate is None:
            return prompt.new_ones(1)
        return torch.softmax(self.gate(prompt.mean(dim=0)), dim=-1)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        """Gated combination ``[m, d]`` of the projections of ``prompt [m, d]``."""
        spaces = prompt.unsqueeze(0) + torch.einsum("md,kdq,kqe->kme", prompt, self.space_u, self.space_v)
        return torch.einsum("k,kme->me", self.gate_weights(prompt), spaces)
