"""vlprompt's ``mma`` learner against the reference MMA code (ZjjConan/Multi-Modal-Adapter @547ee34).

``tests/fixtures/mma_reference/make_fixtures.py`` ran the reference's own ``trainers/mmadapter.py`` ``CustomCLIP`` with
its adapter-aware CLIP (``clip/model.py``, ``clip/gsl.py``) on the 12 + 12-block random CLIP of
``tests/mma_reference_recipe.py``, with the adapters set from seeded tensors, and saved the training logits, the loss,
every adapter gradient, the adapters after one SGD step and the eval logits after it, for the reference config
(blocks 5..12, dim 32, scale 0.001) and ``train.py``'s defaults (4..12, 32, 0.1). Here the same tensors enter the
learner through :meth:`MMA.import_reference_state` (the names map one to one). Also: the pure functions, the
initialisation, the refusals and the backbone's generic residual-adapter hook.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mma_reference_recipe as R
from reference_fixture import check_regenerated, load_fixture
from vlprompt.backbones.base import BackboneError
from vlprompt.learners.base import LearnerError
from vlprompt.learners.mma import MMA, adapted_layers, scale_gradient
from vlprompt.learners.testing import check_learner, tiny_clip, tiny_siglip, torch_threads
from vlprompt.learners.zero_shot import ZeroShot

FIXTURE = Path(__file__).parent / "fixtures" / "mma_reference" / "reference_outputs.safetensors"
#: relative tolerance (fp32 on CPU; the same math in open_clip's batch-first blocks vs the reference's LND layout)
TOL = 1e-4
log = logging.getLogger(__name__)


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
    check_regenerated(fixture[1], backbone.clip.state_dict(), "tests/fixtures/mma_reference/make_fixtures.py", images=R.images())
    return backbone


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def make_learner(case: str, bb, meta: dict) -> MMA:
    learner = MMA(**R.CASES[case], ctx_init=R.CTX_INIT)
    learner.setup(bb, list(R.CLASSNAMES))
    names = meta["cases"][case]["names"]
    ref = {f"adapter_learner.{k}": R.adapter_tensor(case, k, tuple(dict(learner.named_parameters())[k].shape))
           for k in names}
    ref["adapter_learner.token_embedding"] = torch.zeros(1)  # the reference's frozen buffers are dropped
    learner.set_learned_state(learner.import_reference_state(ref))
    return learner


@pytest.mark.parametrize("case", list(R.CASES))
def test_logits_loss_gradients_and_one_step_equal_the_reference(case, bb, fixture) -> None:
    ref, meta = fixture
    learner = make_learner(case, bb, meta)
    assert learner.tokens[:, : len(meta["cases"][case]["tokenized_prompts"][0])].tolist() == [
        row[: learner.tokens.shape[1]] for row in meta["cases"][case]["tokenized_prompts"]]
    assert sorted(learner.learned_state()) == meta["cases"][case]["names"]
    params = {k: p for k, p in learner.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(params.values(), lr=R.STEP_LR, momentum=R.MOMENTUM, weight_decay=R.WEIGHT_DECAY)
    learner.train()
    logits = learner(R.images())
    loss = learner.loss(logits, R.labels(), None)
    errors = {"logits": rel(logits.detach(), ref[f"{case}/train_logits"]),
              "loss": abs(float(loss) - float(ref[f"{case}/loss"])) / abs(float(ref[f"{case}/loss"]))}
    if loss.requires_grad:  # (guards: a broken learner reports its mismatch figures instead of a TypeError)
        loss.backward()
    grads = {k: p.grad if p.grad is not None else torch.zeros_like(p) for k, p in params.items()}
    errors["grad"] = max(rel(grads[k], ref[f"{case}/grad/{k}"]) for k in params)
    opt.step()
    errors["step"] = max(rel(p.detach(), ref[f"{case}/step/{k}"]) for k, p in params.items())
    learner.eval()
    with torch.no_grad():
        errors["logits_after_step"] = rel(learner(R.images()), ref[f"{case}/eval_logits_after_step"])
    log.info("%s: relative errors %s", case, errors)
    assert all(v <= TOL for v in errors.values()), errors


def test_reference_layers_and_shapes(bb) -> None:
    learner = MMA()  # the reference config: blocks 5..12, dim 32, scale 0.001
    learner.setup(bb, list(R.CLASSNAMES))
    assert learner.layers == {"text": list(range(5, 13)), "vision": list(range(5, 13))}
    assert sorted(learner.shared_adapter, key=int) == [str(i) for i in range(5, 13)]
    # one shared module per layer, used by both towers
    h_text, h_img = torch.randn(2, 5, bb.text_width), torch.randn(2, 5, bb.vision_width)
    assert learner.block_term("text", 3, h_text) is None and learner.block_term("vision", 12, h_img) is None
    assert learner.block_term("text", 4, h_text).shape == h_text.shape
    shapes = {k: tuple(v.shape) for k, v in learner.learned_state().items()}
    assert shapes["text_adapter.5.down.0.weight"] == (32, 64) and shapes["visual_adapter.12.up.weight"] == (64, 32)
    assert shapes["shared_adapter.7.0.weight"] == (32, 32) and len(shapes) == 3 * 8 * 2 + 2 * 8 * 2


def test_initialisation_is_the_reference_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    learner = MMA(adapter_start=1, adapter_end=2, adapter_dim=256)
    learner.setup(tiny_clip(), ["a", "b"])
    for name, p in learner.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:  # std sqrt(2 / fan_out), fan_out = out_features
            expected = (2.0 / p.shape[0]) ** 0.5
            assert abs(float(p.std()) / expected - 1) < 0.1, (name, float(p.std()), expected)


def test_scale_gradient_is_identity_forward_and_scales_backward() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.5))


def test_adapted_layers() -> None:
    assert adapted_layers(5, 12, 12) == list(range(5, 13))  # ViT-B/16: the reference's
    assert adapted_layers(5, 12, 24) == list(range(5, 13))  # ViT-L/14's image tower: absolute, as the reference
    assert adapted_layers(5, 12, 6) == list(range(1, 7)) and adapted_layers(5, 12, 2) == [1, 2]
    assert adapted_layers(10, 12, 6) == [4, 5, 6]


def test_zero_up_projection_is_zero_shot_clip() -> None:
    bb = tiny_clip()
    learner = MMA()
    learner.setup(bb, ["red circle", "blue square"])
    with torch.no_grad():
        for name, p in learner.named_parameters():
            if ".up." in name:
                p.zero_()
    zs = ZeroShot(templates=["a photo of a {}."])
    zs.setup(bb, ["red circle", "blue square"])
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(learner.eval()(images), zs(images), rtol=1e-5, atol=1e-5)


def test_contract_and_refusals() -> None:
    check_learner(MMA)
    check_learner(MMA, init_kwargs={"adapter_start": 2, "adapter_end": 2, "adapter_scale": 0.1})
    with pytest.raises(LearnerError, match=r"vlprompt-tiny-siglip.*vision tower.*open_clip CLIP ViT"):
        MMA().setup(tiny_siglip(), ["a", "b"])
    with pytest.raises(LearnerError, match="adapter_start >= 1"):
        MMA(adapter_start=0)
    with pytest.raises(LearnerError, match="adapter_end=3 is below"):
        MMA(adapter_start=5, adapter_end=3)
    with pytest.raises(LearnerError, match="adapter_scale"):
        MMA(adapter_scale=0)
    learner = MMA()
    learner.setup(tiny_clip(), ["a", "b"])
    with pytest.raises(LearnerError, match="missing.*adapter_start"):
        learner.import_reference_state({"text_adapter.5.down.0.weight": torch.zeros(32, 32)})


def test_residual_adapter_hook_adds_to_the_named_block_output_only() -> None:
    """The generic hook: ``adapter(tower, layer, ln_1(x))`` is added to block ``layer``'s output, nothing else."""
    bb = tiny_clip()
    tokens = bb.tokenize(["a photo of a red circle."])
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    seen = []

    def nothing(tower, layer, h):
        seen.append((tower, layer, tuple(h.shape)))
        return None

    with torch.no_grad():
        plain_t, plain_i = bb.encode_text(tokens), bb.encode_image(images)
        with bb.residual_adapter(nothing):
            torch.testing.assert_close(bb.encode_text(tokens), plain_t)
            torch.testing.assert_close(bb.encode_image(images), plain_i)
        assert [s[:2] for s in seen] == [("text", 0), ("text", 1), ("vision", 0), ("vision", 1)]
        # a constant added to the last image block's output = the same constant before ln_post
        shift = torch.full((bb.vision_width,), 0.3)
        with bb.residual_adapter(lambda t, i, h: shift.expand_as(h) if (t, i) == ("vision", 1) else None):
            got = bb.encode_image(images)
        visual = bb.clip.visual
        x = visual._embeds(bb.normalize(images))
        for block in visual.transformer.resblocks:
            x = block(x)
        pooled, _ = visual._pool(x + shift)
        torch.testing.assert_close(got, pooled @ visual.proj, rtol=1e-5, atol=1e-5)
    with pytest.raises(BackboneError, match="residual adapter"), bb.residual_adapter(nothing):
        tiny_siglip().encode_image(torch.rand(1, 3, 32, 32))
