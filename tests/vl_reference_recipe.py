"""Inputs shared by ``tests/fixtures/vl_reference/make_fixtures.py`` (runs the reference code, outside CI)
and ``tests/test_vl_reference.py`` (compares vlprompt's learners against what it saved).

Everything the reference ran on is regenerated here from fixed seeds, so the fixture file only holds the
reference's outputs (logits, losses, aggregated prompts) and checksums of the regenerated inputs:

- a random CLIP in OpenAI layout with ViT-B/16's widths (text 512, image 768: MaPLe hard-codes them),
  3 + 3 layers, 32 px images with 16 px patches, context length 77, QuickGELU;
- random images in ``[0, 1]``;
- every learned prompt tensor, under the reference's state-dict names, from a seeded generator.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from pathlib import Path

import open_clip
import torch

REF_MODEL = "vlprompt-test-ref-b16-widths"
REF_SEED = 2024
CLASSNAMES = ["red circle", "blue square", "green_triangle"]
TEMPLATES_NOTE = "PromptSRC: the 60 ImageNet templates of trainers/imagenet_templates.py"

#: learner configurations compared against the reference: name -> (vlprompt learner, kwargs, reference cfg)
CASES: dict[str, dict] = {
    "maple_j3": {
        "learner": "maple",
        "kwargs": {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 3},
        "ref": {"trainer": "MaPLe", "N_CTX": 2, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 3},
    },
    "maple_j1": {
        "learner": "maple",
        "kwargs": {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 1},
        "ref": {"trainer": "MaPLe", "N_CTX": 2, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 1},
    },
    "ivlp_2x2_d3": {
        "learner": "ivlp",
        "kwargs": {"n_ctx_text": 2, "n_ctx_vision": 2, "ctx_init": "a photo of a", "prompt_depth_text": 3, "prompt_depth_vision": 3},
        "ref": {"trainer": "IVLP", "N_CTX_TEXT": 2, "N_CTX_VISION": 2, "CTX_INIT": "a photo of a",
                "PROMPT_DEPTH_TEXT": 3, "PROMPT_DEPTH_VISION": 3},
    },
    "ivlp_4x3_d2x3_random": {
        "learner": "ivlp",
        "kwargs": {"n_ctx_text": 4, "n_ctx_vision": 3, "ctx_init": None, "prompt_depth_text": 2, "prompt_depth_vision": 3},
        "ref": {"trainer": "IVLP", "N_CTX_TEXT": 4, "N_CTX_VISION": 3, "CTX_INIT": "",
                "PROMPT_DEPTH_TEXT": 2, "PROMPT_DEPTH_VISION": 3},
    },
    "vpt_8_d3": {
        "learner": "vpt",
        "kwargs": {"n_ctx": 8, "prompt_depth": 3},
        "ref": {"trainer": "VPT", "N_CTX_VISION": 8, "PROMPT_DEPTH_VISION": 3},
    },
    "vpt_4_d1": {
        "learner": "vpt",
        "kwargs": {"n_ctx": 4, "prompt_depth": 1},
        "ref": {"trainer": "VPT", "N_CTX_VISION": 4, "PROMPT_DEPTH_VISION": 1},
    },
    "promptsrc_4x4_d3": {
        "learner": "promptsrc",
        "kwargs": {"n_ctx_text": 4, "n_ctx_vision": 4, "ctx_init": "a photo of a", "prompt_depth_text": 3,
                   "prompt_depth_vision": 3, "gpa_mean": 2.0, "gpa_std": 1.0},
        "ref": {"trainer": "PromptSRC", "N_CTX_TEXT": 4, "N_CTX_VISION": 4, "CTX_INIT": "a photo of a",
                "PROMPT_DEPTH_TEXT": 3, "PROMPT_DEPTH_VISION": 3, "TEXT_LOSS_WEIGHT": 25, "IMAGE_LOSS_WEIGHT": 10,
                "GPA_MEAN": 2, "GPA_STD": 1, "MAX_EPOCH": 3},
    },
}


def ref_clip_config() -> dict:
    """open_clip config of the reference-layout test CLIP (heads = width / 64 as the reference's build_model)."""
    return {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 768, "layers": 3, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 3},
    }


def ref_backbone():
    """The reference-layout random CLIP behind vlprompt's :class:`OpenCLIPBackbone` (same weights every call)."""
    from vlprompt.backbones.open_clip import OpenCLIPBackbone

    if open_clip.get_model_config(REF_MODEL) is None:
        folder = Path(tempfile.mkdtemp(prefix="vlprompt-ref-clip-"))
        (folder / f"{REF_MODEL}.json").write_text(json.dumps(ref_clip_config()))
        open_clip.add_model_config(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REF_SEED)
        return OpenCLIPBackbone(REF_MODEL, pretrained=None, quick_gelu=True)


def images() -> torch.Tensor:
    """Four random images ``[4, 3, 32, 32]`` in ``[0, 1]``."""
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def labels() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 1])


def recipe_tensor(case: str, name: str, shape: tuple[int, ...], *, epoch: int = 0) -> torch.Tensor:
    """A deterministic tensor for reference parameter ``name`` of ``case`` (prompts N(0, 0.05^2); Linear
    weights scaled by ``1/sqrt(fan_in)``)."""
    seed = zlib.crc32(f"{case}/{name}/{epoch}".encode()) % (2**31)
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if name.endswith("weight"):
        return t / shape[-1] ** 0.5
    if name.endswith("bias"):
        return t * 0.02
    return t * 0.05


def checksum(t: torch.Tensor) -> float:
    """A position-weighted sum that catches a changed tensor (regenerated weights drifting)."""
    flat = t.detach().double().flatten()
    return float((flat * torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64)).sum())
