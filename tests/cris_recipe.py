"""Inputs shared by ``tests/fixtures/cris_reference/make_fixtures.py`` (runs TuneVLSeg's own CRIS code, outside CI)
and ``tests/test_cris_equivalence.py`` (compares vlprompt's CRIS backbone and segmentation learners with it).

Everything the reference ran on is regenerated here from fixed seeds, so the fixture holds only small tensors
(strided samples and statistics of the reference's mask logits and gradients) and checksums of the inputs:

- a random CRIS of the real architecture (TuneVLSeg's ``configs/model/coop/cris.yaml`` with OpenAI's RN50: ResNet
  stages 3-4-6-3 of width 64, attention-pool grid 7, D = 1024, text tower 12 x 512 with 77 positions, FPN
  512/1024/1024 -> 256/512/1024, decoder 3 x 512 with 8 heads and FFN 2048, projector 256 with 3 x 3 kernels),
  every tensor and BatchNorm statistic drawn from :data:`WEIGHT_SEED` by name (:func:`random_state_dict`), in the
  checkpoint format (``backbone.*``, ``neck.*``, ``decoder.*``, ``proj.*``), never written to disk;
- two 416 px images in ``[0, 1]``, two binary masks, the prompts ``"polyp."`` / ``"a pink polyp."``;
- every learned tensor of each case, under vlprompt's names, from :data:`TENSOR_SEED`.

:data:`TINY` is a small CRIS of the same layout for the loading and contract tests.
"""

from __future__ import annotations

import hashlib

import torch

from vlprompt.backbones.cris import RN50_CONFIG, CRISConfig, CRISModel

WEIGHT_SEED = 3040
TENSOR_SEED = 3041
INPUT_SEED = 3042
IMAGE_SIZE = 416
PROMPTS = ["polyp.", "a pink polyp."]
#: TuneVLSeg's MONAI DiceCELoss(sigmoid, lambda_dice 1, lambda_ce 0.2) and its configs' AdamW learning rate
LAMBDA_DICE, LAMBDA_CE = 1.0, 0.2
LR = 2e-4
#: decoder-side settings both sides run with (TuneVLSeg's use_new_last_layer is off: not part of vlprompt's CRIS)
REF_COMMON = {"freeze_all": True, "no_freeze_last_layer": False, "use_new_last_layer": False}
#: the CRIS constructor arguments of TuneVLSeg's configs/model/{coop,cocoop}/cris.yaml (img_size from the
#: experiment config; dropout is irrelevant in eval mode)
REF_MODEL_CFG = {"fpn_in": [512, 1024, 1024], "fpn_out": [256, 512, 1024], "vis_dim": 512, "word_dim": 1024,
                 "num_layers": 3, "num_head": 8, "dim_ffn": 2048, "dropout": 0.2, "return_intermediate": False,
                 "img_size": IMAGE_SIZE, "freeze_encoder": True}
CONFIG = RN50_CONFIG
#: a small CRIS of the same layout (64 px; C3/C4/C5 at 8/4/2 px grids)
TINY = CRISConfig(
    vision_layers=(1, 1, 1, 1), vision_width=8, pool_grid=2, embed_dim=64, context_length=32, vocab_size=49408,
    text_width=64, text_layers=2, fpn_in=(64, 128, 64), fpn_out=(32, 64, 64), decoder_layers=2, decoder_dim=64,
    decoder_ffn=96, decoder_heads=2, projector_dim=32, projector_kernel=3,
)

#: case -> vlprompt learner (registry name + kwargs), reference context learner + kwargs (configs/model/<x>/cris.yaml),
#: and the learned tensors: vlprompt name -> (reference name, index into it or None, shape)
_META = {"meta_net.linear1.weight": ("context_learner.projection_layers.0.0.weight", None, (64, 1024)),
         "meta_net.linear1.bias": ("context_learner.projection_layers.0.0.bias", None, (64,)),
         "meta_net.linear2.weight": ("context_learner.projection_layers.0.2.weight", None, (512, 64))}
_TVS_COCOOP = {"norm_image_features": False, "prompt_depth": 1, "use_unified_projection": False, "intermediate_dim": 64,
               "use_proj_norm": True, "use_lora_proj": False, "num_context": 4, "context_initializer": "a photo of a",
               "vector_std": 0.02}
