"""Candidate toy classification datasets of the second-generation world: classes are named kinds (nouns).

In the first world's datasets every class-name word (``red``, ``dotted``, ``shape``) appears in both halves of
a base-to-new split. Here, as in a real benchmark (Oxford Flowers, Food-101, DTD), each class is a *named kind*
of :mod:`vlprompt.data.toyworld.lexicon` (``lemon``, ``sapphire``, ``zellige``): the base and the new half share
no class-name word, and the names' meaning comes only from what pretraining taught the second toy CLIP
(``vlprompt-toyclip2``). They are meant for that model; with the first toy CLIP the names mean nothing.

Each dataset shows one species per class (its shape, main colour, accent colour and texture fixed; size,
position and background random), in the dataset's own photography (``native_style``), and fixes a pseudo-random
label order stratified by caption tier (:func:`tier_stratified_order`), so both halves of a base-to-new split
hold common, regular and rarely-named kinds in equal shares.

They form the second-generation toy suite of issue 26, registered by name (``configs/datasets/toy_orchard.yaml``
...); every candidate is kept whatever the learners score on it (no learner result selects a dataset), and each
one's ``native_style`` was set once from the final toy CLIP's zero-shot table (docs/toyclip2-design.md).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

import torch

from vlprompt.data.toyworld.datasets import ToyClassification, stable_seed
from vlprompt.data.toyworld.lexicon import SPECIES, SPECIES_BY_NAME, Species, species_of
from vlprompt.data.toyworld.render import COLOURS, SHAPES, TEXTURES, render, sample_scene

T = TypeVar("T")


def species_images(species: Species, n: int, *, generator: torch.Generator, style: str) -> torch.Tensor:
    """``n`` renderings ``[n, 3, S, S]`` (float in [0, 1]) of one species: its look fixed, size, position and
    background random."""
    colours = list(COLOURS)
    fixed = {
        "shape": torch.full((n,), SHAPES.index(species.shape)),
        "colour": torch.full((n,), colours.index(species.colour)),
        "texture": torch.full((n,), TEXTURES.index(species.texture)),
    }
    scene = sample_scene(n, generator=generator, fixed=fixed)
    accent = colours.index(species.accent) if species.accent is not None else colours.index(species.colour)
    scene.accent = torch.full((n, 1), accent)
    images, _ = render(scene, generator=generator, style=style)
    return images


def pick_species(per_family: int, seed_text: str) -> list[Species]:
    """``per_family`` species of every family, chosen by a seeded shuffle of each family's table order."""
    out: list[Species] = []
    for family in ("fruit", "gem", "tile", "flag"):
        members = species_of(family)
        if not 1 <= per_family <= len(members):
            raise ValueError(f"per_family={per_family} must lie in [1, {len(members)}] (species per family)")
        random.Random(stable_seed(seed_text, family)).shuffle(members)
        out += members[:per_family]
    return out


def tier_stratified_order(items: Sequence[T], tiers: Sequence[str], seed: int) -> list[T]:
    """A seeded label order whose base and new halves (:func:`~vlprompt.protocols.base2new.split_base_new`: the
    first ``ceil(C/2)`` labels are base) each hold half of every caption tier's kinds.

    Each tier's items are shuffled and dealt alternately to the two halves, starting with the shorter half (the
    base half when they are even), so the base half is never shorter than the new half nor longer by more than
    one: it holds ``ceil(C/2)`` items, as :func:`~vlprompt.protocols.base2new.split_base_new` expects. Each half
    is then shuffled. Without
    it a seeded shuffle can put every rarely-named kind in one half (one half's zero-shot 100 %, the other's far
    lower), which no real base-to-new split is designed to do.
    """
    if len(items) != len(tiers):
        raise ValueError(f"{len(items)} items but {len(tiers)} tiers; give one tier per item")
    rng = random.Random(seed)
    halves: tuple[list[T], list[T]] = ([], [])
    for tier in sorted(set(tiers)):
        group = [item for item, t in zip(items, tiers) if t == tier]
        rng.shuffle(group)
        first = 0 if len(halves[0]) <= len(halves[1]) else 1
        for k, item in enumerate(group):
            halves[(first + k) % 2].append(item)
    base, new = halves
    rng.shuffle(base)
    rng.shuffle(new)
    return base + new


