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
#: the decoder-side settings both sides run with: TuneVLSeg's use_new_last_layer is off (vlprompt has no such
#: branch yet), everything else as the tunevlseg configs
REF_COMMON = {"freeze_all": True, "no_freeze_last_layer": False, "use_new_last_layer": False}
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

#: case -> vlprompt learner (registry name + kwargs = its tunevlseg config), reference model + context learner
#: kwargs, and the learned tensors: vlprompt name -> (reference name, index into it or None, shape)
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
    gen = torch.Generator().manual_seed(TENSOR_SEED + sorted(CASES).index(case))
    out = {}
    for name, (_, _, shape) in CASES[case]["tensors"].items():
        if name.endswith("3.weight"):
            out[name] = _draw(shape, 0.05, gen, 1.0)
        elif "proj" in name:
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
