"""Inputs shared by ``tests/fixtures/dept_head_reference/make_fixtures.py`` (runs the DePT reference code, outside CI)
and ``tests/test_dept_head_equivalence.py`` (compares vlprompt's ``dept_head`` learner around ``coop`` against it).

Everything is regenerated from fixed seeds; the fixture holds the reference's outputs and checksums of the inputs:

- a random CLIP in OpenAI layout (32 px images, patch 16, width 128, 2 + 2 layers, D = 64);
- five base classes, three new ones; a batch of four images (two of one class);
- a CoOp context ``[4, 128]`` and head tensors away from their initialisation (CAT scale and bias, classifier
  weight and bias), as after some training, so that every part of the head shows in the logits.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
import torch
from vl_reference_recipe import checksum, recipe_tensor

from vlprompt.backbones.open_clip import OpenCLIPBackbone

REF_MODEL = "vlprompt-test-ref-dept-head"
REF_SEED = 2030
IMAGE_SIZE = 32
EMBED_DIM = 64
TEXT_WIDTH = 128
N_CTX = 4
CLASSNAMES = ["red circle", "blue square", "green triangle", "yellow star", "black cross"]
NEW_CLASSNAMES = ["brown arrow", "cyan moon", "gold key"]
LABELS = [3, 0, 3, 1]
#: the configured SGD learning rate of the compared step (the head's is LR_EXP = 6.5 times it)
STEP_LR = 0.5
#: the reference's defaults (train.py: LINEAR_PROBE.WEIGHT, OPTIM.LR_EXP) and Dassl's SGD settings
WEIGHT = 0.7
LR_EXP = 6.5
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4

#: vlprompt name of each learned tensor -> the reference's (``CustomCLIP`` of ``trainers/elp_coop.py``)
REFERENCE_NAMES = {
    "inner.ctx": "prompt_learner.ctx",
    "head.image_transform.scale": "film_lp_img.scale",
    "head.image_transform.bias": "film_lp_img.bias",
    "head.text_transform.scale": "film_lp_text.scale",
    "head.text_transform.bias": "film_lp_text.bias",
    "head.classifier.weight": "linear_probe_proj.weight",
    "head.classifier.bias": "linear_probe_proj.bias",
}


def ref_clip_config() -> dict:
    """open_clip config of the test CLIP (heads = width / 64, as the reference's ``build_model`` derives them)."""
    return {
        "embed_dim": EMBED_DIM,
        "quick_gelu": True,
        "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 16, "width": 128, "layers": 2, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": TEXT_WIDTH, "heads": 2, "layers": 2},
    }


def ref_backbone() -> OpenCLIPBackbone:
    """The test CLIP behind vlprompt's :class:`OpenCLIPBackbone` (the same weights on every call)."""
    if open_clip.get_model_config(REF_MODEL) is None:
        folder = Path(tempfile.mkdtemp(prefix="vlprompt-ref-dept-head-"))
        (folder / f"{REF_MODEL}.json").write_text(json.dumps(ref_clip_config()))
        open_clip.add_model_config(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REF_SEED)
        return OpenCLIPBackbone(REF_MODEL, pretrained=None, quick_gelu=True)


def images() -> torch.Tensor:
    """The batch ``[4, 3, 32, 32]`` in ``[0, 1]``."""
    return torch.rand(len(LABELS), 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(13))


def labels() -> torch.Tensor:
    return torch.tensor(LABELS)


def learned_state() -> dict[str, torch.Tensor]:
    """The learned tensors both sides start from, by vlprompt name: a context, CAT scales near 1 with small
    biases, and a classifier of the raw-feature scale."""
    d, c = EMBED_DIM, len(CLASSNAMES)
    return {
        "inner.ctx": recipe_tensor("dept_head", "ctx", (N_CTX, TEXT_WIDTH)) * 4.0,
        "head.image_transform.scale": 1.0 + recipe_tensor("dept_head", "image_scale", (d,)) * 4.0,
        "head.image_transform.bias": recipe_tensor("dept_head", "image_shift", (d,)),
        "head.text_transform.scale": 1.0 + recipe_tensor("dept_head", "text_scale", (d,)) * 4.0,
        "head.text_transform.bias": recipe_tensor("dept_head", "text_shift", (d,)),
        "head.classifier.weight": recipe_tensor("dept_head", "classifier.weight", (c, d)),
        "head.classifier.bias": recipe_tensor("dept_head", "classifier.bias", (c,)),
    }


__all__ = ["CLASSNAMES", "LABELS", "LR_EXP", "MOMENTUM", "NEW_CLASSNAMES", "REFERENCE_NAMES", "STEP_LR", "WEIGHT",
           "WEIGHT_DECAY", "checksum", "images", "labels", "learned_state", "ref_backbone"]
