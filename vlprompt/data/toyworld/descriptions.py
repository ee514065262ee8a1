"""Class descriptions for the toy datasets: a small stand-in for the LLM-written descriptions that methods such as
CoPrompt (``descriptions:``) read as a JSON file ``{class name: [sentences]}``.

No language model is involved, and the result is deterministic:

- a first-world class (``blue dotted shape``) gets toy-world captions
  (:func:`~vlprompt.data.toyworld.captions.caption`) of an object that has the class's fixed attributes (always
  mentioned) and randomly drawn values for the others, as a language model describes what a class typically looks
  like (:func:`class_descriptions`);
- a second-world class, a named kind (``lemon``, or its synonym ``citron`` where a dataset names classes so), gets
  definitions in the second world's caption grammar: the class name and the look its species has (main colour,
  accent, texture, family word), with randomly drawn size, position and background phrases
  (``lemon, a teal fruit with blue checks on grey.``; :func:`species_descriptions`). They say what the name
  means, as an LLM's description of "lemon" does; the second toy CLIP was pretrained on such definitions among its
  captions (:func:`~vlprompt.data.toyworld.captions2.caption2`).

The shipped file ``configs/learners/coprompt/toy_descriptions.json`` is :func:`toy_descriptions` for every toy
classification dataset of both worlds (the keys do not collide: first-world names are attribute phrases, second-world
names are nouns), written by::

    python -c "from vlprompt.data.toyworld.descriptions import write_toy_descriptions as w; \\
w('configs/learners/coprompt/toy_descriptions.json')"

and ``tests/test_coprompt.py`` checks that it still equals a fresh generation.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from vlprompt.data.toyworld.captions import BACKGROUND_PHRASES, POSITION_PHRASES, caption
from vlprompt.data.toyworld.captions2 import indefinite_article, look_phrase
from vlprompt.data.toyworld.datasets import TOY_DATASETS, stable_seed
from vlprompt.data.toyworld.lexicon import FAMILY_SYNONYMS, SPECIES_BY_NAME, Species
from vlprompt.data.toyworld.render import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES
from vlprompt.data.toyworld.species import SPECIES_DATASETS

#: every attribute a caption may mention, with its vocabulary
VOCABULARY = {"colour": tuple(COLOURS), "texture": TEXTURES, "shape": SHAPES, "size": SIZES, "position": POSITIONS,
              "background": BACKGROUNDS}


def class_descriptions(name: str, fixed: dict[str, str], n: int = 10) -> list[str]:
    """``n`` distinct-as-possible sentences describing class ``name`` whose objects have the ``fixed`` attributes."""
    rng = random.Random(stable_seed("toy-descriptions", name))
    out: list[str] = []
    for _ in range(n * 5):
        attrs = {key: fixed.get(key, rng.choice(values)) for key, values in VOCABULARY.items()}
        sentence = caption(attrs, rng, keep=0.4, require=tuple(fixed)) + "."
        if sentence not in out:
            out.append(sentence)
        if len(out) == n:
            break
    return out


def species_descriptions(name: str, species: Species, n: int = 10) -> list[str]:
    """``n`` distinct-as-possible definitions of the named kind ``species`` under its class name ``name``.

    Each is ``"{name}, a {look}"`` or ``"a {name}: {look}"`` (the definition forms of the second world's captions),
    where the look states the species' main colour, texture and accent around its family word (a quarter of the
    time the family's synonym), with a size word 40 % of the time; a position and a background phrase follow,
    each 40 % of the time, drawn at random as the class does not fix them.
    """
    rng = random.Random(stable_seed("toy-descriptions", name))
    out: list[str] = []
    for _ in range(n * 5):
        words: dict[str, str | None] = {**species.attributes(), "accent": species.accent,
                                        "size": rng.choice(SIZES), "position": rng.choice(POSITIONS),
                                        "background": rng.choice(BACKGROUNDS), "species": species.name}
        noun = FAMILY_SYNONYMS[species.family] if rng.random() < 0.25 else species.family
        look = look_phrase(words, rng, colour=True, texture=True, accent=True, noun=noun, size=rng.random() < 0.4)
        if rng.random() < 0.5:
            head = f"{name}, {indefinite_article(look)} {look}"
        else:
            head = f"{indefinite_article(name)} {name}: {look}"
        tails = []
        if rng.random() < 0.4:
            tails.append(rng.choice(POSITION_PHRASES[str(words["position"])]))
        if rng.random() < 0.4:
            tails.append(rng.choice(BACKGROUND_PHRASES[str(words["background"])]))
        sentence = " ".join([head, *tails]) + "."
        if sentence not in out:
            out.append(sentence)
        if len(out) == n:
            break
    return out


def toy_descriptions(n: int = 10) -> dict[str, list[str]]:
    """``{class name: [n sentences]}`` for the classes of every toy classification dataset of both worlds."""
    out: dict[str, list[str]] = {}
    for spec in sorted(TOY_DATASETS):
        for name, fixed in TOY_DATASETS[spec]().class_definitions():
            out.setdefault(name, class_descriptions(name, fixed, n))
    for spec in sorted(SPECIES_DATASETS):
        for name, fixed in SPECIES_DATASETS[spec]().class_definitions():
            out.setdefault(name, species_descriptions(name, SPECIES_BY_NAME[fixed["species"]], n))
    return out


def write_toy_descriptions(path: str | Path, n: int = 10) -> Path:
    """Write :func:`toy_descriptions` as JSON to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(toy_descriptions(n), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


__all__ = ["VOCABULARY", "class_descriptions", "species_descriptions", "toy_descriptions", "write_toy_descriptions"]
