"""CRIS adapter: the CLIP-driven referring image segmentation model (Wang et al., CVPR 2022) behind :class:`VLBackbone`.

CRIS reads a CLIP ResNet image tower at three stages, fuses them with the sentence feature in a multi-modal FPN
neck, lets the fused map attend to the prompt's word states in a transformer decoder, and turns the sentence
feature into the kernel of a dynamic convolution (the projector) that draws the mask. The architecture and the
checkpoint layout follow TuneVLSeg's port (naamiinepal/tunevlseg @7956bcd, ``src/models/components/cris_model/``
and ``src/models/core_models/coop/coop_cris.py``); no code is copied, the facts are cited per block below.

Pieces and where they come from:

* CLIP towers (OpenAI layout, ``backbone.*`` keys): open_clip's ``ModifiedResNet`` stem and stages and open_clip's
  text transformer compute what ``cris_model/clip.py`` computes; only the attention pool is CRIS's own
  (:class:`CRISAttentionPool`): no class token, its position table resized bicubically to the feature grid, a
  1x1 conv + BatchNorm shortcut ``connect`` and ``relu(attention + shortcut)`` (``clip.py:78-182``). The image
  tower returns the stage-2 and stage-3 maps and the pooled stage-4 map (C3/C4/C5, ``clip.py:254-274``).
* neck (``neck.*``), decoder (``decoder.*``) and projector (``proj.*``): :class:`CRISNeck`, :class:`CRISDecoder`,
  :class:`CRISProjector`, with the parameter names of the checkpoint format (``layers.py``).
* image features for learners (:meth:`CRISBackbone.encode_image`): the C5 map averaged over space, which is what
  TuneVLSeg's CoCoOp on CRIS conditions on (``coop_cris.py:52-56, 96-99, 198``).

How the decoder meets the learners (the generic segmentation step, :mod:`vlprompt.modules.segmentation`): CRIS's
decoder attends to the word states of each image's prompt (``cris_model/__init__.py:119-127``), not only to the
pooled text feature. Inside :meth:`record_activations` every text encoding is recorded with its word states
(``ln_final`` output) and padding mask; :meth:`decode_masks` finds, for each conditional embedding, the recorded
text row it equals (learners hand on the text tower's own output, see
:func:`~vlprompt.learners.prompts.layers.raw_text_features`) and decodes with that row's words. The host encodes
the text inside the recording context, without cached text features, because
:attr:`VLBackbone.decoder_reads_words` is True here. No learner knows it runs on CRIS.

Deliberate differences from TuneVLSeg:

* The frozen model always runs in eval mode (BatchNorm with running statistics, no dropout). TuneVLSeg freezes the
  parameters (``coop_cris.py:66-68``) but Lightning's training loop switches the module to train mode, so its
  BatchNorms use batch statistics and update their running statistics, and its decoder dropout (0.2 in
  ``configs/model/coop/cris.yaml``, 0 in ``configs/experiment/coop/cris.yaml``) is active while training.
* TuneVLSeg's CRIS text loop writes the learned context back after the *first* block as well
  (``coop_cris.py:128-140`` counts blocks from 0 where ``coop_clipseg.py:136-164`` counts from 1), so with
  ``prompt_depth: 1`` the context enters at the input and again, without position embedding, at block 1's input.
  Here the context enters once, at the input, exactly as on CLIPSeg and open_clip (CoOp's definition).
* Images come in ``[0, 1]`` at ``preprocess.image_size`` (416, TuneVLSeg's CRIS setting) and are normalised with
  CLIP's mean/std here; tokens are open_clip's (CLIP BPE, padded with 0, EOT kept when truncating).
* TuneVLSeg's trainable decoder branch (``use_new_last_layer``, on in its CRIS configs: a 1x1 conv from the
  decoder's map to 64 channels without bias, bilinear upsampling to the image, a 5x5 replicate-padded conv to one
  channel, mixed as ``(1 - r) * logits + r * branch``; ``coop_cris.py:72-88, 235-242``) is not part of the frozen
  backbone: :meth:`CRISBackbone.decode_masks` takes such a module as ``branch`` and calls it on the decoder's map
  (``decoder_width`` channels, stride ``decoder_stride`` = 16) and the logits at the image size; the segmentation
  module builds it with ``decoder_branch: {kernel_size: 5, residual_ratio: 0.5, mix: residual, reduce: 64}``
  (``configs/learners/{coop,cocoop}/tunevlseg_cris.yaml``).

The checkpoint: one local file holding the CRIS state dict (``backbone.*``, ``neck.*``, ``decoder.*``, ``proj.*``),
as safetensors (preferred) or as a PyTorch file read with ``torch.load(weights_only=True)`` (no arbitrary pickle):
TuneVLSeg's ``scripts/process_cris_checkpoint.py`` output, or CRIS's released ``cris_best.pth`` (``state_dict``
with DDP's ``module.`` prefix, which is stripped). :func:`convert_checkpoint` writes a safetensors copy.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file, save_file
from torch import nn

from vlprompt.backbones.base import (
    ActivationRecord,
    BackboneError,
    BackboneInfo,
    PreprocessConfig,
    VLBackbone,
)
from vlprompt.backbones.open_clip import DTYPES, Precision, file_sha256, replace_span, resolve_precision

log = logging.getLogger(__name__)

#: TuneVLSeg's CRIS setting (``configs/experiment/coop/cris.yaml``): 416 px, CLIP's mean/std, cv2 cubic resize
DEFAULT_PREPROCESS = PreprocessConfig(
    image_size=416, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD, interpolation="bicubic",
    resize_mode="squash",
)
#: decoder attention heads (``num_head: 8`` in TuneVLSeg's CRIS configs); not recoverable from the weights
DEFAULT_DECODER_HEADS = 8
#: ResNet stage depths of the CLIP image towers CRIS was released with, for provenance names
_RESNETS = {(3, 4, 6, 3): "RN50", (3, 4, 23, 3): "RN101", (4, 6, 10, 6): "RN50x4", (6, 8, 18, 8): "RN50x16",
            (3, 15, 36, 10): "RN50x64"}
_CONVERT_HINT = (
    "python -c \"from vlprompt.backbones.cris import convert_checkpoint; convert_checkpoint('cris_best.pth', "
    "'cris.safetensors')\""
)
_MODEL_CACHE: dict[tuple, nn.Module] = {}
_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- architecture
@dataclass(frozen=True)
class CRISConfig:
    """The CRIS architecture, as read from a checkpoint's tensor shapes (:func:`config_from_state_dict`)."""

    vision_layers: tuple[int, int, int, int]
    vision_width: int
    pool_grid: int
    embed_dim: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    fpn_in: tuple[int, int, int]
    fpn_out: tuple[int, int, int]
    decoder_layers: int
    decoder_dim: int
    decoder_ffn: int
    decoder_heads: int
    projector_dim: int
    projector_kernel: int

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def model_name(self) -> str:
        return "CRIS-" + _RESNETS.get(self.vision_layers, "RN" + "-".join(map(str, self.vision_layers)))


