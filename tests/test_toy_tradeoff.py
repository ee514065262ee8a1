"""Tests for the base-to-new trade-off toy datasets (``toy_archive``, ``toy_swatches``)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

from vlprompt.data.toyworld.datasets import TOY_DATASETS, ToyMixtures
from vlprompt.data.toyworld.render import TEXTURES
from vlprompt.data.toyworld.tradeoff import TRADEOFF_DATASETS, ToyArchive, ToySwatches
from vlprompt.protocols.base2new import split_base_new
from vlprompt.learners.registry import get_registry
from vlprompt.learners.testing import torch_threads

PER_CLASS = (3, 2, 2)


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def test_registered_as_dataset_plugins_and_existing_datasets_untouched():
    names = get_registry("datasets").names()
    assert {"toy_archive", "toy_swatches"} <= set(names)
    assert set(TRADEOFF_DATASETS) == {"toy_archive", "toy_swatches"}
    assert set(TOY_DATASETS) == {"toy_colors", "toy_patterns", "toy_places", "toy_mixtures", "toy_backdrops"}


@pytest.mark.parametrize("name", sorted(TRADEOFF_DATASETS))
def test_deterministic_generation(name):
    a = TRADEOFF_DATASETS[name](per_class=PER_CLASS)
    b = TRADEOFF_DATASETS[name](per_class=PER_CLASS)
    assert a.classnames == b.classnames
    for split in ("train", "val", "test"):
        xa, ya = a._generate(split)
        xb, yb = b._generate(split)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert Counter(ya.tolist()) == {k: a.per_class[split] for k in range(len(a.classnames))}
    assert not torch.equal(a._generate("train")[0], a._generate("test")[0][: len(a._generate("train")[0])])


def test_archive_classes_and_halves():
    ds = ToyArchive(per_class=PER_CLASS)
    assert len(ds.classnames) == 24 and len(set(ds.classnames)) == 24
    # the same 24 colour x texture classes as toy_mixtures, in this dataset's own label order
    assert sorted(ds.classnames) == sorted(ToyMixtures(per_class=PER_CLASS).classnames)
    base, new = split_base_new(24)
    assert (len(base), len(new)) == (12, 12)
    styles = ds.class_styles()
    assert [styles[i] for i in base] == ["blur"] * 12
    assert [styles[i] for i in new] == ["low_contrast"] * 12
    assert ds.identity()["style"] == "base:blur,new:low_contrast"
    # both halves use colour and texture words (the vocabulary is shared, the photography is not)
    for half in (base, new):
        attrs = [ds.class_attributes()[i] for i in half]
        assert len({a["colour"] for a in attrs}) > 1 and len({a["texture"] for a in attrs}) > 1


def test_archive_renders_each_half_in_its_style():
    ds = ToyArchive(per_class=(1, 1, 1))
    images, labels = ds._generate("test")
    # a new-half (faded) image has low contrast: every pixel within 0.5 +- 0.3
    m = math.ceil(len(ds.classnames) / 2)
    new_img = images[labels >= m].float() / 255
    assert float(new_img.min()) >= 0.19 and float(new_img.max()) <= 0.81
    # an explicit style renders every class alike, as for any toy dataset
    clean = ToyArchive(per_class=(1, 1, 1), style="clean")
    assert clean.class_styles() == ["clean"] * 24
    assert clean.identity()["style"] == "clean"


def test_swatches_halves_differ_in_the_attribute_that_separates_them():
    ds = ToySwatches(per_class=PER_CLASS)
    names, attrs = ds.classnames, ds.class_attributes()
    assert len(names) == 12 and len(set(names)) == 12
    base, new = split_base_new(12)
    assert {attrs[i]["colour"] for i in base} == {"orange"}
    assert sorted(attrs[i]["texture"] for i in base) == sorted(TEXTURES)
    assert {attrs[i]["texture"] for i in new} == {"solid"}
    assert len({attrs[i]["colour"] for i in new}) == 6 and "orange" not in {attrs[i]["colour"] for i in new}
    assert names[0] == "orange solid shape" and names[6] == "red solid shape"
    assert ds.style == "noise"


# --- the trade-off probes (vlprompt/data/toyworld/tradeoff_probe.py, configs/datasets/tradeoff_probes/) ---


def test_probe_is_deterministic_and_not_registered():
    from vlprompt.data.toyworld.tradeoff_probe import ToyCampaignProbe

    a = ToyCampaignProbe(balanced=True, mild_blur=1.6, base_style="clean", per_class=PER_CLASS)
    b = ToyCampaignProbe(balanced=True, mild_blur=1.6, base_style="clean", per_class=PER_CLASS)
    assert a.spec == b.spec and a.spec.startswith("toy_probe-") and a.classnames == b.classnames
    for split in ("train", "test"):
        assert torch.equal(a._generate(split)[0], b._generate(split)[0])
    # another design is another catalogue (its own images and cache key), and probes are not dataset plugins
    c = ToyCampaignProbe(balanced=True, mild_blur=1.0, base_style="clean", per_class=PER_CLASS)
    assert c.spec != a.spec and c.identity() != a.identity()
    assert not any(n.startswith("toy_probe") for n in get_registry("datasets").names())


def test_probe_balanced_halves_hold_every_colour_and_texture():
    from vlprompt.data.toyworld.tradeoff_probe import ToyCampaignProbe

    colours = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
    ds = ToyCampaignProbe(colours=colours, balanced=True, per_class=PER_CLASS)
    base, new = split_base_new(32)
    attrs = ds.class_attributes()
    for half in (base, new):
        assert Counter(attrs[i]["colour"] for i in half) == {c: 2 for c in colours}
        assert Counter(attrs[i]["texture"] for i in half) == {t: 4 for t in ("solid", "horizontal stripes", "checkered", "dotted")}
    assert [ds.class_styles()[i] for i in base] == ["blur"] * 16 and [ds.class_styles()[i] for i in new] == ["low_contrast"] * 16
    shapes = ToyCampaignProbe(kind="colour_shape", balanced=True, per_class=PER_CLASS)
    assert len(shapes.classnames) == 24 and shapes.classnames[0].split()[-1] in ("circle", "square", "triangle", "diamond")


def test_probe_cast_touches_only_its_half_and_bad_designs_are_refused():
    from vlprompt.data.toyworld.tradeoff_probe import ToyCampaignProbe

    warm = ToyCampaignProbe(balanced=True, base_style="clean", new_style="clean", cast=[1.0, 0.75, 0.45], per_class=(1, 1, 2))
    xw, yw = warm._generate("test")
    base = yw < 12
    assert float(xw[base][:, 2].float().mean()) < 0.6 * float(xw[base][:, 0].float().mean())  # blue dimmed on base
    assert float(xw[~base][:, 2].float().mean()) > 0.6 * float(xw[~base][:, 0].float().mean())  # new half untouched
    with pytest.raises(ValueError, match="mild_blur"):
        ToyCampaignProbe(mild_blur=3.0)
    with pytest.raises(ValueError, match="colours"):
        ToyCampaignProbe(colours=["mauve"])
    with pytest.raises(ValueError, match="kind"):
        ToyCampaignProbe(kind="colour_size")
