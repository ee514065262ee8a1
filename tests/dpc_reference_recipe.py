"""Inputs shared by ``tests/fixtures/dpc_reference/make_fixtures.py`` (runs the DPC reference code, outside CI) and
``tests/test_dpc_equivalence.py`` (compares vlprompt's ``dpc`` learner around ``coop`` against what it saved).

Everything is regenerated from fixed seeds; the fixture holds the reference's outputs and checksums of the inputs:

- a random CLIP in OpenAI layout with 224 px images (the reference builds its enlarged batch in a literal
  ``[0, 3, 224, 224]`` tensor, ``trainers/sple_coop.py:529``), patch 32, width 128, 2 + 2 layers, D = 64;
- ten base classes, four new ones; a batch of three images (two of one class) and one library image per class;
- the original (backbone-tuned) context ``P`` and a parallel context ``theta`` mid-training, both ``[4, 128]``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
import torch

from vl_reference_recipe import checksum, recipe_tensor
from vlprompt.backbones.open_clip import OpenCLIPBackbone

REF_MODEL = "vlprompt-test-ref-dpc-224"
REF_SEED = 2029
IMAGE_SIZE = 224
N_CTX = 4
CLASSNAMES = ["red circle", "blue square", "green triangle", "yellow star", "black cross", "white ring",
              "orange dot", "purple line", "grey wave", "pink heart"]
NEW_CLASSNAMES = ["brown arrow", "cyan moon", "gold key", "silver bell"]
LABELS = [2, 7, 2]
#: the SGD learning rate of the one compared optimisation step
STEP_LR = 0.5
#: seed of Python's ``random`` (the reference's fallback draws and image choice) and of the learner's ``seed``
DRAW_SEED = 3

#: cases: name -> reference SPLE settings (``INFER_TOPK``, ``STACK.WEIGHT``); new-class weights are all tried
CASES: dict[str, dict] = {
    "top4_w05": {"top_k": 4, "weight": 0.5},
    "top2_w02": {"top_k": 2, "weight": 0.2},
}
WEIGHTS_FOR_NEW = (0.0, 0.2)


def ref_clip_config() -> dict:
    """open_clip config of the test CLIP (heads = width / 64, as the reference's ``build_model`` derives them)."""
    return {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 32, "width": 128, "layers": 2, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
    }


def ref_backbone() -> OpenCLIPBackbone:
    """The test CLIP behind vlprompt's :class:`OpenCLIPBackbone` (the same weights on every call)."""
    if open_clip.get_model_config(REF_MODEL) is None:
        folder = Path(tempfile.mkdtemp(prefix="vlprompt-ref-dpc-"))
        (folder / f"{REF_MODEL}.json").write_text(json.dumps(ref_clip_config()))
        open_clip.add_model_config(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REF_SEED)
        return OpenCLIPBackbone(REF_MODEL, pretrained=None, quick_gelu=True)


def images() -> torch.Tensor:
    """The training batch ``[3, 3, 224, 224]`` in ``[0, 1]``."""
    return torch.rand(len(LABELS), 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(11))


def labels() -> torch.Tensor:
    return torch.tensor(LABELS)


def library() -> torch.Tensor:
    """One training image per base class ``[10, 3, 224, 224]`` in ``[0, 1]`` (the hard-negative candidates)."""
    return torch.rand(len(CLASSNAMES), 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(12))


def original_ctx() -> torch.Tensor:
    """``P``: the backbone CoOp's tuned context."""
    return recipe_tensor("dpc/original", "ctx", (N_CTX, 128))


def parallel_ctx(case: str) -> torch.Tensor:
    """``theta``: the parallel (saved "mixed") context, away from ``P`` as after some DPC training."""
    return original_ctx() + recipe_tensor(f"dpc/{case}/parallel", "ctx", (N_CTX, 128))


__all__ = ["CASES", "CLASSNAMES", "DRAW_SEED", "LABELS", "NEW_CLASSNAMES", "STEP_LR", "WEIGHTS_FOR_NEW", "checksum",
           "images", "labels", "library", "original_ctx", "parallel_ctx", "ref_backbone"]
