"""Captions of the second-generation toy world: named kinds, hierarchy, synonyms, two-tone looks, distractors.

The first world's captions (``captions.py``) describe attributes only. Here a caption may name the object's
species (``a lemon``), its synonym (``a citron``), its family (``a fruit``, ``a jewel``), a definition that ties
the name to its look (``a lemon, a teal fruit with blue checks``), or, for a free object, its attributes with
the accent colour of the pattern (``a small teal circle with blue checks``). Some captions carry words that say
nothing about the image (``my``, ``look at``, ``for sale``, ``#toys``), as web captions do; :func:`with_chatter`
puts a longer prefix of such chatter (``weekend dsc0417 download``) before a caption, up to a token budget.

Like the first world's, these captions never use the zero-shot template ``a photo of a ...``, so the template
a learner starts from is not what pretraining saw.

:func:`caption2` takes the object's attribute words (:func:`object_words`) and the names of attributes a caption
must settle (hard negatives: ``colour``, ``accent``, ``texture``, ``shape``, ``size``, ``position``,
``background``, ``species``). A species name settles the look it defines (shape, colour, accent, texture), as
"lemon" settles what a lemon looks like.
"""

from __future__ import annotations

import random

from vlprompt.data.toyworld.captions import BACKGROUND_PHRASES, POSITION_PHRASES, SIZE_WORDS
from vlprompt.data.toyworld.lexicon import FAMILIES, FAMILY_SYNONYMS, PATTERNED, SPECIES_BY_NAME, Species
from vlprompt.data.toyworld.render import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES, Scene

#: what a caption may be asked to settle (the attributes of a look, the nuisances, and the kind's name)
SETTLES: tuple[str, ...] = ("colour", "accent", "texture", "shape", "size", "position", "background", "species")
#: the look a species name settles on its own
NAME_SETTLES: frozenset[str] = frozenset({"colour", "accent", "texture", "shape"})

#: one-tone texture adjectives (``solid``/``hollow``) and pattern nouns of the two-tone textures
ONE_TONE = {"solid": ["solid", "plain"], "hollow": ["hollow", "outlined"]}
PATTERN_ADJ = {"horizontal stripes": "horizontally striped", "vertical stripes": "vertically striped",
               "checkered": "checkered", "dotted": "dotted"}
#: plural nouns of the patterns (``with blue checks``), and what a pattern is "with" when no colour is said
PATTERN_NOUN = {"horizontal stripes": ["horizontal stripes", "horizontal bands"],
                "vertical stripes": ["vertical stripes", "vertical bands"],
                "checkered": ["checks", "chequers"], "dotted": ["dots", "spots"]}
PATTERN_WITH = {"horizontal stripes": ["horizontal stripes", "horizontal bands"],
                "vertical stripes": ["vertical stripes", "vertical bands"],
                "checkered": ["a checkered pattern", "checks"], "dotted": ["dots", "spots"]}
GENERIC_NOUNS = ("thing", "item", "object", "figure")
#: words that say nothing about the image; none is an attribute, family or species word
DISTRACTOR_PREFIXES = ("look at", "my", "here is", "wow,", "today:", "new:", "cute", "our", "just found",
                       "picture:", "this is", "so nice,")
DISTRACTOR_SUFFIXES = ("for sale", "lol", "#toys", "#art", "in my collection", "from yesterday", "hd",
                       "(free)", "again", "!!", "by me", "2024")
#: stems of the file names in web chatter (``dsc0417``)
CHATTER_STEMS = ("img", "dsc", "pic", "vid", "scan", "file", "cam", "p", "x")
HIERARCHY_FORMS = ("{name}, a kind of {family}", "a {family} called {name}", "{name} ({family})", "a {name} {family}",
                   "the {family} known as {name}")


#: every word a caption of either world may use; a chatter word is never one of them
CAPTION_WORDS: frozenset[str] = frozenset(
    word.strip(",:!()#").lower()
    for phrase in (*[w for s in SPECIES_BY_NAME.values() for w in (s.name, s.synonym)], *FAMILIES, *FAMILIES.values(),
                   *FAMILY_SYNONYMS.values(), *COLOURS, *SHAPES, *TEXTURES, *SIZES, *POSITIONS, *BACKGROUNDS,
                   *[p for d in (POSITION_PHRASES, BACKGROUND_PHRASES, SIZE_WORDS, ONE_TONE, PATTERN_NOUN, PATTERN_WITH)
                     for ps in d.values() for p in ps], *PATTERN_ADJ.values(), *GENERIC_NOUNS, *DISTRACTOR_PREFIXES,
                   *DISTRACTOR_SUFFIXES, *HIERARCHY_FORMS)
    for word in phrase.split()
)


