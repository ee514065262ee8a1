"""Prompts for medical masks: per-dataset wording (:data:`PROMPT_SPECS`), mask attributes (count, size, place,
colour) and the TuneVLSeg-style prompt ladder ``p0``..``p7`` (:func:`generate_prompts`)."""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PromptSpec:
    """How :func:`generate_prompts` words a dataset's prompts.

    Args:
        noun: the target class (``polyp``).
        context: appended to every prompt (``in the breast ultrasound image``), may be empty.
        descriptions: what the class is (``a growth of tissue...``), for p7..p9; none means keys p0..p6 only.
        colour: name the mean colour of the target (off for grey modalities such as ultrasound).
    """

    noun: str
    context: str = ""
    descriptions: tuple[str, ...] = ()
    colour: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def p1(self, *, empty: bool = False) -> str:
        """The class prompt p1 (``no <noun>`` for an empty mask), with the context."""
        ctx = f" {self.context}" if self.context else ""
        return f"{'no ' if empty else ''}{self.noun}{ctx}"


PROMPT_SPECS: dict[str, PromptSpec] = {
    "kvasir_seg_release": PromptSpec(
        noun="polyp",
        descriptions=("an abnormal growth of tissue on the colon lining", "a small bump rising from the bowel wall",
                      "a lump of tissue sticking out of the mucous membrane")),
    "busi_release": PromptSpec(noun="breast tumor", context="in the breast ultrasound image", colour=False),
}


_NUMBERS = ("no", "one", "two", "three", "four", "five")


SIZE_LIMITS = (0.05, 0.15)  # area fraction below which a target is small, medium (else large)


def _colour_name(rgb: np.ndarray) -> str:
    r, g, b = (float(x) / 255.0 for x in rgb)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if v < 0.2:
        return "black"
    if s < 0.2:
        return "white" if v > 0.75 else "grey"
    deg = h * 360.0
    if deg < 20 or deg >= 330:
        return "pink" if s < 0.5 and v > 0.6 else "red"
    if deg < 45:
        return "brown" if v < 0.6 else "orange"
    if deg < 70:
        return "yellow"
    if deg < 170:
        return "green"
    if deg < 260:
        return "blue"
    return "pink" if v > 0.6 and s < 0.5 else "purple"


def _place(cy: float, cx: float, h: int, w: int) -> str:
    row = ("top", "", "bottom")[min(2, int(3 * cy / h))]
    col = ("left", "", "right")[min(2, int(3 * cx / w))]
    return " ".join(x for x in (row, col) if x) or "center"


def mask_attributes(mask: np.ndarray, image: np.ndarray | None = None) -> dict:
    """Attributes of a boolean mask ``[H, W]`` (and optionally its RGB image ``[H, W, 3]``) that prompts name.

    - ``number``: connected components (8-connected) of at least 5 % of the largest one's area;
    - ``size``: foreground fraction of the image: ``small`` < 5 %, ``medium`` < 15 %, else ``large``;
    - ``shape`` of the largest component from its bounding box: elongated (aspect >= 1.5) is ``oval`` when it
      fills >= 65 % of the box, else ``irregular``; compact is ``square`` (fill >= 90 %), ``round`` (>= 65 %) or
      ``irregular``;
    - ``location``: the 3x3 cell (``top left`` .. ``center`` .. ``bottom right``) of each component's centroid;
    - ``colour``: the mean colour of the foreground, named from its hue, saturation and value.
    """
    from scipy import ndimage  # deferred: scipy is heavy (mask attributes only)

    h, w = mask.shape
    total = int(mask.sum())
    if total == 0:
        return {"number": 0, "size": "", "shape": "", "location": [], "colour": "", "bbox": None}
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    areas = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    keep = [i + 1 for i, a in enumerate(areas) if a >= 0.05 * areas.max()]
    frac = total / (h * w)
    size = "small" if frac < SIZE_LIMITS[0] else "medium" if frac < SIZE_LIMITS[1] else "large"
    big = int(np.argmax(areas)) + 1
    ys, xs = np.nonzero(labels == big)
    bh, bw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(ys) / float(bh * bw)
    aspect = max(bh, bw) / float(min(bh, bw))
    if aspect >= 1.5:
        shape = "oval" if fill >= 0.65 else "irregular"
    else:
        shape = "square" if fill >= 0.9 else "round" if fill >= 0.65 else "irregular"
    centres = ndimage.center_of_mass(mask, labels, keep)
    locations: list[str] = []
    for cy, cx in sorted(centres, key=lambda c: (c[1], c[0])):
        place = _place(cy, cx, h, w)
        if place not in locations:
            locations.append(place)
    colour = _colour_name(image[mask].mean(axis=0)) if image is not None else ""
    yy, xx = np.nonzero(mask)
    return {"number": len(keep), "size": size, "shape": shape, "location": locations, "colour": colour,
            "bbox": [int(xx.min()), int(yy.min()), int(xx.max()), int(yy.max())]}


def generate_prompts(attrs: dict, spec: PromptSpec, *, category: str = "") -> dict[str, str | list[str]]:
    """Prompts ``p0``..``p9`` in medvlsm's ladder, each adding one attribute of :func:`mask_attributes`.

    p0 empty; p1 the noun; p2 + shape; p3 + colour (or the category, e.g. BUSI's benign/malignant, when the
    spec names no colour); p4 + size; p5 + number; p6 + location (``located in ... of the image``); with
    descriptions, p7 ``<noun> which is <description>``, p8 p5's words + description, p9 p8 + location (lists,
    one per description). An empty mask gets ``no <noun>`` for every key but p0 (as medvlsm's BUSI normals).
    """
    ctx = f" {spec.context}" if spec.context else ""
    keys = 10 if spec.descriptions else 7
    if attrs["number"] == 0:
        return {"p0": "", **{f"p{k}": f"no {spec.noun}{ctx}" for k in range(1, keys)}}
    third = attrs["colour"] if spec.colour else category
    number = _NUMBERS[attrs["number"]] if attrs["number"] < len(_NUMBERS) else "several"
    words = [spec.noun]
    ladder: list[str] = []
    for word in (attrs["shape"], third, attrs["size"], number):
        if word:
            words.insert(0, word)
        ladder.append(" ".join(words))
    where = f"located in {', '.join(attrs['location'])} of the image"
    prompts: dict[str, str | list[str]] = {"p0": "", "p1": f"{spec.noun}{ctx}"}
    for k, text in enumerate(ladder, start=2):
        prompts[f"p{k}"] = f"{text}{ctx}"
    prompts["p6"] = f"{ladder[-1]}{ctx}, {where}"
    if spec.descriptions:
        prompts["p7"] = [f"{spec.noun} which is {d}{ctx}" for d in spec.descriptions]
        prompts["p8"] = [f"{ladder[-1]} which is {d}{ctx}" for d in spec.descriptions]
        prompts["p9"] = [f"{ladder[-1]} which is {d}{ctx} {where}" for d in spec.descriptions]
    return prompts
