"""vlprompt's ``dpc`` learner around ``coop`` against the reference CoOp+DPC code (JREion/DPC @01e6b59).

``tests/fixtures/dpc_reference/make_fixtures.py`` ran the reference's own ``trainers/sple_coop.py``
(``CustomSPTCLIP``, ``StackSPLE_CoOp.forward_backward`` with its Dynamic Hard Negative Optimizer, ``load_model`` for
new classes) on the random CLIP of ``tests/dpc_reference_recipe.py`` and saved base-class logits, the enlarged batch's
classes, the loss, the gradient and the context after one SGD step, and new-class logits for two ``WEIGHT_FOR_NEW``.
Here the same inputs go through vlprompt: the original context ``P`` is the wrapped CoOp's, the parallel ``theta`` is
``parallel.ctx``, and the reference's one-image-per-class picture library is the learner's bank.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import dpc_reference_recipe as R
from reference_fixture import check_regenerated, load_fixture
from vlprompt.learners.coop import CoOp
from vlprompt.learners.dpc import DPC
from vlprompt.learners.testing import torch_threads

FIXTURE = Path(__file__).parent / "fixtures" / "dpc_reference" / "reference_outputs.safetensors"
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
    check_regenerated(fixture[1], backbone.clip.state_dict(), "tests/fixtures/dpc_reference/make_fixtures.py", images=R.images(), library=R.library())
    return backbone


@pytest.fixture(scope="module")
def library_features(bb) -> torch.Tensor:
    with torch.no_grad():
        return bb.encode_image(R.library())


def make_learner(case: str, bb, library_features, **override) -> DPC:
    spec = R.CASES[case]
    kwargs = {"top_k": spec["top_k"], "weight": spec["weight"], "seed": R.DRAW_SEED, **override}
    learner = DPC(CoOp(n_ctx=R.N_CTX, ctx_init=None), **kwargs)
    learner.setup(bb, list(R.CLASSNAMES))
    learner.set_learned_state({"parallel.ctx": R.parallel_ctx(case), "inner.ctx": R.original_ctx()})
    learner.remember(library_features, torch.arange(len(R.CLASSNAMES)))  # the reference's picture library
    return learner


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def one_step(learner: DPC, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    learner.train()
    opt = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=lr)
    opt.zero_grad()
    feats = learner.encode_images(R.images())
    loss = learner.loss(learner.logits(feats), R.labels(), feats)
    loss.backward()
    grad = learner.parallel.ctx.grad.detach().clone()
    opt.step()
    return loss.detach(), grad


@pytest.mark.parametrize("case", list(R.CASES))
def test_base_logits_and_one_sgd_step_match_the_reference(case, bb, library_features, fixture) -> None:
    tensors, meta = fixture
    learner = make_learner(case, bb, library_features)
    learner.eval()
    with torch.no_grad():
        base = learner(R.images())
    assert rel_err(base, tensors[f"{case}/base_logits"]) < TOL

    loss, grad = one_step(learner, meta["step_lr"])
    assert learner.last_batch_labels == meta["cases"][case]["batch_labels"]
    assert abs(float(loss) - float(tensors[f"{case}/loss"])) < TOL * abs(float(tensors[f"{case}/loss"]))
    assert rel_err(grad, tensors[f"{case}/grad/ctx"]) < TOL
    assert rel_err(learner.parallel.ctx.detach(), tensors[f"{case}/step/ctx"]) < TOL


@pytest.mark.parametrize("case", list(R.CASES))
@pytest.mark.parametrize("weight_for_new", R.WEIGHTS_FOR_NEW)
def test_new_class_logits_after_the_step_match_the_reference(case, weight_for_new, bb, library_features, fixture) -> None:
    tensors, meta = fixture
    learner = make_learner(case, bb, library_features, weight_for_new=weight_for_new)
    one_step(learner, meta["step_lr"])
    learner.eval()
    learner.set_classnames(list(R.NEW_CLASSNAMES))
    with torch.no_grad():
        new = learner(R.images())
    assert rel_err(new, tensors[f"{case}/new_logits/{weight_for_new}"]) < TOL


def test_the_key_terms_are_what_matches(bb, library_features, fixture) -> None:
    """Without the hard negatives the loss and step miss the reference; so do they without the 1/w gradient weight
    (w = 1), and the new classes without the original prompt (weight_for_new = 1: the parallel prompt everywhere)."""
    tensors, meta = fixture
    case = "top4_w05"
    no_negatives = make_learner(case, bb, library_features)
    no_negatives.bank.clear()  # nothing to draw: the batch is not enlarged
    loss, grad = one_step(no_negatives, meta["step_lr"])
    assert abs(float(loss) - float(tensors[f"{case}/loss"])) > 100 * TOL * float(tensors[f"{case}/loss"])
    assert rel_err(grad, tensors[f"{case}/grad/ctx"]) > 100 * TOL
    unweighted = make_learner(case, bb, library_features, weight=1.0)
    _, grad = one_step(unweighted, meta["step_lr"])
    assert rel_err(grad, tensors[f"{case}/grad/ctx"]) > 100 * TOL
    assert rel_err(unweighted.parallel.ctx.detach(), tensors[f"{case}/step/ctx"]) > 100 * TOL
    parallel_everywhere = make_learner(case, bb, library_features, weight_for_new=1.0)
    one_step(parallel_everywhere, meta["step_lr"])
    parallel_everywhere.eval()
    parallel_everywhere.set_classnames(list(R.NEW_CLASSNAMES))
    with torch.no_grad():
        assert rel_err(parallel_everywhere(R.images()), tensors[f"{case}/new_logits/0.0"]) > 100 * TOL