_TVS_META = {f"meta_net.{k}": (f"context_learner.projection_layers.0.{k}", None, shape) for k, shape in (
    ("0.weight", (64, 1024)), ("0.bias", (64,)), ("2.weight", (512, 64)), ("3.weight", (512,)))}
#: vlprompt's CoCoOp options for TuneVLSeg's meta-net (configs/learners/cocoop/tunevlseg.yaml)
_TVS_COCOOP_KWARGS = {"n_ctx": 4, "ctx_init": "a photo of a", "intermediate_dim": 64, "proj_norm": True,
                      "norm_image_features": False}
#: TuneVLSeg's use_new_last_layer as its CRIS configs set it (kernel 5, residual_ratio 0.5), and vlprompt's
#: PromptSegmenter decoder_branch that builds it (the 1x1 reduction to 64 channels is CRIS's, coop_cris.py:73-75)
BRANCH_ON = {**REF_COMMON, "use_new_last_layer": True, "new_last_layer_kernel_size": 5, "residual_ratio": 0.5}
BRANCH = {"kernel_size": 5, "residual_ratio": 0.5, "mix": "residual", "reduce": 64}
_BRANCH = {"decoder_branch.reduce.weight": ("additive_decoder_layer.0.weight", None, (64, 512, 1, 1)),
           "decoder_branch.conv.weight": ("additive_decoder_layer.2.weight", None, (1, 64, 5, 5)),
           "decoder_branch.conv.bias": ("additive_decoder_layer.2.bias", None, (1,)),
           "decoder_branch.ratio": ("residual_ratio", None, ())}
CASES: dict[str, dict] = {
    "coop": {
        "learner": "coop", "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a"},
        "ref": {"learner": "CoOpContextLearner",
                "kwargs": {"prompt_depth": 1, "num_context": 4, "context_initializer": "a photo of a", "vector_std": 0.02}},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512))},
    },
    # CoCoOp with the meta-net vlprompt's CoCoOp has (normalised image feature, Linear-ReLU-Linear, no norm). The
    # reference's CoCoOpContextLearner drops the last bias (cocoop_context_learner.py:16), so vlprompt's
    # meta_net.linear2.bias is set to 0 and left out of the comparison.
    "cocoop": {
        "learner": "cocoop", "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a"},
        "ref": {"learner": "CoCoOpContextLearner",
                "kwargs": {"norm_image_features": True, "prompt_depth": 1, "use_unified_projection": False,
                           "intermediate_dim": 64, "use_proj_norm": False, "use_lora_proj": False, "num_context": 4,
                           "context_initializer": "a photo of a", "vector_std": 0.02}},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512)), **_META},
        "zero": {"meta_net.linear2.bias": (512,)},
    },
    # CoCoOp exactly as configs/model/cocoop/cris.yaml (raw image feature, last layer LayerNorm without bias), with
    # vlprompt's TuneVLSeg meta-net options (mlp_projection: 0 = Linear, 2 = Linear, 3 = LayerNorm)
    "cocoop_tunevlseg": {
        "learner": "cocoop", "kwargs": _TVS_COCOOP_KWARGS,
        "ref": {"learner": "CoCoOpContextLearner", "kwargs": _TVS_COCOOP},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512)), **_TVS_META},
    },
    # TuneVLSeg's CRIS settings as configured: use_new_last_layer true, i.e. its trainable decoder branch
    # (coop_cris.py:72-88, 196-203: 1x1 conv 512 -> 64 without bias, bilinear up to the image, 5x5 replicate-padded
    # conv 64 -> 1, mixed as (1 - r) * logits + r * branch); vlprompt: PromptSegmenter(decoder_branch=BRANCH)
    "coop_branch": {
        "learner": "coop", "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a"}, "common": BRANCH_ON, "branch": BRANCH,
        "ref": {"learner": "CoOpContextLearner",
                "kwargs": {"prompt_depth": 1, "num_context": 4, "context_initializer": "a photo of a", "vector_std": 0.02}},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512)), **_BRANCH},
    },
    "cocoop_branch": {
        "learner": "cocoop", "kwargs": _TVS_COCOOP_KWARGS, "common": BRANCH_ON, "branch": BRANCH,
        "ref": {"learner": "CoCoOpContextLearner", "kwargs": _TVS_COCOOP},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512)), **_TVS_META, **_BRANCH},
    },
}