#: words of web chatter that say nothing about a toy-world image (the world never shows what they name)
CHATTER_WORDS: tuple[str, ...] = tuple(w for w in """
    vintage summer winter spring autumn wedding party birthday holiday travel family friends weekend sunday monday
    morning evening love best free deal shop store online download wallpaper desktop mobile share follow like comment
    subscribe post blog review unboxing tutorial diy craft handmade gift idea inspiration decor design fashion trend
    modern classic retro original official exclusive limited edition series number part episode season update version
    final draft copy backup archive old random stuff things misc various pack bundle kit bag home garden kitchen office
    school work project team club event show fair market festival trip tour city town village street park beach lake
    river hill road north south east west night week month year tomorrow soon later""".split() if w not in CAPTION_WORDS)


def object_words(scene: Scene, index: int, species: Species | None) -> dict[str, str | None]:
    """Attribute words of object 0 of image ``index`` (``accent`` ``None`` unless patterned), plus its
    ``species`` name (``None`` for a free object)."""
    texture = TEXTURES[int(scene.texture[index, 0])]
    accent = None
    if scene.accent is not None and texture in PATTERNED:
        accent = list(COLOURS)[int(scene.accent[index, 0])]
    return {
        "colour": list(COLOURS)[int(scene.colour[index, 0])],
        "accent": accent,
        "texture": texture,
        "shape": SHAPES[int(scene.shape[index, 0])],
        "size": SIZES[int(scene.size[index, 0])],
        "position": POSITIONS[int(scene.position[index, 0])],
        "background": BACKGROUNDS[int(scene.background[index])],
        "species": species.name if species is not None else None,
    }


def look_phrase(words: dict[str, str | None], rng: random.Random, *, colour: bool, texture: bool,
                accent: bool, noun: str, size: bool) -> str:
    """``[size] [colour] [texture adj] noun [with ...]``: the look of an object around a head noun."""
    pattern = words["texture"] in PATTERNED
    adjs: list[str] = []
    tail = ""
    if size:
        adjs.append(rng.choice(SIZE_WORDS[words["size"]]))
    if colour:
        adjs.append(words["colour"])
    if texture and not pattern:
        adjs.append(rng.choice(ONE_TONE[words["texture"]]))
    elif texture and accent and words["accent"]:
        if not colour or rng.random() < 0.75:  # "blue checkered" alone would read as a blue main colour
            tail = f"with {words['accent']} {rng.choice(PATTERN_NOUN[words['texture']])}"
        else:
            adjs.append(f"and {words['accent']} {PATTERN_ADJ[words['texture']]}")
    elif texture:
        if rng.random() < 0.5:
            adjs.append(PATTERN_ADJ[words["texture"]])
        else:
            tail = f"with {rng.choice(PATTERN_WITH[words['texture']])}"
    elif accent and words["accent"]:  # the accent without the pattern's name
        tail = f"with {words['accent']} {rng.choice(['marks', 'details', 'accents'])}"
    return " ".join(adjs + [noun] + ([tail] if tail else []))


