"""The second-generation toy world (issue 26): lexicon, two-tone rendering, captions, hard negatives, candidate
datasets, the toy CLIP 2 backbone's missing-weights error and its pretraining config."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import open_clip
import pytest
import torch
import yaml
from safetensors.torch import save_file

from vlprompt.backbones.base import BackboneError
from vlprompt.backbones.open_clip import file_sha256
from vlprompt.backbones.toyclip import TOY2_CHECKPOINT, TOY2_MODEL, TOY_CHECKPOINT, ToyCLIP2
from vlprompt.cli.pretrain import pretrain_main
from vlprompt.data.toyworld.captions import BACKGROUND_PHRASES, POSITION_PHRASES, SIZE_WORDS
from vlprompt.data.toyworld.captions2 import (
    DISTRACTOR_PREFIXES,
    DISTRACTOR_SUFFIXES,
    CAPTION_WORDS,
    CHATTER_STEMS,
    CHATTER_WORDS,
    SETTLES,
    caption2,
    chatter_word,
    object_words,
    with_chatter,
)
from vlprompt.data.toyworld.lexicon import (
    FAMILIES,
    FAMILY_SYNONYMS,
    PATTERNED,
    SPECIES,
    SPECIES_BY_LOOK,
    SPECIES_BY_NAME,
    sample_species_scene,
    species_in,
    species_of,
)
from vlprompt.data.toyworld.render import COLOURS, SHAPES, TEXTURES, render, sample_scene
from vlprompt.data.toyworld.species import SPECIES_DATASETS, species_images, tier_stratified_order
from vlprompt.learners.registry import get_registry
from vlprompt.learners.testing import torch_threads
from vlprompt.protocols.base2new import split_base_new
from vlprompt.toyworld.pretrain_clip2 import (
    CLIP2Pretraining,
    SpeciesCaptionData,
    SpeciesCaptionStream,
    confuser_cycle,
    make_hard_negatives,
    species_zero_shot,
)
from vlprompt.toyworld.toyclip2_report import accuracy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ATTRIBUTE_WORDS = set(COLOURS) | {w for t in TEXTURES for w in t.split()} | set(SHAPES) | {"shape", "object", "thing"}


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


# ----------------------------------------------------------------------------- lexicon
def test_lexicon_is_a_fine_grained_hierarchy_of_distinct_nouns():
    assert len(SPECIES) == 64 and all(len(species_of(f)) == 16 for f in FAMILIES.values())
    words = [s.name for s in SPECIES] + [s.synonym for s in SPECIES]
    assert len(set(words)) == len(words)  # names and synonyms all distinct
    vocabulary = ATTRIBUTE_WORDS | set(FAMILIES.values()) | set(FAMILY_SYNONYMS.values())
    distractors = {w for phrase in DISTRACTOR_PREFIXES + DISTRACTOR_SUFFIXES for w in re.findall(r"[a-z]+", phrase)}
    assert not set(words) & (vocabulary | distractors)
    assert len(SPECIES_BY_LOOK) == 64  # no two species look alike
    for s in SPECIES:
        assert (s.accent is None) == (s.texture not in PATTERNED) and s.accent != s.colour
        siblings = [o for o in species_of(s.family) if o != s
                    and sum(a != b for a, b in zip((s.colour, s.accent, s.texture), (o.colour, o.accent, o.texture))) == 1]
        assert siblings, s  # every kind has a close sibling
        if s.texture in ("horizontal stripes", "vertical stripes", "checkered"):  # 50/50 patterns: no swapped twin
            assert (s.accent, s.colour, s.texture, s.shape) not in SPECIES_BY_LOOK


def test_unknown_family_names_the_known_ones():
    with pytest.raises(KeyError, match="known: \\['flag', 'fruit', 'gem', 'tile'\\]"):
        species_of("vegetable")


def test_species_scenes_are_deterministic_two_tone_and_report_their_species():
    a, sa = sample_species_scene(300, generator=torch.Generator().manual_seed(3))
    b, sb = sample_species_scene(300, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.accent, b.accent) and torch.equal(a.colour, b.colour) and sa == sb
    assert bool((a.accent[:, 0] != a.colour[:, 0]).all())
    named = sum(s is not None for s in sa)
    assert 150 < named < 230  # 60% named, plus the free objects that happen to look like a kind
    for i, s in enumerate(sa):
        assert species_in(a, i) == s
        if s is not None:
            assert SHAPES[int(a.shape[i, 0])] == s.shape and list(COLOURS)[int(a.colour[i, 0])] == s.colour
    with pytest.raises(ValueError, match="species_fraction"):
        sample_species_scene(2, generator=torch.Generator(), species_fraction=1.5)


# ----------------------------------------------------------------------------- renderer
def test_accent_paints_the_off_pixels_of_patterns_only():
    g = torch.Generator().manual_seed(0)
    fixed = {"texture": torch.tensor([TEXTURES.index("vertical stripes"), TEXTURES.index("solid")]),
             "colour": torch.tensor([0, 0]), "size": torch.tensor([1, 1]), "position": torch.tensor([4, 4]),
             "background": torch.tensor([0, 0])}
    scene = sample_scene(2, generator=g, fixed=fixed)
    plain, masks = render(scene, generator=torch.Generator().manual_seed(1))
    scene.accent = torch.tensor([[6], [6]])  # blue
    accented, _ = render(scene, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain[1], accented[1])  # solid: nothing to paint
    changed = (plain[0] != accented[0]).any(0)
    assert changed.any() and bool((changed <= masks[0, 0]).all())  # only inside the striped object
    blue = accented[0][:, changed]
    assert bool((blue[2] > blue[0]).all())  # the off pixels are now blue, not dim red


# ----------------------------------------------------------------------------- captions
def _mentions(text: str, words: dict, attribute: str) -> bool:
    """Whether ``text`` settles ``attribute`` of the object described by ``words``."""
    species = next((s for s in SPECIES if s.name == words["species"]), None)
    if species is not None and (species.name in text or species.synonym in text) and attribute in ("colour", "accent", "texture", "shape", "species"):
        return True
    if attribute == "species":
        return False
    if attribute in ("colour", "accent"):
        return words[attribute] in text.split() or f"{words[attribute]}," in text
    if attribute == "texture":
        return any(k in text for k in {"solid": ["solid", "plain"], "hollow": ["hollow", "outlined"],
                                       "horizontal stripes": ["horizontal"], "vertical stripes": ["vertical"],
                                       "checkered": ["check", "chequer"], "dotted": ["dot", "spots"]}[words["texture"]])
    if attribute == "shape":
        family = FAMILIES[words["shape"]]
        return any(w in text.split() for w in (words["shape"], family, FAMILY_SYNONYMS[family]))
    if attribute == "size":
        return any(w in text.split() for w in SIZE_WORDS[words["size"]])
    if attribute == "position":
        return any(p in text for p in POSITION_PHRASES[words["position"]])
    return any(p in text for p in BACKGROUND_PHRASES[words["background"]])


def test_captions_settle_what_they_must_and_never_use_the_zero_shot_template():
    scene, species = sample_species_scene(200, generator=torch.Generator().manual_seed(5))
    rng = random.Random(0)
    for i in range(200):
        words = object_words(scene, i, species[i])
        options = [a for a in SETTLES if (a != "species" or species[i] is not None) and (a != "accent" or words["accent"])]
        require = (rng.choice(options),)
        text = caption2(words, rng, require=require)
        assert "a photo of a" not in text and "photo of" not in text
        assert _mentions(text, words, require[0]), (require, words, text)


def test_caption_is_deterministic_and_refuses_what_it_cannot_settle():
    scene, species = sample_species_scene(4, generator=torch.Generator().manual_seed(1))
    words = object_words(scene, 0, species[0])
    assert caption2(words, random.Random(7)) == caption2(words, random.Random(7))
    with pytest.raises(ValueError, match="can only settle"):
        caption2(words, random.Random(0), require=("mood",))
    free = dict(words, species=None)
    with pytest.raises(ValueError, match="free object"):
        caption2(free, random.Random(0), require=("species",))


def test_names_appear_with_synonyms_families_and_distractors():
    scene, species = sample_species_scene(400, generator=torch.Generator().manual_seed(2))
    rng = random.Random(1)
    texts = [caption2(object_words(scene, i, species[i]), rng) for i in range(400)]
    joined = " ".join(texts)
    assert sum(s.name in joined.split() for s in SPECIES) > 30
    assert sum(s.synonym in joined.split() for s in SPECIES) > 10
    assert any("kind of" in t or "called" in t for t in texts)
    assert any(t.startswith(DISTRACTOR_PREFIXES) for t in texts)


# ----------------------------------------------------------------------------- hard negatives
def test_hard_negatives_differ_in_exactly_what_their_captions_settle():
    scene, species = sample_species_scene(64, generator=torch.Generator().manual_seed(4))
    require = make_hard_negatives(scene, species, 32, random.Random(0), sibling_share=0.4)
    kinds = set()
    for i in range(32):
        j = 63 - i
        assert require[i] == require[j] and len(require[i]) == 1
        wi, wj = object_words(scene, i, species[i]), object_words(scene, j, species[j])
        diff = {k for k in wi if wi[k] != wj[k]} - {"species"}
        if require[i] == ("species",):
            kinds.add("sibling")
            assert species[i].family == species[j].family and species[i] != species[j]
            assert diff <= {"colour", "accent", "texture"} and diff
        else:
            kinds.add(require[i][0])
            # a one-tone texture turned into a pattern (or back) shows (or hides) the accent colour
            assert diff == {require[i][0]} or (require[i] == ("texture",) and diff == {"texture", "accent"}), (require[i], wi, wj)
        assert int(scene.accent[j, 0]) != int(scene.colour[j, 0]) or wj["accent"] is None
    assert "sibling" in kinds and len(kinds) >= 5


def test_tier_name_shares_set_how_often_a_tier_is_named_and_contrasted_with_its_siblings():
    shares = {"common": 0.6, "regular": 0.3, "rare": 0.0}
    stream = SpeciesCaptionStream("vlprompt-toyclip2", 128, 0, 0.5, 0.4, 0.6, 0.3, tier_name_share=shares)
    g, rng = torch.Generator().manual_seed(0), random.Random(0)
    named = {t: [0, 0] for t in shares}
    for _ in range(4):
        scene, species = sample_species_scene(128, generator=g)
        require = make_hard_negatives(scene, species, 32, rng, 0.4, shares)
        for k in range(128):
            if species[k] is None:
                continue
            assert not (require[k] == ("species",) and species[k].tier == "rare"), "a rare kind never settles a sibling pair"
            text = caption2(object_words(scene, k, species[k]), rng, require=require[k],
                            name_share=stream.name_share_of(species[k]), synonym_share=0.0)
            named[species[k].tier][0] += species[k].name in text.split()
            named[species[k].tier][1] += 1
    assert named["rare"][0] == 0 < named["regular"][0]
    assert named["common"][0] / named["common"][1] > named["regular"][0] / named["regular"][1]
    with pytest.raises(ValueError, match="every tier"):
        SpeciesCaptionStream("vlprompt-toyclip2", 8, 0, 0.5, 0.4, 0.6, 0.3, tier_name_share={"common": 0.5})


def test_style_share_renders_pairs_in_one_photography():
    assert SpeciesCaptionStream("vlprompt-toyclip2", 8, 0, 0.5, 0.4, 0.6, 0.3).styles(2, random.Random(0)) == "clean"
    stream = SpeciesCaptionStream("vlprompt-toyclip2", 64, 0, 0.5, 0.4, 0.6, 0.3, style_share=0.5)
    styles = stream.styles(16, random.Random(0))
    assert all(styles[i] == styles[63 - i] for i in range(16))
    assert 10 < sum(s != "clean" for s in styles) < 54 and len(set(styles)) >= 4
    images, tokens = stream.batch(torch.Generator().manual_seed(0), random.Random(0))
    assert images.shape == (64, 3, 48, 48) and len(tokens) == 64
    with pytest.raises(ValueError, match="style_share"):
        SpeciesCaptionStream("vlprompt-toyclip2", 8, 0, 0.5, 0.4, 0.6, 0.3, style_share=1.5)


def test_chatter_words_say_nothing_the_captions_say_and_fit_the_token_budget():
    rng = random.Random(0)
    words = [chatter_word(rng) for _ in range(2000)]
    assert set(words) <= set(CHATTER_WORDS) | {w for w in words if w[-4:].isdigit() and w[:-4] in CHATTER_STEMS}
    assert 0.6 < sum(w in CHATTER_WORDS for w in words) / len(words) < 0.8 and not set(CHATTER_WORDS) & CAPTION_WORDS

    def count(s: str) -> int:
        return len(s.split()) * 2

    for target in (4, 10, 30):
        out = with_chatter("a lemon", rng, target, count)
        assert out.endswith("a lemon") and count(out) <= target < count(out) + 2
        assert not set(w.lstrip("@") for w in out.split()[:-2]) & CAPTION_WORDS
    assert with_chatter("a lemon on a dark background", rng, 3, count) == "a lemon on a dark background"
    assert {"lemon", "fruit", "teal", "background", "my"} <= CAPTION_WORDS


def test_chatter_share_spreads_caption_ends_over_the_context_and_keeps_the_caption():
    plain = SpeciesCaptionStream("vlprompt-toyclip2", 128, 0, 0.5, 0.4, 0.6, 0.3)
    chatty = SpeciesCaptionStream("vlprompt-toyclip2", 128, 0, 0.5, 0.4, 0.6, 0.3, chatter_share=0.5)
    _, texts = plain.batch(torch.Generator().manual_seed(0), random.Random(0))
    _, again = SpeciesCaptionStream("vlprompt-toyclip2", 128, 0, 0.5, 0.4, 0.6, 0.3, chatter_share=0.0).batch(
        torch.Generator().manual_seed(0), random.Random(0))
    assert texts == again  # chatter_share 0 draws nothing: the stream is the one the shipped recipes saw
    rng = random.Random(1)
    longer = [chatty.chatter(t, rng) for t in texts]
    assert all(c.endswith(t) for c, t in zip(longer, texts))
    ends = chatty.tokenizer(longer).argmax(-1)
    assert int(ends.max()) == 31 and float((ends >= 20).float().mean()) > 0.3  # a caption may end anywhere
    assert float((plain.tokenizer(texts).argmax(-1) >= 20).float().mean()) < 0.05
    with pytest.raises(ValueError, match="chatter_share"):
        SpeciesCaptionStream("vlprompt-toyclip2", 8, 0, 0.5, 0.4, 0.6, 0.3, chatter_share=-0.1)


def test_pretraining_card_records_the_caption_stream_it_was_trained_on(tmp_path):
    module = CLIP2Pretraining(export_path=str(tmp_path / "x.safetensors"), init_from=str(TOY2_CHECKPOINT))
    module._trainer = SimpleNamespace(datamodule=SpeciesCaptionData(batch_size=8, num_workers=0, chatter_share=0.5))
    extra = module.card_extra()
    assert extra["init_from_sha256"] == file_sha256(TOY2_CHECKPOINT) and extra["world"] == "toyclip2"
    assert extra["data"]["chatter_share"] == 0.5 and extra["data"]["batch_size"] == 8 and extra["data"]["style_share"] == 0.0


def test_confusers_cycle_within_a_family_and_tier():
    cycle = confuser_cycle({"regular": 0.3, "rare": 0.0})
    regular = [s for s in SPECIES if s.tier == "regular"]
    assert set(cycle) == {s.name for s in regular}
    assert all(c.family == SPECIES_BY_NAME[n].family and c.tier == "regular" and c.name != n for n, c in cycle.items())
    assert sorted(c.name for c in cycle.values()) == sorted(cycle)  # a permutation: every kind is someone's confuser


def test_name_noise_calls_a_kind_by_its_confuser_unless_it_must_settle_the_species():
    plain = SpeciesCaptionStream("vlprompt-toyclip2", 64, 0, 0.5, 0.4, 0.6, 0.3)
    noisy = SpeciesCaptionStream("vlprompt-toyclip2", 64, 0, 0.5, 0.4, 0.6, 0.3, name_noise={"regular": 0.4})
    g, rng = torch.Generator().manual_seed(0), random.Random(0)
    swapped = kept = 0
    for _ in range(6):
        scene, species = sample_species_scene(64, generator=g)
        for k in range(64):
            s = species[k]
            assert plain.words(scene, k, s, (), rng) == object_words(scene, k, s)
            assert noisy.words(scene, k, s, ("species",), rng) == object_words(scene, k, s)
            words = noisy.words(scene, k, s, (), rng)
            if s is None or s.tier != "regular":
                assert words == object_words(scene, k, s)
                continue
            swapped += words["species"] == noisy.confusers[s.name].name
            kept += words["species"] == s.name
    assert swapped + kept > 40 and 0.25 < swapped / (swapped + kept) < 0.55
    for bad in ({"regular": 0.5}, {"legendary": 0.1}):
        with pytest.raises(ValueError, match="name_noise"):
            SpeciesCaptionStream("vlprompt-toyclip2", 8, 0, 0.5, 0.4, 0.6, 0.3, name_noise=bad)


def test_species_zero_shot_counts_the_best_matching_name():
    feats = torch.eye(3)
    assert species_zero_shot(feats, lambda texts: torch.eye(3)[[0, 2, 1]], torch.tensor([0, 2, 1]), ["a", "b", "c"]) == 1.0


# ----------------------------------------------------------------------------- candidate datasets
@pytest.mark.parametrize("name", sorted(SPECIES_DATASETS))
def test_candidate_halves_share_no_class_name_word(name):
    ds = SPECIES_DATASETS[name](per_class=(2, 1, 1))
    names = ds.classnames
    m = (len(names) + 1) // 2
    base, new = {w for n in names[:m] for w in n.split()}, {w for n in names[m:] for w in n.split()}
    assert not base & new
    assert len(names) >= 16 and len(set(names)) == len(names)
    assert ds.identity()["world"] == "toyclip2" and ds.identity()["kind"] == "toyworld"


def test_candidate_images_are_deterministic_and_show_their_species():
    a = SPECIES_DATASETS["toy_orchard"](per_class=(2, 1, 1), style="clean")
    b = SPECIES_DATASETS["toy_orchard"](per_class=(2, 1, 1), style="clean")
    assert torch.equal(a.dataset("train").images, b.dataset("train").images)
    assert a.dataset("train").labels.tolist() == [k for k in range(16) for _ in range(2)]
    cabinet = SPECIES_DATASETS["toy_cabinet"](per_class=(1, 1, 1))
    assert set(cabinet.classnames) <= {s.synonym for s in SPECIES}
    img = species_images(species_of("gem")[0], 3, generator=torch.Generator().manual_seed(0), style="clean")
    assert img.shape == (3, 3, 48, 48)


def test_emporium_holds_every_kind_with_each_tier_split_between_the_halves():
    ds = SPECIES_DATASETS["toy_emporium"](per_class=(1, 1, 1))
    names = ds.classnames
    assert sorted(names) == sorted(s.name for s in SPECIES) and len(names) == 64
    tier = {s.name: s.tier for s in SPECIES}
    base, new = names[:32], names[32:]
    for t in ("common", "regular", "rare"):
        assert abs(sum(tier[n] == t for n in base) - sum(tier[n] == t for n in new)) <= 1, t


def test_the_suite_is_registered_by_name_with_a_config_each(repo):
    registry = get_registry("datasets")
    assert set(SPECIES_DATASETS) <= set(registry.names())
    for name, cls in SPECIES_DATASETS.items():
        assert registry.get(name) is cls
        assert f"class_path: {name}" in (repo / "configs" / "datasets" / f"{name}.yaml").read_text()


# ----------------------------------------------------------------------------- backbone and pretraining config
def test_toyclip2_without_weights_says_how_to_make_them(monkeypatch, tmp_path):
    import vlprompt.backbones.toyclip as toy

    monkeypatch.setattr(toy, "TOY2_CHECKPOINT", tmp_path / "missing.safetensors")
    with pytest.raises(BackboneError, match="configs/pretrain/toyclip2.yaml"):
        toy.ToyCLIP2()


def test_toyclip2_loads_a_given_checkpoint_and_names_its_model(tmp_path):
    model = open_clip.create_model(TOY2_MODEL, pretrained=None)
    path = tmp_path / "trial.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    backbone = ToyCLIP2(pretrained=str(path))
    assert backbone.info.model == "vlprompt-toyclip2" and backbone.info.name == "ToyCLIP2"
    assert backbone.info.checkpoint_sha256


def test_toyclip2_pretrain_yaml_parses_with_mocked_fit(monkeypatch, tmp_path):
    monkeypatch.chdir(CONFIGS.parent)  # the config's init_from is relative to the repository root
    called = {}
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, model, datamodule=None, **kw: called.setdefault("fit", (model, datamodule)))
    pretrain_main(["--config", str(CONFIGS / "pretrain" / "toyclip2.yaml"),
                   "--model.init_args.export_path", str(tmp_path / "x.safetensors")])
    model, data = called["fit"]
    assert isinstance(model, CLIP2Pretraining) and isinstance(data, SpeciesCaptionData)
    assert model.model_name == "vlprompt-toyclip2" and model.hparams.init_from.endswith("vlprompt-toyclip.safetensors")
    assert model.init_sha256 == file_sha256(TOY_CHECKPOINT)  # continues the first toy CLIP, recorded on the card


@pytest.mark.parametrize("name, levers", [
    ("toyclip2_stage2", {"chatter_share": 0.5, "name_noise": {"common": 0.3, "regular": 0.3}}),
    ("toyclip2_chatter", {"chatter_share": 0.5}),
])
def test_toyclip2_stage2_yamls_continue_stage1_with_levers(monkeypatch, tmp_path, name, levers):
    stage1, stage2 = (yaml.safe_load((CONFIGS / "pretrain" / f"{n}.yaml").read_text()) for n in ("toyclip2", name))
    assert stage2["model"]["init_args"]["init_from"] == stage1["model"]["init_args"]["export_path"]
    assert stage1["model"]["init_args"]["export_path"].startswith("runs/")
    assert {k: stage2["data"]["init_args"].pop(k) for k in levers} == levers
    assert not set(levers) & set(stage1["data"]["init_args"])
    assert {k: v for k, v in stage2["data"]["init_args"].items() if k != "seed"} == {
        k: v for k, v in stage1["data"]["init_args"].items() if k != "seed"}  # the same stream, plus the levers
    monkeypatch.chdir(CONFIGS.parent)
    called = {}
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, model, datamodule=None, **kw: called.setdefault("fit", (model, datamodule)))
    pretrain_main(["--config", str(CONFIGS / "pretrain" / f"{name}.yaml"), "--model.init_args.init_from",
                   str(TOY2_CHECKPOINT), "--model.init_args.export_path", str(tmp_path / "x.safetensors")])
    model, data = called["fit"]
    assert isinstance(model, CLIP2Pretraining) and isinstance(data, SpeciesCaptionData)
    assert data.stream.chatter_share == 0.5 and model.init_sha256 == file_sha256(TOY2_CHECKPOINT)
    assert data.stream.name_noise == levers.get("name_noise")


def test_report_accuracy_is_the_percent_of_best_matching_rows():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    text = torch.eye(2)
    assert accuracy(feats, text, torch.tensor([0, 1, 1])) == pytest.approx(200 / 3)


def test_tier_stratified_order_gives_each_half_its_share_of_every_tier():
    tiers = ["common"] * 6 + ["regular"] * 5 + ["rare"] * 5
    items = list(range(16))
    order = tier_stratified_order(items, tiers, seed=3)
    assert sorted(order) == items and order == tier_stratified_order(items, tiers, seed=3)
    base = set(order[: len(split_base_new(16)[0])])
    for tier in ("common", "regular", "rare"):
        members = [i for i in items if tiers[i] == tier]
        assert abs(2 * len(base.intersection(members)) - len(members)) <= 1, tier
    odd = tier_stratified_order(list(range(7)), ["rare"] * 7, seed=0)
    assert sorted(odd) == list(range(7))
    with pytest.raises(ValueError, match="one tier per item"):
        tier_stratified_order([1, 2], ["rare"], seed=0)
