"""MMA, the Multi-Modal Adapter (Yang, Zhang, Wang & Xie, CVPR 2024): bottleneck adapters beside the higher blocks of
both frozen towers, joined by a projection shared between the towers.

Faithful to ZjjConan/Multi-Modal-Adapter at commit 547ee345a4dc5d60d43d3aa54e8eee50a107f591 (``trainers/mmadapter.py``,
``clip/model.py``, ``clip/gsl.py``, ``configs/trainers/MultiModalAdapter/vit_b16_ep5*.yaml``):

- blocks ``adapter_start .. adapter_end`` of each tower (1-based, the reference's ``layer_index``; 5..12 for
  ViT-B/16) get ``a_l(x) = s * up_l(shared_l(down_l(ln_1(x))))`` added to the block's output
  (``ModifiedResidualAttentionBlock.forward``: ``x + attn(ln_1 x)``, then ``+ mlp(ln_2 x) + a_l``), where ``ln_1``
  is the block's own frozen LayerNorm of the block input; ``down_l = ReLU(Linear(W, 32))`` and ``up_l = Linear(32, W)``
  belong to the tower (``text_adapter``, ``visual_adapter``) and ``shared_l = ReLU(Linear(32, 32))``
  (``shared_adapter``) is the same module for the text and the image block of layer ``l``;
- scale ``s = 0.001`` (``ADAPTER_SCALE``) with the reference's gradient scaling (``clip/gsl.py``): the adapter's input
  passes a layer scaling its gradient by ``s`` and the scaled output one scaling it by ``1 / s``, so the adapter's own
  parameters receive gradients as if ``s = 1`` while the forward pass and the gradient reaching the tower are those of
  ``s``;
- every Linear Kaiming-normal (``fan_out``, ReLU gain), biases zero (``AdapterLearner._build_adapter``);
- the text is the fixed ``"a photo of a {name}."`` (``TEXT_CTX_INIT`` + name + ``.``, underscores as spaces), encoded
  through the adapted text tower; logits ``exp(logit_scale) * cos``, cross-entropy (``MultiModalAdapter.forward_backward``).

Implementation: the adapters live in the learner and enter the frozen backbone through its generic
:meth:`~vlprompt.backbones.base.VLBackbone.residual_adapter` hook (a term added to a block's output, computed from the
block's ``ln_1`` input). The reference puts the gradient-scaling layer before ``ln_1``; here it acts after it, on the
hook's input: ``ln_1`` is frozen and its backward is linear in the incoming gradient, so the gradients are the same.
``tests/test_mma_equivalence.py`` checks logits, loss, gradients and one SGD step against the reference's own code.

Deliberate differences:

- fp32 (the reference config trains under ``PREC: amp``);
- ``adapter_start = 0`` (the reference's extra adapter on the token embeddings and after the image tower's
  ``ln_pre``, unused by its configs, whose start is 5) is refused with the fix;
- on a tower shallower than ``adapter_end`` (the toy and test CLIPs; the reference raises an IndexError there) the
  range is moved down to end at the tower's last block, keeping its length as far as the tower allows
  (:func:`adapted_layers`); on ViT-B/16 and ViT-L/14 the layers are the reference's;
- the adapters always have ``down``/``up`` (the reference builds a ``down``-less adapter when a tower's width equals
  ``adapter_dim``, which its forward then cannot call);
- the reference's per-iteration bookkeeping (Dassl's cosine per epoch, no warm-up) is the host module's per-epoch
  cosine (``configs/learners/mma/``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import LearnerError, PromptLearner

__all__ = ["MMA", "adapted_layers", "scale_gradient"]

#: the reference commit the learner and its test follow
REFERENCE_COMMIT = "547ee345a4dc5d60d43d3aa54e8eee50a107f591"
TOWERS = ("text", "vision")


class GradientScale(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``scale`` (the reference's ``clip/gsl.py``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged (any shape); its gradient is multiplied by ``scale`` on the way back."""
    return GradientScale.apply(x, scale)


def adapted_layers(start: int, end: int, depth: int) -> list[int]:
    """The 1-based blocks ``start..end`` of a tower of ``depth`` blocks that get an adapter.

    As given when ``end <= depth`` (the reference). For a shallower tower the range is moved down by
    ``end - depth`` so that it ends at the last block, and clipped at block 1 (the reference fails there)."""
    if end > depth:
        start, end = max(1, start - (end - depth)), depth
    return list(range(start, end + 1))


def bottleneck(width: int, dim: int) -> nn.Module:
    """A tower's adapter of one block: ``down = ReLU(Linear(width, dim))``, ``up = Linear(dim, width)`` (the
    reference's names, so that state dicts map one to one)."""
    return nn.Sequential(OrderedDict([
        ("down", nn.Sequential(nn.Linear(width, dim), nn.ReLU())),
        ("up", nn.Linear(dim, width)),
    ]))


