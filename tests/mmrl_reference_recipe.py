"""Inputs shared by ``tests/fixtures/mmrl_reference/make_fixtures.py`` (runs the MMRL reference code, outside CI)
and ``tests/test_mmrl_equivalence.py`` (compares vlprompt's ``mmrl`` learner against what it saved).

Everything the reference ran on is regenerated here from fixed seeds; the fixture file holds only the reference's
outputs and checksums of the regenerated inputs:

- a random CLIP in OpenAI layout with 5 text and 5 image layers (width 64, one head of 64 as the reference's
  ``build_model_MMRL`` derives heads, context length 77), 32 px images, patch 16, D = 32: the representation
  tokens enter at layer 3 and are replaced at layers 4 and 5, so the case has layers before, at and after the
  insertion, as the paper's 6..12 of 12;
- the images and labels of ``tests/vl_reference_recipe.py``; learned tensors from its ``recipe_tensor``, the
  representation tokens scaled to unit variance so that they move the features visibly.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
import torch

from vl_reference_recipe import checksum, images, labels
from vl_reference_recipe import recipe_tensor as vl_recipe_tensor
from vlprompt.backbones.open_clip import OpenCLIPBackbone

REF_MODEL = "vlprompt-test-ref-mmrl"
REF_SEED = 2029
CLASSNAMES = ["red circle", "blue square", "green_triangle"]
#: the other label space (the reference's ``SUBSAMPLE_CLASSES new``)
NEW_CLASSNAMES = ["yellow star", "purple_ring"]
#: the SGD learning rate of the one compared optimisation step
STEP_LR = 0.5
#: reference ``DATASET.NAME`` (selects ``CUSTOM_TEMPLATES``) and ``TRAINER.MMRL`` settings -> vlprompt kwargs
DATASET = "OxfordPets"
REFERENCE_MMRL = {"ALPHA": 0.7, "REG_WEIGHT": 3.0, "N_REP_TOKENS": 5, "REP_LAYERS": [3, 4, 5], "REP_DIM": 32}
KWARGS = {"n_rep_tokens": 5, "rep_layers": [3, 4, 5], "rep_dim": 32, "alpha": 0.7, "reg_weight": 3.0,
          "template": "a photo of a {}, a type of pet.", "logit_scale": 100.0, "eval_head": "auto"}


def recipe_tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The learned tensor ``name`` (vlprompt's name) of the compared case."""
    t = vl_recipe_tensor("mmrl", name, shape)
    return t * 20.0 if name == "compound_rep_tokens" else t


def ref_clip_config() -> dict:
    return {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 5, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 5},
    }


def ref_backbone():
    """The test CLIP behind vlprompt's :class:`OpenCLIPBackbone` (the same weights on every call)."""
    if open_clip.get_model_config(REF_MODEL) is None:
        folder = Path(tempfile.mkdtemp(prefix="vlprompt-ref-mmrl-"))
        (folder / f"{REF_MODEL}.json").write_text(json.dumps(ref_clip_config()))
        open_clip.add_model_config(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REF_SEED)
        return OpenCLIPBackbone(REF_MODEL, pretrained=None, quick_gelu=True)


__all__ = ["CLASSNAMES", "DATASET", "KWARGS", "NEW_CLASSNAMES", "REFERENCE_MMRL", "STEP_LR", "checksum", "images",
           "labels", "recipe_tensor", "ref_backbone"]
