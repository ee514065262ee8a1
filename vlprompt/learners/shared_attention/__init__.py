"""Shared Attention: TuneVLSeg's joint prompts with a transformer layer as the joint projector (Adhikari et
al., "TuneVLSeg: Prompt Tuning Benchmark for Vision-Language Segmentation Models", ACCV 2024, method section:
the multimodal prompt-tuning strategies; arXiv 2410.05239). The paper's full text was not available offline, so
equation (1) below is numbered locally and restates what the reference code computes.

For each prompted layer ``i = 0..J-1`` one learned tensor ``c_i [n, Wt + Wv]`` goes through a transformer
encoder layer ``T_i`` whose output is split by width into the text and the visual prompts::

    [P_i | V_i] = T_i(c_i),   P_i [n, Wt] (text),   V_i [n, Wv] (image)               (1)

Prompt placement is that of ``shared_separate`` (:class:`~vlprompt.learners.prompts.vl_layers.JointPromptLearner`): ``P_0``
after the start token, ``V_0`` after the patch tokens, replaced at layers ``1..J-1``.

What the reference computes (naamiinepal/tunevlseg @7956bcd, ``SharedAttnLearner`` and
``configs/model/shared_attn_clipseg.yaml``), and this learner too, in fp32:

- ``c`` ``[J, n, Wt + Wv]`` drawn N(0, 0.02^2), then one ``torch.nn.TransformerEncoderLayer(d_model=Wt+Wv,
  nhead=16, dim_feedforward=1536, dropout=0.25, norm_first=True)`` (ReLU, LayerNorm eps 1e-5, PyTorch's
  default init) copied ``J`` times (identical start; ``use_unified_projection: false``). ``J = 1``, ``n = 4``
  in the config; the paper tuned ``J`` in 1..10, nhead in {16, 20, 32}, dropout in [0.1, 0.55],
  dim_feedforward in {1280, 1420} and norm_first per dataset with Optuna.
- The layer is called on ``c_i.unsqueeze(0)`` with the layer's default ``batch_first=False``, so the ``n``
  prompt tokens are a batch of ``n`` length-1 sequences: **each token attends only to itself** (attention is
  then ``out_proj(v_proj(LN(x)))``; no mixing across tokens). Reproduced by default; ``token_attention:
  true`` lets the ``n`` tokens attend to each other (one sequence of length ``n``), which the reference does
  not do.
- Dropout is active in training; both towers take their halves of one projector call per training step (the
  reference caches the other tower's half; see :class:`~vlprompt.learners.prompts.vl_layers.JointPrompts`).

Deliberate differences: as ``shared_separate`` (the full stop of :func:`~vlprompt.learners.prompts.layers.prompt_end`; overlong prompts are an
error, not truncated; the reference's CLIPSeg decoder extras are the backbone's business); ``token_attention``
is an addition (default off = the reference).
"""

from __future__ import annotations

import torch
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.vl_layers import JointPromptLearner, JointPrompts, PromptConfigError, layer_copies


class AttentionProjector(JointPrompts):
    """``c [J, n, Wt + Wv]`` through per-layer transformer encoder layers, split into text/visual halves (eq. 1)."""

    stochastic = True

    def __init__(
        self,
        depth: int,
        n_ctx: int,
        text_width: int,
        vision_width: int,
        *,
        nhead: int = 16,
        dim_feedforward: int = 1536,
        dropout: float = 0.25,
        norm_first: bool = True,
        unified: bool = False,
        token_attention: bool = False,
        std: float = 0.02,
    ) -> None:
        width = text_width + vision_width
        if nhead < 1 or width % nhead:
            raise PromptConfigError(
                f"nhead={nhead} must divide the joint width {width} (text {text_width} + vision {vision_width}): "
                f"pick nhead among the divisors of {width}"
            )
        if not 0.0 <= dropout < 1.0:
            raise PromptConfigError(f"dropout={dropout} must be in [0, 1)")
        super().__init__(depth, n_ctx, width, std=std)
        self.text_width = text_width
        self.token_attention = token_attention
        self.stochastic = dropout > 0
        layer = nn.TransformerEncoderLayer(
            d_model=width, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout, norm_first=norm_first
        )
        self.layers = layer_copies(layer, depth, unified=unified)

    def project(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        last = len(self.layers) - 1
        text, visual = [], []
        for i in range(self.depth):
            # batch_first=False: [1, n, C] is n sequences of length 1 (the reference); [n, 1, C] one of length n
            x = self.context[i].unsqueeze(1 if self.token_attention else 0)
            y = self.layers[min(i, last)](x).squeeze(1 if self.token_attention else 0)
            text.append(y[:, : self.text_width])
            visual.append(y[:, self.text_width :])
        return text, visual


class SharedAttention(JointPromptLearner):
    """Joint prompts from a transformer encoder layer over one ``Wt + Wv``-wide context per layer.

    Args:
        n_ctx: prompt tokens per layer in both towers (reference config: 4).
        prompt_depth: ``J``, layers ``0..J-1`` prompted in both towers (reference config: 1; paper search 1..10).
        nhead: attention heads of the projector (16; must divide ``Wt + Wv``).
        dim_feedforward: hidden width of its feed-forward block (1536).
        dropout: its dropout, active in training (0.25).
        norm_first: pre-LayerNorm layer (true).
        unified_projection: one projector for every layer instead of ``J`` (reference config: false).
        token_attention: let the ``n`` tokens attend to each other (not the reference: see module docstring).
        init_std: std of the N(0, std^2) initialisation of the context (0.02).
        suffix_text: text after the class name or phrase; ``None`` = the one rule of :func:`~vlprompt.learners.prompts.layers.prompt_end` (CoOp's ``"."`` after a class name, nothing after a segmentation prompt); ``""`` = never.
    """

    def __init__(
        self,
        n_ctx: int = 4,
        *,
        prompt_depth: int = 1,
        nhead: int = 16,
        dim_feedforward: int = 1536,
        dropout: float = 0.25,
        norm_first: bool = True,
        unified_projection: bool = False,
        token_attention: bool = False,
        init_std: float = 0.02,
        suffix_text: str | None = None,
    ) -> None:
        super().__init__(n_ctx, prompt_depth, init_std=init_std, suffix_text=suffix_text)
        self.nhead = nhead
        self.dim_feedforward = dim_feedforward
        self.dropout = dropout
        self.norm_first = norm_first
        self.unified_projection = unified_projection
        self.token_attention = token_attention

    def make_prompts(self, backbone: VLBackbone, depth: int) -> JointPrompts:
        return AttentionProjector(
            depth, self.n_ctx, backbone.text_width, backbone.vision_width, nhead=self.nhead,
            dim_feedforward=self.dim_feedforward, dropout=self.dropout, norm_first=self.norm_first,
            unified=self.unified_projection, token_attention=self.token_attention, std=self.init_std,
        )
