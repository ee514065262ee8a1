"""The generator plugin interface and the on-disk cache of generated views.

A generator makes ``n`` variations of one image (DiffTPT, Feng et al. ICCV 2023, Sec. 3.2: Stable Diffusion
image variations conditioned on the CLIP image embedding). Generation is slow, so views are made once and
cached: the key is the image content (sha256 of its ``uint8`` pixels and shape), the generator's identity
(weights and settings, :meth:`ViewGenerator.identity`) and the number of views. A cache entry that cannot
be read (truncated, corrupt) or does not match is regenerated and rewritten atomically, never reused.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


class GeneratorError(ValueError):
    """A generator cannot be built or used; the message names the value and the fix."""


def image_key(image: torch.Tensor) -> str:
    """sha256 of an image ``[3, H, W]`` (float in ``[0, 1]`` or uint8), over its ``uint8`` pixels and shape."""
    u8 = image if image.dtype == torch.uint8 else (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    h = hashlib.sha256(json.dumps(list(u8.shape)).encode())
    h.update(u8.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


class ViewGenerator(abc.ABC):
    """Makes variations of an image. Subclasses are registered in ``vlprompt.generators``.

    ``identity()`` must change whenever the output would (weights, resolution, guidance, steps...).
    """

    family = "generator"

    @abc.abstractmethod
    def identity(self) -> dict:
        """JSON-serialisable description of the weights and settings (part of the cache key)."""

    @abc.abstractmethod
    def generate(self, image: torch.Tensor, n: int, *, seed: int) -> torch.Tensor:
        """``n`` variations ``[n, 3, h, w]`` (float, ``[0, 1]``) of ``image [3, H, W]`` (float, ``[0, 1]``)."""


def default_views_cache() -> Path:
    return Path(os.environ.get("VLPROMPT_CACHE", Path.home() / ".cache" / "vlprompt")) / "generated_views"


class GeneratedViews:
    """Cached generation: ``get(image, n)`` returns ``uint8 [n, 3, h, w]`` views, generating them if needed.

    Args:
        generator: the generator.
        cache_dir: folder of the cache (default ``$VLPROMPT_CACHE/generated_views``).
        seed: base seed; each image's generation is seeded by ``seed`` and its content hash.
    """

    def __init__(self, generator: ViewGenerator, cache_dir: str | os.PathLike | None = None, *, seed: int = 0) -> None:
        self.generator = generator
        self.root = Path(cache_dir) if cache_dir else default_views_cache()
        self.seed = seed
        ident = json.dumps({"generator": generator.identity(), "seed": seed}, sort_keys=True)
        self.identity = ident
        self.folder = self.root / hashlib.sha256(ident.encode()).hexdigest()[:20]

    def path(self, image: torch.Tensor, n: int) -> Path:
        return self.folder / f"{image_key(image)}-n{n}.safetensors"

    def load(self, image: torch.Tensor, n: int) -> torch.Tensor | None:
        """The cached views, or ``None`` when absent; an unreadable or mismatched entry is logged and ignored."""
        path = self.path(image, n)
        if not path.is_file():
            return None
        try:
            views = load_file(str(path))["views"]
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt file: regenerate
            log.warning("generated-view cache entry %s is unreadable (%s): regenerating it", path, exc)
            return None
        if views.dtype != torch.uint8 or views.dim() != 4 or views.shape[0] != n:
            log.warning("generated-view cache entry %s holds %s %s, expected %d views: regenerating it", path, views.dtype, tuple(views.shape), n)
            return None
        return views

    def get(self, image: torch.Tensor, n: int) -> torch.Tensor:
        """``uint8 [n, 3, h, w]`` variations of ``image``, from the cache or generated (and cached) now."""
        cached = self.load(image, n)
        if cached is not None:
            return cached
        seed = (self.seed * 1_000_003 + int(image_key(image)[:12], 16)) % (2**63)
        views = self.generator.generate(image, n, seed=seed)
        if views.shape[0] != n or views.dim() != 4:
            raise GeneratorError(f"{type(self.generator).__name__}.generate returned shape {tuple(views.shape)}, expected [{n}, 3, h, w]")
        u8 = (views.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
        path = self.path(image, n)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"views": u8}, tmp, metadata={"identity": self.identity, "n": str(n)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return u8
