"""A test double for generator plugins' CI and vlprompt's own tests (not a method: it only jitters pixels)."""

from __future__ import annotations

import torch

from vlprompt.generators.base import ViewGenerator


class JitterGenerator(ViewGenerator):
    """Deterministic "variations": the image plus seeded Gaussian noise of std ``sigma``. Counts its calls."""

    def __init__(self, sigma: float = 0.05) -> None:
        self.sigma = sigma
        self.calls = 0

    def identity(self) -> dict:
        return {"name": "jitter_test_double", "sigma": self.sigma}

    def generate(self, image: torch.Tensor, n: int, *, seed: int) -> torch.Tensor:
        self.calls += 1
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, *image.shape), generator=g) * self.sigma
        return (image[None].float() + noise).clamp(0, 1)
