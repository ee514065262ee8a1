"""Inputs shared by ``tests/fixtures/tta_reference/make_fixtures.py`` (runs the ZERO, TDA and C-TPT reference
code, outside CI) and ``tests/test_tta_methods.py`` (compares vlprompt against what it saved).

ZERO and TDA act on image and text features, so their inputs are features regenerated here from fixed seeds
(the reference code receives them through a stand-in model whose encoders return them): the fixture file only
holds the reference's outputs. C-TPT acts on the prompt, so its inputs are the tiny random OpenAI-layout CLIP
of ``tests/fixtures/tiny_openai_clip.py`` and seeded images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOGIT_SCALE = 100.0  # CLIP's pretrained exp(logit_scale) (4.6052 -> 100.0), which TDA also hard-codes

#: ZERO cases: name -> (views per image, classes, feature width, images, seed). gamma is the reference's 0.3.
ZERO_CASES = {
    "zero_64v_10c": (64, 10, 32, 12, 11),
    "zero_10v_3c_ties": (10, 3, 32, 40, 12),  # 3 votes among 3 classes: ties, broken greedily
    "zero_fallback": (10, 4, 16, 1, 0),  # hand-built: see zero_fallback_inputs
}

#: TDA cases: name -> (views per image, classes, feature width, images, seed, positive, negative settings).
#: One view: the reference's ImageNet and fine-grained runs; 20 views (2 kept): its ImageNet-A/V/R/S runs.
TDA_CASES = {
    "tda_1v": (1, 6, 32, 48, 21, {"shot_capacity": 3, "alpha": 2.0, "beta": 5.0},
               {"shot_capacity": 2, "alpha": 0.117, "beta": 1.0, "entropy_threshold": {"lower": 0.2, "upper": 0.5},
                "mask_threshold": {"lower": 0.03, "upper": 1.0}}),
    "tda_20v": (20, 5, 32, 40, 22, {"shot_capacity": 3, "alpha": 1.0, "beta": 8.0},
                {"shot_capacity": 2, "alpha": 0.117, "beta": 1.0, "entropy_threshold": {"lower": 0.2, "upper": 0.5},
                 "mask_threshold": {"lower": 0.03, "upper": 1.0}}),
}


def class_text_features(n_classes: int, dim: int, seed: int) -> torch.Tensor:
    """Normalised class text features ``[C, D]``."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)


def view_features(text: torch.Tensor, n_images: int, n_views: int, seed: int, *, spread: float = 0.06) -> torch.Tensor:
    """Image features ``[I, V, D]`` (not normalised: the reference normalises them) near the text features.

    Each image leans towards one class by a random amount, each view adds its own noise: with the logit scale
    of 100 this gives confident and unsure images and views (TDA's negative cache needs normalised entropies
    in (0.2, 0.5)), and ZERO's votes both agree and tie.
    """
    g = torch.Generator().manual_seed(seed + 1)
    n_classes, dim = text.shape
    cls = torch.randint(n_classes, (n_images,), generator=g)
    lean = torch.rand(n_images, 1, 1, generator=g) * 0.08
    noise = torch.randn(n_images, n_views, dim, generator=g) * spread
    return lean * text[cls][:, None, :] + noise + 0.02 * torch.randn(1, 1, dim, generator=g)


def zero_fallback_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A hand-built ZERO case reaching the reference's last tie-break (``break_sample_tie``): 4 orthonormal
    class texts; of 10 views, the 3 most confident vote for classes 0, 1 and 2 (a three-way tie) and the 7
    discarded views all prefer class 3, so no discarded view names a tied class."""
    dim = 16
    text = torch.eye(4, dim)
    g = torch.Generator().manual_seed(41)
    kept = torch.stack([0.35 * torch.eye(dim)[c] + 0.6 * torch.eye(dim)[8 + c] for c in range(3)])
    rest = torch.stack([0.06 * torch.eye(dim)[3] + 0.03 * torch.rand(dim, generator=g) * (torch.arange(dim) < 3)
                        + torch.eye(dim)[12] for _ in range(7)])
    return torch.cat([kept, rest])[None], text


def zero_inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features ``[I, V, D]``, text features ``[C, D]``) of a ZERO case."""
    if name == "zero_fallback":
        return zero_fallback_inputs()
    views, classes, dim, images, seed = ZERO_CASES[name]
    text = class_text_features(classes, dim, seed)
    return view_features(text, images, views, seed, spread=0.1), text


def tda_inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features ``[I, V, D]``, text features ``[C, D]``) of a TDA case, in stream order."""
    views, classes, dim, images, seed, _, _ = TDA_CASES[name]
    text = class_text_features(classes, dim, seed)
    return view_features(text, images, views, seed), text


# ------------------------------------------------------------------ C-TPT (prompt tuning on the tiny CLIP)
CTPT_CLASSNAMES = ["forest", "herbaceous vegetation", "industrial buildings", "sea or lake", "annual crop land"]
CTPT_VIEWS = 16  # views per image (reference: 64); selection 0.25 keeps 4
CTPT_SELECTION = 0.25
CTPT_LAMBDA = 50.0  # the reference's fine-grained setting (scripts/test_tpt_ctpt_fg.sh)
CTPT_LR = 5e-3
CTPT_SEED = 31


def ctpt_views(image_size: int) -> torch.Tensor:
    """Views ``[N, 3, S, S]`` in ``[0, 1]`` (vlprompt's backbone normalises them; the fixture script normalises
    them with OpenAI's mean and std before the reference sees them, as its data pipeline does)."""
    g = torch.Generator().manual_seed(CTPT_SEED)
    return torch.rand(CTPT_VIEWS, 3, image_size, image_size, generator=g)
