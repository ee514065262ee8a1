"""Vectorised procedural renderer of the toy vision-language world.

Every image holds one or more objects on a background. Each object has compositional attributes
(colour, texture, shape, size, position); the background has a type. Rendering is batched torch
arithmetic on coordinate grids, deterministic for a given ``torch.Generator``, and returns per-object
masks so the same world serves classification, captioning and referring segmentation.

Shapes of the main tensors: images ``[B, 3, S, S]`` float in ``[0, 1]``; masks ``[B, N, S, S]`` bool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_SIZE = 48

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 30),
    "green": (40, 170, 50),
    "teal": (20, 130, 130),
    "cyan": (60, 220, 235),
    "blue": (35, 60, 220),
    "purple": (130, 40, 190),
    "pink": (245, 130, 190),
    "brown": (125, 75, 35),
}
TEXTURES: tuple[str, ...] = ("solid", "horizontal stripes", "vertical stripes", "checkered", "dotted", "hollow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
BACKGROUNDS: tuple[str, ...] = ("dark", "grey", "light", "noisy", "gradient")
STYLES: tuple[str, ...] = ("clean", "noise", "low_contrast", "blur", "sketch")

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "texture": TEXTURES,
    "shape": SHAPES,
    "size": SIZES,
    "position": POSITIONS,
}

_COLOUR_TABLE = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0
_RADIUS = {"small": (5.0, 6.5), "large": (10.0, 12.0)}
_GRID = (12.0, 24.0, 36.0)


@dataclass
class Scene:
    """Attribute indices of a batch of scenes.

    Object attributes are ``[B, N]`` long tensors (N objects per image, drawn in order, later on top);
    ``background`` is ``[B]``. ``present`` ``[B, N]`` marks the objects that exist (others are skipped).
    ``accent`` (optional ``[B, N]`` colour indices, or ``None``) paints the "off" pixels of a patterned
    texture (stripes, checks, dots) in a second colour; ``None`` keeps the first world's dim shade of the
    main colour (images identical to scenes without it). The second-generation world (``lexicon.py``) sets it.
    """

    colour: torch.Tensor
    texture: torch.Tensor
    shape: torch.Tensor
    size: torch.Tensor
    position: torch.Tensor
    background: torch.Tensor
    present: torch.Tensor
    accent: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.colour.shape[0])

    @property
    def num_objects(self) -> int:
        return int(self.colour.shape[1])


def sample_scene(
    batch_size: int,
    *,
    generator: torch.Generator,
    num_objects: int = 1,
    fixed: dict[str, torch.Tensor] | None = None,
) -> Scene:
    """Draw uniform attributes for ``batch_size`` scenes; ``fixed`` overrides attributes of object 0.

    ``fixed`` maps an attribute name (``colour``, ``texture``, ``shape``, ``size``, ``position``,
    ``background``) to a ``[B]`` long tensor. With several objects, positions are distinct per image.
    """
    fixed = fixed or {}

    def draw(name: str, n: int) -> torch.Tensor:
        return torch.randint(0, n, (batch_size, num_objects), generator=generator)

    attrs = {name: draw(name, len(values)) for name, values in ATTRIBUTES.items()}
    if num_objects > 1:
        def distinct(name: str, n: int) -> torch.Tensor:
            # distinct values per image (a fixed value of object 0 sorts first), so a colour phrase
            # refers to exactly one object and objects never share a grid cell
            scores = torch.rand(batch_size, n, generator=generator)
            if name in fixed:
                value = torch.as_tensor(fixed[name], dtype=torch.long).expand(batch_size)
                scores.scatter_(1, value[:, None], -1.0)
            return torch.argsort(scores, dim=1)[:, :num_objects]

        attrs["position"] = distinct("position", len(POSITIONS))
        attrs["colour"] = distinct("colour", len(COLOURS))
        attrs["size"] = torch.zeros_like(attrs["size"])  # small objects never overlap on the grid
    background = torch.randint(0, len(BACKGROUNDS), (batch_size,), generator=generator)
    for name, value in fixed.items():
        value = torch.as_tensor(value, dtype=torch.long).expand(batch_size)
        if name == "background":
            background = value.clone()
        elif name in attrs:
            attrs[name][:, 0] = value
        else:
            raise KeyError(f"unknown toy-world attribute {name!r}; known: {sorted(ATTRIBUTES)} and 'background'")
    present = torch.ones(batch_size, num_objects, dtype=torch.bool)
    return Scene(background=background, present=present, **attrs)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return yy, xx


def _shape_masks(
    shape: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, radius: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filled mask and a signed 'inside distance' for each object. Inputs ``[M]``; outputs ``[M, S, S]``."""
    yy, xx = _grid(size)
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    r = radius[:, None, None]
    circle = r - torch.sqrt(dy**2 + dx**2)
    square = 0.85 * r - torch.maximum(dy.abs(), dx.abs())
    diamond = r - (dy.abs() + dx.abs())
    # upward triangle: base at cy + 0.8r, apex at cy - r
    base = 0.8 * r - dy
    left = (dx * 1.0 + (dy + r) * 0.55)  # distance-like to left edge
    right = (-dx * 1.0 + (dy + r) * 0.55)
    triangle = torch.minimum(base, torch.minimum(left, right) * 0.87)
    inside = torch.stack([circle, square, triangle, diamond], dim=1)  # [M, 4, S, S]
    depth = inside.gather(1, shape[:, None, None, None].expand(-1, 1, size, size)).squeeze(1)
    return depth > 0, depth