def _draw(shape, std: float, gen: torch.Generator, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std + mean


def random_state_dict(config: CRISConfig = CONFIG, seed: int = WEIGHT_SEED) -> dict[str, torch.Tensor]:
    """A CRIS state dict of ``config`` (checkpoint layout) with every entry drawn from ``seed`` in sorted-name order:
    matrices and convolutions N(0, 1/fan_in) (the projector's text layer 0.2/fan_in, so the mask logits stay in
    the sigmoid's working range), embeddings and other vectors N(0, 0.02^2), LayerNorm/BatchNorm weights
    1 + N(0, 0.02^2), BatchNorm running means N(0, 0.02^2) and variances 1 + |N(0, 0.02^2)|, ``logit_scale``
    log(1/0.07); the same values under any library version."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CRISModel(config)
    norms = {f"{m}.weight" for m, mod in model.named_modules()
             if isinstance(mod, (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm))}
    state = model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(state):
        t = state[name]
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros_like(t)
        elif name.endswith("logit_scale"):
            out[name] = torch.full_like(t, float(torch.log(torch.tensor(1 / 0.07))))
        elif name.endswith("running_var"):
            out[name] = 1.0 + _draw(t.shape, 0.02, gen).abs()
        elif name in norms:
            out[name] = _draw(t.shape, 0.02, gen, 1.0)
        elif t.dim() >= 2 and "embedding" not in name:
            scale = 0.2 if name == "proj.txt.weight" else 1.0
            out[name] = _draw(t.shape, scale * float(t[0].numel()) ** -0.5, gen)
        else:  # biases, running means, embeddings
            out[name] = _draw(t.shape, 0.02, gen)
    return out


def inputs() -> dict[str, torch.Tensor]:
    """``images [2, 3, 416, 416]`` in ``[0, 1]`` (smooth random colour fields) and binary ``masks [2, 416, 416]``."""
    gen = torch.Generator().manual_seed(INPUT_SEED)
    low = torch.rand(2, 3, 26, 26, generator=gen)
    images = torch.nn.functional.interpolate(low, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    field = torch.nn.functional.interpolate(torch.rand(2, 1, 13, 13, generator=gen), size=(IMAGE_SIZE, IMAGE_SIZE),
                                            mode="bilinear", align_corners=False)[:, 0]
    return {"images": images.contiguous(), "masks": (field > 0.6).float()}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """What vlprompt's CRIS adapter does to images in ``[0, 1]`` (the reference receives the result)."""
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    return (images - mean) / std


def learned_tensors(case: str) -> dict[str, torch.Tensor]:
    """The learned tensors of ``case`` by vlprompt name: contexts N(0, 0.02^2), meta-net and branch matrices
    N(0, 1/fan_in), biases N(0, 0.05^2), the LayerNorm weight 1 + N(0, 0.05^2), the branch ratio 0.5 + N(0, 0.05^2);
    ``zero`` entries are zeros."""
    gen = torch.Generator().manual_seed(TENSOR_SEED + sorted(CASES).index(case))
    out = {}
    for name, (_, _, shape) in CASES[case]["tensors"].items():
        if name == "meta_net.3.weight":  # the LayerNorm of TuneVLSeg's meta-net
            out[name] = _draw(shape, 0.05, gen, 1.0)
        elif name == "decoder_branch.ratio":
            out[name] = _draw(shape, 0.05, gen, 0.5)
        elif name.startswith(("meta_net", "decoder_branch")) and len(shape) >= 2:
            out[name] = _draw(shape, float(torch.Size(shape[1:]).numel()) ** -0.5, gen)
        elif name.startswith(("meta_net", "decoder_branch")):
            out[name] = _draw(shape, 0.05, gen)
        else:
            out[name] = _draw(shape, 0.02, gen)
    for name, shape in CASES[case].get("zero", {}).items():
        out[name] = torch.zeros(shape)
    return out


def sample(t: torch.Tensor, most: int = 1024) -> torch.Tensor:
    """A strided sample (at most ``most`` values) of a tensor, flattened: what the fixture keeps of it. The stride is
    odd, so a matrix's sample runs through its columns instead of repeating one (a dead hidden unit's column)."""
    flat = t.detach().reshape(-1).float()
    return flat[:: max(1, flat.numel() // most) | 1][:most].clone()


def checksum(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]