#: TuneVLSeg's CRIS (``configs/model/coop/cris.yaml`` with OpenAI's RN50): what a released checkpoint holds
RN50_CONFIG = CRISConfig(
    vision_layers=(3, 4, 6, 3), vision_width=64, pool_grid=7, embed_dim=1024, context_length=77, vocab_size=49408,
    text_width=512, text_layers=12, fpn_in=(512, 1024, 1024), fpn_out=(256, 512, 1024), decoder_layers=3,
    decoder_dim=512, decoder_ffn=2048, decoder_heads=8, projector_dim=256, projector_kernel=3,
)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, padding: int = 0) -> nn.Sequential:
    # CRIS's basic block (layers.py:15-34): bias-free conv, BatchNorm, ReLU, as Sequential indices 0/1/2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class CRISAttentionPool(nn.Module):
    """CRIS's attention pool over the last ResNet stage (``clip.py:78-182``): attention among the grid positions
    (no class token; the pretrained position table minus its first row, resized bicubically to the grid), plus a
    1x1 conv + BatchNorm shortcut, then ReLU. Returns a map ``[B, output_dim, H, W]``."""

    def __init__(self, grid: int, embed_dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.grid, self.heads = grid, heads
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.connect = nn.Sequential(nn.Conv2d(embed_dim, output_dim, 1, bias=False), nn.BatchNorm2d(output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        shortcut = self.connect(x)
        pos = self.positional_embedding[1:].reshape(1, self.grid, self.grid, c).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False).flatten(2)  # [1, C, HW]
        tokens = (x.flatten(2) + pos).transpose(1, 2)  # [B, HW, C]
        heads, dim = self.heads, c // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, h * w, heads, dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(tokens)), split(self.k_proj(tokens)),
                                             split(self.v_proj(tokens)))
        out = self.c_proj(out.transpose(1, 2).reshape(b, h * w, c))
        return torch.relu(out.transpose(1, 2).reshape(b, -1, h, w) + shortcut)


class CoordConv(nn.Module):
    """A conv block whose input gets two extra channels, x and y in ``[-1, 1]`` (``layers.py:37-68``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + 2, cout, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([gx, gy]).unsqueeze(0).expand(b, -1, -1, -1)
        return self.conv1(torch.cat([x, coords], dim=1))


class CRISNeck(nn.Module):
    """Multi-modal FPN (``layers.py:359-447``): C5 times the projected sentence feature, merged top-down with C4
    and (average-pooled) C3 at the C4 grid, each level re-projected, concatenated, aggregated, then a CoordConv.
    ``fpn_in``/``fpn_out`` are the (C3, C4, C5) channel counts in and out."""

    def __init__(self, fpn_in: Sequence[int], fpn_out: Sequence[int]) -> None:
        super().__init__()
        (i3, i4, i5), (o3, o4, o5) = fpn_in, fpn_out
        self.txt_proj = nn.Sequential(nn.Linear(i5, o5, bias=False), nn.BatchNorm1d(o5), nn.ReLU())
        self.f1_v_proj = _conv_bn_relu(i5, o5)
        self.norm_layer = nn.Sequential(nn.BatchNorm2d(o5), nn.ReLU())
        self.f2_v_proj = _conv_bn_relu(i4, o4, 3, 1)
        self.f2_cat = _conv_bn_relu(o5 + o4, o4)
        self.f3_v_proj = _conv_bn_relu(i3, o3, 3, 1)
        self.f3_cat = _conv_bn_relu(o3 + o4, o4)
        self.f4_proj5 = _conv_bn_relu(o5, o4, 3, 1)
        self.f4_proj4 = _conv_bn_relu(o4, o4, 3, 1)
        self.f4_proj3 = _conv_bn_relu(o4, o4, 3, 1)
        self.aggr = _conv_bn_relu(3 * o4, o4)
        self.coordconv = nn.Sequential(CoordConv(o4, o4), _conv_bn_relu(o4, o4, 3, 1))

    def forward(self, maps: Sequence[torch.Tensor], sentence: torch.Tensor) -> torch.Tensor:
        c3, c4, c5 = maps
        f5 = self.norm_layer(self.f1_v_proj(c5) * self.txt_proj(sentence)[:, :, None, None])
        up5 = F.interpolate(f5, scale_factor=2, mode="bilinear")
        f4 = self.f2_cat(torch.cat([self.f2_v_proj(c4), up5], dim=1))
        f3 = self.f3_cat(torch.cat([F.avg_pool2d(self.f3_v_proj(c3), 2, 2), f4], dim=1))
        q5 = F.interpolate(self.f4_proj5(f5), scale_factor=2, mode="bilinear")
        fused = torch.cat([self.f4_proj3(f3), self.f4_proj4(f4), q5], dim=1)
        return self.coordconv(self.aggr(fused))


def sine_positions_1d(dim: int, length: int, like: torch.Tensor) -> torch.Tensor:
    """Sinusoidal codes ``[length, 1, dim]`` of positions ``0..length-1``: sine at even channels, cosine at odd,
    frequency ``1e-4 ** (2i / dim)`` (``layers.py:149-185``)."""
    if dim % 2:
        raise BackboneError(f"sinusoidal text positions need an even width, got {dim}")
    kw = {"device": like.device, "dtype": like.dtype}
    angles = torch.arange(length, **kw)[:, None] * 1e-4 ** (torch.arange(0, dim, 2, **kw) / dim)
    pe = torch.zeros(length, dim, **kw)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(angles), torch.cos(angles)
    return pe[:, None]


def sine_positions_2d(dim: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """Sinusoidal codes ``[H*W, 1, dim]`` of a grid: the first half of the channels codes the column, the second
    half the row, each half as :func:`sine_positions_1d` of half the width (``layers.py:187-236``)."""
    if dim % 4:
        raise BackboneError(f"sinusoidal grid positions need a width divisible by 4, got {dim}")
    kw = {"device": like.device, "dtype": like.dtype}
    half = dim // 2
    freq = 1e-4 ** (torch.arange(0, half, 2, **kw) / half)
    cols = torch.arange(width, **kw)[:, None] * freq  # [W, half/2]
    rows = torch.arange(height, **kw)[:, None] * freq  # [H, half/2]
    pe = torch.zeros(dim, height, width, **kw)
    pe[0:half:2] = torch.sin(cols).T[:, None, :].expand(-1, height, -1)
    pe[1:half:2] = torch.cos(cols).T[:, None, :].expand(-1, height, -1)
    pe[half::2] = torch.sin(rows).T[:, :, None].expand(-1, -1, width)
    pe[half + 1 :: 2] = torch.cos(rows).T[:, :, None].expand(-1, -1, width)
    return pe.reshape(dim, 1, height * width).permute(2, 1, 0)


class CRISDecoderLayer(nn.Module):
    """One pre-norm decoder layer (``layers.py:278-356``): self-attention over the grid, cross-attention from the
    grid to the words (padding masked), a ReLU MLP with a LayerNorm inside; each attention output is normalised
    before its residual addition. Positions are added to queries and keys, never to values."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(dim)
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Dropout(dropout), nn.LayerNorm(ffn),
                                 nn.Linear(ffn, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, vis, words, vis_pos, word_pos, pad_mask) -> torch.Tensor:
        h = self.norm1(vis)
        q = h + vis_pos
        vis = vis + self.self_attn_norm(self.self_attn(q, q, h, need_weights=False)[0])
        h = self.norm2(vis)
        h = self.multihead_attn(h + vis_pos, words + word_pos, words, key_padding_mask=pad_mask, need_weights=False)[0]
        vis = vis + self.cross_attn_norm(h)
        return vis + self.ffn(self.norm3(vis))


class CRISDecoder(nn.Module):
    """The vision-language decoder (``layers.py:124-276``): ``layers`` :class:`CRISDecoderLayer` on the neck's map
    (sequence-first), then a final LayerNorm; returns ``[B, C, H, W]``."""

    def __init__(self, layers: int, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CRISDecoderLayer(dim, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, vis: torch.Tensor, words: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = vis.shape
        vis_pos = sine_positions_2d(c, h, w, vis)
        word_pos = sine_positions_1d(words.shape[-1], words.shape[1], words)
        x = vis.flatten(2).permute(2, 0, 1)
        seq = words.transpose(0, 1)
        for layer in self.layers:
            x = layer(x, seq, vis_pos, word_pos, pad_mask)
        return self.norm(x).permute(1, 2, 0).reshape(b, c, h, w)


class CRISProjector(nn.Module):
    """The projector (``layers.py:71-122``): the map upsampled twice (x2 bilinear, conv blocks) to stride 4, and
    a sentence-conditioned ``k x k`` dynamic convolution (weights and bias from one Linear) to one logit map."""

    def __init__(self, word_dim: int, dim: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.vis = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear"), _conv_bn_relu(dim * 2, dim * 2, 3, 1),
            nn.Upsample(scale_factor=2, mode="bilinear"), _conv_bn_relu(dim * 2, dim, 3, 1), nn.Conv2d(dim, dim, 1),
        )
        self.txt = nn.Linear(word_dim, dim * kernel * kernel + 1)

    def forward(self, x: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        x = self.vis(x)
        b, c, h, w = x.shape
        params = self.txt(sentence)
        weight = params[:, :-1].reshape(b, c, self.kernel, self.kernel)
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, params[:, -1], padding=self.kernel // 2, groups=b)
        return out.transpose(0, 1)  # [B, 1, h, w]


class CRISModel(nn.Module):
    """The whole CRIS: ``backbone`` (open_clip CLIP with :class:`CRISAttentionPool`), ``neck``, ``decoder``,
    ``proj``, with the parameter names of the checkpoint format."""

    def __init__(self, config: CRISConfig) -> None:
        super().__init__()
        self.config = config
        vision = CLIPVisionCfg(layers=config.vision_layers, width=config.vision_width,
                               image_size=config.pool_grid * 32, head_width=64)
        text = CLIPTextCfg(context_length=config.context_length, vocab_size=config.vocab_size, width=config.text_width,
                           heads=config.text_width // 64, layers=config.text_layers)
        # OpenAI CLIP's text tower uses QuickGELU; heads = width / 64 (clip.py:286-318, 623)
        self.backbone = CLIP(config.embed_dim, vision, text, quick_gelu=True)
        feature_dim = config.vision_width * 32
        self.backbone.visual.attnpool = CRISAttentionPool(config.pool_grid, feature_dim, feature_dim // 64,
                                                          config.embed_dim)
        self.neck = CRISNeck(config.fpn_in, config.fpn_out)
        self.decoder = CRISDecoder(config.decoder_layers, config.decoder_dim, config.decoder_heads, config.decoder_ffn)
        self.proj = CRISProjector(config.embed_dim, config.projector_dim, config.projector_kernel)

    def image_maps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """C3, C4 and the pooled C5 maps of normalised images (``clip.py:254-274``)."""
        visual = self.backbone.visual
        x = visual.layer1(visual.stem(pixels))
        c3 = visual.layer2(x)
        c4 = visual.layer3(c3)
        return [c3, c4, visual.attnpool(visual.layer4(c4))]

    def masks(self, maps: Sequence[torch.Tensor], words: torch.Tensor, pad_mask: torch.Tensor,
              sentence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's map ``[B, decoder_dim, h, w]`` (stride 16) and the logits ``[B, 1, 4h, 4w]`` the projector
        draws from it (stride 4; ``cris_model/__init__.py:123-132``)."""
        fused = self.decoder(self.neck(maps, sentence), words, pad_mask)
        return fused, self.proj(fused, sentence)


# ----------------------------------------------------------------------------- checkpoint
def _count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def config_from_state_dict(state: Mapping[str, torch.Tensor], *, source: str = "the checkpoint",
                           decoder_heads: int = DEFAULT_DECODER_HEADS) -> CRISConfig:
    """The :class:`CRISConfig` of a CRIS state dict (keys without a ``module.`` prefix), from tensor shapes as
    TuneVLSeg's ``build_model`` reads them (``clip.py:578-647``); clear errors for other layouts."""
    if "backbone.visual.proj" in state or "backbone.visual.class_embedding" in state:
        raise BackboneError(
            f"{source} holds a ViT image tower (backbone.visual.proj). CRIS's FPN reads three ResNet stages (C3, C4, "
            "C5) and TuneVLSeg's ViT tower returns one token map it cannot read (cris_model/clip.py:347-403), so "
            "only ResNet CRIS checkpoints (e.g. RN50, cris_best.pth) are supported"
        )
    needed = ("backbone.visual.layer1.0.conv1.weight", "backbone.visual.attnpool.positional_embedding",
              "backbone.visual.attnpool.connect.0.weight", "backbone.text_projection", "neck.f1_v_proj.0.weight",
              "decoder.norm.weight", "proj.txt.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        sample = sorted(state)[:4]
        raise BackboneError(
            f"{source} is not a CRIS checkpoint: it lacks {missing[:3]} (its keys start {sample}). Expected the CRIS "
            "state dict (backbone.*, neck.*, decoder.*, proj.*), e.g. CRIS's cris_best.pth or TuneVLSeg's "
            f"cris_best_single.pth; convert a .pth once with {_CONVERT_HINT}"
        )
    grid = math.isqrt(state["backbone.visual.attnpool.positional_embedding"].shape[0] - 1)
    if grid * grid + 1 != state["backbone.visual.attnpool.positional_embedding"].shape[0]:
        raise BackboneError(f"{source}: backbone.visual.attnpool.positional_embedding has "
                            f"{state['backbone.visual.attnpool.positional_embedding'].shape[0]} rows, not grid^2 + 1")
    txt_out = state["proj.txt.weight"].shape[0] - 1
    dim = state["proj.vis.4.weight"].shape[0] if "proj.vis.4.weight" in state else state["proj.vis.3.0.weight"].shape[0]
    kernel = math.isqrt(txt_out // dim)
    config = CRISConfig(
        vision_layers=tuple(_count(state, f"backbone.visual.layer{i}.") for i in range(1, 5)),
        vision_width=int(state["backbone.visual.layer1.0.conv1.weight"].shape[0]),
        pool_grid=grid,
        embed_dim=int(state["backbone.text_projection"].shape[1]),
        context_length=int(state["backbone.positional_embedding"].shape[0]),
        vocab_size=int(state["backbone.token_embedding.weight"].shape[0]),
        text_width=int(state["backbone.ln_final.weight"].shape[0]),
        text_layers=_count(state, "backbone.transformer.resblocks."),
        fpn_in=tuple(int(state[f"neck.{k}.0.weight"].shape[1]) for k in ("f3_v_proj", "f2_v_proj", "f1_v_proj")),
        fpn_out=tuple(int(state[f"neck.{k}.0.weight"].shape[0]) for k in ("f3_v_proj", "f2_v_proj", "f1_v_proj")),
        decoder_layers=_count(state, "decoder.layers."),
        decoder_dim=int(state["decoder.norm.weight"].shape[0]),
        decoder_ffn=int(state["decoder.layers.0.ffn.0.weight"].shape[0]),
        decoder_heads=int(decoder_heads),
        projector_dim=int(dim),
        projector_kernel=int(kernel),
    )
    if config.decoder_dim % config.decoder_heads:
        raise BackboneError(f"decoder_heads={decoder_heads} does not divide the decoder width {config.decoder_dim} of "
                            f"{source}; TuneVLSeg's CRIS uses 8")
    if config.text_width != config.decoder_dim:
        raise BackboneError(f"{source}: the decoder width {config.decoder_dim} differs from the text width "
                            f"{config.text_width}; CRIS's decoder attends to the word states directly")
    return config


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The CRIS state dict in a local file: safetensors, or a PyTorch file read with ``weights_only=True`` (a flat
    state dict, or a training checkpoint with a ``state_dict`` entry; DDP's ``module.`` prefix is stripped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneError(
            f"CRIS checkpoint {str(path)!r} (pretrained=) does not exist. Download CRIS's released RN50 checkpoint "
            "(cris_best.pth, DerrickWang005/CRIS.pytorch) or TuneVLSeg's cris_best_single.pth on a connected machine, "
            f"copy it here and pass its path; optionally convert it once to safetensors with {_CONVERT_HINT}"
        )
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - rewrap with the file and the fix
            raise BackboneError(f"could not read {str(path)!r} as safetensors: {exc}. The file is truncated or "
                                "not safetensors: copy it again") from exc
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - rewrap with the file and the fix
            lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln] or [str(exc)[:300]]
            out = path.with_suffix(".safetensors")
            raise BackboneError(
                f"could not read {str(path)!r} with torch.load(weights_only=True): {lines[0]} vlprompt never unpickles "
                "arbitrary objects. If you trust the file, extract its tensors once, on your own responsibility: "
                "python -c \"import torch; from safetensors.torch import save_file; "
                f"c = torch.load('{path}', map_location='cpu', weights_only=False); sd = c.get('state_dict', c); "
                "save_file({k.removeprefix('module.'): v.contiguous() for k, v in sd.items()}, "
                f"'{out}')\" and pass pretrained: {out}"
            ) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{str(path)!r} does not hold a state dict of tensors (nor one under 'state_dict')")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def convert_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write the CRIS state dict of ``src`` (what :func:`read_state_dict` reads) to the safetensors file ``dst``,
    after checking its layout. Returns ``dst``."""
    state = read_state_dict(src)
    config_from_state_dict(state, source=repr(str(src)))
    dst = Path(dst)
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(dst),
              metadata={"format": "pt", "source": Path(src).name})
    return dst


def build_model(state: Mapping[str, torch.Tensor], *, source: str = "the checkpoint",
                decoder_heads: int = DEFAULT_DECODER_HEADS) -> CRISModel:
    """A :class:`CRISModel` with ``state`` loaded strictly (every tensor of the format, no other)."""
    config = config_from_state_dict(state, source=source, decoder_heads=decoder_heads)
    model = CRISModel(config)
    state = {k: v for k, v in state.items() if not k.startswith("backbone.") or k[len("backbone."):] not in (
        "input_resolution", "context_length", "vocab_size")}  # OpenAI's metadata entries (clip.py:641-643)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"{source} does not match the CRIS layout its shapes describe: {exc}") from exc
    return model


def _load(path: Path, precision: str, decoder_heads: int) -> CRISModel:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, precision, decoder_heads)
    with _LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = build_model(read_state_dict(path), source=repr(str(path)), decoder_heads=decoder_heads)
            model = model.to(DTYPES[precision])
            model.requires_grad_(False)
            model.eval()
            _MODEL_CACHE[key] = model
    return model


def clear_model_cache() -> None:
    """Forget cached frozen CRIS models (tests; freeing memory)."""
    _MODEL_CACHE.clear()


# ----------------------------------------------------------------------------- the adapter
class CRISBackbone(VLBackbone):
    """Frozen CRIS behind the vlprompt backbone interface; serves segmentation.

    Args:
        pretrained: a local CRIS checkpoint file (``.safetensors``, or ``.pth``/``.pt`` read with
            ``weights_only=True``), e.g. CRIS's released ``cris_best.pth`` (RN50).
        precision: weight dtype (``fp32``, ``bf16``, ``fp16``); outputs are float32.
        image_size: input size in pixels (TuneVLSeg: 416); a multiple of 32.
        decoder_heads: attention heads of the decoder (8 in CRIS and TuneVLSeg; not stored in the weights).
    """

    tasks = ("segmentation",)
    decoder_reads_words = True

    def __init__(self, pretrained: str, *, precision: Precision = "fp32", image_size: int = 416,
                 decoder_heads: int = DEFAULT_DECODER_HEADS) -> None:
        super().__init__()
        if precision not in DTYPES:
            raise BackboneError(f"precision={precision!r} is not one of {sorted(DTYPES)}")
        if image_size < 32 or image_size % 32:
            raise BackboneError(f"image_size={image_size} must be a positive multiple of 32 (CRIS's stride); "
                                "TuneVLSeg uses 416")
        requested, precision = precision, resolve_precision(precision)
        path = Path(str(pretrained)).expanduser()
        if not path.is_file():
            read_state_dict(path)  # raises the missing-file error with the fix
        model = _load(path, precision, int(decoder_heads))
        self._init_from_model(model, precision)
        self.preprocess = PreprocessConfig(**{**DEFAULT_PREPROCESS.to_dict(), "image_size": int(image_size)})
        config = model.config
        self.info = BackboneInfo(
            name=type(self).__name__, model=config.model_name, pretrained=str(pretrained),
            checkpoint_sha256=file_sha256(path), precision=precision,
            extra={"file": str(path.resolve()), "config": config.to_dict(), "preprocess": self.preprocess.to_dict(),
                   **({"requested_precision": requested} if requested != precision else {})},
        )
        self.freeze()

    @classmethod
    def from_model(cls, model: CRISModel, *, image_size: int = 416, name: str = "in-memory") -> "CRISBackbone":
        """A backbone around an already built :class:`CRISModel` (tests, conversions), frozen in place."""
        self = cls.__new__(cls)
        VLBackbone.__init__(self)
        model.requires_grad_(False)
        model.eval()
        self._init_from_model(model, "fp32")
        self.preprocess = PreprocessConfig(**{**DEFAULT_PREPROCESS.to_dict(), "image_size": int(image_size)})
        self.info = BackboneInfo(name=cls.__name__, model=model.config.model_name, pretrained=name,
                                 checkpoint_sha256=None, precision="fp32",
                                 extra={"config": model.config.to_dict(), "preprocess": self.preprocess.to_dict()})
        self.freeze()
        return self

    def _init_from_model(self, model: CRISModel, precision: str) -> None:
        config = model.config
        self.model = model
        self.dtype = DTYPES[precision]
        self._tokenizer = SimpleTokenizer(context_length=config.context_length)
        self.embed_dim = config.embed_dim
        self.text_width = config.text_width
        self.text_layers = config.text_layers
        self.context_length = config.context_length
        self.vision_width = 0  # a ResNet: no token sequence for visual prompts
        self.vision_layers = 0
        self.grid_size = (0, 0)
        self.supports_visual_prompts = False
        #: the decoder's map (what TuneVLSeg's trainable branch reads, coop_cris.py:72-88) and its stride to the image
        self.decoder_width = config.decoder_dim
        self.decoder_stride = 16
        self.register_buffer("_mean", torch.tensor(DEFAULT_PREPROCESS.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(DEFAULT_PREPROCESS.std).view(1, 3, 1, 1), persistent=False)
        # inside record_activations(): the image maps of the first encode_image call and every text encoding
        # (pooled feature, word states, padding mask): the decoder reads both
        self._recording: ActivationRecord | None = None

    def require_visual_prompts(self, who: str) -> None:
        raise BackboneError(
            f"{who} inserts prompt tokens into the image encoder, but backbone {self.info.name!r} (model "
            f"{self.info.model!r}) has a ResNet image tower with no token sequence to take them (TuneVLSeg runs only "
            "text-prompt learners on CRIS: configs/model/{coop,cocoop}/cris.yaml). Use a text-prompt learner (coop, "
            "cocoop) on CRIS, or run visual and multimodal learners (vpt, maple, shared_*) on clipseg."
        )

    # ----------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.backbone.token_embedding(tokens.to(self._mean.device)).float()

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.argmax(dim=-1)  # the EOT token has the largest id (clip.py:522)

    def encode_text_embeddings(
        self,
        embeddings: torch.Tensor,
        pool_index: torch.Tensor,
        *,
        deep_prompts: Sequence[torch.Tensor | None] | None = None,
        deep_prompt_start: int = 1,
    ) -> torch.Tensor:
        clip = self.model.backbone
        blocks = clip.transformer.resblocks
        if deep_prompts is not None and len(deep_prompts) > len(blocks):
            raise BackboneError(
                f"{len(deep_prompts)} deep prompt layers given but the text tower has {len(blocks)} layers")
        length = embeddings.shape[1]
        if length > self.context_length:
            raise BackboneError(f"{length} token embeddings given but the text context holds {self.context_length}")
        pool_index = pool_index.to(embeddings.device)
        keep = int(pool_index.max()) + 1 if pool_index.numel() else length
        for p in deep_prompts or []:
            if p is not None:
                keep = max(keep, deep_prompt_start + int(p.shape[-2]))
        keep = min(keep, length)  # causal attention: later tokens reach neither the pooled state nor a word kept
        x = embeddings[:, :keep].to(self.dtype) + clip.positional_embedding[:keep].to(self.dtype)
        mask = torch.full((keep, keep), float("-inf"), dtype=self.dtype, device=x.device).triu_(1)
        for i, block in enumerate(blocks):
            if i > 0 and deep_prompts is not None and i < len(deep_prompts) and deep_prompts[i] is not None:
                x = replace_span(x, deep_prompts[i], deep_prompt_start)
            x = block(x, attn_mask=mask)
        words = clip.ln_final(x)
        pooled = words[torch.arange(words.shape[0], device=x.device), pool_index] @ clip.text_projection
        pooled = pooled.float()
        if self._recording is not None:  # CRIS's decoder attends to these words (cris_model/__init__.py:119-127)
            pad = torch.arange(keep, device=x.device)[None, :] > pool_index[:, None]
            self._recording.extra.setdefault("text", []).append({"pooled": pooled, "words": words, "pad": pad})
        return pooled

    # ----------------------------------------------------------------- image
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Mean/std normalisation of ``[B, 3, H, W]`` images in ``[0, 1]``."""
        return (images - self._mean) / self._std

    def encode_image(
        self,
        images: torch.Tensor,
        *,
        prompts: torch.Tensor | None = None,
        deep_prompts: Sequence[torch.Tensor | None] | None = None,
        dense: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The C5 map averaged over space ``[B, D]`` (what TuneVLSeg's CoCoOp on CRIS conditions on); with
        ``dense=True`` also the C5 positions ``[B, H*W, D]``. Inside :meth:`record_activations` the first call
        records C3/C4/C5 for the decoder."""
        if prompts is not None or (deep_prompts is not None and any(d is not None for d in deep_prompts)):
            self.require_visual_prompts("this request (visual prompts)")
        maps = self.model.image_maps(self.normalize(images).to(self.dtype))
        record = self._recording
        if record is not None and "maps" not in record.extra:
            record.extra["maps"] = maps
            record.activations = [m.flatten(2).transpose(1, 2) for m in maps]
            record.image_size = (int(images.shape[-2]), int(images.shape[-1]))
        elif record is not None:
            record.extra["later_calls"] = record.extra.get("later_calls", 0) + 1
        pooled = maps[-1].mean(dim=(2, 3)).float()
        if not dense:
            return pooled
        return pooled, maps[-1].flatten(2).transpose(1, 2).float()

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.backbone.logit_scale.detach().float().exp().reshape(())

    # ----------------------------------------------------------------- segmentation
    def decode_masks(
        self,
        record: ActivationRecord,
        conditional: torch.Tensor,
        *,
        output_size: tuple[int, int] | None = None,
        branch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mask logits ``[B, H, W]`` (float32): the neck and projector read ``conditional [B, D]`` (the sentence
        feature), the decoder the word states recorded with it; logits at stride 4 resized bicubically
        (``align_corners=True``, ``cris_model/__init__.py:132``) to ``output_size`` (default: the image size).

        ``branch`` (a trainable module beside the frozen decoder) is called as ``branch(map, logits)`` on the
        decoder's map ``[B, decoder_width, h, w]`` and the logits resized to ``[B, 1, 16h, 16w]`` (the image size,
        where TuneVLSeg's CRIS mixes its branch in, ``coop_cris.py:235-242``) and returns the logits to use."""
        maps = record.extra.get("maps")
        if not maps:
            raise BackboneError(
                "decode_masks() got an ActivationRecord without image maps: call learner.encode_images(images) inside "
                "`with backbone.record_activations() as record:` first"
            )
        texts = record.extra.get("text") or []
        batch = maps[0].shape[0]
        if conditional.dim() != 2 or conditional.shape != (batch, self.embed_dim):
            raise BackboneError(
                "decode_masks() needs one conditional embedding per image, shape [B, D] = "
                f"[{batch}, {self.embed_dim}], "
                f"got {tuple(conditional.shape)}"
            )
        if not texts:
            raise BackboneError(
                "CRIS's decoder attends to the words of each image's prompt, but no text was encoded inside this "
                "record_activations() context: encode the prompts (learner.paired_text_features) inside the same "
                "`with backbone.record_activations()` block, as PromptSegmenter does for decoder_reads_words backbones"
            )
        words, pad = self._words_of(conditional, texts)
        cond = conditional.to(device=maps[0].device, dtype=self.dtype)
        fused, logits = self.model.masks(maps, words.to(self.dtype), pad, cond)
        size = tuple(output_size) if output_size is not None else record.image_size
        if branch is not None:
            full = (fused.shape[-2] * self.decoder_stride, fused.shape[-1] * self.decoder_stride)
            logits = F.interpolate(logits.float(), size=full, mode="bicubic", align_corners=True)
            logits = branch(fused.float(), logits)
            if tuple(logits.shape[-2:]) == size:
                return logits[:, 0].float()
        return F.interpolate(logits.float(), size=size, mode="bicubic", align_corners=True)[:, 0]

    @staticmethod
    def _words_of(conditional: torch.Tensor, texts: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Word states ``[B, L, Wt]`` and padding mask ``[B, L]`` of the recorded text row each conditional equals."""
        length = max(t["words"].shape[1] for t in texts)
        pooled = torch.cat([t["pooled"].detach() for t in texts])
        words = torch.cat([F.pad(t["words"], (0, 0, 0, length - t["words"].shape[1])) for t in texts])
        pad = torch.cat([F.pad(t["pad"], (0, length - t["pad"].shape[1]), value=True) for t in texts])
        cond = conditional.detach().to(device=pooled.device, dtype=pooled.dtype)
        same = (cond[:, None, :] == pooled[None, :, :]).all(dim=-1)  # [B, recorded rows]
        if not bool(same.any(dim=1).all()):
            missing = int((~same.any(dim=1)).nonzero()[0, 0])
            raise BackboneError(
                f"conditional embedding {missing} equals no text feature encoded inside record_activations(): CRIS "
                "needs the prompt's word states, so the conditional must be the text tower's own output for one "
                "prompt (a learner's paired_text_features under segmentation_text()), not a mix or a rescaled copy"
            )
        index = same.int().argmax(dim=1).to(words.device)
        return words[index], pad[index]


__all__ = ["CRISBackbone", "CRISConfig", "CRISModel", "CRISAttentionPool", "CRISNeck", "CRISDecoder",
           "CRISDecoderLayer", "CRISProjector", "CoordConv", "RN50_CONFIG", "DEFAULT_PREPROCESS",
           "DEFAULT_DECODER_HEADS", "build_model", "clear_model_cache", "config_from_state_dict", "convert_checkpoint",
           "read_state_dict", "sine_positions_1d", "sine_positions_2d"]
