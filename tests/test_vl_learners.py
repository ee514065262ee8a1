"""VPT, IVLP, MaPLe and PromptSRC on the tiny random CLIP: contract, invariants, losses, aggregation, import.

Faithfulness against the reference code itself is in ``tests/test_vl_reference.py`` (fixtures made by
running the reference repositories); here the invariants and the reference's names/shapes for import.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones.base import BackboneError
from vlprompt.learners.base import cosine_logits
from vlprompt.learners.prompts.layers import ClassPrompts, template_features, text_features
from vlprompt.learners.base import LearnerError
from vlprompt.learners.coop import CoOp
from vlprompt.learners.ivlp import IVLP
from vlprompt.learners.maple import MaPLe
from vlprompt.learners.promptsrc import PromptSRC
from vlprompt.learners.vpt import VPT
from vlprompt.learners.zero_shot import ZeroShot
from vlprompt.metrics.losses import feature_l1_loss, logit_kl_loss
from vlprompt.learners.testing import check_learner, tiny_clip, torch_threads
from vlprompt.learners.prompts.vl_layers import GaussianPromptAggregation, gaussian_epoch_weights

NAMES = ["red circle", "blue square", "green triangle"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def bb():
    return tiny_clip()


@pytest.fixture(scope="module")
def images(bb) -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _setup(cls, bb, seed: int = 0, **kw):
    torch.manual_seed(seed)
    learner = cls(**kw)
    learner.setup(bb, NAMES)
    return learner.eval()


# ------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (VPT, {"n_ctx": 3, "prompt_depth": 1}),
        (IVLP, {"n_ctx_text": 4, "n_ctx_vision": 2, "prompt_depth_text": 2, "prompt_depth_vision": 1, "ctx_init": None}),
        (MaPLe, {"n_ctx": 2, "prompt_depth": 1}),
        (PromptSRC, {"prompt_depth_text": 1, "prompt_depth_vision": 2, "gpa": False}),
    ],
    ids=["vpt-shallow", "ivlp-random", "maple-shallow", "promptsrc-mixed"],
)
def test_variants_honour_contract(cls, kwargs, bb) -> None:
    check_learner(cls, init_kwargs=kwargs, backbone=bb, steps=2)


# ------------------------------------------------------------------------------------------ invariants


def test_vpt_empty_prompt_set_is_zero_shot(bb, images) -> None:
    vpt = _setup(VPT, bb, n_ctx=0)
    zs = _setup(ZeroShot, bb)
    assert not vpt.trainable and not list(vpt.parameters())
    with torch.no_grad():
        assert torch.allclose(vpt(images), zs(images), atol=1e-5)


def test_vpt_depth_one_is_shallow_and_deep_prompts_replace_the_tail(bb, images) -> None:
    shallow = _setup(VPT, bb, n_ctx=3, prompt_depth=1)
    deep = _setup(VPT, bb, n_ctx=3, prompt_depth=2)
    assert not list(shallow.visual.deep.prompts)
    with torch.no_grad():
        deep.visual.shallow.copy_(shallow.visual.shallow)
        expected = bb.encode_image(images, prompts=shallow.visual.shallow)
        assert torch.allclose(shallow.encode_images(images), expected, atol=1e-6)
        # deep prompts equal to what layer 0 outputs at those positions would not be a no-op, but the
        # layer-1 replacement must change the features
        assert not torch.allclose(deep.encode_images(images), expected, atol=1e-4)


def test_ivlp_depth_one_is_coop_text_plus_vpt_shallow_image(bb, images) -> None:
    ivlp = _setup(IVLP, bb, n_ctx_text=4, n_ctx_vision=2, prompt_depth_text=1, prompt_depth_vision=1)
    coop = _setup(CoOp, bb, n_ctx=4, ctx_init="a photo of a")
    vpt = _setup(VPT, bb, n_ctx=2, prompt_depth=1)
    with torch.no_grad():
        vpt.visual.shallow.copy_(ivlp.visual.shallow)
        assert torch.allclose(ivlp.text_features(), coop.text_features(), atol=1e-6)
        assert torch.allclose(ivlp.encode_images(images), vpt.encode_images(images), atol=1e-6)
        # before training (ctx = "a photo of a"), IVLP's text side is zero-shot CLIP's
        zs = template_features(bb, NAMES, ["a photo of a {}."])
        assert torch.allclose(F.normalize(ivlp.text_features(), dim=-1), zs, atol=1e-5)


def test_ivlp_and_maple_keep_the_rest_of_ctx_init_as_fixed_text(bb) -> None:
    """n_ctx=2 from "a photo of a": the prompt is [SOS] ctx ctx "of a {class}." [EOS] (reference trap)."""
    for learner in (_setup(IVLP, bb, n_ctx_text=2), _setup(MaPLe, bb, n_ctx=2)):
        full = bb.tokenize([f"a photo of a {n}." for n in NAMES])
        assert torch.equal(learner.prompts.tokens, full)
        emb = bb.embed_tokens(full)
        assert torch.allclose(learner.prompts(learner.ctx), emb, atol=0)


def test_maple_depth_one_is_shallow_maple(bb, images) -> None:
    maple = _setup(MaPLe, bb, n_ctx=2, prompt_depth=1)
    assert len(maple.projections) == 0 and len(maple.text_deep.prompts) == 0
    with torch.no_grad():
        shallow = maple.proj(maple.ctx)
        assert torch.allclose(maple.encode_images(images), bb.encode_image(images, prompts=shallow), atol=1e-6)
        emb = maple.prompts(maple.ctx)
        assert torch.allclose(maple.text_features(), text_features(bb, emb, maple.prompts.pool_index), atol=1e-6)


def test_maple_coupling_projects_text_prompts_and_zero_coupling_gives_zero_visual_prompts(bb, images) -> None:
    maple = _setup(MaPLe, bb, n_ctx=2, prompt_depth=2)
    # the J-1 layer projections start as copies of one Linear (reference _get_clones)
    with torch.no_grad():
        shallow, deep = maple.visual_prompts()
        f = maple.projections[0]
        assert torch.allclose(deep[1], maple.text_deep.prompts[0] @ f.weight.t() + f.bias)
        assert torch.allclose(shallow, maple.ctx @ maple.proj.weight.t() + maple.proj.bias)
        text_before = maple.text_features()
        for lin in [maple.proj, *maple.projections]:
            lin.weight.zero_()
            lin.bias.zero_()
        zeros = torch.zeros(2, bb.vision_width)
        expected = bb.encode_image(images, prompts=zeros, deep_prompts=[None, zeros])
        assert torch.allclose(maple.encode_images(images), expected, atol=1e-6)
        assert torch.allclose(maple.text_features(), text_before)  # text side does not depend on the coupling


def test_maple_layer_projections_start_as_copies_of_one_linear(bb) -> None:
    maple = MaPLe(n_ctx=2, prompt_depth=2)
    maple.setup(bb, NAMES)
    assert maple.projections[0].weight.shape == (bb.vision_width, bb.text_width)
    maple.build(bb, NAMES)  # rebuild with depth 2: one projection; check copies with a manual depth-3 build
    maple.depth = 3
    maple.prompt_depth = 3
    import types

    fake = types.SimpleNamespace(text_layers=3, vision_layers=3, text_width=bb.text_width, vision_width=bb.vision_width,
                                 tokenize=bb.tokenize, embed_tokens=bb.embed_tokens, pool_index=bb.pool_index,
                                 text_end=bb.text_end, text_start=bb.text_start)
    maple.build(fake, NAMES)
    assert len(maple.projections) == 2
    assert torch.equal(maple.projections[0].weight, maple.projections[1].weight)
    assert not torch.equal(maple.proj.weight, maple.projections[0].weight)


def test_promptsrc_without_regularisers_and_gpa_is_ivlp(bb, images) -> None:
    kw = dict(n_ctx_text=4, n_ctx_vision=4, prompt_depth_text=2, prompt_depth_vision=2)
    src = _setup(PromptSRC, bb, seed=3, text_loss_weight=0, image_loss_weight=0, kl_loss_weight=0, gpa=False, **kw)
    ivlp = _setup(IVLP, bb, seed=3, **kw)
    assert src.learned_state().keys() == ivlp.learned_state().keys()
    for k, v in ivlp.learned_state().items():
        assert torch.equal(src.learned_state()[k], v)
    targets = torch.tensor([0, 1, 2])
    for learner in (src, ivlp):
        learner.train()
    feats_s, feats_i = src.encode_images(images), ivlp.encode_images(images)
    logits_s, logits_i = src.logits(feats_s), ivlp.logits(feats_i)
    assert torch.allclose(logits_s, logits_i, atol=1e-6)
    assert torch.allclose(src.loss(logits_s, targets, feats_s), ivlp.loss(logits_i, targets, feats_i), atol=1e-6)
    src.on_train_epoch_end(0, 1)
    src.on_fit_end()
    assert torch.equal(src.ctx, ivlp.ctx)


def test_promptsrc_loss_is_the_sum_of_its_terms(bb, images) -> None:
    src = _setup(PromptSRC, bb, prompt_depth_text=2, prompt_depth_vision=2, gpa=False).train()
    targets = torch.tensor([0, 1, 2])
    feats = src.encode_images(images)
    logits = src.logits(feats)
    text = src._stash_text.detach()
    loss = src.loss(logits, targets, feats)
    with torch.no_grad():
        frozen_img = bb.encode_image(images)
        frozen_txt = template_features(bb, NAMES, src.templates, normalize_each=False)
        zs = bb.logit_scale * F.normalize(frozen_img, dim=-1) @ frozen_txt.t()
        expected = (
            F.cross_entropy(logits, targets)
            + 25 * (F.normalize(text, dim=-1) - frozen_txt).abs().mean()
            + 10 * (F.normalize(feats, dim=-1) - F.normalize(frozen_img, dim=-1)).abs().mean()
            + (F.softmax(zs, -1) * (F.log_softmax(zs, -1) - F.log_softmax(logits, -1))).sum() / logits.numel()
        )
    assert torch.allclose(loss.detach(), expected, atol=1e-5)
    loss.backward()
    assert src.ctx.grad is not None and src.visual.shallow.grad is not None
    assert not any(p.grad is not None for p in bb.parameters())
    # the frozen text target is the mean of RAW features over the 60 templates, then normalised
    raw = torch.stack([bb.encode_text(bb.tokenize([t.format(n) for t in src.templates])).mean(0) for n in NAMES])
    assert len(src.templates) == 60 and torch.allclose(frozen_txt, F.normalize(raw, dim=-1), atol=1e-5)


def test_promptsrc_loss_without_forward_is_a_clear_error(bb, images) -> None:
    src = _setup(PromptSRC, bb, prompt_depth_text=1, prompt_depth_vision=1).train()
    feats = torch.randn(3, bb.embed_dim)
    with pytest.raises(LearnerError, match="encode_images"):
        src.loss(torch.randn(3, 3), torch.tensor([0, 1, 2]), feats)


def test_promptsrc_gpa_replaces_prompts_by_the_weighted_average(bb) -> None:
    src = _setup(PromptSRC, bb, prompt_depth_text=1, prompt_depth_vision=1, gpa_mean=2, gpa_std=1)
    snapshots = []
    for epoch in range(3):
        with torch.no_grad():
            for p in src.parameters():
                p.add_(1.0 + epoch)
        snapshots.append({k: v.clone() for k, v in src.learned_state().items()})
        src.on_train_epoch_end(epoch, 3)
    src.on_fit_end()
    w = gaussian_epoch_weights(3, 2, 1)
    for k, v in src.learned_state().items():
        expected = sum(float(w[e]) * snapshots[e][k] for e in range(3))
        assert torch.allclose(v, expected, atol=1e-6), k


def test_promptsrc_gpa_incomplete_run_keeps_last_prompts(bb) -> None:
    src = _setup(PromptSRC, bb, prompt_depth_text=1, prompt_depth_vision=1)
    src.on_train_epoch_end(0, 3)
    before = src.learned_state()
    src.on_fit_end()
    for k, v in src.learned_state().items():
        assert torch.equal(v, before[k])


# ------------------------------------------------------------------------------------------ pure functions


def test_gaussian_epoch_weights_match_the_reference_formula() -> None:
    w = gaussian_epoch_weights(20, 15, 1)
    g = [math.exp(-0.5 * ((e - 15) / 1) ** 2) / math.sqrt(2 * math.pi) for e in range(1, 21)]
    ref = torch.tensor(g, dtype=torch.float64) / sum(g)
    assert torch.allclose(w, ref) and abs(float(w.sum()) - 1) < 1e-12 and int(w.argmax()) == 14
    with pytest.raises(ValueError, match="gpa_std"):
        gaussian_epoch_weights(5, 3, 0)


def test_gaussian_aggregation_restarts_on_a_new_fit() -> None:
    agg = GaussianPromptAggregation(1, 1)
    agg.update({"a": torch.ones(2)}, 0, 2)
    assert agg.result() is None
    agg.update({"a": torch.ones(2) * 3}, 1, 2)
    w = gaussian_epoch_weights(2, 1, 1)
    assert torch.allclose(agg.result()["a"], torch.full((2,), float(w[0] + 3 * w[1]), dtype=torch.float32))
    agg.update({"a": torch.zeros(2)}, 0, 2)  # epoch 0 again: a new fit
    assert agg.result() is None


def test_feature_l1_loss_normalises_and_averages() -> None:
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    assert torch.isclose(feature_l1_loss(a, b), torch.tensor((abs(0.6 - 1) + 0.8) / 2))
    assert feature_l1_loss(a * 7, a).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="shapes"):
        feature_l1_loss(a, torch.ones(2, 2))


def test_logit_kl_loss_is_kl_of_zero_shot_to_prompted_over_numel() -> None:
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    zs = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    p = F.softmax(zs, -1)
    expected = (p * (p.log() - F.log_softmax(logits, -1))).sum() / 20
    assert torch.allclose(logit_kl_loss(logits, zs), expected, atol=1e-6)
    assert logit_kl_loss(zs, zs).item() == pytest.approx(0.0, abs=1e-6)
    t = 2.0
    pt = F.softmax(zs / t, -1)
    expected_t = (pt * (pt.log() - F.log_softmax(logits / t, -1))).sum() * t * t / 20
    assert torch.allclose(logit_kl_loss(logits, zs, temperature=t), expected_t, atol=1e-6)


# ------------------------------------------------------------------------------------------ bad input


def test_bad_inputs_are_clear_errors(bb) -> None:
    with pytest.raises(LearnerError, match="prompt_depth=3 .* 2 transformer layers"):
        _setup(VPT, bb, prompt_depth=3)
    with pytest.raises(LearnerError, match="prompt_depth_text=5"):
        _setup(IVLP, bb, prompt_depth_text=5)
    with pytest.raises(LearnerError, match="prompt_depth=0"):
        _setup(MaPLe, bb, prompt_depth=0)
    with pytest.raises(LearnerError, match="n_ctx=5"):
        _setup(MaPLe, bb, n_ctx=5)  # "a photo of a" has 4 tokens
    with pytest.raises(LearnerError, match="does not fit the context length"):
        long = IVLP(n_ctx_text=4, ctx_init=None, prompt_depth_text=1, prompt_depth_vision=1)
        long.setup(bb, ["very " * 30 + "long name"])
    with pytest.raises(LearnerError, match="n_ctx_vision"):
        IVLP(n_ctx_vision=-1)


def test_visual_learners_refuse_a_backbone_without_transformer_image_tower(bb, monkeypatch) -> None:
    monkeypatch.setattr(bb, "supports_visual_prompts", False)
    for cls in (VPT, IVLP, MaPLe, PromptSRC):
        with pytest.raises(BackboneError, match="no plain transformer image tower"):
            cls().setup(bb, NAMES)


# ------------------------------------------------------------------------------------------ reference import


def _maple_reference_state(learner: MaPLe, *, depth: int | None = None, n_ctx: int | None = None, wt=None, wv=None):
    n = n_ctx or learner.n_ctx
    wt = wt or learner.backbone.text_width
    wv = wv or learner.backbone.vision_width
    depth = depth or learner.depth
    g = torch.Generator().manual_seed(5)
    state = {
        "prompt_learner.ctx": torch.randn(n, wt, generator=g),
        "prompt_learner.proj.weight": torch.randn(wv, wt, generator=g),
        "prompt_learner.proj.bias": torch.randn(wv, generator=g),
        "prompt_learner.token_prefix": torch.randn(3, 1, wt),
        "prompt_learner.token_suffix": torch.randn(3, 29, wt),
        "image_encoder.conv1.weight": torch.randn(wv, 3, 8, 8),  # frozen CLIP weights saved alongside
        "logit_scale": torch.tensor(4.6),
    }
    for i in range(depth - 1):
        state[f"prompt_learner.compound_prompts_text.{i}"] = torch.randn(n, wt, generator=g)
        state[f"prompt_learner.compound_prompt_projections.{i}.weight"] = torch.randn(wv, wt, generator=g)
        state[f"prompt_learner.compound_prompt_projections.{i}.bias"] = torch.randn(wv, generator=g)
    return state


def _ivlp_reference_state(nt, nv, dt, dv, wt, wv, *, with_text_ctx: bool = True):
    g = torch.Generator().manual_seed(6)
    state = {"image_encoder.VPT": torch.randn(nv, wv, generator=g)}
    if with_text_ctx:
        state["prompt_learner.ctx"] = torch.randn(nt, wt, generator=g)
        state["prompt_learner.token_prefix"] = torch.randn(3, 1, wt)
    for i in range(1, dt):
        state[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = torch.randn(nt, wt, generator=g)
    for i in range(1, dv):
        state[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = torch.randn(nv, wv, generator=g)
    state["image_encoder.transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(3 * wv, wv)
    return state


def _load(learner, mapped: dict[str, torch.Tensor]) -> None:
    own = dict(learner.named_parameters())
    assert set(mapped) == set(learner.learned_state()), (sorted(mapped), sorted(learner.learned_state()))
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v)


def test_maple_imports_reference_names(bb) -> None:
    maple = _setup(MaPLe, bb, n_ctx=2, prompt_depth=2)
    state = _maple_reference_state(maple)
    mapped = maple.import_reference_state(state)
    _load(maple, mapped)
    assert torch.equal(maple.ctx, state["prompt_learner.ctx"])
    assert torch.equal(maple.text_deep.prompts[0], state["prompt_learner.compound_prompts_text.0"])
    assert torch.equal(maple.projections[0].weight, state["prompt_learner.compound_prompt_projections.0.weight"])
    with pytest.raises(LearnerError, match="n_ctx"):
        maple.import_reference_state(_maple_reference_state(maple, n_ctx=3))
    with pytest.raises(LearnerError, match="prompt_depth: 3"):
        maple.import_reference_state(_maple_reference_state(maple, depth=3))
    with pytest.raises(LearnerError, match="width"):
        maple.import_reference_state(_maple_reference_state(maple, wt=512, wv=768))
    with pytest.raises(LearnerError, match="'ivlp'"):
        maple.import_reference_state(_ivlp_reference_state(2, 2, 2, 2, 32, 32))


def test_ivlp_and_promptsrc_import_reference_names(bb) -> None:
    for cls in (IVLP, PromptSRC):
        learner = _setup(cls, bb, n_ctx_text=4, n_ctx_vision=2, prompt_depth_text=2, prompt_depth_vision=2)
        state = _ivlp_reference_state(4, 2, 2, 2, 32, 32)
        state["prompt_learner.ZS_image_encoder.conv1.weight"] = torch.randn(32, 3, 8, 8)  # PromptSRC's frozen copy
        _load(learner, learner.import_reference_state(state))
        assert torch.equal(learner.text_deep.prompts[0], state["text_encoder.transformer.resblocks.1.VPT_shallow"])
        assert torch.equal(learner.visual.deep.prompts[0], state["image_encoder.transformer.resblocks.1.VPT_shallow"])
        assert torch.equal(learner.visual.shallow, state["image_encoder.VPT"])
        with pytest.raises(LearnerError, match="set the prompt depth to 2"):
            _setup(cls, bb, n_ctx_text=4, n_ctx_vision=2, prompt_depth_text=1, prompt_depth_vision=2).import_reference_state(state)
        with pytest.raises(LearnerError, match=r"shape \(2, 32\).*\(4, 32\)"):
            _setup(cls, bb, n_ctx_text=4, n_ctx_vision=4, prompt_depth_text=2, prompt_depth_vision=2).import_reference_state(state)
        with pytest.raises(LearnerError, match="'maple'"):
            learner.import_reference_state(_maple_reference_state(_setup(MaPLe, bb, prompt_depth=2)))


def test_vpt_imports_reference_names(bb) -> None:
    vpt = _setup(VPT, bb, n_ctx=3, prompt_depth=2)
    state = _ivlp_reference_state(0, 3, 1, 2, 32, 32, with_text_ctx=False)
    _load(vpt, vpt.import_reference_state(state))
    assert torch.equal(vpt.visual.deep.prompts[0], state["image_encoder.transformer.resblocks.1.VPT_shallow"])
    with pytest.raises(LearnerError, match="'ivlp'"):
        vpt.import_reference_state(_ivlp_reference_state(2, 3, 2, 2, 32, 32))
    with pytest.raises(LearnerError, match="set the prompt depth to 2"):
        _setup(VPT, bb, n_ctx=3, prompt_depth=1).import_reference_state(state)


def test_ivlp_language_only_shallow_imports_a_ctx_only_state(bb) -> None:
    ivlp = _setup(IVLP, bb, n_ctx_text=4, n_ctx_vision=0, prompt_depth_text=1)
    ctx = torch.randn(4, 32)
    assert torch.equal(ivlp.import_reference_state({"prompt_learner.ctx": ctx})["ctx"], ctx)
    with pytest.raises(LearnerError, match="'coop'"):
        _setup(IVLP, bb, n_ctx_text=4, n_ctx_vision=2, prompt_depth_text=1, prompt_depth_vision=1).import_reference_state(
            {"prompt_learner.ctx": ctx}
        )


def test_reference_name_helpers() -> None:
    from vlprompt.learners.prompts.vl_layers import PromptConfigError, guess_reference_learner, reference_keys, resolve_depth

    t = torch.zeros(1)
    state = {
        "module.prompt_learner.ctx": t, "prompt_learner.token_prefix": t, "prompt_learner.ZS_image_encoder.proj": t,
        "image_encoder.VPT": t, "image_encoder.conv1.weight": t, "text_encoder.transformer.resblocks.3.VPT_shallow": t,
        "text_encoder.positional_embedding": t, "logit_scale": t,
    }
    assert set(reference_keys(state)) == {"ctx", "image_encoder.VPT", "text_encoder.transformer.resblocks.3.VPT_shallow"}
    assert guess_reference_learner({"ctx", "proj.weight"}) == "maple"
    assert guess_reference_learner({"ctx", "meta_net.linear1.weight"}) == "cocoop"
    assert guess_reference_learner({"ctx"}) == "coop"
    assert guess_reference_learner({"image_encoder.VPT"}) == "vpt"
    assert guess_reference_learner({"ctx", "image_encoder.VPT"}) == "ivlp"
    with pytest.raises(PromptConfigError, match="not a tensor"):
        reference_keys({"ctx": [1, 2]})
    assert resolve_depth(None, paper=9, layers=4, name="d", owner="x") == 4
    assert resolve_depth(None, paper=9, layers=12, name="d", owner="x") == 9
    with pytest.raises(PromptConfigError, match="between 1"):
        resolve_depth(13, paper=9, layers=12, name="d", owner="x")


def test_class_prompts_lead_text(bb) -> None:
    prompts = ClassPrompts(bb, NAMES, 2, lead_text="a photo of a")
    assert torch.equal(prompts.tokens, bb.tokenize([f"a photo of a {n}." for n in NAMES]))
    with pytest.raises(ValueError, match="fewer than n_ctx"):
        ClassPrompts(bb, NAMES, 5, lead_text="a photo of a")
    with pytest.raises(ValueError, match="class_token_position='end'"):
        ClassPrompts(bb, NAMES, 2, lead_text="a photo of a", position="front")


def test_promptsrc_aggregate_survives_a_state_dict_round_trip(bb, tmp_path) -> None:
    """Resume checkpoints hold the learner's state: a run interrupted after epoch 0 and restored into a new
    learner ends with the same Gaussian aggregate as an uninterrupted one (loaded with weights_only)."""
    kw = dict(prompt_depth_text=2, prompt_depth_vision=2, gpa_mean=1.0, gpa_std=1.0)
    full, first = _setup(PromptSRC, bb, seed=5, **kw), _setup(PromptSRC, bb, seed=5, **kw)
    for learner in (full, first):
        learner.on_train_epoch_end(0, 2)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    resumed = _setup(PromptSRC, bb, seed=9, **kw)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    with torch.no_grad():
        for learner in (full, resumed):
            for p in learner.parameters():
                if p.requires_grad:
                    p.add_(0.5)
    for learner in (full, resumed):
        learner.on_train_epoch_end(1, 2)
        learner.on_fit_end()
    for (name, a), b in zip(full.learned_state().items(), resumed.learned_state().values()):
        assert torch.equal(a, b), name
