"""Classification datasets drawn from the toy world, registered as ``vlprompt.datasets`` plugins.

Each class fixes one or two attributes of the main object; all others vary at random. Class labels follow
a fixed pseudo-random order, so the base half of a base-to-new split never differs from the new half in
one attribute only. Images are generated deterministically from ``(dataset, split, world_seed)``.
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Sequence

import torch

from vlprompt.data.base import ClassificationSource, TensorImageDataset
from vlprompt.data.toyworld.captions import referring_phrase, scene_attributes
from vlprompt.data.toyworld.render import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    TEXTURES,
    render,
    sample_scene,
)

TEXTURE_NAMES = {
    "solid": "solid",
    "horizontal stripes": "horizontally striped",
    "vertical stripes": "vertically striped",
    "checkered": "checkered",
    "dotted": "dotted",
    "hollow": "hollow",
}
POSITION_NAMES = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}

# attribute -> (values, phrase builder used in class names)
ATTRIBUTE_PHRASES = {
    "colour": (tuple(COLOURS), lambda v: f"{v} shape"),
    "texture": (TEXTURES, lambda v: f"{TEXTURE_NAMES[v]} shape"),
    "size": (SIZES, lambda v: f"{v} shape"),
    "position": (POSITIONS, lambda v: f"shape {POSITION_NAMES[v]}"),
    "background": (BACKGROUNDS, lambda v: f"shape on a {v} background"),
}

_MIX_COLOURS = ("red", "yellow", "green", "blue", "purple", "pink")
_MIX_TEXTURES = ("solid", "horizontal stripes", "checkered", "dotted")


def _classes(spec: str) -> list[tuple[str, dict[str, str]]]:
    """(class name, fixed attributes) for each class of a toy dataset, in definition order."""
    if spec == "toy_colors":
        return [(f"{c} shape", {"colour": c}) for c in COLOURS]
    if spec == "toy_patterns":
        return [(f"{s} {TEXTURE_NAMES[t]} shape", {"size": s, "texture": t}) for s, t in itertools.product(SIZES, TEXTURES)]
    if spec == "toy_places":
        return [(f"{s} shape {POSITION_NAMES[p]}", {"size": s, "position": p}) for s, p in itertools.product(SIZES, POSITIONS)]
    if spec == "toy_mixtures":
        return [
            (f"{c} {TEXTURE_NAMES[t]} shape", {"colour": c, "texture": t})
            for c, t in itertools.product(_MIX_COLOURS, _MIX_TEXTURES)
        ]
    if spec == "toy_backdrops":
        return [(f"{s} shape on a {b} background", {"size": s, "background": b}) for s, b in itertools.product(SIZES, BACKGROUNDS)]
    raise KeyError(spec)


#: attribute -> value -> its index in the render vocabulary (the label of attribute datasets)
VALUE_INDEX = {
    "colour": {v: i for i, v in enumerate(COLOURS)},
    "texture": {v: i for i, v in enumerate(TEXTURES)},
    "size": {v: i for i, v in enumerate(SIZES)},
    "position": {v: i for i, v in enumerate(POSITIONS)},
    "background": {v: i for i, v in enumerate(BACKGROUNDS)},
    "shape": {v: i for i, v in enumerate(SHAPES)},  # no built-in dataset fixes it; tradeoff_probe's colour_shape does
}


#: generated splits, keyed by (dataset, split, style, world seed, images per class); read-only tensors
_GENERATED: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def attribute_scenes(n: int, seed: int, style: str = "clean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random one-object scenes: images ``[n, 3, S, S]`` and each attribute's value index ``{name: [n]}``."""
    g = torch.Generator().manual_seed(seed)
    scene = sample_scene(n, generator=g)
    images, _ = render(scene, generator=g, style=style)
    targets = {name: getattr(scene, name)[:, 0].clone() for name in ("colour", "texture", "size", "position")}
    targets["background"] = scene.background.clone()
    return images, targets


def stable_seed(*parts: object) -> int:
    """A seed that depends only on ``parts`` (CRC32 of their ``/``-joined text), stable across processes."""
    return zlib.crc32("/".join(map(str, parts)).encode())


