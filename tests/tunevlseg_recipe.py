"""Inputs shared by ``tests/fixtures/tunevlseg_reference/make_fixtures.py`` (runs TuneVLSeg's own code, outside CI)
and ``tests/test_tunevlseg_equivalence.py`` (compares vlprompt's segmentation learners with what it saved).

Everything the reference ran on is regenerated here from fixed seeds, so the fixture holds only small tensors
(strided samples and statistics of the reference's mask logits and gradients) and checksums of the inputs:

- a random CLIPSeg of the ``CIDAS/clipseg-rd64-refined`` architecture (ViT-B/16 image tower 12 x 768, text tower
  12 x 512, D = 512, decoder reading layers 3/6/9, reduce_dim 64, complex transposed convolution, legacy
  ``eos_token_id = 2``), every tensor drawn from :data:`WEIGHT_SEED` by name (independent of the transformers
  version's own initialisation), saved as a ``save_pretrained`` folder with CLIP's BPE tokenizer and a 352 px
  ImageNet-mean/std preprocessor;
- two 352 px images in ``[0, 1]``, two binary masks, the prompts ``"polyp."`` / ``"a pink polyp."`` (what the
  dataset gives with ``stop_at_end``);
- every learned tensor of each case, under the reference's names, from :data:`TENSOR_SEED`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

WEIGHT_SEED = 3030
TENSOR_SEED = 3031
INPUT_SEED = 3032
IMAGE_SIZE = 352
PROMPTS = ["polyp.", "a pink polyp."]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: the decoder-side settings of the reference model (BaseCLIPSeg keywords) unless a case's ``ref["common"]`` says
#: otherwise: the first cases run with TuneVLSeg's ``use_new_last_layer`` off, the ``*_branch`` cases and the
#: cocoop/shared cases with it on (every configs/model/*clipseg.yaml: kernel 5, residual_ratio 0.5)
REF_COMMON = {"freeze_all": True, "no_freeze_last_layer": False, "use_new_last_layer": False}
BRANCH_ON = {**REF_COMMON, "use_new_last_layer": True, "new_last_layer_kernel_size": 5, "residual_ratio": 0.5}
#: the branch's learned tensors: vlprompt name -> (reference name, index, shape) for reduce_dim 64, kernel 5
BRANCH_TENSORS = {"decoder_branch.conv.weight": ("additive_decoder_layer.1.weight", None, (1, 64, 5, 5)),
                  "decoder_branch.conv.bias": ("additive_decoder_layer.1.bias", None, (1,))}
BRANCH_RATIO = {"decoder_branch.ratio": ("residual_ratio", None, ())}
#: vlprompt's PromptSegmenter decoder_branch option for TuneVLSeg's two ways of mixing it in
BRANCH_RESIDUAL = {"kernel_size": 5, "residual_ratio": 0.5, "mix": "residual"}
BRANCH_ADD = {"kernel_size": 5, "residual_ratio": 0.5, "mix": "add"}
#: seed of the dropout draws of stochastic projectors (shared_attention), set just before each side's forward
DROPOUT_SEED = 3033
#: the training loss of the one optimisation step: TuneVLSeg's MONAI DiceCELoss(sigmoid, lambda_dice 1, lambda_ce 0.2)
LAMBDA_DICE, LAMBDA_CE = 1.0, 0.2
LR = 2e-4

#: config.json of the random CLIPSeg (CLIPSegConfig keywords): the clipseg-rd64-refined architecture
CLIPSEG_CONFIG = {
    "text_config": {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                    "num_attention_heads": 8, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2,
                    "pad_token_id": 1},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
    "projection_dim": 512, "extract_layers": [3, 6, 9], "reduce_dim": 64, "decoder_num_attention_heads": 4,
    "decoder_intermediate_size": 2048, "conditional_layer": 0, "use_complex_transposed_convolution": True,
}

#: case -> vlprompt learner (registry name + kwargs; ``config``: the case is configs/learners/<config>/tunevlseg.yaml,
#: learner and decoder_branch, checked by the test), PromptSegmenter kwargs (``module``), reference model + context
#: learner kwargs, and the learned tensors: vlprompt name -> (reference name, index into it or None, shape)
CASES: dict[str, dict] = {
    "coop": {
        "learner": "coop", "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a"},
        "ref": {"model": "COOPCLIPSeg", "learner": "CoOpContextLearner",
                "kwargs": {"prompt_depth": 1, "num_context": 4, "context_initializer": "a photo of a", "vector_std": 0.02}},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512))},
    },
    "vpt_shallow": {
        "learner": "vpt", "kwargs": {"n_ctx": 4, "prompt_depth": 1, "template": "{}"},
        "ref": {"model": "VPTCLIPSeg", "learner": "VPTContextLearner",
                "kwargs": {"prompt_depth": 1, "num_context": 4, "vector_std": 0.02}},
        "tensors": {"visual.shallow": ("context_learner.context_vectors", 0, (4, 768))},
    },
    "vpt_deep": {
        "learner": "vpt", "kwargs": {"n_ctx": 4, "prompt_depth": 3, "template": "{}"},
        "ref": {"model": "VPTCLIPSeg", "learner": "VPTContextLearner",
                "kwargs": {"prompt_depth": 3, "num_context": 4, "vector_std": 0.02}},
        "tensors": {"visual.shallow": ("context_learner.context_vectors", 0, (4, 768)),
                    "visual.deep.prompts.0": ("context_learner.context_vectors", 1, (4, 768)),
                    "visual.deep.prompts.1": ("context_learner.context_vectors", 2, (4, 768))},
    },
    "maple": {
        "learner": "maple", "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a", "prompt_depth": 1,
                                       "intermediate_dim": 64, "proj_norm": True, "unified_projection": False},
        "ref": {"model": "MapleCLIPSeg", "learner": "MapleContextLearner",
                "kwargs": {"prompt_depth": 1, "use_unified_projection": False, "intermediate_dim": 64,
                           "use_proj_norm": True, "use_lora_proj": False, "num_context": 4,
                           "context_initializer": "a photo of a", "vector_std": 0.02}},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512)),
                    **{f"proj.{k}": (f"context_learner.projection_layers.0.{k}", None, s) for k, s in (
                        ("0.weight", (64, 512)), ("0.bias", (64,)), ("2.weight", (768, 64)), ("3.weight", (768,)),
                        ("3.bias", (768,)))}},
    },
    "maple_deep": {
        "learner": "maple", "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a", "prompt_depth": 3,
                                       "intermediate_dim": 64, "proj_norm": True, "unified_projection": False},
        "ref": {"model": "MapleCLIPSeg", "learner": "MapleContextLearner",
                "kwargs": {"prompt_depth": 3, "use_unified_projection": False, "intermediate_dim": 64,
                           "use_proj_norm": True, "use_lora_proj": False, "num_context": 4,
                           "context_initializer": "a photo of a", "vector_std": 0.02}},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512)),
                    "text_deep.prompts.0": ("context_learner.context_vectors", 1, (4, 512)),
                    "text_deep.prompts.1": ("context_learner.context_vectors", 2, (4, 512)),
                    **{f"{mine}.{k}": (f"context_learner.projection_layers.{i}.{k}", None, s)
                       for mine, i in (("proj", 0), ("projections.0", 1), ("projections.1", 2))
                       for k, s in (("0.weight", (64, 512)), ("0.bias", (64,)), ("2.weight", (768, 64)),
                                    ("3.weight", (768,)), ("3.bias", (768,)))}},
    },
}


def _maple_mlp(mine: str, ref_index: int, out_dim: int = 768, hidden: int = 64, norm_bias: bool = True) -> dict:
    names = [("0.weight", (hidden, 512)), ("0.bias", (hidden,)), ("2.weight", (out_dim, hidden)), ("3.weight", (out_dim,))]
    if norm_bias:
        names.append(("3.bias", (out_dim,)))
    return {f"{mine}.{k}": (f"context_learner.projection_layers.{ref_index}.{k}", None, s) for k, s in names}


_ATTN_LAYER = (("self_attn.in_proj_weight", (3840, 1280)), ("self_attn.in_proj_bias", (3840,)),
               ("self_attn.out_proj.weight", (1280, 1280)), ("self_attn.out_proj.bias", (1280,)),
               ("linear1.weight", (1536, 1280)), ("linear1.bias", (1536,)), ("linear2.weight", (1280, 1536)),
               ("linear2.bias", (1280,)), ("norm1.weight", (1280,)), ("norm1.bias", (1280,)),
               ("norm2.weight", (1280,)), ("norm2.bias", (1280,)))

#: the first five cases keep the tensor seeds they had before the others were added (TENSOR_SEED + their index in
#: sorted order); later cases follow in insertion order
FIRST_CASES = tuple(sorted(CASES))

CASES.update({
    # CoCoOp, TuneVLSeg's configs/model/cocoop/clipseg.yaml (its COOPCLIPSeg builds the decoder branch but its
    # forward runs the HF decoder, coop_clipseg.py:462, so the branch never reaches the logits)
    "cocoop": {
        "config": "cocoop", "learner": "cocoop", "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a", "intermediate_dim": 64,
                                        "proj_norm": True, "norm_image_features": False},
        "ref": {"model": "COOPCLIPSeg", "learner": "CoCoOpContextLearner", "common": BRANCH_ON,
                "kwargs": {"norm_image_features": False, "prompt_depth": 1, "use_unified_projection": False,
                           "intermediate_dim": 64, "use_proj_norm": True, "use_lora_proj": False, "num_context": 4,
                           "context_initializer": "a photo of a", "vector_std": 0.02}},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512)),
                    **{f"meta_net.{k}": (f"context_learner.projection_layers.0.{k}", None, s) for k, s in (
                        ("0.weight", (64, 512)), ("0.bias", (64,)), ("2.weight", (512, 64)), ("3.weight", (512,)))}},
    },
    # CoOp with the reference's branch on: the same logits as without it (the branch is never applied)
    "coop_branch": {
        "config": "coop", "learner": "coop", "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a"},
        "ref": {"model": "COOPCLIPSeg", "learner": "CoOpContextLearner", "common": BRANCH_ON,
                "kwargs": {"prompt_depth": 1, "num_context": 4, "context_initializer": "a photo of a", "vector_std": 0.02}},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512))},
    },
    # VPT (vpt_clipseg.py decoder_forward): logits + branch, the ratio is built but unused
    "vpt_branch": {
        "config": "vpt", "learner": "vpt", "kwargs": {"n_ctx": 4, "prompt_depth": 1, "template": "{}"}, "module": {"decoder_branch": BRANCH_ADD},
        "ref": {"model": "VPTCLIPSeg", "learner": "VPTContextLearner", "common": BRANCH_ON,
                "kwargs": {"prompt_depth": 1, "num_context": 4, "vector_std": 0.02}},
        "tensors": {"visual.shallow": ("context_learner.context_vectors", 0, (4, 768)), **BRANCH_TENSORS},
    },
    # MaPLe and the shared learners (base_clipseg.py decoder_forward): (1 - r) logits + r branch, r learned
    "maple_branch": {
        "config": "maple", "learner": "maple", "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a", "prompt_depth": 1,
                                       "intermediate_dim": 64, "proj_norm": True, "unified_projection": False},
        "module": {"decoder_branch": BRANCH_RESIDUAL},
        "ref": {"model": "MapleCLIPSeg", "learner": "MapleContextLearner", "common": BRANCH_ON,
                "kwargs": {"prompt_depth": 1, "use_unified_projection": False, "intermediate_dim": 64,
                           "use_proj_norm": True, "use_lora_proj": False, "num_context": 4,
                           "context_initializer": "a photo of a", "vector_std": 0.02}},
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512)), **_maple_mlp("proj", 0),
                    **BRANCH_TENSORS, **BRANCH_RATIO},
    },
    # MaPLe with the reference's LoRA projection (use_lora_proj: Linear(512, 64, no bias) -> Linear(64, 768, no
    # bias) -> LayerNorm(768)), unified over depth 2
    "maple_lora": {
        "learner": "maple", "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a", "prompt_depth": 2,
                                       "intermediate_dim": 64, "proj_norm": True, "unified_projection": True,
                                       "lora_proj": True},
        "ref": {"model": "MapleCLIPSeg", "learner": "MapleContextLearner",
                "kwargs": {"prompt_depth": 2, "use_unified_projection": True, "intermediate_dim": 64,
                           "use_proj_norm": True, "use_lora_proj": True, "num_context": 4,
                           "context_initializer": "a photo of a", "vector_std": 0.02}},
        "norm_weights": ("proj.2.weight",),
        "tensors": {"ctx": ("context_learner.context_vectors", 0, (4, 512)),
                    "text_deep.prompts.0": ("context_learner.context_vectors", 1, (4, 512)),
                    **{f"proj.{k}": (f"context_learner.projection_layers.0.{k}", None, s) for k, s in (
                        ("0.weight", (64, 512)), ("1.weight", (768, 64)), ("2.weight", (768,)), ("2.bias", (768,)))}},
    },
    "shared_separate": {
        "config": "shared_separate", "learner": "shared_separate", "kwargs": {"n_ctx": 4, "shared_dim": 64, "prompt_depth": 1,
                                                 "unified_projection": False, "intermediate_dim": None,
                                                 "proj_norm": True},
        "module": {"decoder_branch": BRANCH_RESIDUAL},
        "ref": {"model": "SharedSeparateCLIPSeg", "learner": "SharedSeparateLearner", "common": BRANCH_ON,
                "kwargs": {"shared_dim": 64, "prompt_depth": 1, "use_unified_projection": False,
                           "intermediate_dim": None, "use_proj_norm": True, "use_lora_proj": False,
                           "num_context": 4, "vector_std": 0.02}},
        "tensors": {"joint.context": ("context_learner.context_vectors", None, (1, 4, 64)),
                    **{f"joint.{t}_proj.0.{k}": (f"context_learner.{r}_projection_layers.0.{k}", None, s)
                       for t, r, w in (("text", "textual", 512), ("visual", "visual", 768))
                       for k, s in (("weight", (w, 64)), ("bias", (w,)))},
                    **BRANCH_TENSORS, **BRANCH_RATIO},
    },
    # depth 3, one MLP projection pair for all layers (use_unified_projection, intermediate_dim 32, LayerNorm)
    "shared_separate_deep": {
        "learner": "shared_separate", "kwargs": {"n_ctx": 4, "shared_dim": 64, "prompt_depth": 3,
                                                 "unified_projection": True, "intermediate_dim": 32,
                                                 "proj_norm": True},
        "ref": {"model": "SharedSeparateCLIPSeg", "learner": "SharedSeparateLearner",
                "kwargs": {"shared_dim": 64, "prompt_depth": 3, "use_unified_projection": True,
                           "intermediate_dim": 32, "use_proj_norm": True, "use_lora_proj": False,
                           "num_context": 4, "vector_std": 0.02}},
        "tensors": {"joint.context": ("context_learner.context_vectors", None, (3, 4, 64)),
                    **{f"joint.{t}_proj.0.{k}": (f"context_learner.{r}_projection_layers.0.{k}", None, s)
                       for t, r, w in (("text", "textual", 512), ("visual", "visual", 768))
                       for k, s in (("0.weight", (32, 64)), ("0.bias", (32,)), ("2.weight", (w, 32)),
                                    ("3.weight", (w,)), ("3.bias", (w,)))}},
    },
    # TuneVLSeg's dropout 0.25 is active (training mode): both sides draw it from DROPOUT_SEED
    "shared_attention": {
        "config": "shared_attention", "learner": "shared_attention", "kwargs": {"n_ctx": 4, "prompt_depth": 1, "nhead": 16, "dim_feedforward": 1536,
                                                  "dropout": 0.25, "norm_first": True, "unified_projection": False},
        "module": {"decoder_branch": BRANCH_RESIDUAL}, "dropout_seed": DROPOUT_SEED,
        "ref": {"model": "SharedAttnCLIPSeg", "learner": "SharedAttnLearner", "common": BRANCH_ON,
                "kwargs": {"prompt_depth": 1, "use_unified_projection": False, "num_context": 4, "vector_std": 0.02},
                "projector": {"nhead": 16, "dim_feedforward": 1536, "dropout": 0.25, "norm_first": True}},
        "tensors": {"joint.context": ("context_learner.context_vectors", None, (1, 4, 1280)),
                    **{f"joint.layers.0.{k}": (f"context_learner.projection_layers.0.{k}", None, s)
                       for k, s in _ATTN_LAYER},
                    **BRANCH_TENSORS, **BRANCH_RATIO},
    },
})


def _draw(shape, std: float, gen: torch.Generator, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std + mean


def fill_weights(model: torch.nn.Module) -> None:
    """Overwrite every parameter from :data:`WEIGHT_SEED`, in sorted-name order: matrices and convolutions
    N(0, 1/fan_in) (unit-scale activations, so the decoder's output depends visibly on its inputs), token and
    position embeddings N(0, 0.02^2), LayerNorm weights 1 + N(0, 0.02^2), other vectors N(0, 0.02^2),
    ``logit_scale`` log(1/0.07); the same values under any transformers version."""
    gen = torch.Generator().manual_seed(WEIGHT_SEED)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            if name.endswith("logit_scale"):
                p.fill_(float(torch.log(torch.tensor(1 / 0.07))))
            elif ("norm" in name or "layrnorm" in name) and name.endswith("weight"):
                p.copy_(_draw(p.shape, 0.02, gen, 1.0))
            elif p.dim() >= 2 and "embedding" not in name:
                p.copy_(_draw(p.shape, float(p[0].numel()) ** -0.5, gen))
            else:
                p.copy_(_draw(p.shape, 0.02, gen))


def save_reference_clipseg(folder: str | Path) -> Path:
    """Write the random CLIPSeg folder (weights, preprocessor, CLIP tokenizer) both sides load."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    from vlprompt.backbones.clipseg import write_clip_tokenizer

    folder = Path(folder)
    model = CLIPSegForImageSegmentation(CLIPSegConfig(**CLIPSEG_CONFIG))
    fill_weights(model)
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "do_normalize": True, "resample": 2,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "image_mean": list(MEAN), "image_std": list(STD),
    }, indent=2))
    write_clip_tokenizer(folder)
    return folder


