"""Shared Separate: TuneVLSeg's joint prompts from a shared low-dimensional space, projected separately to
each tower (Adhikari et al., "TuneVLSeg: Prompt Tuning Benchmark for Vision-Language Segmentation Models",
ACCV 2024, method section: the multimodal prompt-tuning strategies; arXiv 2410.05239). The paper's full text
was not available offline, so equation (1) below is numbered locally and restates what the reference computes.

For each prompted layer ``i = 0..J-1`` one learned tensor ``c_i [n, d]`` lives in a shared space of small
width ``d`` (``shared_dim``, reference config 64) and is mapped to both towers by its own projections::

    P_i = f_i(c_i)  [n, Wt]   (text)        V_i = g_i(c_i)  [n, Wv]   (image)           (1)

Text prompt of class ``k``: ``[SOS] P_0 <name_k> . [EOS]``; at layers ``1..J-1`` the hidden states at
positions ``1..n`` are replaced by ``P_i``. Image: ``V_0`` appended after the patch tokens at the first
layer's input (before the pre-LayerNorm), replaced by ``V_i`` at layers ``1..J-1``. Logits ``scale * cos``
(classification); segmentation conditions the mask decoder on the prompted text feature.

What the reference computes (naamiinepal/tunevlseg @7956bcd, ``SharedSeparateLearner`` with
``BaseSharedLearner``/``BaseMultimodalCLIPSeg`` and ``configs/model/shared_separate_clipseg.yaml``), and this
learner too, in fp32:

- ``c`` ``[J, n, d]`` drawn N(0, 0.02^2) at once (no word initialisation for joint learners); then the text
  projection is built and copied ``J`` times, then the visual one likewise (same draw order: equal seeds give
  equal tensors). ``f_i``/``g_i`` are ``nn.Linear(d, W)`` with PyTorch's default init; the ``J`` copies start
  identical and train apart (``use_unified_projection: false``; ``true`` = one projection for all layers).
- ``intermediate_dim`` turns each projection into the reference's MLP (Linear-ReLU, Kaiming-normal, final
  Linear, LayerNorm if ``proj_norm``); with ``intermediate_dim: null`` (the reference config) ``proj_norm`` has
  no effect there either. Config: ``n = 4``, ``d = 64``, ``J = 1``; the paper tuned ``J`` in 1..10 and
  ``d`` in {32, 64} per dataset with Optuna (``configs/hparams_search/shared_separate_optuna.yaml``).
- ``J`` is at most ``min(text layers, vision layers)``.

Deliberate differences: the reference inserts the context in front of the tokenised phrase and truncates
overlong sequences; here prompts are ``"X"*n {name}{end}`` with the one full-stop rule of
:func:`~vlprompt.learners.prompts.layers.prompt_end` (``"."`` after a class name; on the segmentation track nothing, so the
tokens after the context are the dataset's prompt verbatim, as the reference's) and overlong prompts are an error. The reference's LoRA projection
(``use_lora_proj``) is the ``lora_proj`` option. The reference's CLIPSeg-side extra (``use_new_last_layer``, a trainable
residual decoder convolution) belongs to the segmentation module, not the prompt learner: ``decoder_branch`` of
:class:`~vlprompt.modules.segmentation.PromptSegmenter`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.vl_layers import JointPromptLearner, JointPrompts, PromptConfigError, layer_copies, mlp_projection


class SeparateProjections(JointPrompts):
    """``c [J, n, d]`` with per-layer projections ``text_proj[i]: d -> Wt`` and ``visual_proj[i]: d -> Wv`` (eq. 1)."""

    def __init__(
        self,
        depth: int,
        n_ctx: int,
        shared_dim: int,
        text_width: int,
        vision_width: int,
        *,
        unified: bool = False,
        intermediate_dim: int | Sequence[int] | None = None,
        final_norm: bool = True,
        lora: bool = False,
        std: float = 0.02,
    ) -> None:
        if shared_dim < 1:
            raise PromptConfigError(f"shared_dim={shared_dim} must be at least 1 (TuneVLSeg: 32 or 64)")
        super().__init__(depth, n_ctx, shared_dim, std=std)
        kw = {"intermediate_dim": intermediate_dim, "final_norm": final_norm, "lora": lora}
        self.text_proj = layer_copies(mlp_projection(shared_dim, text_width, **kw), depth, unified=unified)
        self.visual_proj = layer_copies(mlp_projection(shared_dim, vision_width, **kw), depth, unified=unified)

    def project(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        last = len(self.text_proj) - 1
        text = [self.text_proj[min(i, last)](self.context[i]) for i in range(self.depth)]
        visual = [self.visual_proj[min(i, last)](self.context[i]) for i in range(self.depth)]
        return text, visual


class SharedSeparate(JointPromptLearner):
    """Joint prompts from a shared ``shared_dim``-wide space, projected separately to each tower per layer.

    Args:
        n_ctx: prompt tokens per layer in both towers (reference config: 4).
        shared_dim: width ``d`` of the shared space (reference config: 64; paper search {32, 64}).
        prompt_depth: ``J``, layers ``0..J-1`` prompted in both towers (reference config: 1; paper search 1..10).
        unified_projection: one projection pair for every layer instead of ``J`` pairs (reference config: false).
        intermediate_dim: hidden widths of an MLP projection; ``None`` = one Linear (reference config).
        proj_norm: final LayerNorm of an MLP projection (reference config: true; ignored without intermediate_dim).
        lora_proj: low-rank projections of rank ``intermediate_dim`` instead of MLPs (the reference's
            ``use_lora_proj``, config false; see :func:`~vlprompt.learners.prompts.vl_layers.mlp_projection`).
        init_std: std of the N(0, std^2) initialisation of the shared context (0.02).
        suffix_text: text after the class name or phrase; ``None`` = the one rule of :func:`~vlprompt.learners.prompts.layers.prompt_end` (CoOp's ``"."`` after a class name, nothing after a segmentation prompt); ``""`` = never.
    """

    def __init__(
        self,
        n_ctx: int = 4,
        *,
        shared_dim: int = 64,
        prompt_depth: int = 1,
        unified_projection: bool = False,
        intermediate_dim: int | list[int] | None = None,
        proj_norm: bool = True,
        lora_proj: bool = False,
        init_std: float = 0.02,
        suffix_text: str | None = None,
    ) -> None:
        super().__init__(n_ctx, prompt_depth, init_std=init_std, suffix_text=suffix_text)
        self.lora_proj = lora_proj
        self.shared_dim = shared_dim
        self.unified_projection = unified_projection
        self.intermediate_dim = intermediate_dim
        self.proj_norm = proj_norm

    def make_prompts(self, backbone: VLBackbone, depth: int) -> JointPrompts:
        return SeparateProjections(
            depth, self.n_ctx, self.shared_dim, backbone.text_width, backbone.vision_width,
            unified=self.unified_projection, intermediate_dim=self.intermediate_dim, final_norm=self.proj_norm,
            lora=self.lora_proj, std=self.init_std,
        )
