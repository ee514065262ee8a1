"""CoCoOp against its reference implementation: logits saved by the reference code (KaiyangZhou/CoOp
``trainers/cocoop.py``, fixture made by ``tests/fixtures/make_reference_cocoop.py``) on a tiny random CLIP in
OpenAI layout, reproduced by vlprompt's CoCoOp on the same weights loaded into the open_clip backbone, with
the reference's prompt-learner state imported through ``import_reference_state``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vlprompt.backbones.open_clip import OpenCLIPBackbone
from vlprompt.learners.cocoop import CoCoOp
from vlprompt.testing import torch_threads

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import tiny_openai_clip  # noqa: E402


@pytest.fixture(scope="module")
def openai_layout_backbone() -> OpenCLIPBackbone:
    name = tiny_openai_clip.register()
    bb = OpenCLIPBackbone(name, pretrained=None, quick_gelu=True)
    bb.clip.load_state_dict(tiny_openai_clip.state_dict(), strict=True)  # OpenAI names load as they are
    bb.freeze()
    return bb


def _fixture(name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURES / name), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_cocoop_logits_match_the_reference(openai_layout_backbone):
    tensors, meta = _fixture("reference_cocoop.safetensors")
    reference_state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    with torch_threads(1):
        learner = CoCoOp(n_ctx=4, ctx_init="a photo of a", chunk_size=2)
        learner.setup(openai_layout_backbone, json.loads(meta["classnames"]))
        learner.set_learned_state(learner.import_reference_state(reference_state))
        learner.eval()
        with torch.no_grad():
            logits = learner(tensors["images"])
    diff = float((logits - tensors["logits"]).abs().max())
    assert diff < 1e-5, f"max abs logit difference to the reference: {diff:.3g}"
    # the fixture is not trivial: the meta-net moves the logits away from those of the shared context
    with torch.no_grad():
        learner.meta_net.linear2.weight.zero_()
        learner.meta_net.linear2.bias.zero_()
        plain = learner(tensors["images"])
    assert float((plain - tensors["logits"]).abs().max()) > 1e-2
