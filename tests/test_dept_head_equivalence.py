"""vlprompt's ``dept_head`` learner around ``coop`` against the reference CoOp+DePT code (Koorye/DePT @d4ff416).

``tests/fixtures/dept_head_reference/make_fixtures.py`` ran the reference's own ``trainers/elp_coop.py``
(``ExtrasLinearProbeCoOp.build_model`` with its parameter freezing and staged-rate SGD, ``CustomCLIP`` base-class
forward with test-time fusion, ``forward_backward``, ``load_model`` into a new-class model) on the random CLIP of
``tests/dept_head_reference_recipe.py`` and saved base-class logits, the loss, every learned tensor's gradient and
value after one SGD step, and base- and new-class logits after it. Here the same inputs go through vlprompt's
learner, its ``optimizer_groups`` and the module's ``lr_scale`` rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dept_head_reference_recipe as R
import pytest
import torch

from reference_fixture import check_regenerated, load_fixture
from vlprompt.learners.coop import CoOp
from vlprompt.learners.dept_head import DePTHead
from vlprompt.learners.testing import torch_threads
from vlprompt.modules.classification import apply_lr_scales

FIXTURE = Path(__file__).parent / "fixtures" / "dept_head_reference" / "reference_outputs.safetensors"
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
    check_regenerated(fixture[1], backbone.clip.state_dict(), "tests/fixtures/dept_head_reference/make_fixtures.py", images=R.images())
    return backbone


def make_learner(bb, **kwargs) -> DePTHead:
    learner = DePTHead(CoOp(n_ctx=R.N_CTX, ctx_init=None), **{"weight": R.WEIGHT, "head_lr_scale": R.LR_EXP, **kwargs})
    learner.setup(bb, list(R.CLASSNAMES))
    learner.set_learned_state(R.learned_state())
    return learner


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def one_step(learner: DePTHead) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step as ``vlprompt fit`` takes it: the learner's groups, the module's ``lr_scale`` rule, Dassl's SGD."""
    opt = torch.optim.SGD(learner.optimizer_groups(), lr=R.STEP_LR, momentum=R.MOMENTUM, weight_decay=R.WEIGHT_DECAY)
    apply_lr_scales(opt)
    learner.train()
    opt.zero_grad()
    feats = learner.encode_images(R.images())
    loss = learner.loss(learner.logits(feats), R.labels(), feats)
    loss.backward()
    grads = {k: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
             for k, p in learner.named_parameters() if p.requires_grad}
    opt.step()
    learner.eval()
    return loss.detach(), grads


def test_the_reference_trains_what_vlprompt_trains(bb, fixture) -> None:
    """The reference's NAMES_TO_UPDATE and staged rate: the prompt at LR, the six head tensors at LR * LR_EXP."""
    _, meta = fixture
    assert sorted(meta["reference_trainable"]) == sorted(R.REFERENCE_NAMES.values())
    learner = make_learner(bb)
    assert sorted(learner.learned_state()) == sorted(R.REFERENCE_NAMES)
    opt = torch.optim.SGD(learner.optimizer_groups(), lr=R.STEP_LR)
    apply_lr_scales(opt)
    ours = [{"lr": g["lr"], "n_trainable": len(g["params"])} for g in opt.param_groups]
    assert ours == meta["reference_param_groups"]


def test_base_logits_match_the_reference(bb, fixture) -> None:
    tensors, _ = fixture
    learner = make_learner(bb)
    learner.eval()
    with torch.no_grad():
        assert rel_err(learner(R.images()), tensors["base_logits"]) < TOL


def test_loss_and_one_sgd_step_match_the_reference(bb, fixture) -> None:
    tensors, _ = fixture
    learner = make_learner(bb)
    loss, grads = one_step(learner)
    assert abs(float(loss) - float(tensors["loss"])) < TOL * abs(float(tensors["loss"]))
    state = learner.learned_state()
    for name in R.REFERENCE_NAMES:
        assert rel_err(grads[name], tensors[f"grad/{name}"]) < TOL, name
        assert rel_err(state[name], tensors[f"step/{name}"]) < TOL, name
        moved = state[name] - R.learned_state()[name]
        assert rel_err(moved, tensors[f"step/{name}"] - R.learned_state()[name]) < 1e-3, name
    with torch.no_grad():
        assert rel_err(learner(R.images()), tensors["base_logits_after_step"]) < TOL
        learner.set_classnames(list(R.NEW_CLASSNAMES))  # new classes: the prompt's ITM logits alone
        assert rel_err(learner(R.images()), tensors["new_logits_after_step"]) < TOL


def test_the_key_terms_are_what_matches(bb, fixture) -> None:
    """Without the head in the loss (weight 0 there: plain CoOp training) the loss and the prompt's gradient miss
    the reference; without the test-time fusion (head logits alone) or without the CATs (identity transforms) the
    base logits miss it."""
    tensors, _ = fixture
    no_head_loss = make_learner(bb, weight=0.0)
    loss, grads = one_step(no_head_loss)
    # measured: the loss 0.96 % off (both cross-entropies are near log 5 on this random CLIP), the context's
    # gradient 148 % off, the head's 100 % (none); without fusion the base logits are 103 % off, without the CATs 16 %
    assert abs(float(loss) - float(tensors["loss"])) > 50 * TOL * float(tensors["loss"])
    assert rel_err(grads["inner.ctx"], tensors["grad/inner.ctx"]) > 100 * TOL
    no_fusion = make_learner(bb, fusion=False)
    no_fusion.eval()
    with torch.no_grad():
        assert rel_err(no_fusion(R.images()), tensors["base_logits"]) > 100 * TOL
    no_cat = make_learner(bb)
    with torch.no_grad():
        for transform in (no_cat.head.image_transform, no_cat.head.text_transform):
            transform.scale.fill_(1.0)
            transform.bias.zero_()
    no_cat.eval()
    with torch.no_grad():
        assert rel_err(no_cat(R.images()), tensors["base_logits"]) > 100 * TOL