class ToySpeciesClassification(ToyClassification):
    """A second-world toy dataset: one class per named species (module docstring).

    Subclasses set ``spec``, ``native_style`` and :meth:`species`; ``use_synonyms`` names the classes by their
    rarer synonyms (``citron`` for ``lemon``).
    """

    use_synonyms: bool = False

    def species(self) -> list[Species]:
        raise NotImplementedError

    def class_definitions(self) -> list[tuple[str, dict[str, str]]]:
        members = self.species()
        names = [s.synonym if self.use_synonyms else s.name for s in members]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.spec}: class names repeat: {names}")
        defs = [(name, {"species": s.name, **s.attributes()}) for name, s in zip(names, members)]
        return tier_stratified_order(defs, [s.tier for s in members], stable_seed(self.spec, "label-order"))

    def render_class(self, attrs: dict[str, str], n: int, *, generator: torch.Generator, style: str) -> torch.Tensor:
        """``n`` images of the class's named kind (``attrs["species"]``), from :func:`species_images`."""
        return species_images(SPECIES_BY_NAME[attrs["species"]], n, generator=generator, style=style)

    def identity(self) -> dict:
        out = super().identity()
        out["world"] = "toyclip2"
        return out


class ToyOrchard(ToySpeciesClassification):
    """Second world: the 16 fruits (circles, ``lemon``, ``quince``...), clean photographs."""

    spec = "toy_orchard"
    native_style = "clean"

    def species(self) -> list[Species]:
        return species_of("fruit")


class ToyJewellery(ToySpeciesClassification):
    """Second world: the 16 gems (diamonds, ``ruby``, ``beryl``...), clean photographs."""

    spec = "toy_jewellery"
    native_style = "clean"

    def species(self) -> list[Species]:
        return species_of("gem")


class ToyMosaics(ToySpeciesClassification):
    """Second world: the 16 tiles (squares, ``zellige``, ``terrazzo``...), clean photographs."""

    spec = "toy_mosaics"
    native_style = "clean"

    def species(self) -> list[Species]:
        return species_of("tile")


class ToyRegatta(ToySpeciesClassification):
    """Second world: the 16 flags (triangles, ``burgee``, ``spinnaker``...), clean photographs."""

    spec = "toy_regatta"
    native_style = "clean"

    def species(self) -> list[Species]:
        return species_of("flag")


class ToyBazaar(ToySpeciesClassification):
    """Second world: 24 kinds, 6 of each family (coarse and fine distinctions), out of focus."""

    spec = "toy_bazaar"
    native_style = "blur"

    def species(self) -> list[Species]:
        return pick_species(6, "toy_bazaar")


class ToyCabinet(ToySpeciesClassification):
    """Second world: 16 kinds, 4 of each family, named by their rarer synonyms (``citron``), clean photographs."""

    spec = "toy_cabinet"
    native_style = "clean"
    use_synonyms = True

    def species(self) -> list[Species]:
        return pick_species(4, "toy_cabinet")


class ToyEmporium(ToySpeciesClassification):
    """Second world: all 64 named kinds, 16 of each family, clean photographs.

    Added after the six 16- and 24-kind datasets (docs/toyclip2-design.md, "toy_emporium"): with 8 kinds a half,
    each kind is worth 12.5 points of a half's accuracy, so one kind more or less read under a learnt context moves
    a seed's score by that much. Real benchmarks have 37 to 1000 classes; 32 a half is the world's largest.
    """

    spec = "toy_emporium"
    native_style = "clean"

    def species(self) -> list[Species]:
        return pick_species(16, "toy_emporium")


#: the datasets of the second-generation suite, by name
SPECIES_DATASETS: dict[str, type[ToySpeciesClassification]] = {
    c.spec: c for c in (ToyOrchard, ToyJewellery, ToyMosaics, ToyRegatta, ToyBazaar, ToyCabinet, ToyEmporium)
}


def species_scenes(n: int, seed: int, style: str = "clean",
                   members: Sequence[Species] = SPECIES) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of species drawn uniformly from ``members`` (images ``[n, 3, S, S]``, the index of each
    image's species in ``members`` ``[n]``): the held-out probe of the pretraining monitor and the report."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, len(members), (n,), generator=g)
    images = torch.empty(n, 3, 48, 48)
    for k, s in enumerate(members):
        sel = torch.nonzero(target == k).flatten()
        if len(sel):
            images[sel] = species_images(s, len(sel), generator=g, style=style)
    return images, target
