"""CoPrompt's pieces: the consistency losses and adapters, the descriptions file checks, the description draw for
unequal counts, the resource track, the training views, and the shipped toy descriptions.
(Faithfulness to the reference code: tests/test_coprompt_equivalence.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlprompt.data.toyworld.datasets import ToyPatterns
from vlprompt.data.toyworld.descriptions import species_descriptions, toy_descriptions
from vlprompt.data.toyworld.lexicon import FAMILY_SYNONYMS, SPECIES_BY_NAME
from vlprompt.data.toyworld.species import SPECIES_DATASETS
from vlprompt.learners.base import RESOURCES, LearnerError
from vlprompt.learners.coprompt import CoPrompt
from vlprompt.learners.coprompt.losses import Adapter, blend, cosine_consistency, mse_consistency
from vlprompt.learners.testing import check_learner, tiny_clip, torch_threads

ROOT = Path(__file__).resolve().parents[1]
TOY_FILE = ROOT / "configs" / "learners" / "coprompt" / "toy_descriptions.json"
NAMES = ["red circle", "blue square", "green triangle"]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def write(tmp_path: Path, data, name: str = "d.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_cosine_consistency_is_one_minus_mean_row_cosine() -> None:
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    expected = 1 - sum(float(F.cosine_similarity(a[i : i + 1], b[i : i + 1])) for i in range(5)) / 5
    assert abs(float(cosine_consistency(a, b)) - expected) < 1e-6
    assert float(cosine_consistency(a, 3 * a)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        cosine_consistency(a, b[:4])


def test_mse_consistency_is_the_mean_squared_difference() -> None:
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    assert float(mse_consistency(a, b)) == pytest.approx(float(((a - b) ** 2).mean()), rel=1e-6)
    with pytest.raises(ValueError):
        mse_consistency(a, b.T)


def test_adapter_shapes_and_blend() -> None:
    adapter = Adapter(16, 4)
    assert [tuple(m.weight.shape) for m in adapter.fc if isinstance(m, torch.nn.Linear)] == [(4, 16), (16, 4)]
    assert all(getattr(m, "bias", None) is None for m in adapter.fc)
    x = torch.randn(3, 16)
    out = adapter(x)
    assert out.shape == (3, 16) and bool((out >= 0).all())  # ends in a ReLU, as the reference
    assert torch.allclose(blend(x, out, 0.2), 0.2 * out + 0.8 * x)
    assert torch.equal(blend(x, out, 0.0), x)


def test_contract_with_descriptions_and_llm_track(tmp_path) -> None:
    names = ["red circle", "blue square", "green triangle", "yellow star"]
    path = write(tmp_path, {n: [f"a {n}, number {i}." for i in range(2 + k)] for k, n in enumerate(names)})
    check_learner(CoPrompt, init_kwargs={"descriptions": str(path), "view_augment": "randaugment"}, classnames=names)
    learner = CoPrompt(descriptions=str(path))
    assert learner.resource_track() == ("LLM text",) and set(learner.resource_track()) <= set(RESOURCES)
    assert learner.prompt_record()["descriptions"] == str(path)
    assert CoPrompt().resource_track() == ()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON"),
        ([["a"]], "expected a non-empty JSON object"),
        ({"red circle": "a red circle"}, "'red circle' must be a non-empty list"),
        ({"red circle": ["a"], "blue square": ["b"]}, "no entry for class 'green triangle'"),
    ],
)
def test_bad_descriptions_file_is_refused_naming_it(tmp_path, content, match) -> None:
    path = tmp_path / "missing.json" if content is None else write(tmp_path, content)
    learner = CoPrompt(descriptions=str(path), prompt_depth=2)
    with pytest.raises(LearnerError, match=match) as info:
        learner.setup(tiny_clip(), NAMES)
    assert str(path) in str(info.value)


def test_unequal_description_counts_take_index_mod_count(tmp_path) -> None:
    data = {"red circle": ["r0", "r1", "r2"], "blue square": ["b0"], "green_triangle": ["g0", "g1"]}
    learner = CoPrompt(descriptions=str(write(tmp_path, data)), prompt_depth=2)
    learner.setup(tiny_clip(), ["red circle", "blue square", "green_triangle"])
    bank, counts = learner.description_bank()
    assert counts.tolist() == [3, 1, 2] and bank.shape[:2] == (3, 3)
    bb = learner.backbone
    with torch.no_grad():
        direct = F.normalize(bb.encode_text(bb.tokenize(["r2", "b0", "g0"])), dim=-1)
    learner.draw_description_index = lambda n: 2
    assert torch.allclose(learner.text_targets(), direct, atol=1e-6)


def test_training_views_are_independent_randaugment_draws() -> None:
    learner = CoPrompt(prompt_depth=2)
    learner.setup(tiny_clip(), NAMES)
    images = torch.rand(3, 3, 32, 32)
    torch.manual_seed(0)
    a, b = learner.training_views(images)
    assert a.shape == b.shape == images.shape and not torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    learner.view_augment = "none"
    a, b = learner.training_views(images)
    assert a is images and b is images


def test_loss_without_the_step_features_says_what_to_call() -> None:
    learner = CoPrompt(prompt_depth=2)
    learner.setup(tiny_clip(), NAMES)
    learner.train()
    feats = torch.randn(2, learner.backbone.embed_dim)
    with pytest.raises(LearnerError, match="encode_images"):
        learner.loss(learner.logits(feats), torch.tensor([0, 1]), feats)


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(LearnerError, match="distill='l1'"):
        CoPrompt(distill="l1")
    with pytest.raises(LearnerError, match="consistency_weight=-1"):
        CoPrompt(consistency_weight=-1)
    with pytest.raises(LearnerError, match="view_augment='crop'"):
        CoPrompt(view_augment="crop")


def test_reference_checkpoint_imports_prompts_and_adapters() -> None:
    learner = CoPrompt(prompt_depth=2)
    learner.setup(tiny_clip(), NAMES)
    own = learner.learned_state()
    names = {"ctx": "prompt_learner.ctx", "proj.weight": "prompt_learner.proj.weight", "proj.bias": "prompt_learner.proj.bias",
             "text_deep.prompts.0": "prompt_learner.compound_prompts_text.0",
             "projections.0.weight": "prompt_learner.compound_prompt_projections.0.weight",
             "projections.0.bias": "prompt_learner.compound_prompt_projections.0.bias"}
    names.update({k: k for k in own if k.startswith("adapter_")})
    assert set(names) == set(own)
    state = {names[k]: torch.randn_like(v) for k, v in own.items()}
    extra = {"prompt_learner.token_prefix": torch.zeros(3, 1, 32), "model_distill.visual.proj": torch.zeros(32, 32)}
    mapped = learner.import_reference_state({**state, **extra})
    learner.set_learned_state(mapped)
    assert all(torch.equal(learner.learned_state()[k], state[names[k]]) for k in own)


def test_shipped_toy_descriptions_are_the_generated_ones() -> None:
    shipped = json.loads(TOY_FILE.read_text())
    assert shipped == toy_descriptions()
    assert all(name in shipped for name in ToyPatterns().classnames)
    assert all(len(v) == 10 for v in shipped.values())


def test_second_world_classes_get_definitions_of_their_named_kind() -> None:
    shipped = json.loads(TOY_FILE.read_text())
    for spec, dataset in SPECIES_DATASETS.items():
        for name, fixed in dataset().class_definitions():
            species = SPECIES_BY_NAME[fixed["species"]]
            sentences = shipped[name]
            assert len(set(sentences)) == 10, (spec, name)
            for s in sentences:
                # the class name as the dataset calls it (a synonym in toy_cabinet), its colour, its family word
                assert s.startswith((f"{name}, ", f"a {name}: ", f"an {name}: ")), s
                assert species.colour in s and (species.family in s or FAMILY_SYNONYMS[species.family] in s), s
                if species.accent is not None:
                    assert species.accent in s, s
                assert s.endswith(".") and not s.endswith(".."), s
    cabinet = SPECIES_DATASETS["toy_cabinet"]()
    assert cabinet.use_synonyms and all(n in shipped for n in cabinet.classnames)
    lemon = SPECIES_BY_NAME["lemon"]
    assert species_descriptions("lemon", lemon, 4) == species_descriptions("lemon", lemon, 4)  # deterministic
