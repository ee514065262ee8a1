"""Issue 30 (CRIS): vlprompt's CRIS backbone with its segmentation learners computes what TuneVLSeg's own CRIS code
computes (fp32, relative 1e-4).

The expected tensors were produced by running naamiinepal/tunevlseg @7956bcd (``tests/fixtures/cris_reference/
make_fixtures.py``; the in-process edits are listed there) on inputs that ``tests/cris_recipe.py`` regenerates here
from fixed seeds: a random CRIS of the real architecture (RN50 towers, FPN, 3-layer decoder, projector; TuneVLSeg's
``configs/model/{coop,cocoop}/cris.yaml``), two 416 px images and masks, the prompts ``"polyp."`` / ``"a pink
polyp."``, and every learned tensor. TuneVLSeg runs CoOp and CoCoOp on CRIS (its only ``configs/model/*/cris.yaml``);
each case builds the vlprompt learner, runs :class:`~vlprompt.modules.segmentation.PromptSegmenter` on
:class:`~vlprompt.backbones.cris.CRISBackbone` and compares

- the mask logits (a strided sample of 1024 values and per-image mean / std / L2 norm) and the training loss
  (TuneVLSeg's MONAI ``DiceCELoss``; here :func:`vlprompt.metrics.segmentation.dice_bce_loss`),
- one optimisation step: every learned tensor after one ``AdamW(lr=2e-4)`` step (held where the reference gradient
  is above its fp32 noise floor, elsewhere to AdamW's 2 lr bound, as in ``tests/test_tunevlseg_equivalence.py``),

each within ``max|ours - ref| <= 1e-4 * max|ref|``; gradients within ``GRAD_RTOL`` (a sum over 2 x 416 x 416
pixels with cancellation, see the CLIPSeg test's docstring).

Both sides run the frozen model in eval mode and the reference with its CRIS text loop's context write-back after
block 0 turned off (the deliberate differences in :mod:`vlprompt.backbones.cris`); :func:`test_the_reference_as_is_differs`
measures what that write-back changes. CoCoOp is compared with the meta-net vlprompt's CoCoOp has (normalised image
feature, no projection norm) and as TuneVLSeg's config sets it (``cocoop_tunevlseg``: raw image feature, meta-net
``Linear-ReLU-Linear-LayerNorm``, vlprompt's ``intermediate_dim``/``proj_norm``/``norm_image_features`` options).
TuneVLSeg's CRIS configs also switch on its trainable decoder branch (``use_new_last_layer``): ``coop_branch`` and
``cocoop_branch`` run it as vlprompt's ``PromptSegmenter(decoder_branch={..., reduce: 64})``, its tensors trained
and compared with the learner's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vlprompt.backbones.cris import CRISBackbone, build_model
from vlprompt.learners.registry import get_registry
from vlprompt.metrics.segmentation import dice_bce_loss
from vlprompt.modules.segmentation import PromptSegmenter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cris_recipe as R  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cris_reference" / "reference_outputs.safetensors"
RTOL = 1e-4
GRAD_RTOL = 5e-3
TESTED = sorted(R.CASES)


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURE), framework="pt") as f:
        meta = f.metadata()
    return load_file(str(FIXTURE)), meta


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return R.random_state_dict()


@pytest.fixture(scope="module")
def backbone(state) -> CRISBackbone:
    return CRISBackbone.from_model(build_model(state), image_size=R.IMAGE_SIZE, name="cris-rn50-random")


@pytest.fixture(scope="module")
def data(reference) -> dict[str, torch.Tensor]:
    _, meta = reference
    out = R.inputs()
    assert R.checksum(out["images"]) == meta["images"] and R.checksum(out["masks"]) == meta["masks"], (
        "the recipe's inputs differ from those the reference ran on: regenerate the fixture (see make_fixtures.py)")
    return out


def close(ours: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = RTOL) -> float:
    err = float((ours.float() - ref).abs().max())
    scale = float(ref.abs().max())
    assert err <= rtol * scale, f"{what}: max |ours - TuneVLSeg| = {err:.3g}, {err / max(scale, 1e-30):.3g} relative"
    return err / max(scale, 1e-30)


def test_same_model_and_tokens(state, backbone, reference) -> None:
    _, meta = reference
    total = float(sum(v.double().sum() for v in state.values() if v.is_floating_point()))
    assert abs(total - float(meta["weights_sum"])) <= 1e-9 * max(1.0, abs(total)), "the reference ran other weights"
    ours = backbone.tokenize(R.PROMPTS)
    for row, ids in zip(ours, json.loads(meta["input_ids"])):
        n = int(backbone.pool_index(row[None])[0]) + 1
        assert row[:n].tolist() == ids[:n]  # padding differs (0 here, EOT there); the decoder masks it


def _run(case: str, backbone: CRISBackbone, data: dict) -> tuple[PromptSegmenter, torch.Tensor, torch.Tensor]:
    spec = R.CASES[case]
    learner = get_registry("learners").get(spec["learner"])(**spec["kwargs"])
    module = PromptSegmenter(backbone, learner, overlays=0, decoder_branch=spec.get("branch"))
    values = R.learned_tensors(case)
    prefix = "decoder_branch."
    learner.set_learned_state({k: v for k, v in values.items() if not k.startswith(prefix)}, strict=True)
    if module.decoder_branch is not None:
        module.decoder_branch.load_state_dict({k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)})
    logits = module.mask_logits(data["images"], list(R.PROMPTS))
    loss = dice_bce_loss(logits, data["masks"], lambda_dice=R.LAMBDA_DICE, lambda_ce=R.LAMBDA_CE)
    return module, logits, loss


@pytest.mark.parametrize("case", TESTED)
def test_mask_logits_and_one_step_equal_tunevlseg(case: str, backbone, reference, data) -> None:
    ref, meta = reference
    spec = R.CASES[case]
    module, logits, loss = _run(case, backbone, data)
    learner = module.learner
    branch = module.decoder_branch
    params = {**dict(learner.named_parameters()),
              **({} if branch is None else {f"decoder_branch.{k}": p for k, p in branch.named_parameters()})}
    assert len([p for p in params.values() if p.requires_grad]) == len(spec["tensors"]) + len(spec.get("zero", {}))
    assert len(json.loads(meta[f"{case}/trainable"])) == len(spec["tensors"])
    loss.backward()
    logits = logits.detach()
    close(R.sample(logits, 1024), ref[f"{case}/logits"], f"{case} mask logits")
    stats = torch.stack([logits.mean((1, 2)), logits.std((1, 2)), logits.norm(dim=(1, 2))])
    for row, name in zip(range(3), ("mean", "std", "L2 norm")):
        close(stats[row], ref[f"{case}/logit_stats"][row], f"{case} per-image logit {name}")
    close(loss.detach().reshape(1), ref[f"{case}/loss"], f"{case} DiceCE loss")
    for name in spec["tensors"]:
        grad = params[name].grad
        assert grad is not None, f"{case}: no gradient reached {name}"
        close(R.sample(grad, 256), ref[f"{case}/grad/{name}"], f"{case} gradient of {name}", GRAD_RTOL)
        close(grad.norm().reshape(1), ref[f"{case}/grad_norm/{name}"], f"{case} gradient norm of {name}", GRAD_RTOL)
    torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=R.LR).step()
    for name in spec["tensors"]:  # where the gradient is above its fp32 noise floor
        g = ref[f"{case}/grad/{name}"]
        keep = g.abs() > GRAD_RTOL * g.abs().max()
        ours, theirs = R.sample(params[name], 256), ref[f"{case}/step/{name}"]
        close(ours[keep], theirs[keep], f"{case} {name} after one AdamW step")
        assert float((ours - theirs).abs().max()) <= 2 * R.LR, f"{case} {name}: an AdamW update beyond its 2 lr bound"


def test_the_reference_as_is_differs(backbone, reference, data) -> None:
    """TuneVLSeg's CRIS text loop writes the context back after block 0 (coop_cris.py:128-140); vlprompt inserts it
    once, as on every other backbone. The difference is far above the test's tolerance, so the fixture's ``fixed``
    run is what the equivalence test holds vlprompt to, and the as-is run shows the edit is not a no-op."""
    ref, _ = reference
    with torch.no_grad():
        _, logits, _ = _run("coop", backbone, data)
    ours, as_is = R.sample(logits, 1024), ref["coop/as_is/logits"]
    assert float((ours - as_is).abs().max()) > 100 * RTOL * float(as_is.abs().max())

