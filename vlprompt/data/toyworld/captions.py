"""Captions and referring phrases for toy-world scenes.

Pretraining captions describe a random subset of the main object's attributes in varied word order and
phrasing. They never use the hand-written zero-shot template (``a photo of a ...``) nor the generic nouns
``shape``/``object`` after the attributes the way class names do, which leaves room for prompt learning,
as real web captions do for real CLIP.
"""

from __future__ import annotations

import random

from vlprompt.data.toyworld.render import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES, Scene

COLOUR_WORDS = list(COLOURS)
TEXTURE_ADJ = {
    "solid": ["solid", "plain"],
    "horizontal stripes": ["horizontally striped"],
    "vertical stripes": ["vertically striped"],
    "checkered": ["checkered"],
    "dotted": ["dotted"],
    "hollow": ["hollow", "outlined"],
}
TEXTURE_WITH = {
    "solid": None,
    "horizontal stripes": "with horizontal stripes",
    "vertical stripes": "with vertical stripes",
    "checkered": "with a checkered pattern",
    "dotted": "with dots",
    "hollow": None,
}
POSITION_PHRASES = {
    "top left": ["in the top left", "at the top left corner", "top left"],
    "top": ["at the top", "in the top middle", "near the top edge"],
    "top right": ["in the top right", "at the top right corner", "top right"],
    "left": ["on the left", "at the left side", "middle left"],
    "centre": ["in the centre", "in the middle", "centred"],
    "right": ["on the right", "at the right side", "middle right"],
    "bottom left": ["in the bottom left", "at the bottom left corner", "bottom left"],
    "bottom": ["at the bottom", "in the bottom middle", "near the bottom edge"],
    "bottom right": ["in the bottom right", "at the bottom right corner", "bottom right"],
}
BACKGROUND_PHRASES = {
    "dark": ["on a dark background", "on black", "against a dark backdrop"],
    "grey": ["on a grey background", "on grey", "against a grey backdrop"],
    "light": ["on a light background", "on white", "against a bright backdrop"],
    "noisy": ["on a noisy background", "on static noise", "against a grainy backdrop"],
    "gradient": ["on a gradient background", "on a fading backdrop", "against a gradient"],
}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}


def caption(attrs: dict[str, str], rng: random.Random, *, keep: float = 0.7, require: tuple[str, ...] = ()) -> str:
    """One caption for an object with named attributes (``colour``, ``texture``, ``shape``, ``size``,
    ``position``, ``background``); each attribute is kept with probability ``keep`` (at least two, and
    always those in ``require``)."""
    names = ["colour", "texture", "shape", "size", "position", "background"]
    kept = [n for n in names if rng.random() < keep or n in require]
    while len(kept) < 2:
        extra = rng.choice([n for n in names if n not in kept])
        kept.append(extra)
    texture = attrs["texture"]
    use_with = "texture" in kept and TEXTURE_WITH[texture] is not None and rng.random() < 0.5
    adjs: list[str] = []
    if "size" in kept:
        adjs.append(rng.choice(SIZE_WORDS[attrs["size"]]))
    if "colour" in kept:
        adjs.append(attrs["colour"])
    if "texture" in kept and not use_with:
        adjs.append(rng.choice(TEXTURE_ADJ[texture]))
    noun = attrs["shape"] if "shape" in kept else rng.choice(["thing", "figure", "item", "form", "shape", "object"])
    rng.shuffle(adjs) if rng.random() < 0.25 else None
    head = " ".join(adjs + [noun])
    tails: list[str] = []
    if use_with:
        tails.append(TEXTURE_WITH[texture])
    if "position" in kept:
        tails.append(rng.choice(POSITION_PHRASES[attrs["position"]]))
    if "background" in kept:
        tails.append(rng.choice(BACKGROUND_PHRASES[attrs["background"]]))
    rng.shuffle(tails)
    form = rng.random()
    if form < 0.45:
        return " ".join([rng.choice(["a", "one", "the"]), head] + tails)
    if form < 0.7:
        return " ".join([head] + tails)
    if form < 0.85:
        return " ".join(["there is a", head] + tails)
    return " ".join(tails + [rng.choice(["sits a", "lies a", "is a"]), head]) if tails else f"just a {head}"


def scene_attributes(scene: Scene, index: int, obj: int = 0) -> dict[str, str]:
    """Attribute words of object ``obj`` in image ``index`` of a scene batch."""
    return {
        "colour": COLOUR_WORDS[int(scene.colour[index, obj])],
        "texture": TEXTURES[int(scene.texture[index, obj])],
        "shape": SHAPES[int(scene.shape[index, obj])],
        "size": SIZES[int(scene.size[index, obj])],
        "position": POSITIONS[int(scene.position[index, obj])],
        "background": BACKGROUNDS[int(scene.background[index])],
    }


def referring_phrase(attrs: dict[str, str], *, with_texture: bool = True) -> str:
    """Deterministic referring phrase for segmentation, e.g. ``the red dotted circle``."""
    words = ["the", attrs["colour"]]
    if with_texture:
        words.append(TEXTURE_ADJ[attrs["texture"]][0])
    words.append(attrs["shape"])
    return " ".join(words)