def inputs() -> dict[str, torch.Tensor]:
    """``images [2, 3, 352, 352]`` in ``[0, 1]`` (smooth random colour fields) and binary ``masks [2, 352, 352]``."""
    gen = torch.Generator().manual_seed(INPUT_SEED)
    low = torch.rand(2, 3, 22, 22, generator=gen)
    images = torch.nn.functional.interpolate(low, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    field = torch.nn.functional.interpolate(torch.rand(2, 1, 11, 11, generator=gen), size=(IMAGE_SIZE, IMAGE_SIZE),
                                            mode="bilinear", align_corners=False)[:, 0]
    return {"images": images.contiguous(), "masks": (field > 0.6).float()}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """What vlprompt's CLIPSeg adapter does to images in ``[0, 1]`` (the reference receives it as pixel_values)."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


def learned_tensors(case: str) -> dict[str, torch.Tensor]:
    """The learned tensors of ``case`` by vlprompt name: contexts N(0, 0.02^2) (word-initialised ones too: the test
    is about the computation, not the start), MLP weights N(0, 0.05^2), LayerNorm weights 1 + N(0, 0.05^2)."""
    order = list(FIRST_CASES) + [c for c in CASES if c not in FIRST_CASES]
    gen = torch.Generator().manual_seed(TENSOR_SEED + order.index(case))
    out = {}
    for name, (_, _, shape) in CASES[case]["tensors"].items():
        if name.endswith("3.weight") or ("norm" in name and name.endswith("weight")) or (
                name in CASES[case].get("norm_weights", ())):
            out[name] = _draw(shape, 0.05, gen, 1.0)
        elif name == "decoder_branch.ratio":
            out[name] = _draw(shape, 0.05, gen, 0.5)
        elif "proj" in name or name.startswith(("meta_net.", "joint.layers.", "decoder_branch.")):
            out[name] = _draw(shape, 0.05, gen)
        else:
            out[name] = _draw(shape, 0.02, gen)
    return out


def sample(t: torch.Tensor, most: int = 1024) -> torch.Tensor:
    """A strided sample (at most ``most`` values) of a tensor, flattened: what the fixture keeps of it."""
    flat = t.detach().reshape(-1).float()
    return flat[:: max(1, flat.numel() // most)][:most].clone()


def checksum(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]
