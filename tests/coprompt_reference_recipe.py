"""Inputs shared by ``tests/fixtures/coprompt_reference/make_fixtures.py`` (runs the CoPrompt reference code, outside
CI) and ``tests/test_coprompt_equivalence.py`` (compares vlprompt's ``coprompt`` learner against what it saved).

Everything the reference ran on is regenerated here from fixed seeds; the fixture file holds only the reference's
outputs and checksums of the regenerated inputs:

- a random CLIP in OpenAI layout with the widths the reference hard-codes (``trainers/coprompt.py``: text prompts
  512, visual prompts 768, adapters on 512-d features): text width 512, image width 768, embedding 512; 3 + 3 layers,
  32 px images with 16 px patches, context length 77, QuickGELU;
- two image batches (the prompted model's view and the frozen model's view), labels and the learned-tensor generator
  of ``tests/vl_reference_recipe.py``; three descriptions per class (the reference stacks them, so equal counts).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
import torch

from vl_reference_recipe import checksum, images, labels, recipe_tensor
from vlprompt.backbones.open_clip import OpenCLIPBackbone

REF_MODEL = "vlprompt-test-ref-coprompt-widths"
REF_SEED = 2030
CLASSNAMES = ["red circle", "blue square", "green_triangle"]
#: the SGD learning rate of the one compared optimisation step
STEP_LR = 0.5
#: the LLM descriptions of the test classes (keys with spaces: the reference looks names up with ``_`` -> `` ``)
DESCRIPTIONS = {
    "red circle": ["A red circle is a round shape filled with red.", "a bright red disc on a plain background.",
                   "A circle coloured red, with a smooth curved edge."],
    "blue square": ["A blue square has four equal sides and right angles.", "a square block painted blue.",
                    "A blue square looks like a tile of solid blue colour."],
    "green triangle": ["A green triangle has three straight sides.", "a pointed green shape with three corners.",
                       "A triangle filled with a leafy green colour."],
}

#: cases: vlprompt learner kwargs, the reference's TRAINER settings, the Python ``random`` seed of its description draw
CASES: dict[str, dict] = {
    "n2_j3_w1_cosine": {
        "kwargs": {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 3, "consistency_weight": 1.0, "distill": "cosine"},
        "ref": {"N_CTX": 2, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 3, "W": 1.0, "DISTILL": "cosine"},
        "dataset": "OxfordPets",
        "random_seed": 11,
    },
    "n4_j2_w8_cosine": {
        "kwargs": {"n_ctx": 4, "ctx_init": "a photo of a", "prompt_depth": 2, "consistency_weight": 8.0, "distill": "cosine"},
        "ref": {"N_CTX": 4, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 2, "W": 8.0, "DISTILL": "cosine"},
        "dataset": "DescribableTextures",
        "random_seed": 5,
    },
    "n2_j3_w4_mse": {
        "kwargs": {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 3, "consistency_weight": 4.0, "distill": "mse"},
        "ref": {"N_CTX": 2, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 3, "W": 4.0, "DISTILL": "mse"},
        "dataset": "EuroSAT",
        "random_seed": 3,
    },
}


def ref_clip_config() -> dict:
    """open_clip config of the test CLIP (heads = width / 64, as the reference's ``build_model`` derives them)."""
    return {
        "embed_dim": 512,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 768, "layers": 3, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 3},
    }


def ref_backbone() -> OpenCLIPBackbone:
    """The test CLIP behind vlprompt's :class:`OpenCLIPBackbone` (the same weights on every call)."""
    if open_clip.get_model_config(REF_MODEL) is None:
        folder = Path(tempfile.mkdtemp(prefix="vlprompt-ref-coprompt-"))
        (folder / f"{REF_MODEL}.json").write_text(json.dumps(ref_clip_config()))
        open_clip.add_model_config(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REF_SEED)
        return OpenCLIPBackbone(REF_MODEL, pretrained=None, quick_gelu=True)


def frozen_view_images() -> torch.Tensor:
    """The frozen model's view ``[4, 3, 32, 32]`` in ``[0, 1]`` (the reference's ``image2``)."""
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(8))


#: entries of a learned tensor the fixture keeps (the visual-prompt projections alone are 768 x 512 per layer)
PROBE_SIZE = 512


def probe(t: torch.Tensor) -> torch.Tensor:
    """What the fixture keeps of a gradient or stepped tensor: all of it when it has at most :data:`PROBE_SIZE`
    entries, else :data:`PROBE_SIZE` entries at seeded positions (the same for every tensor of that size), followed by
    its sum and norm over every entry (float64)."""
    flat = t.detach().double().flatten()
    if flat.numel() > PROBE_SIZE:
        idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(flat.numel()))[:PROBE_SIZE]
        flat = torch.cat([flat[idx], flat.sum().reshape(1), flat.norm().reshape(1)])
    return flat.contiguous()


def write_descriptions(folder: Path) -> Path:
    path = Path(folder) / "descriptions.json"
    path.write_text(json.dumps(DESCRIPTIONS))
    return path


__all__ = ["CASES", "CLASSNAMES", "DESCRIPTIONS", "STEP_LR", "checksum", "frozen_view_images", "images", "labels",
           "probe", "recipe_tensor", "ref_backbone", "write_descriptions"]
