"""Inputs shared by ``tests/fixtures/mma_reference/make_fixtures.py`` (runs the MMA reference code, outside CI) and
``tests/test_mma_equivalence.py`` (compares vlprompt's ``mma`` learner with what it saved).

Everything is regenerated from fixed seeds; the fixture file holds only the reference's outputs and checksums:

- a random CLIP in OpenAI's layout with ViT-B/16's depth (12 text and 12 image blocks, so the reference's
  insertion layers 5..12 exist as they are) but small widths (64, one head of 64 as the reference's ``build_model``
  infers; 32 px images, patch 16), weights from ``tests/fixtures/tiny_openai_clip.py`` (fp16-exact values);
- four images and labels; adapter tensors under the reference's names (``text_adapter.<l>.down.0.weight`` ...):
  weights at the reference's Kaiming-normal scale ``sqrt(2 / fan_out)``, biases N(0, 0.02^2) (the reference's zero
  biases would leave part of the math untested).
"""

from __future__ import annotations

import json
import sys
import tempfile
import zlib
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import tiny_openai_clip  # noqa: E402

REF_MODEL = "vlprompt-test-ref-mma-depth12"
REF_SEED = 2029
CLASSNAMES = ["red circle", "blue square", "green_triangle"]
CTX_INIT = "a photo of a"
#: the reference's optimiser (Dassl SGD: momentum 0.9, weight decay 5e-4) with a larger learning rate than its
#: 0.0015, so that one step moves the logits measurably
STEP_LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4

#: cases: the reference config ``vit_b16_ep5.yaml`` (5..12, 32, 0.001) and ``train.py``'s defaults (4..12, 32, 0.1)
CASES: dict[str, dict] = {
    "vit_b16_ep5": {"adapter_start": 5, "adapter_end": 12, "adapter_dim": 32, "adapter_scale": 0.001},
    "train_defaults": {"adapter_start": 4, "adapter_end": 12, "adapter_dim": 32, "adapter_scale": 0.1},
}


def ref_clip_config() -> dict:
    return {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 12, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 12},
    }


def register() -> str:
    if open_clip.get_model_config(REF_MODEL) is None:
        folder = Path(tempfile.mkdtemp(prefix="vlprompt-ref-mma-"))
        (folder / f"{REF_MODEL}.json").write_text(json.dumps(ref_clip_config()))
        open_clip.add_model_config(folder)
    return REF_MODEL


def clip_state() -> dict[str, torch.Tensor]:
    """The random CLIP's weights under OpenAI's names (the same on every call)."""
    return tiny_openai_clip.state_dict(seed=REF_SEED, model=register())


def ref_backbone():
    """The random CLIP behind vlprompt's :class:`OpenCLIPBackbone`."""
    from vlprompt.backbones.open_clip import OpenCLIPBackbone

    bb = OpenCLIPBackbone(register(), pretrained=None, quick_gelu=True)
    bb.clip.load_state_dict(clip_state(), strict=True)
    bb.freeze()
    return bb


def images() -> torch.Tensor:
    """Four random images ``[4, 3, 32, 32]`` in ``[0, 1]``."""
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(28))


def labels() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 1])


def adapter_tensor(case: str, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A deterministic value for the reference tensor ``name`` of ``case``."""
    g = torch.Generator().manual_seed(zlib.crc32(f"mma/{case}/{name}".encode()) % (2**31))
    t = torch.randn(shape, generator=g)
    return t * (2.0 / shape[0]) ** 0.5 if name.endswith("weight") else t * 0.02


def checksum(t: torch.Tensor) -> float:
    """A position-weighted sum that catches a changed tensor."""
    flat = t.detach().double().flatten()
    return float((flat * torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64)).sum())
