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
from vlprompt.learners.testing import torch_threads

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import tiny_openai_clip  # noqa: E402


def openai_layout_backbone(model: str | None = None) -> OpenCLIPBackbone:
    """vlprompt's open_clip backbone holding the fixture's random OpenAI-layout weights."""
    model = model or tiny_openai_clip.register()
    bb = OpenCLIPBackbone(model, pretrained=None, quick_gelu=True)
    bb.clip.load_state_dict(tiny_openai_clip.state_dict(model=model), strict=True)  # OpenAI names load as they are
    bb.freeze()
    return bb


def _fixture(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def cocoop_on_fixture(path: Path, backbone: OpenCLIPBackbone) -> tuple[CoCoOp, torch.Tensor, torch.Tensor]:
    """(learner with the reference's imported state, its logits, the reference's logits) for a fixture file."""
    tensors, meta = _fixture(path)
    reference_state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    with torch_threads(1):
        learner = CoCoOp(n_ctx=4, ctx_init="a photo of a", chunk_size=2)
        learner.setup(backbone, json.loads(meta["classnames"]))
        learner.set_learned_state(learner.import_reference_state(reference_state))
        learner.eval()
        with torch.no_grad():
            logits = learner(tensors["images"])
    return learner, logits, tensors["logits"]


def test_cocoop_logits_match_the_reference():
    path = FIXTURES / "reference_cocoop.safetensors"
    learner, logits, reference = cocoop_on_fixture(path, openai_layout_backbone())
    diff = float((logits - reference).abs().max())
    assert diff < 1e-5, f"max abs logit difference to the reference: {diff:.3g}"
    # the fixture is not trivial: the meta-net moves the logits away from those of the shared context
    with torch.no_grad():
        learner.meta_net.linear2.weight.zero_()
        learner.meta_net.linear2.bias.zero_()
        plain = learner(_fixture(path)[0]["images"])
    assert float((plain - reference).abs().max()) > 1e-2


if __name__ == "__main__":  # one-off check on another fixture, e.g. a random ViT-B/16 (see make_reference_cocoop.py)
    _, ours, ref = cocoop_on_fixture(Path(sys.argv[1]), openai_layout_backbone(sys.argv[2]))
    print(f"max abs logit difference {float((ours - ref).abs().max()):.3g} (logits up to {float(ref.abs().max()):.3g})")  # noqa: T201