def init_adapter(module: nn.Module) -> None:
    """Kaiming-normal weights (``fan_out``, ReLU gain) and zero biases for every Linear, as the reference."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)


class MMA(PromptLearner):
    """Multi-Modal Adapter: per-block adapters in both towers with a shared middle projection.

    Args:
        adapter_start: first adapted block, 1-based (reference ``ADAPTER_START``: 5).
        adapter_end: last adapted block, 1-based (``ADAPTER_END``: 12, ViT-B/16's last).
        adapter_dim: bottleneck width, also the shared projection's (``ADAPTER_DIM``: 32).
        adapter_scale: the adapters' output scale ``s`` (``ADAPTER_SCALE``: 0.001).
        ctx_init: the words before the class name (``TEXT_CTX_INIT``: ``"a photo of a"``); the text is
            ``"{ctx_init} {name}."``.
    """

    family = "multimodal"
    tasks = ("classification",)
    modifies_image_encoder = True
    resources = ()

    def __init__(
        self,
        adapter_start: int = 5,
        adapter_end: int = 12,
        adapter_dim: int = 32,
        adapter_scale: float = 0.001,
        *,
        ctx_init: str = "a photo of a",
    ) -> None:
        super().__init__()
        if adapter_start < 1:
            raise LearnerError(
                f"mma: adapter_start={adapter_start}: the reference's layer-0 adapter (on the token embeddings and "
                "after the image tower's ln_pre) is not supported; use adapter_start >= 1 (reference config: 5)"
            )
        if adapter_end < adapter_start:
            raise LearnerError(f"mma: adapter_end={adapter_end} is below adapter_start={adapter_start}; "
                               "give adapter_start <= adapter_end (reference: 5 and 12)")
        if adapter_dim < 1:
            raise LearnerError(f"mma: adapter_dim={adapter_dim} must be >= 1 (reference: 32)")
        if not adapter_scale > 0:
            raise LearnerError(f"mma: adapter_scale={adapter_scale} must be > 0 (the reference divides gradients "
                               "by it; reference: 0.001)")
        self.adapter_start, self.adapter_end = int(adapter_start), int(adapter_end)
        self.adapter_dim, self.adapter_scale = int(adapter_dim), float(adapter_scale)
        self.ctx_init = ctx_init

    def build(self, backbone: VLBackbone, classnames: list[str]) -> None:
        towers = backbone.attention_layers()
        missing = [t for t in TOWERS if t not in towers]
        if missing:
            raise LearnerError(
                f"mma: adapters go into both towers, but backbone {backbone.info.name!r} (model "
                f"{backbone.info.model!r}) takes none in its {' and '.join(missing)} tower. Use an "
                "open_clip CLIP ViT (e.g. model: ViT-B-16)."
            )
        widths = {"text": backbone.text_width, "vision": backbone.vision_width}
        self.layers = {t: adapted_layers(self.adapter_start, self.adapter_end, towers[t]) for t in TOWERS}
        self.text_adapter = nn.ModuleDict({str(i): bottleneck(widths["text"], self.adapter_dim)
                                           for i in self.layers["text"]})
        self.visual_adapter = nn.ModuleDict({str(i): bottleneck(widths["vision"], self.adapter_dim)
                                             for i in self.layers["vision"]})
        shared = sorted(set(self.layers["text"]) | set(self.layers["vision"]))
        self.shared_adapter = nn.ModuleDict({
            str(i): nn.Sequential(nn.Linear(self.adapter_dim, self.adapter_dim), nn.ReLU()) for i in shared
        })
        for module in (self.text_adapter, self.visual_adapter, self.shared_adapter):
            init_adapter(module)

    def on_classnames_changed(self, classnames: list[str]) -> None:
        texts = [f"{self.ctx_init} {c.replace('_', ' ')}." for c in classnames]
        self.register_buffer("tokens", self.backbone.tokenize(texts), persistent=False)

    def prompt_record(self) -> dict:
        return {"template": f"{self.ctx_init} {{}}.", "learned": True}

    def block_term(self, tower: str, layer: int, h: torch.Tensor) -> torch.Tensor | None:
        """The adapter term ``[B, L, W]`` added to the output of block ``layer`` (0-based) of ``tower``, from that
        block's ``ln_1`` input ``h [B, L, W]``; ``None`` for a block without an adapter."""
        adapters = self.text_adapter if tower == "text" else self.visual_adapter
        key = str(layer + 1)
        if key not in adapters:
            return None
        adapter, s = adapters[key], self.adapter_scale
        y = adapter.down(scale_gradient(h, s))
        y = adapter.up(self.shared_adapter[key](y)) * s
        return scale_gradient(y, 1.0 / s)

    def text_features(self) -> torch.Tensor:
        with self.backbone.residual_adapter(self.block_term):
            return self.backbone.encode_text(self.tokens.to(self.backbone.logit_scale.device))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        with self.backbone.residual_adapter(self.block_term):
            return self.backbone.encode_image(images)

    def import_reference_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference's ``adapter_learner`` state (``text_adapter.<l>.down.0.weight``, ...; its frozen
        ``token_embedding`` / ``tokenized_prompts`` buffers dropped) under this learner's names (the same)."""
        state = {k.removeprefix("adapter_learner."): v for k, v in state.items()
                 if k.removeprefix("adapter_learner.") not in ("token_embedding", "tokenized_prompts")}
        own = {k: v for k, v in self.named_parameters() if v.requires_grad}
        if set(state) != set(own):
            raise LearnerError(
                f"mma: the reference checkpoint's tensors do not match this learner: missing {sorted(set(own) - set(state))}, "
                f"unexpected {sorted(set(state) - set(own))}. Set adapter_start / adapter_end / adapter_dim to the "
                "checkpoint's (reference: 5, 12, 32) and use the backbone it was trained on."
            )
        return state
