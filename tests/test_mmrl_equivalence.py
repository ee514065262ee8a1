"""vlprompt's ``mmrl`` learner against the reference MMRL code (yunncheng/MMRL @27d8821).

``tests/fixtures/mmrl_reference/make_fixtures.py`` built the reference model with its own trainer
(``trainers/mmrl.py``, ``MMRL.build_model``; the blocks of ``clip/model_mmrl.py``) on the random CLIP of
``tests/mmrl_reference_recipe.py``, with the learned tensors (representation tokens, their per-layer maps to both
towers, ``proj_rep``) set from seeded tensors, and saved its logits on the base and the new classes, the loss of one
``MMRL.forward_backward`` (both heads' cross-entropy and the two consistency terms), the gradients and the tensors
after that SGD step. Here the same inputs go through vlprompt; the learner's parameters carry the reference's
names (less ``representation_learner.`` / ``image_encoder.``), so the state maps one to one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mmrl_reference_recipe as R
from reference_fixture import check_regenerated, load_fixture
from vlprompt.learners.base import LearnerError
from vlprompt.learners.mmrl import MMRL, mmrl_loss
from vlprompt.learners.testing import tiny_clip, tiny_siglip, torch_threads

FIXTURE = Path(__file__).parent / "fixtures" / "mmrl_reference" / "reference_outputs.safetensors"
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
    check_regenerated(fixture[1], backbone.clip.state_dict(), "tests/fixtures/mmrl_reference/make_fixtures.py", images=R.images())
    return backbone


def make_learner(bb, meta: dict, **override) -> MMRL:
    learner = MMRL(**{**R.KWARGS, **override})
    learner.setup(bb, list(R.CLASSNAMES))
    shapes = meta["shapes"]
    assert set(shapes) == set(learner.learned_state()), (sorted(shapes), sorted(learner.learned_state()))
    own = dict(learner.named_parameters())
    with torch.no_grad():
        for k, shape in shapes.items():
            own[k].copy_(R.recipe_tensor(k, tuple(shape)))
    learner.invalidate_text_cache()
    return learner


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def test_prompts_tokenise_as_the_reference(bb, fixture) -> None:
    _, meta = fixture
    learner = make_learner(bb, meta)
    for space, names in (("base", R.CLASSNAMES), ("new", R.NEW_CLASSNAMES)):
        learner.set_classnames(names)
        tokens = bb.tokenize([R.KWARGS["template"].format(c.replace("_", " ")) for c in names])
        assert torch.equal(tokens, torch.tensor(meta[f"{space}_tokenized_prompts"])[:, : tokens.shape[1]])


def test_eval_logits_match_the_reference_rule_on_base_and_new_classes(bb, fixture) -> None:
    """Base classes (the training label space): the fused logits; new classes: the class-token logits only."""
    tensors, meta = fixture
    learner = make_learner(bb, meta)
    images = R.images()
    learner.eval()
    with torch.no_grad():
        feats = learner.encode_images(images)
        assert rel_err(learner.logits(feats), tensors["base/logits_fusion"]) < TOL
        cls, rep = learner.head_logits(feats, learner.cached_text_features())
        assert rel_err(cls, tensors["base/logits"]) < TOL and rel_err(rep, tensors["base/logits_rep"]) < TOL
        learner.set_classnames(R.NEW_CLASSNAMES)
        assert rel_err(learner(images), tensors["new/logits"]) < TOL
        cls, rep = learner.head_logits(feats, learner.cached_text_features())
        assert rel_err(rep, tensors["new/logits_rep"]) < TOL
        learner.set_classnames(R.CLASSNAMES)
        assert rel_err(learner(images), tensors["base/logits_fusion"]) < TOL


def test_loss_and_one_sgd_step_match_the_reference(bb, fixture) -> None:
    tensors, meta = fixture
    learner = make_learner(bb, meta)
    images, labels = R.images(), R.labels()
    learner.train()
    opt = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=meta["step_lr"])
    opt.zero_grad()
    feats = learner.encode_images(images)
    logits = learner.logits(feats)
    loss = learner.loss(logits, labels, feats)
    assert rel_err(logits.detach(), tensors["train/logits_fusion"]) < TOL
    ref_loss = float(tensors["train/loss"])
    assert abs(float(loss.detach()) - ref_loss) < TOL * abs(ref_loss)
    loss.backward()
    own = dict(learner.named_parameters())
    for k in meta["shapes"]:
        assert rel_err(own[k].grad, tensors[f"grad/{k}"]) < TOL, k
    opt.step()
    for k in meta["shapes"]:
        assert rel_err(own[k].detach(), tensors[f"step/{k}"]) < TOL, k


def test_the_key_terms_are_what_matches(bb, fixture) -> None:
    """Tokens entering at another layer, the representation head left out of the loss, or no consistency terms:
    the reference is missed by far more than the tolerance."""
    tensors, meta = fixture
    images, labels = R.images(), R.labels()
    moved = make_learner(bb, meta, rep_layers=[2, 3, 4])
    moved.eval()
    with torch.no_grad():
        assert rel_err(moved(images), tensors["base/logits_fusion"]) > 100 * TOL
    ref_loss = float(tensors["train/loss"])
    for override in ({"alpha": 1.0}, {"reg_weight": 0.0}):
        learner = make_learner(bb, meta, **override)
        learner.train()
        feats = learner.encode_images(images)
        loss = learner.loss(learner.logits(feats), labels, feats)
        assert abs(float(loss.detach()) - ref_loss) > 100 * TOL * ref_loss, override


def test_eval_head_forces_one_head(bb, fixture) -> None:
    tensors, meta = fixture
    images = R.images()
    for head, key in (("fusion", "base/logits_fusion"), ("class", "base/logits")):
        learner = make_learner(bb, meta, eval_head=head)
        learner.eval()
        with torch.no_grad():
            assert rel_err(learner(images), tensors[key]) < TOL


def test_mmrl_loss_terms() -> None:
    """The pure loss: cross-entropies weighted by alpha, each consistency term 1 - mean cosine."""
    g = torch.Generator().manual_seed(0)
    lc, lr_, y = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.tensor([0, 2, 1, 0])
    f, t = torch.randn(4, 8, generator=g), torch.randn(3, 8, generator=g)
    ce = 0.25 * F.cross_entropy(lc, y) + 0.75 * F.cross_entropy(lr_, y)
    assert torch.allclose(mmrl_loss(lc, lr_, y, f, f * 2, t, t * 3, alpha=0.25, reg_weight=5.0), ce, atol=1e-6)
    opposite = mmrl_loss(lc, lr_, y, f, -f, t, t, alpha=0.25, reg_weight=5.0)
    assert torch.allclose(opposite, ce + 5.0 * 2.0, atol=1e-5)


def test_bad_settings_are_refused_with_the_fix() -> None:
    with pytest.raises(LearnerError, match=r"rep_layers=\[1, 2\] has layer\(s\) \[1\] outside 2..2"):
        MMRL(rep_layers=[1, 2]).setup(tiny_clip(), ["cat", "dog"])
    with pytest.raises(LearnerError, match="strictly increasing"):
        MMRL(rep_layers=[3, 2])
    with pytest.raises(LearnerError, match="cannot do: use an open_clip CLIP ViT"):
        MMRL().setup(tiny_siglip(), ["cat", "dog"])
    learner = MMRL()
    learner.setup(tiny_clip(), ["cat", "dog"])
    with pytest.raises(LearnerError, match=r"\[B, 2, D\]"):
        learner.logits(torch.randn(2, 32))


def test_reference_checkpoint_imports_and_drops_the_frozen_tensors() -> None:
    learner = MMRL()
    learner.setup(tiny_clip(), ["cat", "dog"])
    state = {k: torch.randn_like(v) for k, v in learner.learned_state().items()}
    ref = {("image_encoder." if k == "proj_rep" else "representation_learner.") + k: v for k, v in state.items()}
    ref["prompt_embeddings"] = torch.zeros(2, 77, 32)
    ref["image_encoder.proj"] = torch.zeros(32, 32)
    learner.set_learned_state(learner.import_reference_state(ref))
    assert all(torch.equal(learner.learned_state()[k], v) for k, v in state.items())
