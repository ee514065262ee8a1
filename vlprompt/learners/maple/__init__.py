"""MaPLe: Multi-modal Prompt Learning (Khattak, Rasheed, Maaz, Khan, Khan; CVPR 2023).

Text tower (eq. 1-2): the prompt of class ``c`` is ``[SOS] P_0 <rest of ctx_init> <class> . [EOS]`` with
``P_0 [n, Wt]`` the first ``n`` token embeddings of ``ctx_init`` ("a photo of a", ``n = 2``: "of a" stays
fixed text) or N(0, 0.02^2); at the input of layers ``i = 1..J-1`` the states at positions ``1..n`` are
replaced by learned prompts ``P_i [n, Wt]`` (N(0, 0.02^2)). Image tower (eq. 5-7, the vision-language
coupling function ``F``): the visual prompts are linear projections of the text prompts,
``P~_0 = proj(P_0)`` appended after the patch tokens at the first layer's input, and
``P~_i = F_{i-1}(P_i)`` replacing those ``n`` tokens at layers ``1..J-1``; each ``F`` is a
``Linear(Wt -> Wv)`` (``proj`` separate; the ``J-1`` layer projections start as copies of one randomly
initialised Linear, as the reference's ``_get_clones``). Logits ``scale * cos``. This follows
``trainers/maple.py`` and ``VisionTransformer_MaPLe``/``ResidualAttentionBlock_MaPLe`` of
muzairkhattak/multimodal-prompt-learning, in fp32.

Coupling options (TuneVLSeg, Adhikari et al. ACCV 2024: ``BaseProjectorLearner`` of naamiinepal/tunevlseg
@7956bcd, ``src/models/core_models/coop/context_learner/base_projector_learner.py``): ``intermediate_dim``
turns every coupling function into the reference's MLP ``Linear(Wt, h) -> ReLU -> ... -> Linear(h_k, Wv)``
(hidden weights Kaiming-normal; the last Linear has no bias when ``proj_norm``) followed by
``LayerNorm(Wv)`` when ``proj_norm``; each of the ``J`` layers (``proj`` included) gets its own, independently
drawn projection, as the reference builds them; ``unified_projection`` makes one projection serve every layer.
TuneVLSeg's CLIPSeg setting (``configs/model/maple_clipseg.yaml``) is ``use_unified_projection: false,
intermediate_dim: 64, use_proj_norm: true``: ``Linear(512, 64) -> ReLU -> Linear(64, 768, no bias) ->
LayerNorm(768)`` (``configs/learners/maple/tunevlseg.yaml``); ``lora_proj`` (``use_lora_proj``) swaps the MLP
for the reference's low-rank product ``Linear(Wt, r, no bias) -> Linear(r, Wv)`` of rank ``intermediate_dim``.
The defaults are the MaPLe paper's single Linear.

Deliberate differences: widths come from the backbone (the reference hard-codes 512 -> 768, ViT-B/16);
``n_ctx`` above the token count of ``ctx_init`` is an error (the reference falls back to random context for
``n_ctx > 4``); ``prompt_depth=None`` = the paper's J = 9 capped at the towers' layer count.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.prompts.layers import ClassPrompts, DeepPrompts, text_features
from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.prompts.vl_layers import (
    PromptConfigError,
    guess_reference_learner,
    mlp_projection,
    reference_keys,
    resolve_depth,
    take_reference_tensor,
    text_context,
)


class MaPLe(PromptLearner):
    """Coupled deep prompts: learned text prompts, visual prompts projected from them.

    Args:
        n_ctx: prompt tokens per layer (paper: 2).
        ctx_init: words initialising the layer-0 context (first ``n_ctx`` tokens); ``None`` = random.
        prompt_depth: ``J``, layers ``0..J-1`` prompted in both towers (base-to-new 9, cross-dataset 3;
            1 = shallow MaPLe); ``None`` = 9 capped at the towers' layers.
        init_std: std of the N(0, std^2) initialisation of random prompts.
        intermediate_dim: hidden width(s) of the coupling MLP (TuneVLSeg: 64); ``None`` = the paper's one Linear.
        proj_norm: ``LayerNorm(Wv)`` after the coupling MLP (TuneVLSeg: true; no effect without
            ``intermediate_dim``, as in the reference).
        unified_projection: one coupling function for every layer (TuneVLSeg's ``use_unified_projection``).
        lora_proj: the coupling is TuneVLSeg's low-rank product of rank ``intermediate_dim`` instead of the MLP
            (``use_lora_proj``; see :func:`~vlprompt.learners.prompts.vl_layers.mlp_projection`).
    """

    family = "multimodal"
    modifies_image_encoder = True
    paper_depth = 9

    def __init__(
        self,
        n_ctx: int = 2,
        *,
        ctx_init: str | None = "a photo of a",
        prompt_depth: int | None = None,
        init_std: float = 0.02,
        intermediate_dim: int | list[int] | None = None,
        proj_norm: bool = False,
        unified_projection: bool = False,
        lora_proj: bool = False,
    ) -> None:
        super().__init__()
        if n_ctx < 1:
            raise LearnerError(f"n_ctx={n_ctx} must be at least 1")
        self.intermediate_dim = intermediate_dim
        self.proj_norm = proj_norm
        self.unified_projection = unified_projection
        self.lora_proj = lora_proj
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.prompt_depth = prompt_depth
        self.init_std = init_std
        self.prompts: ClassPrompts | None = None
        self._lead: str | None = None

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        try:
            self.depth = resolve_depth(
                self.prompt_depth, paper=self.paper_depth, layers=min(backbone.text_layers, backbone.vision_layers),
                name="prompt_depth", owner="maple",
            )
            ctx, self._lead = text_context(backbone, self.n_ctx, self.ctx_init, std=self.init_std)
        except PromptConfigError as exc:
            raise LearnerError(str(exc)) from exc
        wt, wv = backbone.text_width, backbone.vision_width
        self.ctx = nn.Parameter(ctx)
        if self.is_paper_coupling:  # MaPLe: proj, then J-1 copies of one Linear (the reference's _get_clones)
            self.proj = nn.Linear(wt, wv)
            self.text_deep = DeepPrompts(self.depth, self.n_ctx, wt, std=self.init_std)
            single = nn.Linear(wt, wv)
            self.projections = nn.ModuleList([copy.deepcopy(single) for _ in range(self.depth - 1)])
            return
        try:  # TuneVLSeg: one projection per layer, each drawn afresh (or one for all layers when unified)
            kw = {"intermediate_dim": self.intermediate_dim, "final_norm": self.proj_norm, "lora": self.lora_proj}
            self.proj = mlp_projection(wt, wv, **kw)
            layers = [self.proj if self.unified_projection else mlp_projection(wt, wv, **kw)
                      for _ in range(self.depth - 1)]
        except PromptConfigError as exc:
            raise LearnerError(f"maple: {exc}") from exc
        self.text_deep = DeepPrompts(self.depth, self.n_ctx, wt, std=self.init_std)
        self.projections = nn.ModuleList(layers)

    @property
    def is_paper_coupling(self) -> bool:
        """True for the MaPLe paper's coupling (one Linear per layer, not shared); False for TuneVLSeg's options."""
        return self.intermediate_dim is None and not self.unified_projection

    def on_classnames_changed(self, classnames: list[str]) -> None:
        device = self.ctx.device if hasattr(self, "ctx") else None
        try:
            self.prompts = ClassPrompts(self.backbone, classnames, self.n_ctx, lead_text=self._lead)
        except ValueError as exc:
            raise LearnerError(f"maple: {exc}") from exc
        if device is not None:
            self.prompts.to(device)

    def visual_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """``(P~_0 [n, Wv], [None, P~_1, ..., P~_{J-1}])``: the coupling function applied to the text prompts."""
        deep = [f(p) for f, p in zip(self.projections, self.text_deep.prompts)]
        return self.proj(self.ctx), [None, *deep]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        shallow, deep = self.visual_prompts()
        return self.backbone.encode_image(images, prompts=shallow, deep_prompts=deep)

    def text_features(self) -> torch.Tensor:
        return text_features(
            self.backbone, self.prompts(self.ctx), self.prompts.pool_index, deep_prompts=self.text_deep.as_layers()
        )

    # ------------------------------------------------------------------ reference checkpoints
    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a ``trainers/maple.py`` state dict to :meth:`learned_state` names.

        Reference names (under ``prompt_learner.``): ``ctx`` ``[n, Wt]``, ``proj.weight`` ``[Wv, Wt]``,
        ``proj.bias`` ``[Wv]``, ``compound_prompts_text.{i}`` ``[n, Wt]`` and
        ``compound_prompt_projections.{i}.weight/bias`` for ``i = 0..J-2``.
        """
        if not self.is_paper_coupling:
            raise LearnerError(
                f"maple: reference MaPLe checkpoints hold the paper's Linear coupling, but this learner has "
                f"intermediate_dim={self.intermediate_dim!r}, unified_projection={self.unified_projection}: set "
                "intermediate_dim: null and unified_projection: false to import one"
            )
        ref = reference_keys(state)
        kind = guess_reference_learner(ref)
        if kind != "maple":
            raise LearnerError(
                f"maple: this state dict was saved by the reference {kind!r} trainer, not MaPLe: import it with that learner"
            )
        wt, wv, n = self.backbone.text_width, self.backbone.vision_width, self.n_ctx
        layers = sorted(int(k.split(".")[1]) for k in ref if k.startswith("compound_prompts_text."))
        try:
            if layers != list(range(self.depth - 1)):
                raise PromptConfigError(
                    f"maple: the reference state has {len(layers)} compound text prompts (depth {len(layers) + 1}) but "
                    f"this learner has prompt_depth={self.depth}: set prompt_depth: {len(layers) + 1}"
                )
            def take(key: str, shape: tuple[int, ...], meaning: str) -> torch.Tensor:
                return take_reference_tensor(ref, key, shape, owner="maple", meaning=meaning)

            out = {
                "ctx": take("ctx", (n, wt), "text context [n_ctx, text width]"),
                "proj.weight": take("proj.weight", (wv, wt), "Linear(text width -> vision width)"),
                "proj.bias": take("proj.bias", (wv,), "[vision width]"),
            }
            for i in layers:
                out[f"text_deep.prompts.{i}"] = take(f"compound_prompts_text.{i}", (n, wt), f"layer {i + 1} text prompts")
                for part, shape in (("weight", (wv, wt)), ("bias", (wv,))):
                    out[f"projections.{i}.{part}"] = take(
                        f"compound_prompt_projections.{i}.{part}", shape, f"layer {i + 1} coupling Linear {part}"
                    )
        except PromptConfigError as exc:
            raise LearnerError(str(exc)) from exc
        return out
