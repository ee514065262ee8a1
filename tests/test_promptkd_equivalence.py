"""vlprompt's ``promptkd`` learner against the reference PromptKD code (zhengli97/PromptKD @ec244f7).

``tests/fixtures/promptkd_reference/make_fixtures.py`` ran the reference's own ``trainers/promptkd.py`` (student
``CustomCLIP`` with its projector, teacher ``CustomCLIP_teacher`` with IVLP prompts, the trainer's
``forward_backward``) on the random student and wider teacher CLIPs of ``tests/promptkd_reference_recipe.py``, and
saved the teacher's logits, the student's base / new evaluation logits, the distillation loss, the gradients and the
tensors after one SGD step. Here the same inputs go through vlprompt: the teacher is a ``promptsrc`` learner whose
reference tensors are imported, saved with ``save_prompts`` and loaded by the student through ``teacher_prompts``;
the student's reference tensors are imported with :meth:`PromptKD.import_reference_state`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import promptkd_reference_recipe as R
from reference_fixture import check_regenerated, load_fixture
from vlprompt.learners.promptkd import PromptKD
from vlprompt.learners.promptsrc import PromptSRC
from vlprompt.learners.testing import torch_threads

FIXTURE = Path(__file__).parent / "fixtures" / "promptkd_reference" / "reference_outputs.safetensors"
#: relative tolerance (fp32 on CPU; the same math in open_clip's batch-first blocks and the reference's LND layout)
TOL = 1e-4
BASE, NEW = R.CLASSNAMES[: R.N_BASE], R.CLASSNAMES[R.N_BASE :]
#: the bias of the projector's first layer feeds a BatchNorm in training mode, which subtracts the batch mean: its
#: gradient is zero in exact arithmetic, so only its size (rounding noise) is compared
CANCELLED = "VPT_image_trans.conv1.0.bias"


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, torch.Tensor], dict]:
    return load_fixture(FIXTURE)


@pytest.fixture(scope="module")
def backbones(fixture):
    _, meta = fixture
    student, teacher = R.student_backbone(), R.teacher_backbone()
    script = "tests/fixtures/promptkd_reference/make_fixtures.py"
    check_regenerated(meta, student.clip.state_dict(), script, prefix="student/", images=R.images())
    check_regenerated(meta, teacher.clip.state_dict(), script, prefix="teacher/")
    return student, teacher


def reference_tensors(meta: dict, side: str) -> dict[str, torch.Tensor]:
    """The learned tensors the reference ran with, regenerated from the recipe (the fixture's rule)."""
    out = {}
    for k, shape in meta["shapes"][side].items():
        shape = tuple(shape)
        if len(shape) == 4:
            out[k] = R.recipe_tensor("promptkd", k, shape[:2]).reshape(shape)
        elif k == "VPT_image_trans.conv1.1.weight":
            out[k] = 1.0 + R.recipe_tensor("promptkd", k + ".gamma", shape)
        else:
            out[k] = R.recipe_tensor("promptkd", k, shape)
    if side == "student":
        for name, v in R.batchnorm_stats("VPT_image_trans.conv1.1", out["VPT_image_trans.conv1.1.bias"].numel()).items():
            out[f"VPT_image_trans.conv1.1.{name}"] = v
    return out


def teacher_kwargs() -> dict:
    return {"n_ctx_text": 4, "n_ctx_vision": 4, "ctx_init": "a photo of a", "prompt_depth_text": 9,
            "prompt_depth_vision": 9}


@pytest.fixture(scope="module")
def teacher_file(fixture, backbones, tmp_path_factory) -> Path:
    """The reference teacher's prompts as a vlprompt prompts file (trained on the base classes)."""
    _, meta = fixture
    teacher = PromptSRC(**teacher_kwargs())
    teacher.setup(backbones[1], BASE)
    teacher.set_learned_state(teacher.import_reference_state(reference_tensors(meta, "teacher")))
    return teacher.save_prompts(tmp_path_factory.mktemp("promptkd") / "teacher.safetensors")


def make_student(meta: dict, backbones, teacher_file: Path, case: str = "t1_w1000", **override) -> PromptKD:
    temperature, kd_weight = R.CASES[case]
    kwargs = {"teacher": PromptSRC(**teacher_kwargs()), "teacher_backbone": backbones[1],
              "teacher_prompts": str(teacher_file), "n_ctx_vision": 4, "prompt_depth_vision": 9,
              "temperature": temperature, "kd_weight": kd_weight, **override}
    learner = PromptKD(**kwargs)
    learner.setup(backbones[0], BASE)
    learner.set_learned_state(learner.import_reference_state(reference_tensors(meta, "student")))
    return learner


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def stored(t: torch.Tensor, meta: dict) -> torch.Tensor:
    flat = t.detach().float().flatten()
    return flat[:: max(1, math.ceil(flat.numel() / meta["max_stored"]))]


def eval_logits(learner: PromptKD, images: torch.Tensor, names: list[str]) -> torch.Tensor:
    learner.eval()
    learner.set_classnames(names)
    with torch.no_grad():
        return learner(images)


def test_teacher_and_student_logits_match_reference(fixture, backbones, teacher_file) -> None:
    ref, meta = fixture
    learner = make_student(meta, backbones, teacher_file)
    images = R.images()
    learner.set_classnames(R.CLASSNAMES)
    with torch.no_grad():
        teacher = learner.teacher_logits(learner.teacher.encode_images(images))
    assert rel(teacher, ref["teacher_logits"]) <= TOL
    assert rel(eval_logits(learner, images, BASE), ref["logits_base"]) <= TOL
    assert rel(eval_logits(learner, images, NEW), ref["logits_new"]) <= TOL


@pytest.mark.parametrize("case", list(R.CASES))
def test_one_distillation_step_matches_reference(case, fixture, backbones, teacher_file) -> None:
    ref, meta = fixture
    learner = make_student(meta, backbones, teacher_file, case)
    images = R.images()
    params = {k: p for k, p in learner.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(params.values(), lr=R.STEP_LR, momentum=R.MOMENTUM, weight_decay=R.WEIGHT_DECAY)
    learner.train()
    learner.set_classnames(R.CLASSNAMES)  # the unlabeled pool's label space: every class
    feats = learner.encode_images(images)
    loss = learner.loss(learner.logits(feats), torch.full((images.shape[0],), -1), feats)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert abs(float(loss.detach()) - float(ref[f"{case}/loss"])) <= TOL * abs(float(ref[f"{case}/loss"]))
    names = {v: k for k, v in _name_map(learner).items()}
    for ref_name in meta["shapes"]["student"]:
        ours = names[ref_name]
        got = learner.get_parameter(ours)
        for what, value in (("grad", got.grad), ("after", got.detach())):
            want = ref[f"{case}/{what}/{ref_name}"]
            value = value.reshape(-1)
            if what == "grad" and ref_name == CANCELLED:  # zero in exact arithmetic: both must be rounding noise
                scale = float(ref[f"{case}/grad/VPT_image_trans.conv1.0.weight"].abs().max())
                assert float(value.abs().max()) <= TOL * scale and float(want.abs().max()) <= TOL * scale
                continue
            assert rel(stored(value, meta), want) <= TOL, (case, what, ref_name, rel(stored(value, meta), want))
            assert abs(R.checksum(value) - meta["checksums"][f"{case}/{what}/{ref_name}"]) <= TOL * max(
                1.0, abs(meta["checksums"][f"{case}/{what}/{ref_name}"]))
    for stat in ("running_mean", "running_var"):
        want = ref[f"{case}/after/VPT_image_trans.conv1.1.{stat}"]
        assert rel(learner.get_parameter(f"projector.norm.{stat}").detach(), want) <= TOL
    assert rel(eval_logits(learner, images, BASE), ref[f"{case}/logits_base_after"]) <= TOL
    assert rel(eval_logits(learner, images, NEW), ref[f"{case}/logits_new_after"]) <= TOL


def _name_map(learner: PromptKD) -> dict[str, str]:
    """vlprompt name -> reference name of each trained tensor (the inverse of import_reference_state)."""
    out = {"visual.shallow": "image_encoder.VPT"}
    for i in range(1, learner.depth_vision):
        out[f"visual.deep.prompts.{i - 1}"] = f"image_encoder.transformer.resblocks.{i}.VPT_shallow"
    for ours, theirs in (("fc1", "0"), ("fc2", "3"), ("norm", "1")):
        for p in ("weight", "bias"):
            out[f"projector.{ours}.{p}"] = f"VPT_image_trans.conv1.{theirs}.{p}"
    return out
