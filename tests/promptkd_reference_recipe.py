"""Inputs shared by ``tests/fixtures/promptkd_reference/make_fixtures.py`` (runs the PromptKD reference code, outside
CI) and ``tests/test_promptkd_equivalence.py`` (compares vlprompt's ``promptkd`` learner against what it saved).

Everything the reference ran on is regenerated here from fixed seeds; the fixture holds only the reference's outputs
and checksums of the regenerated inputs:

- a random *student* CLIP in OpenAI layout with joint dimension 512 and a random, wider *teacher* CLIP with joint
  dimension 768 (the reference's projector is the literal ``Feature_Trans_Module_two_layer(512, 768)``,
  ``trainers/promptkd.py:185``): both take 32 px images, the student with 16 px patches and image width 64, the
  teacher with 8 px patches and image width 128; 10 image layers each (prompt depth 9 leaves the last layer
  unprompted, as on ViT-B/16), the teacher's text tower 10 layers of width 64 (depth 9), the student's text tower
  one layer (the student never encodes text); QuickGELU, context length 77;
- eight random images in ``[0, 1]`` (the reference's batch size 8: the projector's BatchNorm uses batch statistics);
- every learned tensor, under the reference's state-dict names, from :func:`recipe_tensor`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
import torch

from vl_reference_recipe import checksum, recipe_tensor
from vlprompt.backbones.open_clip import OpenCLIPBackbone

STUDENT_MODEL, STUDENT_SEED = "vlprompt-test-ref-promptkd-student", 2031
TEACHER_MODEL, TEACHER_SEED = "vlprompt-test-ref-promptkd-teacher", 2032
#: 5 classes: base = the first 3 (ceil(5 / 2)), new = the last 2, as the reference's ``math.ceil(n_cls / 2)``
CLASSNAMES = ["red circle", "blue square", "green_triangle", "yellow star", "purple hexagon"]
N_BASE = 3
#: the SGD step compared (Dassl's optimiser: momentum 0.9 and weight decay 5e-4 act on the first step as plain SGD
#: plus decay)
STEP_LR = 1e-3
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4
#: cases: name -> (TEMPERATURE, KD_WEIGHT); the base-to-new script sets 1.0 and 1000 (200 for three datasets)
CASES: dict[str, tuple[float, float]] = {"t1_w1000": (1.0, 1000.0), "t2_w200": (2.0, 200.0)}


def student_config() -> dict:
    return {
        "embed_dim": 512,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 10, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
    }


def teacher_config() -> dict:
    return {
        "embed_dim": 768,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 10, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 10},
    }


def _backbone(name: str, config: dict, seed: int) -> OpenCLIPBackbone:
    if open_clip.get_model_config(name) is None:
        folder = Path(tempfile.mkdtemp(prefix="vlprompt-ref-promptkd-"))
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return OpenCLIPBackbone(name, pretrained=None, quick_gelu=True)


def student_backbone() -> OpenCLIPBackbone:
    """The student's random CLIP behind vlprompt's backbone (the same weights on every call)."""
    return _backbone(STUDENT_MODEL, student_config(), STUDENT_SEED)


def teacher_backbone() -> OpenCLIPBackbone:
    """The teacher's random CLIP (wider: joint dimension 768, image width 128)."""
    return _backbone(TEACHER_MODEL, teacher_config(), TEACHER_SEED)


def images() -> torch.Tensor:
    """Eight random images ``[8, 3, 32, 32]`` in ``[0, 1]``."""
    return torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(11))


def batchnorm_stats(name: str, dim: int) -> dict[str, torch.Tensor]:
    """Running statistics of the projector's BatchNorm (non-trivial, so that evaluation tests them)."""
    return {"running_mean": recipe_tensor("promptkd", f"{name}.running_mean", (dim,)),
            "running_var": 0.5 + recipe_tensor("promptkd", f"{name}.running_var", (dim,)).abs() * 10}


__all__ = ["CASES", "CLASSNAMES", "N_BASE", "STEP_LR", "batchnorm_stats", "checksum", "images", "recipe_tensor",
           "student_backbone", "teacher_backbone"]
