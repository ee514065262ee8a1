"""Class descriptions for the toy datasets: a small stand-in for the LLM-written descriptions that methods such as
CoPrompt (``descriptions:``) read as a JSON file ``{class name: [sentences]}``.

No language model is involved: each sentence is a toy-world caption (:func:`~vlprompt.data.toyworld.captions.caption`)
of an object that has the class's fixed attributes (always mentioned) and randomly drawn values for the others, as a
language model describes what a class typically looks like. The result is deterministic. The shipped file
``configs/learners/coprompt/toy_descriptions.json`` is :func:`toy_descriptions` for every toy classification dataset,
written by::

    python -c "from vlprompt.data.toyworld.descriptions import write_toy_descriptions as w; \\
w('configs/learners/coprompt/toy_descriptions.json')"

and ``tests/test_coprompt.py`` checks that it still equals a fresh generation.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from vlprompt.data.toyworld.captions import caption
from vlprompt.data.toyworld.datasets import TOY_DATASETS, stable_seed
from vlprompt.data.toyworld.render import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES

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


def toy_descriptions(n: int = 10) -> dict[str, list[str]]:
    """``{class name: [n sentences]}`` for the classes of every toy classification dataset."""
    out: dict[str, list[str]] = {}
    for spec in sorted(TOY_DATASETS):
        for name, fixed in TOY_DATASETS[spec]().class_definitions():
            out.setdefault(name, class_descriptions(name, fixed, n))
    return out


def write_toy_descriptions(path: str | Path, n: int = 10) -> Path:
    """Write :func:`toy_descriptions` as JSON to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(toy_descriptions(n), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


__all__ = ["VOCABULARY", "class_descriptions", "toy_descriptions", "write_toy_descriptions"]
