"""DePT, EPT, ConES (+ stage 2) and TMML: contract, invariants, bad input, optimiser groups, end-to-end fits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from vlprompt.runs.driver import run_experiment
from vlprompt.learners.base import LearnerError
from vlprompt.learners.cones import ConES, transform_fit_loss
from vlprompt.learners.cones.stage2 import ConESPromptTuning
from vlprompt.learners.coop import CoOp
from vlprompt.learners.dept import DePT
from vlprompt.learners.ept import EPT
from vlprompt.learners.tmml import TMML, attend, contrastive_alignment_loss
from vlprompt.learners.zero_shot import ZeroShot
from vlprompt.learners.prompts.lowrank import LowRankEmbeddingUpdate, MultiSpaceProjection, PromptFusion, decomposed_budget
from vlprompt.modules.classification import PromptClassifier
from vlprompt.learners.testing import check_learner, tiny_clip, torch_threads

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
NAMES = ["red circle", "blue square", "green triangle", "yellow star"]
NEW = ["purple ring", "orange cross"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def bb():
    return tiny_clip()


def _images(bb, n: int = 3) -> torch.Tensor:
    size = bb.preprocess.image_size
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _eval(learner, images) -> torch.Tensor:
    learner.eval()
    with torch.no_grad():
        return learner(images)


# ------------------------------------------------------------------------------------ contract (variants)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (DePT, {"n_ctx": 4, "rank": 2, "n_positions": 8, "words_before": "a photo of a"}),
        (DePT, {"n_ctx": None, "ctx_init": "a photo of a", "rank": 3}),
        (EPT, {"n_spaces": 1}),
        (EPT, {"n_spaces": 3, "space_rank": 2, "fusion_init": 0.5}),
        (ConES, {"new_class_fallback": "transform"}),
        (ConES, {"new_class_fallback": "none"}),
        (ConES, {"templates": ["a photo of a {}.", "a drawing of a {}."]}),
        (ConESPromptTuning, {"fit_steps": 3}),
        (TMML, {"n_ctx": 2, "ctx_init": None, "image_chunk": 3, "contrastive_weight": 0.0}),
    ],
    ids=["dept-template", "dept-init", "ept-1space", "ept-3spaces", "cones-transform", "cones-none", "cones-ensemble",
         "cones-stage2", "tmml-random-chunk3"],
)
def test_variants_honour_contract(cls, kwargs, bb) -> None:
    check_learner(cls, init_kwargs=kwargs, backbone=bb, steps=3)


# ------------------------------------------------------------------------------------ shared layers


def test_lowrank_update_adds_only_at_its_positions() -> None:
    upd = LowRankEmbeddingUpdate(3, 5, 2)
    with torch.no_grad():
        upd.lowrank_b.normal_()
    emb = torch.zeros(2, 6, 5)
    out = upd(emb, start=2)
    assert torch.equal(out[:, :2], emb[:, :2]) and torch.equal(out[:, 5:], emb[:, 5:])
    torch.testing.assert_close(out[0, 2:5], upd.delta())
    clipped = upd(emb, start=4)  # only 2 positions left: offsets clipped
    torch.testing.assert_close(clipped[0, 4:], upd.delta()[:2])


def test_lowrank_update_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match=r"rank=9 is larger than the token-embedding width 8"):
        LowRankEmbeddingUpdate(16, 8, 9)
    with pytest.raises(ValueError, match="rank=0"):
        LowRankEmbeddingUpdate(16, 8, 0)


def test_multispace_gate_and_identity_start() -> None:
    msp = MultiSpaceProjection(6, 3, 2)
    p = torch.randn(4, 6)
    torch.testing.assert_close(msp(p), p)  # V = 0: every subspace is the identity
    g = msp.gate_weights(p)
    assert g.shape == (3,) and torch.allclose(g.sum(), torch.tensor(1.0))
    assert MultiSpaceProjection(6, 1).gate is None
    with pytest.raises(ValueError, match="n_spaces=0"):
        MultiSpaceProjection(6, 0)
    fusion = PromptFusion(0.0)
    torch.testing.assert_close(fusion(p, torch.randn(5, 6)), p)


def test_decomposed_budget_formula() -> None:
    assert decomposed_budget(width=512, n_ctx=7, rank=8, n_positions=64) == 16 * 512
    assert decomposed_budget(width=128, n_ctx=7, rank=8, n_positions=16) == 16 * 128


def _learner_from_yaml(path: Path):
    cfg = yaml.safe_load(path.read_text())["model"]["learner"]
    return {"dept": DePT, "ept": EPT}[cfg["class_path"]](**cfg["init_args"])


def test_toy_budget_configs_match_coop16_exactly() -> None:
    from vlprompt.backbones.toyclip import ToyCLIP

    toy = ToyCLIP()
    coop = CoOp(n_ctx=16)
    coop.setup(toy, NAMES)
    budget = sum(p.numel() for p in coop.parameters() if p.requires_grad)
    for name in ("dept", "ept"):
        learner = _learner_from_yaml(CONFIGS / "learners" / name / "toy_budget16.yaml")
        learner.setup(toy, NAMES)
        assert sum(p.numel() for p in learner.parameters() if p.requires_grad) == budget == 16 * toy.text_width, name


# ------------------------------------------------------------------------------------ invariants


def test_dept_with_zero_product_equals_coop_with_the_short_prompt(bb) -> None:
    images = _images(bb)
    torch.manual_seed(0)
    dept = DePT(n_ctx=5, rank=4)
    dept.setup(bb, NAMES)
    coop = CoOp(n_ctx=5)
    coop.setup(bb, NAMES)
    with torch.no_grad():
        coop.ctx.copy_(dept.ctx)
    assert torch.count_nonzero(dept.lowrank.delta()) == 0
    torch.testing.assert_close(_eval(dept, images), _eval(coop, images))
    with torch.no_grad():
        dept.lowrank.lowrank_b.normal_(0, 0.05)
    dept._text_cache = None
    assert not torch.allclose(_eval(dept, images), _eval(coop, images))


def test_ept_with_one_subspace_and_constant_gate_equals_dept(bb) -> None:
    images = _images(bb)
    torch.manual_seed(0)
    ept = EPT(n_ctx=4, rank=3, n_spaces=1)
    ept.setup(bb, NAMES)
    dept = DePT(n_ctx=4, rank=3)
    dept.setup(bb, NAMES)
    with torch.no_grad():
        ept.lowrank.lowrank_b.normal_(0, 0.05)  # a non-zero low-rank product
        dept.ctx.copy_(ept.ctx)
        dept.lowrank.load_state_dict(ept.lowrank.state_dict())
    assert ept.spaces.gate is None  # one subspace: gate identically 1
    torch.testing.assert_close(_eval(ept, images), _eval(dept, images))
    with torch.no_grad():
        ept.spaces.space_v.normal_(0, 0.1)
    ept._text_cache = None
    assert not torch.allclose(_eval(ept, images), _eval(dept, images))


def test_cones_at_init_gives_zero_shot_logits(bb) -> None:
    images = _images(bb)
    cones, zs = ConES(template="a photo of a {}."), ZeroShot(template="a photo of a {}.")
    cones.setup(bb, NAMES)
    zs.setup(bb, NAMES)
    torch.testing.assert_close(_eval(cones, images), _eval(zs, images), rtol=1e-5, atol=1e-5)


def test_tmml_with_zero_attention_outputs_is_its_base_prompt(bb) -> None:
    images = _images(bb)
    tmml = TMML(n_ctx=4, ctx_init="a photo of a")
    tmml.setup(bb, NAMES)
    coop = CoOp(n_ctx=4, ctx_init="a photo of a")
    coop.setup(bb, NAMES)
    torch.testing.assert_close(_eval(tmml, images), _eval(coop, images), rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        tmml.tft_gate.fill_(0.5)
    assert not torch.allclose(_eval(tmml, images), _eval(coop, images), atol=1e-4)


# ------------------------------------------------------------------------------------ bad input


def test_bad_inputs_name_the_value_and_the_fix(bb, monkeypatch) -> None:
    with pytest.raises(LearnerError, match=r"rank=64 is larger than the token-embedding width 32"):
        DePT(n_ctx=4, rank=64).setup(bb, NAMES)
    with pytest.raises(LearnerError, match=r"n_ctx=16: the short prompt must be shorter .*original_n_ctx=16"):
        DePT(n_ctx=16)
    with pytest.raises(LearnerError, match=r"n_positions=40: .* at most 27"):
        DePT(n_ctx=4, n_positions=40).setup(bb, NAMES)
    with pytest.raises(LearnerError, match=r"n_spaces=0: EPT needs at least one subspace"):
        EPT(n_spaces=0)
    cones = ConES(new_class_fallback="none")
    cones.setup(bb, NAMES)
    with pytest.raises(LearnerError, match=r"no searched concept embedding .*'purple ring'.* new_class_fallback: zero_shot"):
        cones.set_classnames(NEW)
    assert cones.classnames == NAMES
    nodense = tiny_clip()
    monkeypatch.setattr(nodense, "supports_visual_prompts", False)
    with pytest.raises(LearnerError, match=r"dense patch tokens.*Use a CLIP ViT model"):
        TMML().setup(nodense, NAMES)
    tmml = TMML()
    tmml.setup(bb, NAMES)
    with pytest.raises(LearnerError, match=r"feature_cache: false"):
        tmml.logits(torch.randn(2, bb.embed_dim))


# ------------------------------------------------------------------------------------ ConES specifics


def test_cones_new_classes_fall_back_and_training_never_calls_the_text_encoder(bb, monkeypatch) -> None:
    images = _images(bb)
    for fallback in ("zero_shot", "transform"):
        cones = ConES(new_class_fallback=fallback)
        cones.setup(bb, NAMES)
        with torch.no_grad():
            cones.concepts.add_(0.3 * torch.randn_like(cones.concepts))
            if fallback == "transform":
                cones.transform.weight.add_(0.1 * torch.randn_like(cones.transform.weight))
        zs = ZeroShot(template="a photo of a {}.")
        zs.setup(bb, NAMES[:1] + NEW)
        cones.set_classnames(NAMES[:1] + NEW)
        feats = cones.text_features()
        torch.testing.assert_close(feats[0], cones.concepts[0])  # known class keeps its searched embedding
        expected = zs.text_features()[1:]
        if fallback == "transform":
            expected = cones.transform(expected)
        torch.testing.assert_close(feats[1:], expected, rtol=1e-5, atol=1e-5)
    cones = ConES()
    cones.setup(bb, NAMES)
    calls = []
    monkeypatch.setattr(type(bb), "encode_text_embeddings", lambda *a, **k: calls.append(1))
    cones.train()
    loss = cones.loss(cones(images), torch.tensor([0, 1, 2]), None)
    loss.backward()
    assert not calls and cones.concepts.grad is not None


def test_transform_fit_loss() -> None:
    a = torch.randn(5, 8)
    assert float(transform_fit_loss(a, 3 * a)) == pytest.approx(0.0, abs=1e-6)
    assert float(transform_fit_loss(a, -a)) == pytest.approx(2.0, abs=1e-6)


def test_cones_stage2_fits_coop_context_to_saved_concepts(bb, tmp_path) -> None:
    cones = ConES()
    cones.setup(bb, NAMES)
    with torch.no_grad():
        cones.concepts.add_(0.5 * torch.randn(cones.concepts.shape, generator=torch.Generator().manual_seed(1)))
    path = cones.save_prompts(tmp_path / "prompts.safetensors")
    before = ConESPromptTuning(fit_steps=0, concepts_from=str(path))
    before.setup(bb, NAMES)
    after = ConESPromptTuning(fit_steps=30, fit_lr=0.05, concepts_from=str(path))
    after.setup(bb, NAMES)
    assert after.fit_cosine > before.fit_cosine + 0.05
    with pytest.raises(LearnerError, match=r"no concept embedding for \['purple ring'"):
        ConESPromptTuning(concepts_from=str(path)).setup(bb, NEW)
    with pytest.raises(LearnerError, match="does not exist"):
        ConESPromptTuning(concepts_from=str(tmp_path / "nope.safetensors")).setup(bb, NAMES)


# ------------------------------------------------------------------------------------ TMML specifics


def test_contrastive_alignment_loss() -> None:
    x = torch.randn(6, 8)
    labels = torch.arange(6)
    aligned = contrastive_alignment_loss(x, x, labels, 0.07)
    shuffled = contrastive_alignment_loss(x, x.roll(1, 0), labels, 0.07)
    assert aligned.dim() == 0 and float(aligned) < float(shuffled)
    # unique labels: CLIP's symmetric loss
    import torch.nn.functional as F

    img, txt = F.normalize(x, dim=-1), F.normalize(x.roll(1, 0), dim=-1)
    sim = img @ txt.t() / 0.07
    clip = 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels))
    torch.testing.assert_close(shuffled, clip)
    # duplicate labels: both same-label texts are targets
    same = contrastive_alignment_loss(x[:2], x[[1, 0]], torch.tensor([3, 3]), 0.07)
    assert float(same) < float(contrastive_alignment_loss(x[:2], x[[1, 0]], torch.tensor([3, 4]), 0.07))


def test_attend_is_class_specific_pooling() -> None:
    tokens = torch.eye(3).unsqueeze(0)  # three orthogonal patch tokens
    pooled = attend(torch.eye(3)[:2], tokens, temperature=1e-3)
    torch.testing.assert_close(pooled[0], torch.eye(3)[:2], atol=1e-4, rtol=0)


def test_tmml_prompts_differ_per_class_and_image(bb) -> None:
    tmml = TMML(image_chunk=2)
    tmml.setup(bb, NAMES)
    with torch.no_grad():
        tmml.meta_net[2].weight.normal_(0, 0.1)
    feats = tmml.encode_images(_images(bb, 3))
    assert feats.shape == (3, 1 + bb.grid_size[0] * bb.grid_size[1], bb.embed_dim)
    with torch.no_grad():
        text = tmml.prompted_text_features(feats[:, 1:])
    assert text.shape == (3, len(NAMES), bb.embed_dim)
    assert not torch.allclose(text[0], text[1])
    one = TMML(image_chunk=1)
    one.setup(bb, NAMES)
    one.load_state_dict(tmml.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(one.prompted_text_features(feats[:, 1:]), text)  # chunking changes nothing


# ------------------------------------------------------------------------------------ optimiser groups


def test_two_learning_rates_through_the_optimiser_config(bb) -> None:
    dept = DePT(n_ctx=4, rank=2, lowrank_lr_scale=0.25)
    dept.setup(bb, NAMES)
    module = PromptClassifier(bb, dept, optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9))
    module._trainer = SimpleNamespace(max_epochs=3)
    conf = module.configure_optimizers()
    groups = conf["optimizer"].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-5, 1e-5])  # warm-up epoch: warmup_lr for each group
    assert [g["initial_lr"] for g in groups] == pytest.approx([0.01, 0.0025])
    assert {id(p) for p in groups[1]["params"]} == {id(dept.lowrank.lowrank_a), id(dept.lowrank.lowrank_b)}
    assert "lr_scale" not in groups[1]
    coop = CoOp(n_ctx=2)
    coop.setup(bb, NAMES)
    single = PromptClassifier(bb, coop, optimizer=lambda params: torch.optim.SGD(params, lr=0.01))
    single._trainer = SimpleNamespace(max_epochs=3)
    assert len(single.configure_optimizers()["optimizer"].param_groups) == 1


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", ["dept/toy_budget16.yaml", "ept/toy_budget16.yaml", "cones/transform.yaml", "tmml/default.yaml"]
)
def test_learner_trains_one_epoch_through_the_cli(config, tmp_path) -> None:
    result = run_experiment(
        "fit",
        [
            "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(CONFIGS / "learners" / config),
            "--seeds", "[1]", "--trainer.max_epochs", "1", "--model.warmup_epochs", "0", "--results_dir", str(tmp_path / "results"),
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--data.init_args.dataset.init_args.per_class", "[2, 1, 2]", "--data.init_args.shots", "2",
        ],
        show_summary=False,
    )
    row = result["per_seed"][0]
    assert result["learner"] == config.split("/")[0] and row["epochs"] == 1
    assert 0 <= row["metrics"]["hm"] <= 100 and Path(row["prompts"]).is_file()


def test_cones_stage2_runs_from_a_cones_run(tmp_path) -> None:
    common = [
        "--config", str(CONFIGS / "quickstart.yaml"), "--seeds", "[1]", "--trainer.max_epochs", "1",
        "--model.warmup_epochs", "0", "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.dataset.init_args.per_class", "[2, 1, 2]", "--data.init_args.shots", "2",
    ]
    first = run_experiment(
        "fit", [*common, "--config", str(CONFIGS / "learners/cones/default.yaml"), "--model.warmup_epochs", "0"],
        show_summary=False,
    )
    prompts = first["per_seed"][0]["prompts"]
    second = run_experiment(
        "fit",
        [*common, "--config", str(CONFIGS / "learners/cones/stage2.yaml"), "--model.learner.init_args.concepts_from",
         prompts, "--model.learner.init_args.fit_steps", "5", "--model.warmup_epochs", "0"],
        show_summary=False,
    )
    assert second["learner"] == "cones_stage2" and 0 <= second["per_seed"][0]["metrics"]["hm"] <= 100
