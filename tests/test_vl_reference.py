"""MaPLe, IVLP, VPT and PromptSRC reproduce the reference code's outputs (fp32).

``tests/fixtures/vl_reference/reference_outputs.safetensors`` holds what the reference repositories
(muzairkhattak/multimodal-prompt-learning @69bce21, muzairkhattak/PromptSRC @bb95c77) computed, run by
``tests/fixtures/vl_reference/make_fixtures.py`` on a random CLIP in OpenAI layout with ViT-B/16's widths;
the inputs (CLIP weights, images, prompt tensors under the reference's names) are regenerated here from
``tests/vl_reference_recipe.py``. Each learner imports the reference-named tensors with
``import_reference_state`` and must give the same logits; PromptSRC also the same training loss (the
reference trainer's own ``forward_backward``) and the same Gaussian-aggregated prompts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import vl_reference_recipe as R
from vlprompt.learners.ivlp import IVLP
from vlprompt.learners.maple import MaPLe
from vlprompt.learners.promptsrc import PromptSRC
from vlprompt.learners.vpt import VPT
from vlprompt.learners.testing import torch_threads

log = logging.getLogger(__name__)
FIXTURE = Path(__file__).parent / "fixtures" / "vl_reference" / "reference_outputs.safetensors"
LEARNERS = {"maple": MaPLe, "ivlp": IVLP, "vpt": VPT, "promptsrc": PromptSRC}
#: fp32 on CPU, same math in a different operation order (open_clip batch-first vs the reference's LND)
TOL = 5e-5


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(FIXTURE), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(str(FIXTURE)), meta


@pytest.fixture(scope="module")
def bb(fixture):
    _, meta = fixture
    backbone = R.ref_backbone()
    state = backbone.clip.state_dict()
    drift = {k: (R.checksum(state[k]), v) for k, v in meta["clip_checksums"].items() if abs(R.checksum(state[k]) - v) > 1e-3 * max(1, abs(v))}
    assert not drift, (
        f"the regenerated reference-layout CLIP differs from the one the fixture was made with {drift}: open_clip's "
        "random initialisation changed; rerun tests/fixtures/vl_reference/make_fixtures.py"
    )
    assert abs(R.checksum(R.images()) - meta["images_checksum"]) < 1e-6
    return backbone


def _reference_state(meta: dict, case: str, epoch: int = 0) -> dict[str, torch.Tensor]:
    return {k: R.recipe_tensor(case, k, tuple(shape), epoch=epoch) for k, shape in meta["cases"][case]["shapes"].items()}


def _load(learner, mapped: dict[str, torch.Tensor]) -> None:
    own = dict(learner.named_parameters())
    assert set(mapped) == set(learner.learned_state()), (sorted(mapped), sorted(learner.learned_state()))
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v)
    learner._text_cache = None


def _learner(case: str, bb, meta: dict, epoch: int = 0):
    spec = R.CASES[case]
    learner = LEARNERS[spec["learner"]](**spec["kwargs"])
    learner.setup(bb, meta["classnames"])
    _load(learner, learner.import_reference_state(_reference_state(meta, case, epoch)))
    return learner.eval()


@pytest.mark.parametrize("case", list(R.CASES))
def test_logits_match_the_reference(case, bb, fixture) -> None:
    tensors, meta = fixture
    learner = _learner(case, bb, meta)
    with torch.no_grad():
        logits = learner(R.images())
    ref = tensors[f"{case}/logits"]
    diff = float((logits - ref).abs().max())
    log.info("%s: max abs logit difference against the reference %.2g", case, diff)
    assert diff < TOL, f"{case}: max abs logit difference {diff:.3g} against the reference"
    # the comparison is not vacuous: the prompts matter
    assert float((logits - logits.mean(0)).abs().max()) > 1e-3


def test_promptsrc_training_loss_and_gpa_match_the_reference(bb, fixture) -> None:
    tensors, meta = fixture
    case = "promptsrc_4x4_d3"
    learner = _learner(case, bb, meta).train()
    images, labels = R.images(), R.labels()
    feats = learner.encode_images(images)
    logits = learner.logits(feats)
    ce = torch.nn.functional.cross_entropy(logits, labels).detach()
    loss = learner.loss(logits, labels, feats).detach()
    assert abs(float(ce) - float(tensors[f"{case}/train_ce"])) < TOL
    loss_diff = abs(float(loss) - float(tensors[f"{case}/train_loss"]))
    log.info("%s: training loss %.6f, reference %.6f", case, float(loss), float(tensors[f"{case}/train_loss"]))
    assert loss_diff < TOL, (float(loss), float(tensors[f"{case}/train_loss"]))
    assert float(loss - ce) > 1e-3  # the regularisers are on

    epochs = meta["cases"][case]["gpa_epochs"]
    assert torch.allclose(learner.epoch_weights(epochs), tensors[f"{case}/gpa_weights"], atol=1e-12)
    for e in range(epochs):
        _load(learner, learner.import_reference_state(_reference_state(meta, case, epoch=e + 1)))
        learner.on_train_epoch_end(e, epochs)
    learner.on_fit_end()
    gpa_ref = {k[len(f"{case}/gpa/"):]: v for k, v in tensors.items() if k.startswith(f"{case}/gpa/")}
    expected = learner.import_reference_state(gpa_ref)
    for k, v in learner.learned_state().items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
