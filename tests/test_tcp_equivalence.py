"""vlprompt's ``tcp`` learner against the reference TCP code (htyao89/Textual-based_Class-aware_prompt_tuning @bd97bec).

``tests/fixtures/tcp_reference/make_fixtures.py`` ran the reference's own ``trainers/tcp.py`` (``PromptLearner``,
``TextEncoder``, ``CustomCLIP``) and its modified text blocks (``trainers/clip_text/model.py``) on the random CLIP of
``tests/tcp_reference_recipe.py``, with ``ctx`` and the TKE (``meta_net``) set from seeded tensors, and saved its
logits, training loss (CE + 8 * (1 - mean cos)), gradients and the tensors after one SGD step. Here the same
inputs go through vlprompt: the learner's parameters carry the reference's names, so the state maps one to one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import tcp_reference_recipe as R
from reference_fixture import check_regenerated, load_fixture
from vlprompt.learners.base import LearnerError
from vlprompt.learners.tcp import TCP, TKE_NAMES
from vlprompt.learners.testing import tiny_clip, torch_threads

FIXTURE = Path(__file__).parent / "fixtures" / "tcp_reference" / "reference_outputs.safetensors"
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
    check_regenerated(fixture[1], backbone.clip.state_dict(), "tests/fixtures/tcp_reference/make_fixtures.py", images=R.images())
    return backbone


def make_learner(case: str, bb, meta: dict, **override) -> TCP:
    learner = TCP(**{**R.CASES[case]["kwargs"], **override})
    learner.setup(bb, list(R.CLASSNAMES))
    shapes = meta["cases"][case]["shapes"]
    assert set(shapes) == set(learner.learned_state()), (sorted(shapes), sorted(learner.learned_state()))
    own = dict(learner.named_parameters())
    with torch.no_grad():
        for k, shape in shapes.items():
            own[k].copy_(R.recipe_tensor(f"tcp/{case}", k, tuple(shape)))
    learner.invalidate_text_cache()
    return learner


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("case", list(R.CASES))
def test_prompts_tokenise_as_the_reference(case, bb, fixture) -> None:
    _, meta = fixture
    learner = make_learner(case, bb, meta)
    ref = torch.tensor(meta["cases"][case]["tokenized_prompts"])
    assert torch.equal(learner.prompts.tokens.cpu(), ref[:, : learner.prompts.tokens.shape[1]])


@pytest.mark.parametrize("case", list(R.CASES))
def test_logits_and_one_sgd_step_match_the_reference(case, bb, fixture) -> None:
    tensors, meta = fixture
    learner = make_learner(case, bb, meta)
    images, labels = R.images(), R.labels()

    learner.eval()
    with torch.no_grad():
        logits = learner(images)
    assert rel_err(logits, tensors[f"{case}/logits"]) < TOL

    learner.train()
    opt = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=meta["step_lr"])
    opt.zero_grad()
    feats = learner.encode_images(images)
    train_logits = learner.logits(feats)
    loss = learner.loss(train_logits, labels, feats)
    assert rel_err(train_logits.detach(), tensors[f"{case}/train_logits"]) < TOL
    assert abs(float(loss.detach()) - float(tensors[f"{case}/loss"])) < TOL * abs(float(tensors[f"{case}/loss"]))
    loss.backward()
    own = dict(learner.named_parameters())
    for k in meta["cases"][case]["shapes"]:
        assert rel_err(own[k].grad, tensors[f"{case}/grad/{k}"]) < TOL, k
    opt.step()
    for k in meta["cases"][case]["shapes"]:
        assert rel_err(own[k].detach(), tensors[f"{case}/step/{k}"]) < TOL, k


def test_the_key_terms_are_what_matches(bb, fixture) -> None:
    """Without the class-aware tokens (at another layer) or without the knowledge term, the reference is missed."""
    tensors, meta = fixture
    images, labels = R.images(), R.labels()
    moved = make_learner("pets", bb, meta, tke_layer=5)
    moved.eval()
    with torch.no_grad():
        assert rel_err(moved(images), tensors["pets/logits"]) > 100 * TOL
    no_kg = make_learner("pets", bb, meta, kg_weight=0.0)
    no_kg.train()
    feats = no_kg.encode_images(images)
    loss = no_kg.loss(no_kg.logits(feats), labels, feats)
    assert abs(float(loss.detach()) - float(tensors["pets/loss"])) > 100 * TOL * float(tensors["pets/loss"])


def test_zero_tke_output_leaves_only_the_context_up_to_the_tke_layer(bb, fixture) -> None:
    """With the TKE's last layer zeroed the class tokens are zeros: the prompt no longer depends on the TKE input."""
    _, meta = fixture
    learner = make_learner("imagenet", bb, meta)
    with torch.no_grad():
        learner.meta_net.linear2.weight.zero_()
        learner.meta_net.linear2.bias.zero_()
    assert torch.equal(learner.class_tokens(), torch.zeros_like(learner.class_tokens()))
    before = learner.text_features().detach()
    learner.clip_text_features = torch.randn_like(learner.clip_text_features)
    assert torch.allclose(learner.text_features().detach(), before)


def test_tke_layer_outside_the_tower_is_refused_with_the_fix() -> None:
    learner = TCP(tke_layer=3)
    with pytest.raises(LearnerError, match="tke_layer=3 .* set tke_layer between 1 and 1"):
        learner.setup(tiny_clip(), ["cat", "dog"])


def test_reference_checkpoint_imports_and_drops_the_frozen_buffers() -> None:
    learner = TCP()
    learner.setup(tiny_clip(), ["cat", "dog"])
    state = {k: torch.randn_like(v) for k, v in learner.learned_state().items()}
    assert set(state) == {"ctx", *TKE_NAMES}
    mapped = learner.import_reference_state({**state, "token_prefix": torch.zeros(2, 1, 32), "token_suffix": torch.zeros(2, 27, 32)})
    learner.set_learned_state(mapped)
    assert all(torch.equal(learner.learned_state()[k], v) for k, v in state.items())
