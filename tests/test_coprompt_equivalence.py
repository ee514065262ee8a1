"""vlprompt's ``coprompt`` learner against the reference CoPrompt code (ShuvenduRoy/CoPrompt @a2a6c12).

``tests/fixtures/coprompt_reference/make_fixtures.py`` ran the reference's own ``trainers/coprompt.py``
(``MultiModalPromptLearner``, ``Adapter``, ``CustomCLIP``, ``gpt_clip_classifier``) and its MaPLe blocks
(``clip/model.py``) on the random CLIP of ``tests/coprompt_reference_recipe.py``, with every learned tensor set from
seeded values, and saved its eval logits, its training loss (CE + W * text and image consistency), the gradients and
the tensors after one SGD step. Here the same inputs go through vlprompt; the reference's tensors enter through the
learner's own importer (:meth:`CoPrompt.import_reference_state`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import coprompt_reference_recipe as R
from reference_fixture import check_regenerated, load_fixture
from vlprompt.learners.coprompt import CoPrompt
from vlprompt.learners.testing import torch_threads

FIXTURE = Path(__file__).parent / "fixtures" / "coprompt_reference" / "reference_outputs.safetensors"
#: relative tolerance (fp32 on CPU; same math, open_clip's batch-first blocks vs the reference's LND layout)
TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, torch.Tensor], dict]:
    return load_fixture(FIXTURE)


@pytest.fixture(scope="module")
def bb(fixture):
    backbone = R.ref_backbone()
    check_regenerated(fixture[1], backbone.clip.state_dict(), "tests/fixtures/coprompt_reference/make_fixtures.py", images=R.images(), frozen_view=R.frozen_view_images())
    return backbone


@pytest.fixture(scope="module")
def descriptions(tmp_path_factory) -> Path:
    return R.write_descriptions(tmp_path_factory.mktemp("coprompt-desc"))


def own_name(ref: str) -> str:
    """vlprompt's name of a reference parameter (what :meth:`CoPrompt.import_reference_state` maps)."""
    k = ref.removeprefix("prompt_learner.")
    if k.startswith("compound_prompts_text."):
        return "text_deep.prompts." + k.split(".", 1)[1]
    if k.startswith("compound_prompt_projections."):
        return "projections." + k.split(".", 1)[1]
    return k


def make_learner(case: str, bb, meta: dict, descriptions: Path, **override) -> CoPrompt:
    kwargs = {**R.CASES[case]["kwargs"], "descriptions": str(descriptions), "view_augment": "none", **override}
    learner = CoPrompt(**kwargs)
    learner.setup(bb, list(R.CLASSNAMES))
    shapes = meta["cases"][case]["shapes"]
    ref_state = {k: R.recipe_tensor(f"coprompt/{case}", k, tuple(s)) for k, s in shapes.items()}
    mapped = learner.import_reference_state(ref_state)
    assert set(mapped) == set(learner.learned_state()) == {own_name(k) for k in shapes}
    learner.set_learned_state(mapped)
    index = meta["cases"][case]["description_index"]
    learner.draw_description_index = lambda n: index  # the reference's random.randint draw of this fixture
    return learner


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def one_step(learner: CoPrompt, meta: dict) -> tuple[torch.Tensor, dict[str, torch.nn.Parameter]]:
    learner.train()
    own = dict(learner.named_parameters())
    opt = torch.optim.SGD([p for p in own.values() if p.requires_grad], lr=meta["step_lr"])
    opt.zero_grad()
    feats = learner.encode_pair(R.images(), R.frozen_view_images())
    loss = learner.loss(learner.logits(feats), R.labels(), feats)
    return loss, own


@pytest.mark.parametrize("case", list(R.CASES))
def test_prompts_tokenise_as_the_reference(case, bb, fixture, descriptions) -> None:
    _, meta = fixture
    learner = make_learner(case, bb, meta, descriptions)
    ref = torch.tensor(meta["cases"][case]["tokenized_prompts"])
    assert torch.equal(learner.prompts.tokens.cpu(), ref[:, : learner.prompts.tokens.shape[1]])


@pytest.mark.parametrize("case", list(R.CASES))
def test_logits_and_one_sgd_step_match_the_reference(case, bb, fixture, descriptions) -> None:
    tensors, meta = fixture
    learner = make_learner(case, bb, meta, descriptions)
    learner.eval()
    with torch.no_grad():
        logits = learner(R.images())
    assert rel_err(logits, tensors[f"{case}/logits"]) < TOL

    loss, own = one_step(learner, meta)
    ref_loss = float(tensors[f"{case}/loss"])
    assert abs(float(loss.detach()) - ref_loss) < TOL * abs(ref_loss), (float(loss), ref_loss)
    loss.backward()
    for k in meta["cases"][case]["shapes"]:
        assert rel_err(R.probe(own[own_name(k)].grad), tensors[f"{case}/grad/{k}"]) < TOL, k
    torch.optim.SGD([own[own_name(k)] for k in meta["cases"][case]["shapes"]], lr=meta["step_lr"]).step()
    for k in meta["cases"][case]["shapes"]:
        assert rel_err(R.probe(own[own_name(k)]), tensors[f"{case}/step/{k}"]) < TOL, k


def consistency_mismatch(bb, fixture, descriptions, **override) -> float:
    """Relative loss error against the reference of a learner changed by ``override``."""
    tensors, meta = fixture
    loss, _ = one_step(make_learner("n2_j3_w1_cosine", bb, meta, descriptions, **override), meta)
    ref = float(tensors["n2_j3_w1_cosine/loss"])
    return abs(float(loss.detach()) - ref) / abs(ref)


def test_the_key_terms_are_what_matches(bb, fixture, descriptions) -> None:
    """Without the consistency terms, with another description, or without the adapters, the reference is missed."""
    tensors, meta = fixture
    assert consistency_mismatch(bb, fixture, descriptions, consistency_weight=0.0) > 100 * TOL
    other = make_learner("n2_j3_w1_cosine", bb, meta, descriptions)
    other.draw_description_index = lambda n: (meta["cases"]["n2_j3_w1_cosine"]["description_index"] + 1) % n
    loss, _ = one_step(other, meta)
    assert abs(float(loss.detach()) - float(tensors["n2_j3_w1_cosine/loss"])) > 10 * TOL
    no_adapter = make_learner("n2_j3_w1_cosine", bb, meta, descriptions, image_adapter_ratio=0.0, text_adapter_ratio=0.0)
    no_adapter.eval()
    with torch.no_grad():
        assert rel_err(no_adapter(R.images()), tensors["n2_j3_w1_cosine/logits"]) > 100 * TOL