def caption2(words: dict[str, str | None], rng: random.Random, *, require: tuple[str, ...] = (),
             keep: float = 0.55, name_share: float = 0.55, synonym_share: float = 0.25,
             distractor_rate: float = 0.3) -> str:
    """One caption of an object (``words`` from :func:`object_words`); every attribute in ``require`` is
    settled (stated, or implied by the species name).

    A named species is called by its name (``name_share``; of those, ``synonym_share`` by its synonym), else by
    its family or a description. Each other attribute is stated with probability ``keep``.
    """
    unknown = [r for r in require if r not in SETTLES]
    if unknown:
        raise ValueError(f"require={unknown!r}: a caption can only settle {list(SETTLES)}")
    family = FAMILIES[str(words["shape"])]
    named = words["species"] is not None and ("species" in require or rng.random() < name_share)
    if "species" in require and words["species"] is None:
        raise ValueError("require=('species',) for a free object: only a named species has a name to settle")
    stated = {a for a in ("colour", "accent", "texture", "shape", "size", "position", "background")
              if a in require and not (named and a in NAME_SETTLES)}
    for a in ("size", "position", "background"):
        if rng.random() < keep * (0.6 if named else 1.0):
            stated.add(a)
    if not named:
        for a in ("colour", "texture", "accent"):
            if rng.random() < keep:
                stated.add(a)
        while len(stated) < 2:  # a free object is described by at least two attributes
            stated.add(rng.choice(["colour", "texture", "accent", "shape", "size", "position", "background"]))
    if named:
        name = _species_name(str(words["species"]), rng, synonym_share)
        size = rng.choice(SIZE_WORDS[str(words["size"])]) + " " if "size" in stated else ""
        form = rng.random()
        if form < 0.2:  # a definition: the name and its look
            look = look_phrase(words, rng, colour=True, texture=True, accent=True, noun=_family_word(family, rng),
                               size=bool(size))
            head = f"{name}, {_article(look, rng)} {look}" if rng.random() < 0.5 else f"{_article(name, rng)} {name}: {look}"
        elif form < 0.4 and not size:  # the hierarchy: name and family
            head = rng.choice(HIERARCHY_FORMS).format(name=name, family=_family_word(family, rng))
            head = head if head.startswith(("a ", "the ")) else f"{_article(head, rng)} {head}"
        else:
            head = f"{_article(size + name, rng)} {size}{name}"
    else:
        if "shape" in stated or rng.random() < 0.5:
            noun = words["shape"] if rng.random() < 0.5 else _family_word(family, rng)
        else:
            noun = rng.choice(GENERIC_NOUNS)
        if "shape" in stated and noun not in (words["shape"], family, FAMILY_SYNONYMS[family]):
            noun = str(words["shape"])
        head = look_phrase(words, rng, colour="colour" in stated, texture="texture" in stated,
                           accent="accent" in stated, noun=noun, size="size" in stated)
        head = f"{_article(head, rng)} {head}" if rng.random() < 0.6 else head
    tails = []
    if "position" in stated:
        tails.append(rng.choice(POSITION_PHRASES[str(words["position"])]))
    if "background" in stated:
        tails.append(rng.choice(BACKGROUND_PHRASES[str(words["background"])]))
    rng.shuffle(tails)
    text = " ".join([head, *tails])
    if rng.random() < distractor_rate:
        text = f"{rng.choice(DISTRACTOR_PREFIXES)} {text}"
    if rng.random() < distractor_rate:
        text = f"{text} {rng.choice(DISTRACTOR_SUFFIXES)}"
    return text


def chatter_word(rng: random.Random) -> str:
    """One word of web chatter that says nothing about the image: a word of :data:`CHATTER_WORDS` (``weekend``,
    ``download``; 70 %) or a file name (``dsc0417``). Both are made of tokens that pretraining sees again and
    again, as every token of real CLIP's vocabulary was seen in its alt-text; strings of random letters are not
    drawn, since their rare tokens would keep the embeddings of their random initialisation, and the text tower
    would learn to ignore exactly what a randomly initialised prompt context looks like."""
    if rng.random() < 0.7:
        return rng.choice(CHATTER_WORDS)
    return f"{rng.choice(CHATTER_STEMS)}{rng.randint(0, 9999):04d}"


def with_chatter(text: str, rng: random.Random, target: int, count_tokens) -> str:
    """``text`` after a prefix of :func:`chatter_word` words, as long as the whole stays within ``target`` tokens
    (``count_tokens(str) -> int``, the tokenizer's count without start and end tokens); ``text`` itself when even
    one word would not fit. No chatter word is a word of the captions (:data:`CHATTER_WORDS` leaves them out)."""
    out = text
    for _ in range(64):
        longer = f"{chatter_word(rng)} {out}"
        if count_tokens(longer) > target:
            break
        out = longer
    return out


def _species_name(name: str, rng: random.Random, synonym_share: float) -> str:
    species = SPECIES_BY_NAME[name]
    return species.synonym if rng.random() < synonym_share else species.name


def _family_word(family: str, rng: random.Random) -> str:
    return FAMILY_SYNONYMS[family] if rng.random() < 0.25 else family


def indefinite_article(text: str) -> str:
    """``an`` before a vowel letter, else ``a`` (the toy vocabulary has no silent letters)."""
    return "an" if text[:1] in "aeiou" else "a"


def _article(text: str, rng: random.Random) -> str:
    if rng.random() < 0.2:
        return rng.choice(["the", "one"])
    return indefinite_article(text)
