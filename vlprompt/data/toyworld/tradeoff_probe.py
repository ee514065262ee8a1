"""A parametrised two-campaign toy dataset used to search for data that shows the base-to-new trade-off.

Not a benchmark dataset (it is not registered): ``configs/datasets/tradeoff_probes/*.yaml`` select it by its
import path, one file per candidate design, and the README section "Toy datasets with a base-to-new
trade-off" lists what CoOp did on each. Every candidate is a catalogue of classes whose base half
(labels ``< ceil(C/2)``) and new half were photographed differently:

- ``kind``: class names, ``colour_texture`` (``red dotted shape``) or ``colour_shape`` (``red circle``);
  ``colours``/``textures``/``shapes`` pick the values (defaults: the six colours and four textures of
  ``toy_mixtures``, the four shapes).
- ``balanced``: ``False`` shuffles the classes (seeded by the design) before halving them, as ``toy_archive``
  does; ``True`` puts the classes whose (colour, texture|shape) grid indices sum to an even number in the
  base half, so both halves hold every colour and every texture (or shape) equally often.
- ``base_style``/``new_style``: the renderer's style of each half (``clean``, ``noise``, ``low_contrast``,
  ``blur``, ``sketch``).
- ``mild_blur`` (base half, after rendering): ``0`` none; ``1`` one pass of the 3x3 binomial filter; between
  1 and 2, that blend of one and two passes (two passes equal the renderer's 5x5 ``blur``).
- ``cast``/``new_cast``: RGB gains applied to the base/new half after rendering (a tinted light).

The images depend on every argument (the design's hash seeds the label order and the generator), so two
designs never share images by accident, and the frozen-feature cache keys on the whole design.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random

import torch
import torch.nn.functional as F

from vlprompt.data.toyworld.datasets import ToyClassification, stable_seed
from vlprompt.data.toyworld.render import COLOURS, SHAPES, STYLES, TEXTURES
from vlprompt.data.toyworld.tradeoff import ARCHIVE_COLOURS, ARCHIVE_TEXTURES, colour_texture, n_base

_KINDS = ("colour_texture", "colour_shape")
#: post-processed splits, keyed by (design spec, split, images per class); read-only tensors
_PROCESSED: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _binomial3(images: torch.Tensor) -> torch.Tensor:
    """One pass of the 3x3 binomial filter ``[1, 2, 1]^T [1, 2, 1] / 16`` with replicated borders. ``[N, 3, S, S]``."""
    k = torch.tensor([1.0, 2.0, 1.0])
    weight = ((k[:, None] * k[None, :]) / 16.0).expand(3, 1, 3, 3).contiguous()
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), weight, groups=3)


class ToyCampaignProbe(ToyClassification):
    """One candidate two-campaign design (module docstring). Not registered; select it by import path."""

    def __init__(
        self,
        *,
        kind: str = "colour_texture",
        colours: list[str] | None = None,
        textures: list[str] | None = None,
        shapes: list[str] | None = None,
        base_style: str = "blur",
        new_style: str = "low_contrast",
        order_seed: int = 0,
        balanced: bool = False,
        mild_blur: float = 0.0,
        cast: list[float] | None = None,
        new_cast: list[float] | None = None,
        per_class: tuple[int, int, int] = (32, 8, 40),
        world_seed: int = 0,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind={kind!r} is not a probe kind; use one of {list(_KINDS)}")
        for name, values, known in (("colours", colours, COLOURS), ("textures", textures, TEXTURES), ("shapes", shapes, SHAPES)):
            unknown = [v for v in values or () if v not in known]
            if unknown:
                raise ValueError(f"{name}={unknown!r} are not toy-world values; known: {list(known)}")
        for name, value in (("base_style", base_style), ("new_style", new_style)):
            if value not in STYLES:
                raise ValueError(f"{name}={value!r} is not a toy-world style; known: {list(STYLES)}")
        for name, value in (("cast", cast), ("new_cast", new_cast)):
            if value is not None and (len(value) != 3 or min(value) < 0):
                raise ValueError(f"{name}={value!r} must be three non-negative RGB gains, e.g. [1.0, 0.8, 0.5]")
        if not 0.0 <= mild_blur <= 2.0:
            raise ValueError(f"mild_blur={mild_blur!r} must lie in [0, 2] (passes of the 3x3 binomial filter)")
        self.design = dict(kind=kind, colours=colours, textures=textures, shapes=shapes, base_style=base_style,
                           new_style=new_style, order_seed=order_seed, balanced=balanced, mild_blur=float(mild_blur),
                           cast=cast, new_cast=new_cast)
        self.spec = "toy_probe-" + hashlib.sha1(json.dumps(self.design, sort_keys=True).encode()).hexdigest()[:10]
        super().__init__(per_class=per_class, world_seed=world_seed)

    def class_definitions(self) -> list[tuple[str, dict[str, str]]]:
        d = self.design
        colours = d["colours"] or list(ARCHIVE_COLOURS)
        if d["kind"] == "colour_texture":
            second = d["textures"] or list(ARCHIVE_TEXTURES)
            defs = [colour_texture(c, t) for c, t in itertools.product(colours, second)]
        else:
            second = d["shapes"] or list(SHAPES)
            defs = [(f"{c} {s}", {"colour": c, "shape": s}) for c, s in itertools.product(colours, second)]
        rng = random.Random(stable_seed(self.spec, "label-order", d["order_seed"]))
        if not d["balanced"]:
            rng.shuffle(defs)
            return defs
        n = len(second)
        base = [x for k, x in enumerate(defs) if (k // n + k % n) % 2 == 0]
        new = [x for k, x in enumerate(defs) if (k // n + k % n) % 2 == 1]
        rng.shuffle(base)
        rng.shuffle(new)
        return base + new

    def class_styles(self, split: str = "train") -> list[str]:
        m = n_base(len(self._defs))
        return [self.design["base_style"] if label < m else self.design["new_style"] for label in range(len(self._defs))]

    def _generate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self.spec, split, self.world_seed, self.per_class.get(split))
        if key not in _PROCESSED:
            images, labels = super()._generate(split)
            m = n_base(len(self._defs))
            x = images.float()
            base = labels < m
            f = self.design["mild_blur"]
            if f > 0:
                once = _binomial3(x[base])
                x[base] = f * once + (1 - f) * x[base] if f <= 1 else (2 - f) * once + (f - 1) * _binomial3(once)
            for sel, cast in ((base, self.design["cast"]), (~base, self.design["new_cast"])):
                if cast:
                    x[sel] = x[sel] * torch.tensor(cast, dtype=torch.float32).view(1, 3, 1, 1)
            _PROCESSED[key] = (x.round().clamp(0, 255).to(torch.uint8), labels)
        return _PROCESSED[key]

    def identity(self) -> dict:
        out = super().identity()
        out["design"] = dict(self.design)
        out["style"] = out["test_style"] = f"base:{self.design['base_style']},new:{self.design['new_style']}"
        return out