def _texture_on(texture: torch.Tensor, depth: torch.Tensor, size: int) -> torch.Tensor:
    """Whether each pixel of an object shows the bright ('on') colour. ``[M] -> [M, S, S]``."""
    yy, xx = _grid(size)
    yi, xi = (yy - 0.5).long(), (xx - 0.5).long()
    patterns = torch.stack(
        [
            torch.ones_like(yy, dtype=torch.bool),  # solid
            (yi // 2) % 2 == 0,  # horizontal stripes
            (xi // 2) % 2 == 0,  # vertical stripes
            ((yi // 3) + (xi // 3)) % 2 == 0,  # checkered
            ((yi % 4) < 2) & ((xi % 4) < 2),  # dotted
        ]
    )  # [5, S, S]
    on = torch.ones(texture.shape[0], size, size, dtype=torch.bool)
    flat = texture < 5
    on[flat] = patterns[texture[flat]]
    hollow = texture == 5
    if hollow.any():
        on[hollow] = depth[hollow] < 2.2  # outline ring
    return on


def _backgrounds(background: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    b = background.shape[0]
    img = torch.empty(b, 3, size, size)
    tint = torch.rand(b, 3, 1, 1, generator=generator) * 0.08
    levels = torch.tensor([0.06, 0.45, 0.92])
    yy, _ = _grid(size)
    noise = torch.rand(b, 1, size, size, generator=generator)
    for k in range(3):
        sel = background == k
        img[sel] = levels[k] + tint[sel] - 0.04
    sel = background == 3
    img[sel] = (0.2 + 0.6 * noise[sel]).expand(-1, 3, -1, -1) + tint[sel] - 0.04
    sel = background == 4
    ramp = (yy / size)[None, None]
    img[sel] = (0.05 + 0.85 * ramp).expand(int(sel.sum()), 3, -1, -1) + tint[sel] - 0.04
    return img.clamp(0, 1)


def _apply_style(
    images: torch.Tensor, edges: torch.Tensor, edge_colour: torch.Tensor, style: str, generator: torch.Generator
) -> torch.Tensor:
    if style == "clean":
        return images
    if style == "noise":
        return (images + 0.18 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    if style == "low_contrast":
        return 0.5 + 0.3 * (images - 0.5)
    if style == "blur":
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        k = (k[:, None] * k[None, :]) / 256.0
        weight = k.expand(3, 1, 5, 5).contiguous()
        return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), weight, groups=3)
    if style == "sketch":
        out = torch.ones_like(images)
        return torch.where(edges[:, None], edge_colour, out)
    raise ValueError(f"unknown toy-world style {style!r}; known: {list(STYLES)}")


def render(
    scene: Scene,
    *,
    generator: torch.Generator,
    style: str | Sequence[str] = "clean",
    image_size: int = IMAGE_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a batch of scenes.

    ``style`` is one of :data:`STYLES` for the whole batch, or one per image (a sequence of ``B`` names; the
    images of each style are styled together, in :data:`STYLES` order, so one name for every image gives
    the same images as that name alone).

    Returns ``images`` ``[B, 3, S, S]`` in ``[0, 1]`` and ``masks`` ``[B, N, S, S]`` (visible pixels of
    each object, after later objects are drawn on top).
    """
    per_image = not isinstance(style, str)
    names = list(style) if per_image else [style]
    unknown = sorted({n for n in names if n not in STYLES})
    if unknown:
        raise ValueError(f"unknown toy-world style {unknown[0]!r}; known: {list(STYLES)}")
    if per_image and len(names) != scene.batch_size:
        raise ValueError(f"style: {len(names)} names for a batch of {scene.batch_size} scenes; give one per image "
                         "or one name for all")
    b, n, s = scene.batch_size, scene.num_objects, image_size
    scale = s / IMAGE_SIZE
    images = _backgrounds(scene.background, s, generator)
    masks = torch.zeros(b, n, s, s, dtype=torch.bool)
    edges = torch.zeros(b, s, s, dtype=torch.bool)
    edge_colour = torch.zeros(b, 3, s, s)
    grid = torch.tensor(_GRID)
    for j in range(n):
        size_idx = scene.size[:, j]
        lo = torch.tensor([_RADIUS[v][0] for v in SIZES])[size_idx]
        hi = torch.tensor([_RADIUS[v][1] for v in SIZES])[size_idx]
        radius = (lo + (hi - lo) * torch.rand(b, generator=generator)) * scale
        pos = scene.position[:, j]
        jitter = (torch.rand(b, 2, generator=generator) - 0.5) * 4.0
        cy = (grid[pos // 3] + jitter[:, 0]) * scale
        cx = (grid[pos % 3] + jitter[:, 1]) * scale
        filled, depth = _shape_masks(scene.shape[:, j], cy, cx, radius, s)
        filled &= scene.present[:, j, None, None]
        on = _texture_on(scene.texture[:, j], depth, s)
        colour = _COLOUR_TABLE[scene.colour[:, j]]
        colour = (colour + (torch.rand(b, 3, generator=generator) - 0.5) * 0.1).clamp(0, 1)
        bright = colour[:, :, None, None].expand(-1, -1, s, s)
        dim = 0.3 * bright
        if scene.accent is not None:  # two-tone objects: the pattern's "off" pixels in the accent colour
            accent = _COLOUR_TABLE[scene.accent[:, j]][:, :, None, None].expand(-1, -1, s, s)
            patterned = ((scene.texture[:, j] >= 1) & (scene.texture[:, j] <= 4))[:, None, None, None]
            dim = torch.where(patterned, accent, dim)
        hollow = (scene.texture[:, j] == 5)[:, None, None, None]
        fill = torch.where(on[:, None], bright, torch.where(hollow, images, dim))
        images = torch.where(filled[:, None], fill, images)
        masks[:, :j] &= ~filled[:, None]
        masks[:, j] = filled
        # sketch edges: object boundary and texture transitions
        pattern = torch.where(filled, on.float() + 1.0, torch.zeros_like(depth))
        pad = F.pad(pattern[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
        change = (pad[:, 1:-1, 2:] != pattern) | (pad[:, 2:, 1:-1] != pattern)
        obj_edges = change & (filled | F.max_pool2d(filled[:, None].float(), 3, 1, 1)[:, 0].bool())
        edges = torch.where(filled, obj_edges, edges | obj_edges)
        edge_colour = torch.where(obj_edges[:, None], bright, edge_colour)
    if not per_image:
        images = _apply_style(images, edges, edge_colour, names[0], generator)
    else:
        styled = images.clone()
        for name in STYLES:
            idx = torch.tensor([k for k, n in enumerate(names) if n == name], dtype=torch.long)
            if len(idx):
                styled[idx] = _apply_style(images[idx], edges[idx], edge_colour[idx], name, generator)
        images = styled
    return images.clamp(0, 1), masks
