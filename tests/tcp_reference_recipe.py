"""Inputs shared by ``tests/fixtures/tcp_reference/make_fixtures.py`` (runs the TCP reference code, outside CI)
and ``tests/test_tcp_equivalence.py`` (compares vlprompt's ``tcp`` learner against what it saved).

Everything the reference ran on is regenerated here from fixed seeds; the fixture file holds only the reference's
outputs and checksums of the regenerated inputs:

- a random CLIP in OpenAI layout whose text tower has ViT-B/16's width 512 (the reference reshapes the TKE output
  with a literal 512, ``trainers/tcp.py:195``) and 10 layers (it inserts the class tokens at layer 8,
  ``trainers/clip_text/model.py:268``); a small image tower (32 px, patch 16, width 128, 2 layers), D = 64;
- the images, labels and learned-tensor generator of ``tests/vl_reference_recipe.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
import torch

from vl_reference_recipe import checksum, images, labels, recipe_tensor
from vlprompt.backbones.open_clip import OpenCLIPBackbone

REF_MODEL = "vlprompt-test-ref-tcp-widths"
REF_SEED = 2028
CLASSNAMES = ["red circle", "blue square", "green_triangle"]
#: the SGD learning rate of the one compared optimisation step
STEP_LR = 0.5

#: cases: reference ``DATASET.NAME`` (selects its two templates, ``tcp.py:42-76``) -> vlprompt learner kwargs
CASES: dict[str, dict] = {
    "pets": {
        "dataset": "OxfordPets",
        "kwargs": {"n_ctx": 4, "ctx_init": None, "tke_layer": 8, "kg_weight": 8.0,
                   "template": "a photo of a {}, a type of pet.", "prompt_template": "X X X X {}, a type of pet."},
    },
    "imagenet": {
        "dataset": "ImageNet",
        "kwargs": {"n_ctx": 4, "ctx_init": None, "tke_layer": 8, "kg_weight": 8.0,
                   "template": "a photo of a {}.", "prompt_template": "a photo of a {}."},
    },
}


def ref_clip_config() -> dict:
    """open_clip config of the test CLIP (heads = width / 64, as the reference's ``build_model`` derives them)."""
    return {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 128, "layers": 2, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 10},
    }


def ref_backbone():
    """The test CLIP behind vlprompt's :class:`OpenCLIPBackbone` (the same weights on every call)."""
    if open_clip.get_model_config(REF_MODEL) is None:
        folder = Path(tempfile.mkdtemp(prefix="vlprompt-ref-tcp-"))
        (folder / f"{REF_MODEL}.json").write_text(json.dumps(ref_clip_config()))
        open_clip.add_model_config(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REF_SEED)
        return OpenCLIPBackbone(REF_MODEL, pretrained=None, quick_gelu=True)


__all__ = ["CASES", "CLASSNAMES", "STEP_LR", "checksum", "images", "labels", "recipe_tensor", "ref_backbone"]
