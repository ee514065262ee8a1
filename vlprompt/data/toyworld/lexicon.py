"""The second-generation toy world's lexicon: named kinds of objects in a hierarchy, with synonyms.

The first toy world names only attributes (``red dotted shape``), so every class-name word of a toy dataset
appears in both halves of a base-to-new split and whatever a learned context does to those words carries over
to the new half. Real class names are *nouns* whose meaning CLIP learned from captions: different words for the
base and the new classes, grounded through synonyms, hypernyms and descriptions. This module gives the toy world
such nouns:

- **families** (the hypernym level): every shape is a family of things, ``circle`` -> ``fruit``, ``diamond`` ->
  ``gem``, ``square`` -> ``tile``, ``triangle`` -> ``flag``;
- **species** (the class level): 16 named kinds per family, each a fixed *two-tone* look (main colour, accent
  colour of the pattern, fill texture; size, position and background vary), with a primary name and a rarer
  synonym (``lemon`` / ``citron``), and a caption frequency tier (``common``, ``regular``, ``rare``: a long tail
  of how often captions show the kind).

Species of one family are fine-grained: every species has a sibling that differs in one of colour, accent or
texture, and no two species of a 50/50 pattern (stripes, checks) are each other's colours swapped. The table was
drawn once by a seeded script (``docs/toyclip2-design.md``) and is written out here, so it is data, not code.

:func:`sample_species_scene` draws pretraining scenes: a share of named species (weighted by tier) and the rest
free two-tone objects, every patterned object with an accent colour (``Scene.accent``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlprompt.data.toyworld.render import COLOURS, SHAPES, TEXTURES, Scene, sample_scene

#: family word of each shape (the hypernym of every species of that shape)
FAMILIES: dict[str, str] = {"circle": "fruit", "diamond": "gem", "square": "tile", "triangle": "flag"}
#: a rarer word for each family
FAMILY_SYNONYMS: dict[str, str] = {"fruit": "produce", "gem": "jewel", "tile": "slab", "flag": "pennant"}
#: textures whose "off" pixels show the accent colour (the others are one-tone)
PATTERNED: tuple[str, ...] = ("horizontal stripes", "vertical stripes", "checkered", "dotted")
#: caption frequency of each tier (relative weight of a species when pretraining draws a named kind)
TIER_WEIGHTS: dict[str, float] = {"common": 4.0, "regular": 2.0, "rare": 1.0}


@dataclass(frozen=True)
class Species:
    """A named kind: ``name`` (class name), ``synonym``, ``family`` (a value of :data:`FAMILIES`), its look
    (``colour``, ``accent`` or ``None`` for one-tone textures, ``texture``) and its caption ``tier``."""

    name: str
    synonym: str
    family: str
    colour: str
    accent: str | None
    texture: str
    tier: str

    @property
    def shape(self) -> str:
        return SHAPE_OF_FAMILY[self.family]

    def attributes(self) -> dict[str, str]:
        """The attributes the species fixes (``shape``, ``colour``, ``texture`` and, if patterned, ``accent``)."""
        out = {"shape": self.shape, "colour": self.colour, "texture": self.texture}
        if self.accent is not None:
            out["accent"] = self.accent
        return out


SHAPE_OF_FAMILY: dict[str, str] = {family: shape for shape, family in FAMILIES.items()}

SPECIES: tuple[Species, ...] = (
    # fruits (circles)
    Species('apple', 'pippin', 'fruit', 'purple', None, 'solid', 'common'),
    Species('lychee', 'rambutan', 'fruit', 'blue', None, 'solid', 'rare'),
    Species('kiwi', 'kiwano', 'fruit', 'orange', None, 'hollow', 'regular'),
    Species('fig', 'sycamore', 'fruit', 'green', None, 'hollow', 'common'),
    Species('quince', 'membrillo', 'fruit', 'brown', 'red', 'horizontal stripes', 'regular'),
    Species('guava', 'guayaba', 'fruit', 'pink', 'red', 'horizontal stripes', 'rare'),
    Species('peach', 'nectarine', 'fruit', 'blue', 'red', 'horizontal stripes', 'regular'),
    Species('mango', 'alphonso', 'fruit', 'orange', 'pink', 'vertical stripes', 'rare'),
    Species('papaya', 'pawpaw', 'fruit', 'pink', 'teal', 'vertical stripes', 'common'),
    Species('grape', 'muscat', 'fruit', 'red', 'pink', 'vertical stripes', 'rare'),
    Species('plum', 'damson', 'fruit', 'pink', 'blue', 'checkered', 'regular'),
    Species('lemon', 'citron', 'fruit', 'teal', 'blue', 'checkered', 'common'),
    Species('apricot', 'mirabelle', 'fruit', 'pink', 'cyan', 'checkered', 'common'),
    Species('lime', 'calamansi', 'fruit', 'blue', 'cyan', 'dotted', 'common'),
    Species('cherry', 'morello', 'fruit', 'blue', 'brown', 'dotted', 'rare'),
    Species('melon', 'cantaloupe', 'fruit', 'pink', 'teal', 'dotted', 'regular'),
    # gems (diamonds)
    Species('zircon', 'jacinth', 'gem', 'red', None, 'solid', 'rare'),
    Species('agate', 'chalcedony', 'gem', 'yellow', None, 'solid', 'regular'),
    Species('amber', 'succinite', 'gem', 'red', None, 'hollow', 'rare'),
    Species('spinel', 'balas', 'gem', 'teal', None, 'hollow', 'common'),
    Species('pearl', 'margarite', 'gem', 'brown', 'orange', 'horizontal stripes', 'common'),
    Species('opal', 'girasol', 'gem', 'brown', 'yellow', 'horizontal stripes', 'regular'),
    Species('quartz', 'rhinestone', 'gem', 'orange', 'yellow', 'horizontal stripes', 'regular'),
    Species('beryl', 'aquamarine', 'gem', 'cyan', 'yellow', 'vertical stripes', 'rare'),
    Species('jasper', 'bloodstone', 'gem', 'green', 'purple', 'vertical stripes', 'common'),
    Species('sapphire', 'corundum', 'gem', 'cyan', 'orange', 'vertical stripes', 'regular'),
    Species('ruby', 'carbuncle', 'gem', 'blue', 'red', 'checkered', 'common'),
    Species('topaz', 'citrine', 'gem', 'blue', 'cyan', 'checkered', 'common'),
    Species('emerald', 'smaragd', 'gem', 'pink', 'red', 'checkered', 'rare'),
    Species('jade', 'nephrite', 'gem', 'green', 'cyan', 'dotted', 'common'),
    Species('garnet', 'almandine', 'gem', 'green', 'purple', 'dotted', 'rare'),
    Species('onyx', 'sardonyx', 'gem', 'pink', 'purple', 'dotted', 'regular'),
    # tiles (squares)
    Species('parquet', 'marquetry', 'tile', 'teal', None, 'solid', 'common'),
    Species('majolica', 'faience', 'tile', 'yellow', None, 'solid', 'regular'),
    Species('slate', 'shale', 'tile', 'orange', None, 'hollow', 'common'),
    Species('travertine', 'tufa', 'tile', 'yellow', None, 'hollow', 'rare'),
    Species('delft', 'delftware', 'tile', 'blue', 'red', 'horizontal stripes', 'regular'),
    Species('linoleum', 'lino', 'tile', 'pink', 'red', 'horizontal stripes', 'common'),
    Species('marble', 'carrara', 'tile', 'purple', 'red', 'horizontal stripes', 'common'),
    Species('cobble', 'sett', 'tile', 'red', 'green', 'vertical stripes', 'regular'),
    Species('granite', 'gneiss', 'tile', 'green', 'cyan', 'vertical stripes', 'regular'),
    Species('terrazzo', 'granito', 'tile', 'purple', 'green', 'vertical stripes', 'common'),
    Species('saltillo', 'terracotta', 'tile', 'purple', 'brown', 'checkered', 'rare'),
    Species('azulejo', 'talavera', 'tile', 'orange', 'brown', 'checkered', 'rare'),
    Species('flagstone', 'paver', 'tile', 'purple', 'red', 'checkered', 'regular'),
    Species('encaustic', 'cement', 'tile', 'green', 'yellow', 'dotted', 'rare'),
    Species('zellige', 'zillij', 'tile', 'blue', 'yellow', 'dotted', 'common'),
    Species('ceramic', 'porcelain', 'tile', 'green', 'cyan', 'dotted', 'rare'),
    # flags (triangles)
    Species('banner', 'standard', 'flag', 'purple', None, 'solid', 'rare'),
    Species('kite', 'delta', 'flag', 'teal', None, 'solid', 'rare'),
    Species('mizzen', 'lateen', 'flag', 'pink', None, 'hollow', 'rare'),
    Species('spinnaker', 'genoa', 'flag', 'cyan', None, 'hollow', 'regular'),
    Species('wimple', 'favor', 'flag', 'blue', 'cyan', 'horizontal stripes', 'rare'),
    Species('windsock', 'drogue', 'flag', 'teal', 'purple', 'horizontal stripes', 'common'),
    Species('gonfalon', 'labarum', 'flag', 'teal', 'cyan', 'horizontal stripes', 'rare'),
    Species('bunting', 'garland', 'flag', 'purple', 'blue', 'vertical stripes', 'regular'),
    Species('pinion', 'wing', 'flag', 'blue', 'cyan', 'vertical stripes', 'common'),
    Species('tabard', 'cloak', 'flag', 'orange', 'blue', 'vertical stripes', 'regular'),
    Species('streamer', 'ribbon', 'flag', 'pink', 'cyan', 'checkered', 'common'),
    Species('burgee', 'guidon', 'flag', 'brown', 'cyan', 'checkered', 'common'),
    Species('sail', 'jib', 'flag', 'green', 'brown', 'checkered', 'common'),
    Species('semaphore', 'signal', 'flag', 'green', 'brown', 'dotted', 'regular'),
    Species('oriflamme', 'vexillum', 'flag', 'yellow', 'cyan', 'dotted', 'common'),
    Species('ensign', 'jack', 'flag', 'green', 'cyan', 'dotted', 'regular'),
)

#: species by primary name
SPECIES_BY_NAME: dict[str, Species] = {s.name: s for s in SPECIES}


def species_of(family: str) -> list[Species]:
    """The species of one family, in table order; an unknown family names the known ones."""
    if family not in SHAPE_OF_FAMILY:
        raise KeyError(f"unknown toy-world family {family!r}; known: {sorted(SHAPE_OF_FAMILY)}")
    return [s for s in SPECIES if s.family == family]


def look_key(colour: str, accent: str | None, texture: str, shape: str) -> tuple[str, str | None, str, str]:
    """The key of a look in :data:`SPECIES_BY_LOOK` (the accent only counts on patterned textures)."""
    return (colour, accent if texture in PATTERNED else None, texture, shape)


#: species by look (colour, accent, texture, shape): which free objects happen to be a named kind
SPECIES_BY_LOOK: dict[tuple[str, str | None, str, str], Species] = {
    look_key(s.colour, s.accent, s.texture, s.shape): s for s in SPECIES
}


def sample_species_scene(
    batch_size: int, *, generator: torch.Generator, species_fraction: float = 0.6,
) -> tuple[Scene, list[Species | None]]:
    """One-object two-tone scenes: a ``species_fraction`` share show a named species (drawn by tier weight),
    the rest a free object (uniform attributes, accent uniform among the other colours).

    Returns the scene (``accent`` set) and, per image, the species it shows or ``None``. A free object whose
    look equals a species' look *is* that species (it is reported, so its captions may name it).
    """
    if not 0.0 <= species_fraction <= 1.0:
        raise ValueError(f"species_fraction={species_fraction!r} must lie in [0, 1]")
    scene = sample_scene(batch_size, generator=generator)
    colours = list(COLOURS)
    offset = torch.randint(1, len(colours), (batch_size,), generator=generator)
    named = torch.rand(batch_size, generator=generator) < species_fraction
    weights = torch.tensor([TIER_WEIGHTS[s.tier] for s in SPECIES])
    pick = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    for i in torch.nonzero(named).flatten().tolist():
        s = SPECIES[int(pick[i])]
        scene.colour[i, 0] = colours.index(s.colour)
        scene.texture[i, 0] = TEXTURES.index(s.texture)
        scene.shape[i, 0] = SHAPES.index(s.shape)
    # accent: uniform over the colours other than the main one, or the named kind's own
    accent = (scene.colour[:, 0] + offset) % len(colours)
    for i in torch.nonzero(named).flatten().tolist():
        if SPECIES[int(pick[i])].accent is not None:
            accent[i] = colours.index(str(SPECIES[int(pick[i])].accent))
    scene.accent = accent[:, None].clone()
    return scene, [species_in(scene, i) for i in range(batch_size)]


def species_in(scene: Scene, index: int) -> Species | None:
    """The species object 0 of image ``index`` shows, or ``None`` (a free object)."""
    colours = list(COLOURS)
    accent = colours[int(scene.accent[index, 0])] if scene.accent is not None else None
    key = look_key(colours[int(scene.colour[index, 0])], accent, TEXTURES[int(scene.texture[index, 0])],
                   SHAPES[int(scene.shape[index, 0])])
    return SPECIES_BY_LOOK.get(key)