class ToyClassification(ClassificationSource):
    """A toy-world classification dataset.

    Like a real downstream benchmark, each dataset is "photographed" under its own conditions
    (``native_style``: faded or blurred renderings) unlike the clean scenes of the pretraining captions;
    this leaves the headroom that prompt learning recovers on real data.

    Args:
        per_class: images per class for the ``train``, ``val`` and ``test`` splits.
        style: rendering of every split; ``None`` is the dataset's native style. Styles: ``clean``,
            ``noise``, ``low_contrast``, ``blur``, ``sketch``.
        test_style: rendering of ``val`` and ``test`` only (a domain shift for test-time adaptation and
            domain generalisation); ``None`` keeps ``style``.
        world_seed: seed of the world; the same seed gives the same images on every machine.
    """

    spec: str = ""
    native_style: str = "clean"
    family = "toy world"
    default_augment = "none"  # crops and flips would change position and size labels

    def __init__(
        self,
        *,
        per_class: tuple[int, int, int] = (32, 8, 40),
        style: str | None = None,
        test_style: str | None = None,
        world_seed: int = 0,
    ) -> None:
        style = self.native_style if style is None else style
        test_style = style if test_style is None else test_style
        for value in (style, test_style):
            if value not in STYLES:
                raise ValueError(f"style {value!r} is not a toy-world style; known: {list(STYLES)}")
        if len(per_class) != 3 or min(per_class) < 1:
            raise ValueError(f"per_class={per_class!r} must be three positive counts (train, val, test)")
        self.name = self.spec
        self.style = style
        self.test_style = test_style
        self.world_seed = world_seed
        self.per_class = dict(zip(("train", "val", "test"), per_class))
        self._defs = self.class_definitions()

    def class_definitions(self) -> list[tuple[str, dict[str, str]]]:
        """(class name, fixed attributes) by label: the spec's classes in a fixed pseudo-random order.

        Subclasses may override this to define the label order (and so the base/new halves) themselves.
        """
        defs = _classes(self.spec)
        order = list(range(len(defs)))
        random.Random(stable_seed(self.spec, "label-order")).shuffle(order)
        return [defs[i] for i in order]

    @property
    def classnames(self) -> list[str]:
        return [name for name, _ in self._defs]

    def class_attributes(self) -> list[dict[str, str]]:
        """The attributes each class fixes, by label."""
        return [dict(attrs) for _, attrs in self._defs]

    def class_styles(self, split: str = "train") -> list[str]:
        """Rendering style of each class (by label) in ``split``: one style for every class by default."""
        return [self.style if split == "train" else self.test_style] * len(self._defs)

    def render_class(self, attrs: dict[str, str], n: int, *, generator: torch.Generator, style: str) -> torch.Tensor:
        """``n`` images ``[n, 3, S, S]`` in ``[0, 1]`` of the class whose fixed attributes are ``attrs``, rendered
        in ``style`` from ``generator`` (subclasses draw other worlds, e.g. the second world's named kinds)."""
        fixed = {k: torch.full((n,), VALUE_INDEX[k][v]) for k, v in attrs.items()}
        scene = sample_scene(n, generator=generator, fixed=fixed)
        return render(scene, generator=generator, style=style)[0]

    def _generate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self.per_class:
            raise KeyError(f"split {split!r} of {self.name}: known splits are {list(self.per_class)}")
        n = self.per_class[split]
        styles = self.class_styles(split)
        key = (self.spec, split, tuple(styles), self.world_seed, n)
        if key not in _GENERATED:  # shared by every instance (seeds, targets, learners of one process)
            g = torch.Generator().manual_seed(stable_seed(self.spec, split, self.world_seed))
            images, labels = [], []
            for label, ((_, attrs), style) in enumerate(zip(self._defs, styles)):
                img = self.render_class(attrs, n, generator=g, style=style)
                images.append((img * 255).round().to(torch.uint8))
                labels.append(torch.full((n,), label, dtype=torch.long))
            _GENERATED[key] = (torch.cat(images), torch.cat(labels))
        return _GENERATED[key]

    def labels(self, split: str) -> list[int]:
        return self._generate(split)[1].tolist()

    def dataset(self, split: str, indices: Sequence[int] | None = None, transform=None) -> TensorImageDataset:
        images, labels = self._generate(split)
        if indices is not None:
            idx = torch.as_tensor(list(indices), dtype=torch.long)
            images, labels = images[idx], labels[idx]
        return TensorImageDataset(images, labels, transform)

    def identity(self) -> dict:
        return {
            "name": self.name,
            "kind": "toyworld",
            "style": self.style,
            "test_style": self.test_style,
            "world_seed": self.world_seed,
            "per_class": self.per_class,
            "num_classes": len(self._defs),
        }


class ToyColors(ToyClassification):
    """Toy world: 10 classes by object colour (``red shape``...), faded renderings."""

    spec = "toy_colors"
    native_style = "low_contrast"


class ToyPatterns(ToyClassification):
    """Toy world: 12 classes by size x fill texture (``large checkered shape``...), faded renderings."""

    spec = "toy_patterns"
    native_style = "low_contrast"


class ToyPlaces(ToyClassification):
    """Toy world: 18 classes by size x position (``small shape in the top left``...), faded renderings."""

    spec = "toy_places"
    native_style = "low_contrast"


class ToyMixtures(ToyClassification):
    """Toy world: 24 classes by colour x texture (``red dotted shape``...), blurred renderings."""

    spec = "toy_mixtures"
    native_style = "blur"


class ToyBackdrops(ToyClassification):
    """Toy world: 10 classes by size x background (``large shape on a noisy background``...), blurred renderings."""

    spec = "toy_backdrops"
    native_style = "blur"

TOY_DATASETS: dict[str, type[ToyClassification]] = {
    c.spec: c for c in (ToyColors, ToyPatterns, ToyPlaces, ToyMixtures, ToyBackdrops)
}


class ToyReferring:
    """Referring segmentation samples from the toy world: an image, a phrase, and the mask it refers to.

    Each image holds ``num_objects`` small objects with distinct colours and positions; the phrase names
    one of them (``the red dotted circle``) and the mask is that object's visible pixels.

    Args:
        size: number of samples; style: rendering style; seed: world seed (same seed, same samples).
    """

    def __init__(self, size: int = 256, *, num_objects: int = 2, style: str = "clean", seed: int = 0) -> None:
        g = torch.Generator().manual_seed(stable_seed("toy_referring", seed, num_objects, style))
        scene = sample_scene(size, generator=g, num_objects=num_objects)
        images, masks = render(scene, generator=g, style=style)
        target = torch.randint(0, num_objects, (size,), generator=g)
        self.images = (images * 255).round().to(torch.uint8)
        self.masks = masks[torch.arange(size), target]
        self.scene = scene  # attribute indices of every object (e.g. to name an object absent from an image)
        self.target = target  # index of the referred object in each image
        self.phrases = [referring_phrase(scene_attributes(scene, i, int(target[i]))) for i in range(size)]

    def __len__(self) -> int:
        return len(self.phrases)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, torch.Tensor]:
        """``(image [3, S, S] float in [0, 1], phrase, mask [S, S] bool)``."""
        return self.images[i].float() / 255.0, self.phrases[i], self.masks[i]
