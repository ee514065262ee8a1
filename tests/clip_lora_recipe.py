"""Inputs of the CLIP-LoRA faithfulness test, regenerated from seeds on both sides (vlprompt's test and
``tests/fixtures/clip_lora_reference/make_fixtures.py``, which runs the reference's LoRA layer on them).

The model is vlprompt's tiny random CLIP (:func:`vlprompt.learners.testing.tiny_clip`, 2 + 2 layers, width 32);
the adapters start from non-zero ``A`` and ``B`` (the reference's zero ``B`` would make the first logits zero-shot
CLIP's and hide the adapter's math); dropout is off in the step (its masks are random on both sides).
"""

from __future__ import annotations

import torch

from vlprompt.learners.testing import DEFAULT_CLASSNAMES

TEMPLATE = "a photo of a {}."
CLASSNAMES = list(DEFAULT_CLASSNAMES)
RANK, ALPHA = 2, 1.0
#: the reference's AdamW (lora.py: weight_decay 1e-2, betas (0.9, 0.999); run_utils.py: lr 2e-4)
LR, WEIGHT_DECAY, BETAS = 2e-4, 1e-2, (0.9, 0.999)


def images() -> tuple[torch.Tensor, torch.Tensor]:
    """Four 32 px images in ``[0, 1]`` and their labels."""
    g = torch.Generator().manual_seed(28)
    return torch.rand(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])


def lora_weights(layers: int, width: int) -> dict[str, torch.Tensor]:
    """``{"{tower}.{layer}.{q|k|v}.{A|B}": tensor}``: ``A [r, W]``, ``B [W, r]``, N(0, 0.3^2), for both towers."""
    g = torch.Generator().manual_seed(2024)
    out = {}
    for tower in ("text", "vision"):
        for i in range(layers):
            for p in ("q", "k", "v"):
                out[f"{tower}.{i}.{p}.A"] = torch.randn(RANK, width, generator=g) * 0.3
                out[f"{tower}.{i}.{p}.B"] = torch.randn(width, RANK, generator=g) * 0.3
    return out
