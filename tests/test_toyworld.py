"""Tests for the procedural toy world: renderer, captions and the toy classification datasets."""

from __future__ import annotations

from collections.abc import Iterator

import random
from collections import Counter

import pytest
import torch

from vlprompt.learners.testing import torch_threads

from vlprompt.data.base import TensorImageDataset
from vlprompt.data.toyworld.captions import (
    COLOUR_WORDS,
    TEXTURE_ADJ,
    caption,
    referring_phrase,
    scene_attributes,
)
from vlprompt.data.toyworld.datasets import TOY_DATASETS, ToyColors
from vlprompt.data.toyworld.render import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    TEXTURES,
    render,
    sample_scene,
)

PER_CLASS = (3, 2, 2)


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny models and toy rendering are many small ops: one thread is fastest on a shared CPU."""
    with torch_threads(1):
        yield


def _render(seed: int, batch: int = 8, *, num_objects: int = 1, style: str = "clean", fixed=None):
    g = torch.Generator().manual_seed(seed)
    scene = sample_scene(batch, generator=g, num_objects=num_objects, fixed=fixed)
    images, masks = render(scene, generator=g, style=style)
    return scene, images, masks


# ----------------------------------------------------------------------------- renderer
def test_render_is_deterministic_for_a_seed_and_differs_across_seeds():
    _, a, ma = _render(0)
    _, b, mb = _render(0)
    _, c, _ = _render(1)
    assert torch.equal(a, b)
    assert torch.equal(ma, mb)
    assert not torch.equal(a, c)


def test_render_shapes_dtypes_and_range():
    _, images, masks = _render(3, batch=5, num_objects=2)
    assert images.shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert masks.shape == (5, 2, IMAGE_SIZE, IMAGE_SIZE)
    assert masks.dtype == torch.bool


def test_render_custom_image_size():
    g = torch.Generator().manual_seed(0)
    images, masks = render(sample_scene(2, generator=g), generator=g, image_size=32)
    assert images.shape == (2, 3, 32, 32)
    assert masks.shape == (2, 1, 32, 32)


def test_object_masks_are_disjoint_and_non_empty_with_several_objects():
    scene, _, masks = _render(7, batch=32, num_objects=3)
    assert int(masks.sum(dim=1).max()) <= 1, "a pixel belongs to two objects"
    assert bool(masks.flatten(2).any(dim=2).all()), "an object has no visible pixel"
    # several objects in one image sit at distinct positions with distinct colours
    for i in range(scene.batch_size):
        assert len(set(scene.position[i].tolist())) == 3
        assert len(set(scene.colour[i].tolist())) == 3


def test_single_object_mask_is_where_the_object_is_drawn():
    scene, images, masks = _render(11, batch=16, fixed={"texture": 0, "background": 0})
    # solid objects on a dark background: object pixels carry the object colour, the rest stay dark
    assert bool(masks.flatten(1).any(dim=1).all())
    assert bool((~masks).flatten(1).any(dim=1).all())
    brightest = images.amax(dim=1)  # [B, S, S]
    inside = brightest[masks[:, 0]]
    outside = brightest[~masks[:, 0]]
    assert float(outside.max()) < 0.2
    assert float(inside.min()) > 0.3


@pytest.mark.parametrize("style", STYLES)
def test_each_style_renders(style):
    _, clean, masks_clean = _render(5, batch=4, style="clean")
    _, images, masks = _render(5, batch=4, style=style)
    assert images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert torch.equal(masks, masks_clean), "the style must not change the scene"
    if style != "clean":
        assert not torch.equal(images, clean)


def test_per_image_styles_style_each_image_as_its_own_batch_would():
    g = torch.Generator().manual_seed(3)
    scene = sample_scene(6, generator=g)
    names = ["clean", "sketch", "low_contrast", "clean", "blur", "low_contrast"]
    mixed, masks = render(scene, generator=torch.Generator().manual_seed(9), style=names)
    for k, name in enumerate(names):
        alone, alone_masks = render(scene, generator=torch.Generator().manual_seed(9), style=name)
        assert torch.equal(masks, alone_masks)
        assert torch.allclose(mixed[k], alone[k]), name  # deterministic styles: the same pixels as a whole batch
    same, _ = render(scene, generator=torch.Generator().manual_seed(9), style=["blur"] * 6)
    assert torch.equal(same, render(scene, generator=torch.Generator().manual_seed(9), style="blur")[0])
    with pytest.raises(ValueError, match="one per image"):
        render(scene, generator=g, style=["clean"] * 5)
    with pytest.raises(ValueError, match="watercolour"):
        render(scene, generator=g, style=["clean"] * 5 + ["watercolour"])


def test_unknown_style_lists_the_known_styles():
    g = torch.Generator().manual_seed(0)
    scene = sample_scene(2, generator=g)
    with pytest.raises(ValueError) as exc:
        render(scene, generator=g, style="watercolour")
    msg = str(exc.value)
    assert "watercolour" in msg
    for style in STYLES:
        assert style in msg


def test_unknown_fixed_attribute_lists_the_known_attributes():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(KeyError) as exc:
        sample_scene(2, generator=g, fixed={"flavour": torch.zeros(2, dtype=torch.long)})
    msg = str(exc.value)
    assert "flavour" in msg
    for name in ATTRIBUTES:
        assert name in msg
    assert "background" in msg


def test_sample_scene_fixed_sets_object_zero_only():
    g = torch.Generator().manual_seed(2)
    n = 64
    fixed = {
        "colour": torch.full((n,), 3),
        "texture": torch.full((n,), 4),
        "shape": torch.full((n,), 2),
        "size": torch.full((n,), 1),
        "position": torch.full((n,), 8),
        "background": torch.full((n,), 1),
    }
    scene = sample_scene(n, generator=g, fixed=fixed)
    assert scene.batch_size == n and scene.num_objects == 1
    for name, value in fixed.items():
        got = scene.background if name == "background" else getattr(scene, name)[:, 0]
        assert torch.equal(got, value), name
    # a scalar is broadcast to the batch
    scene = sample_scene(n, generator=g, fixed={"shape": 1})
    assert bool((scene.shape[:, 0] == 1).all())
    # the other objects and the unfixed attributes still vary
    scene = sample_scene(n, generator=g, num_objects=2, fixed={"shape": torch.full((n,), 0)})
    assert bool((scene.shape[:, 0] == 0).all())
    assert len(set(scene.shape[:, 1].tolist())) > 1
    assert len(set(scene.colour[:, 0].tolist())) > 1


def test_sample_scene_draws_every_value():
    g = torch.Generator().manual_seed(0)
    scene = sample_scene(512, generator=g)
    assert set(scene.colour[:, 0].tolist()) == set(range(len(COLOURS)))
    assert set(scene.texture[:, 0].tolist()) == set(range(len(TEXTURES)))
    assert set(scene.shape[:, 0].tolist()) == set(range(len(SHAPES)))
    assert set(scene.size[:, 0].tolist()) == set(range(len(SIZES)))
    assert set(scene.position[:, 0].tolist()) == set(range(len(POSITIONS)))
    assert set(scene.background.tolist()) == set(range(len(BACKGROUNDS)))
    assert bool(scene.present.all())


# ----------------------------------------------------------------------------- captions
def _random_attrs(rng: random.Random) -> dict[str, str]:
    return {
        "colour": rng.choice(COLOUR_WORDS),
        "texture": rng.choice(TEXTURES),
        "shape": rng.choice(SHAPES),
        "size": rng.choice(SIZES),
        "position": rng.choice(POSITIONS),
        "background": rng.choice(BACKGROUNDS),
    }


def test_captions_never_use_the_zero_shot_template():
    rng = random.Random(0)
    seen = set()
    for _ in range(3000):
        text = caption(_random_attrs(rng), rng)
        assert "a photo of" not in text
        assert text and text == text.strip() and "  " not in text
        seen.add(text)
    assert len(seen) > 1000, "captions should vary"


def test_caption_require_keeps_the_attribute():
    rng = random.Random(1)
    for _ in range(2000):
        attrs = _random_attrs(rng)
        text = caption(attrs, rng, keep=0.0, require=("colour",))
        assert attrs["colour"] in text.split()


def test_caption_keeps_at_least_two_attributes():
    rng = random.Random(2)
    attrs = {"colour": "red", "texture": "solid", "shape": "circle", "size": "small",
             "position": "centre", "background": "dark"}
    for _ in range(200):
        text = caption(attrs, rng, keep=0.0)
        assert "a photo of" not in text
        assert len(text.split()) >= 2


def test_caption_is_deterministic_for_a_seeded_rng():
    attrs = {"colour": "blue", "texture": "dotted", "shape": "square", "size": "large",
             "position": "top left", "background": "noisy"}
    a = [caption(attrs, random.Random(5)) for _ in range(3)]
    assert len(set(a)) == 1


def test_referring_phrase_format():
    attrs = {"colour": "red", "texture": "dotted", "shape": "circle", "size": "small",
             "position": "centre", "background": "dark"}
    assert referring_phrase(attrs) == "the red dotted circle"
    assert referring_phrase(attrs, with_texture=False) == "the red circle"
    attrs["texture"] = "horizontal stripes"
    assert referring_phrase(attrs) == "the red horizontally striped circle"
    for texture in TEXTURES:
        attrs["texture"] = texture
        assert referring_phrase(attrs) == f"the red {TEXTURE_ADJ[texture][0]} circle"


def test_scene_attributes_names_the_drawn_values():
    g = torch.Generator().manual_seed(0)
    fixed = {"colour": torch.tensor([2, 5]), "shape": torch.tensor([3, 0]), "background": torch.tensor([4, 0])}
    scene = sample_scene(2, generator=g, fixed=fixed)
    a0, a1 = scene_attributes(scene, 0), scene_attributes(scene, 1)
    assert (a0["colour"], a0["shape"], a0["background"]) == (COLOUR_WORDS[2], SHAPES[3], BACKGROUNDS[4])
    assert (a1["colour"], a1["shape"], a1["background"]) == (COLOUR_WORDS[5], SHAPES[0], BACKGROUNDS[0])
    assert set(a0) == {"colour", "texture", "shape", "size", "position", "background"}


# ----------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def toy_sets() -> dict:
    return {name: cls(per_class=PER_CLASS) for name, cls in TOY_DATASETS.items()}


def test_registry_of_toy_datasets():
    assert set(TOY_DATASETS) == {"toy_colors", "toy_patterns", "toy_places", "toy_mixtures", "toy_backdrops"}
    for name, cls in TOY_DATASETS.items():
        assert cls.spec == name
        assert cls.native_style in STYLES


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_dataset_classes(toy_sets, name):
    ds = toy_sets[name]
    names = ds.classnames
    assert len(names) >= 10
    assert len(set(names)) == len(names)
    assert ds.name == name
    attrs = ds.class_attributes()
    assert len(attrs) == len(names)
    assert len({tuple(sorted(a.items())) for a in attrs}) == len(names)
    for cname, a in zip(names, attrs):
        for value in a.values():
            # every fixed attribute value shows up in the class name (e.g. "red", "dotted", "top left")
            word = {"horizontal stripes": "horizontally striped", "vertical stripes": "vertically striped"}.get(value, value)
            assert word in cname, (cname, a)
    # the mutable view does not leak into the dataset
    attrs[0]["colour"] = "mutated"
    assert "mutated" not in ds.class_attributes()[0].values()


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_dataset_splits_are_balanced_and_well_formed(toy_sets, name):
    ds = toy_sets[name]
    c = len(ds.classnames)
    assert ds.per_class == dict(zip(("train", "val", "test"), PER_CLASS))
    for split, n in ds.per_class.items():
        labels = ds.labels(split)
        assert Counter(labels) == {k: n for k in range(c)}
        data = ds.dataset(split)
        assert isinstance(data, TensorImageDataset)
        assert len(data) == n * c
        img, y = data[len(data) - 1]
        assert img.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and img.dtype == torch.float32
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
        assert y == labels[-1]
    sub = ds.dataset("test", [0, c * PER_CLASS[2] - 1])
    assert len(sub) == 2
    assert sub[1][1] == ds.labels("test")[-1]
    with pytest.raises(KeyError, match="train"):
        ds.labels("holdout")


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_dataset_images_are_deterministic_across_instances(toy_sets, name):
    a = toy_sets[name]
    b = TOY_DATASETS[name](per_class=PER_CLASS)
    assert b.classnames == a.classnames
    for split in ("train", "test"):
        assert torch.equal(a.dataset(split).images, b.dataset(split).images)
        assert torch.equal(a.dataset(split).labels, b.dataset(split).labels)
    # train and test are different draws
    assert not torch.equal(a.dataset("train").images[: PER_CLASS[2]], a.dataset("test").images[: PER_CLASS[2]])


def test_images_do_not_depend_on_the_thread_count():
    """The same world seed gives the same images on every machine, whatever its core count."""
    one = TOY_DATASETS["toy_backdrops"](per_class=(1, 1, 1))  # blur style: a convolution
    torch.set_num_threads(2)
    try:
        two = TOY_DATASETS["toy_backdrops"](per_class=(1, 1, 1))
        two_images = two.dataset("train").images
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one.dataset("train").images, two_images)


def test_world_seed_changes_the_images():
    a = ToyColors(per_class=PER_CLASS)
    b = ToyColors(per_class=PER_CLASS, world_seed=1)
    assert a.labels("train") == b.labels("train")
    assert not torch.equal(a.dataset("train").images, b.dataset("train").images)


def test_style_and_test_style_semantics():
    native = ToyColors(per_class=PER_CLASS)
    assert native.style == ToyColors.native_style and native.test_style == native.style
    clean = ToyColors(per_class=PER_CLASS, style="clean")
    assert clean.style == "clean" and clean.test_style == "clean"
    shifted = ToyColors(per_class=PER_CLASS, style="clean", test_style="sketch")
    sketch = ToyColors(per_class=PER_CLASS, style="sketch")
    assert (shifted.style, shifted.test_style) == ("clean", "sketch")
    # train renders with `style`
    assert torch.equal(shifted.dataset("train").images, clean.dataset("train").images)
    assert not torch.equal(shifted.dataset("train").images, sketch.dataset("train").images)
    # val and test render with `test_style`
    for split in ("val", "test"):
        assert torch.equal(shifted.dataset(split).images, sketch.dataset(split).images)
        assert not torch.equal(shifted.dataset(split).images, clean.dataset(split).images)


def test_bad_dataset_arguments():
    with pytest.raises(ValueError) as exc:
        ToyColors(style="oil")
    for style in STYLES:
        assert style in str(exc.value)
    with pytest.raises(ValueError, match="test_style|oil|style"):
        ToyColors(test_style="oil")
    with pytest.raises(ValueError, match="per_class"):
        ToyColors(per_class=(1, 0, 1))
    with pytest.raises(ValueError, match="per_class"):
        ToyColors(per_class=(1, 1))


def test_identity_contents():
    ds = ToyColors(per_class=(4, 2, 3), style="clean", test_style="blur", world_seed=7)
    ident = ds.identity()
    assert ident == {
        "name": "toy_colors",
        "kind": "toyworld",
        "style": "clean",
        "test_style": "blur",
        "world_seed": 7,
        "per_class": {"train": 4, "val": 2, "test": 3},
        "num_classes": 10,
    }
    assert ToyColors(per_class=(4, 2, 3)).identity() != ident
