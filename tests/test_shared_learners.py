"""TuneVLSeg's joint learners ``shared_separate`` and ``shared_attention`` compute what the reference computes.

The reference (naamiinepal/tunevlseg @7956bcd: ``SharedSeparateLearner``, ``SharedAttnLearner``,
``BaseMultimodalCLIPSeg``) is restated here as a small test-side recipe, on inputs built in the test:

- construction: context ``[J, n, d]`` drawn N(0, 0.02^2) first, then the projector(s), built once and deep-copied
  per layer, in the reference's order: equal seeds must give equal tensors;
- per-layer prompts: ``Linear`` projections of each layer's context (separate), or the halves of a
  ``TransformerEncoderLayer`` applied to ``context[i].unsqueeze(0)`` with ``batch_first=False`` (attention);
- the forward: the context inserted after the start token of the tokenised phrase (sequence kept at the
  context length by dropping tokens before the last one), the hidden states at positions ``1..n`` (text) and
  the last ``n`` positions (image, prompts appended before the pre-LayerNorm) overwritten after every layer
  ``idx < J``, the text pooled at the end token shifted by ``n``; logits ``scale * cos`` of CLIP's pooled features.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vlprompt.learners.base import LearnerError
from vlprompt.learners.shared_attention import SharedAttention
from vlprompt.learners.shared_separate import SharedSeparate
from vlprompt.learners.registry import get_registry
from vlprompt.learners.testing import tiny_clip, torch_threads

NAMES = ["red circle", "blue square", "green_triangle"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def bb():
    return tiny_clip()


def _images() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------------------------ the recipe


def _ref_separate(seed: int, depth: int, n: int, d: int, wt: int, wv: int, *, unified: bool, hidden=None, norm=True):
    """The reference's SharedSeparateLearner parameters: (context [J, n, d], text projections, visual projections)."""
    torch.manual_seed(seed)
    ctx = torch.empty(depth, n, d)
    nn.init.normal_(ctx, std=0.02)

    def proj(out: int) -> nn.Module:
        if hidden is None:
            return nn.Linear(d, out)
        layers = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True))
        nn.init.kaiming_normal_(layers[0].weight.data, nonlinearity="relu")
        layers.append(nn.Linear(hidden, out, bias=not norm))
        if norm:
            layers.append(nn.LayerNorm(out))
        return layers

    def per_layer(single: nn.Module) -> list[nn.Module]:
        return [single] * depth if unified else [copy.deepcopy(single) for _ in range(depth)]

    text = per_layer(proj(wt))
    visual = per_layer(proj(wv))
    return ctx, [text[i](ctx[i]) for i in range(depth)], [visual[i](ctx[i]) for i in range(depth)]


def _ref_attention(seed: int, depth: int, n: int, wt: int, wv: int, **layer_kw):
    """The reference's SharedAttnLearner: (context, text prompts, visual prompts) in eval mode."""
    torch.manual_seed(seed)
    ctx = torch.empty(depth, n, wt + wv)
    nn.init.normal_(ctx, std=0.02)
    single = nn.TransformerEncoderLayer(d_model=wt + wv, **layer_kw)
    layers = [copy.deepcopy(single) for _ in range(depth)]
    text, visual = [], []
    for i in range(depth):
        layers[i].eval()
        y = layers[i](ctx[i].unsqueeze(0)).squeeze(0)
        text.append(y[:, :wt])
        visual.append(y[:, wt:])
    return ctx, text, visual


def _ref_logits(bb, names: list[str], images: torch.Tensor, text: list[torch.Tensor], visual: list[torch.Tensor]) -> torch.Tensor:
    """``BaseMultimodalCLIPSeg``'s text and image paths on the tiny open_clip CLIP, pooled as CLIP pools."""
    clip, depth, n = bb.clip, len(text), text[0].shape[0]
    # text: [SOS] ctx <phrase tokens ...> <last token>, truncated to the context length
    tokens = bb.tokenize([f"{c.replace('_', ' ')}." for c in names])
    emb = clip.token_embedding(tokens)
    length = emb.shape[1]
    mid_last = min(length - n, length) - 1
    x = torch.cat([emb[:, :1], text[0].expand(len(names), -1, -1), emb[:, 1:mid_last], emb[:, -1:]], dim=1)
    x = x + clip.positional_embedding
    for idx, block in enumerate(clip.transformer.resblocks, 1):
        x = block(x, attn_mask=clip.attn_mask)
        if idx < depth:
            x = x.clone()
            x[:, 1 : n + 1] = text[idx]
    x = clip.ln_final(x)
    pool = torch.clamp(tokens.argmax(dim=-1) + n, max=length - 1)
    txt = x[torch.arange(len(names)), pool] @ clip.text_projection
    # image: prompts appended after the patch tokens before ln_pre, the last n tokens overwritten per layer
    vis = clip.visual
    h = vis.conv1(bb.normalize(images))
    h = h.reshape(h.shape[0], h.shape[1], -1).permute(0, 2, 1)
    cls = vis.class_embedding.expand(h.shape[0], 1, -1)
    h = torch.cat([cls, h], dim=1) + vis.positional_embedding
    h = vis.ln_pre(torch.cat([h, visual[0].expand(h.shape[0], -1, -1)], dim=1))
    for idx, block in enumerate(vis.transformer.resblocks, 1):
        h = block(h)
        if idx < depth:
            h = h.clone()
            h[:, -n:] = visual[idx]
    img = vis.ln_post(h[:, 0]) @ vis.proj
    return bb.logit_scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()


def _learner(cls, seed: int, bb, **kw):
    torch.manual_seed(seed)
    learner = cls(**kw)
    learner.setup(bb, NAMES)
    return learner.eval()


# ------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize(
    "kw",
    [
        {"prompt_depth": 2, "shared_dim": 64, "n_ctx": 4},
        {"prompt_depth": 1, "shared_dim": 32, "n_ctx": 2},
        {"prompt_depth": 2, "shared_dim": 8, "n_ctx": 3, "unified_projection": True},
        {"prompt_depth": 2, "shared_dim": 8, "n_ctx": 3, "intermediate_dim": 16, "proj_norm": True},
    ],
)
def test_shared_separate_equals_reference(bb, kw) -> None:
    learner = _learner(SharedSeparate, 11, bb, **kw)
    ctx, text, visual = _ref_separate(
        11, kw["prompt_depth"], kw["n_ctx"], kw["shared_dim"], bb.text_width, bb.vision_width,
        unified=kw.get("unified_projection", False), hidden=kw.get("intermediate_dim"), norm=kw.get("proj_norm", True),
    )
    with torch.no_grad():
        assert torch.equal(learner.joint.context, ctx)
        for ours, ref in zip(learner.joint.text() + learner.joint.visual(), text + visual):
            assert torch.equal(ours, ref)
        ref_logits = _ref_logits(bb, NAMES, _images(), text, visual)
        assert torch.allclose(learner(_images()), ref_logits, atol=1e-5, rtol=1e-5)


def test_recipe_forward_sees_every_layers_prompts(bb) -> None:
    """The comparison above is discriminative: shifting any layer's prompts of either tower moves the logits
    far beyond its tolerance (a scale change would not: the next layer's LayerNorm removes it)."""
    learner = _learner(SharedSeparate, 11, bb, prompt_depth=2, n_ctx=4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        text, visual = learner.joint.text(), learner.joint.visual()
        base = _ref_logits(bb, NAMES, _images(), text, visual)
        for tower in ("text", "visual"):
            for i in range(2):
                t, v = list(text), list(visual)
                moved = t if tower == "text" else v
                moved[i] = moved[i] + 0.05 * torch.randn(moved[i].shape, generator=g)
                assert (_ref_logits(bb, NAMES, _images(), t, v) - base).abs().max() > 1e-2, (tower, i)


@pytest.mark.parametrize("depth,n", [(2, 4), (1, 2)])
def test_shared_attention_equals_reference(bb, depth: int, n: int) -> None:
    layer_kw = {"nhead": 16, "dim_feedforward": 96, "dropout": 0.25, "norm_first": True}
    learner = _learner(SharedAttention, 5, bb, n_ctx=n, prompt_depth=depth, **layer_kw)
    ctx, text, visual = _ref_attention(5, depth, n, bb.text_width, bb.vision_width, **layer_kw)
    with torch.no_grad():
        assert torch.equal(learner.joint.context, ctx)
        for ours, ref in zip(learner.joint.text() + learner.joint.visual(), text + visual):
            assert torch.allclose(ours, ref, atol=1e-6)
        assert torch.allclose(learner(_images()), _ref_logits(bb, NAMES, _images(), text, visual), atol=1e-5, rtol=1e-5)


def test_reference_attention_never_mixes_tokens_but_token_attention_does(bb) -> None:
    """batch_first=False on [1, n, C]: each prompt token attends only to itself; token_attention mixes them."""
    for mixing in (False, True):
        learner = _learner(SharedAttention, 0, bb, n_ctx=3, dim_feedforward=32, token_attention=mixing)
        with torch.no_grad():
            before = learner.joint.text()[0].clone()
            learner.joint.context[0, 0] += 1.0
            after = learner.joint.text()[0]
        assert not torch.allclose(before[0], after[0])
        assert torch.allclose(before[1:], after[1:]) is (not mixing)


def test_defaults_are_the_reference_configs() -> None:
    sep, att = SharedSeparate(), SharedAttention()
    assert (sep.n_ctx, sep.shared_dim, sep.prompt_depth, sep.unified_projection, sep.intermediate_dim) == (4, 64, 1, False, None)
    assert (att.n_ctx, att.prompt_depth, att.nhead, att.dim_feedforward, att.dropout, att.norm_first) == (4, 1, 16, 1536, 0.25, True)
    assert not att.unified_projection and not att.token_attention
    registry = get_registry("learners")
    assert registry.get("shared_separate") is SharedSeparate and registry.get("shared_attention") is SharedAttention
    assert SharedSeparate.family == SharedAttention.family == "multimodal"
    assert set(SharedSeparate.tasks) == set(SharedAttention.tasks) == {"classification", "segmentation"}


# ------------------------------------------------------------------------------------ one projector call per step


def test_dropout_projection_is_shared_by_both_towers_in_a_training_step(bb) -> None:
    learner = _learner(SharedAttention, 1, bb, n_ctx=2, prompt_depth=2, dim_feedforward=32, dropout=0.5).train()
    joint = learner.joint
    torch.manual_seed(9)
    visual = joint.visual()
    text = joint.text()  # the other half of the same call (same dropout masks)
    torch.manual_seed(9)
    ref_text, ref_visual = joint.project()
    for a, b in zip(text + visual, ref_text + ref_visual):
        assert torch.equal(a, b)
    assert not torch.equal(joint.text()[0], text[0]), "a kept half is used once; the next call draws anew"
    # the learner's tensors change between the towers' calls (an optimiser step): the kept half is not reused
    joint.visual()
    with torch.no_grad():
        joint.context.add_(1.0)
    torch.manual_seed(9)
    got = joint.text()
    torch.manual_seed(9)
    fresh, _ = joint.project()
    assert all(torch.equal(a, b) for a, b in zip(got, fresh))
    # eval: deterministic, nothing kept
    learner.eval()
    with torch.no_grad():
        a, b = joint.text(), joint.text()
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not joint._kept
    copy.deepcopy(learner.train())  # kept halves hold graphs: copying must still work
    joint.visual()
    copy.deepcopy(learner)


def test_training_step_backpropagates_into_every_tensor(bb) -> None:
    for cls in (SharedSeparate, SharedAttention):
        learner = _learner(cls, 2, bb, n_ctx=2, prompt_depth=2).train()
        logits = learner(_images())
        F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
        missing = [k for k, p in learner.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{cls.__name__}: no gradient for {missing}"


# ------------------------------------------------------------------------------------ errors


def test_bad_configurations_fail_before_work(bb) -> None:
    with pytest.raises(LearnerError, match="prompt_depth=3 but the backbone's tower has 2"):
        _learner(SharedSeparate, 0, bb, prompt_depth=3)
    with pytest.raises(LearnerError, match="nhead=5 must divide the joint width 64"):
        _learner(SharedAttention, 0, bb, nhead=5)
    with pytest.raises(LearnerError, match="shared_dim=0"):
        _learner(SharedSeparate, 0, bb, shared_dim=0)
    with pytest.raises(LearnerError, match="n_ctx=0"):
        SharedSeparate(n_ctx=0)
    with pytest.raises(LearnerError, match="prompt_depth=0"):
        SharedAttention(prompt_depth=0)


# ------------------------------------------------------------------------------------ toy CLIP and the CLI

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "learners"


@pytest.mark.parametrize("name", ["shared_separate", "shared_attention"])
def test_toy_configs_build_on_the_toy_clip(name: str) -> None:
    from vlprompt.backbones.toyclip import ToyCLIP

    toy = ToyCLIP()
    cfg = yaml.safe_load((CONFIGS / name / "toy_deep4.yaml").read_text())["model"]["learner"]
    assert cfg["class_path"] == name
    learner = get_registry("learners").get(name)(**cfg["init_args"])
    learner.setup(toy, NAMES)
    assert learner.depth == 4 == min(toy.text_layers, toy.vision_layers)
    with torch.no_grad():
        logits = learner.eval()(torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    too_deep = get_registry("learners").get(name)(**{**cfg["init_args"], "prompt_depth": 5})
    with pytest.raises(LearnerError, match="prompt_depth=5 but the backbone's tower has 4"):
        too_deep.setup(toy, NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shared_separate", "shared_attention"])
def test_learner_trains_one_epoch_through_the_cli(name: str, tmp_path) -> None:
    from vlprompt.runs.driver import run_experiment

    result = run_experiment(
        "fit",
        [
            "--config", str(CONFIGS.parent / "quickstart.yaml"), "--config", str(CONFIGS / name / "toy_deep4.yaml"),
            "--seeds", "[1]", "--trainer.max_epochs", "1", "--results_dir", str(tmp_path / "results"),
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--data.init_args.dataset.init_args.per_class", "[2, 1, 2]", "--data.init_args.shots", "2",
        ],
        show_summary=False,
    )
    row = result["per_seed"][0]
    assert result["learner"] == name and row["epochs"] == 1
    assert 0 <= row["metrics"]["hm"] <= 100 and Path(row["prompts"]).is_file()


# ------------------------------------------------------------------------------------ segmentation (tiny VLSM)

PHRASES = ["a red circle", "blue square on the left", "small green triangle"]


@pytest.fixture(scope="module")
def vlsm():
    from vlprompt.learners.testing import tiny_vlsm

    return tiny_vlsm()


def _call(layer, x, mask):
    out = layer(x, mask)
    return out[0] if isinstance(out, tuple) else out


def _ref_masks(vlsm, phrases: list[str], images: torch.Tensor, index: torch.Tensor, text: list[torch.Tensor],
               visual: list[torch.Tensor]) -> torch.Tensor:
    """``BaseMultimodalCLIPSeg.model_forward`` (TuneVLSeg) on the tiny CLIPSeg: mask logits ``[B, H, W]``."""
    model, depth, n = vlsm.model, len(text), text[0].shape[0]
    # image tower: prompts appended before pre_layrnorm, overwritten after layers idx < J; decoder inputs are the
    # hidden states seen by the next layer (``output_hidden_states`` collected at the top of each iteration)
    vm = model.clip.vision_model
    h = vm.embeddings(vlsm.normalize(images), interpolate_pos_encoding=True)
    h = vm.pre_layrnorm(torch.cat([h, visual[0].expand(h.shape[0], -1, -1)], dim=1))
    states = []
    for idx, layer in enumerate(vm.encoder.layers, 1):
        states.append(h)
        h = _call(layer, h, None)
        if idx < depth:
            h = h.clone()
            h[:, -n:] = visual[idx]
        if idx > max(model.extract_layers):
            break
    states.append(h)
    acts = [states[i + 1] for i in model.extract_layers]
    # text tower: phrases padded to the longest, context inserted after the start token, pooled at EOS + n
    tokens = vlsm.tokenize([f"{p}." for p in phrases])
    tokens = tokens[:, : int(vlsm.pool_index(tokens).max()) + 1]
    tm = model.clip.text_model
    emb = tm.embeddings.token_embedding(tokens)
    x = torch.cat([emb[:, :1], text[0].expand(len(phrases), -1, -1), emb[:, 1:-1], emb[:, -1:]], dim=1)
    x = x + tm.embeddings.position_embedding.weight[: x.shape[1]]
    causal = torch.full((x.shape[1], x.shape[1]), torch.finfo(x.dtype).min).triu_(1)[None, None]
    for idx, layer in enumerate(tm.encoder.layers, 1):
        x = _call(layer, x, causal)
        if idx < depth:
            x = x.clone()
            x[:, 1 : n + 1] = text[idx]
    x = tm.final_layer_norm(x)
    pooled = x[torch.arange(len(phrases)), vlsm.pool_index(tokens) + n]
    cond = model.clip.text_projection(pooled)[index]
    # decoder: deepest activation first, FiLM at conditional_layer, class token and prompt tokens dropped
    dec = model.decoder
    out = torch.zeros(model.config.reduce_dim)
    for i, (act, layer, reduce) in enumerate(zip(acts[::-1], dec.layers, dec.reduces)):
        out = reduce(act) + out
        if i == dec.conditional_layer:
            out = (dec.film_mul(cond) * out.permute(1, 0, 2) + dec.film_add(cond)).permute(1, 0, 2)
        out = _call(layer, out, None)
    out = out[:, 1:-n].permute(0, 2, 1)
    side = int(out.shape[-1] ** 0.5)
    return dec.transposed_convolution(out.reshape(out.shape[0], out.shape[1], side, side)).squeeze(1)


def _segment(learner, vlsm, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    with vlsm.record_activations() as record:
        feats = learner.encode_images(images)
    return vlsm.decode_masks(record, learner.paired_text_features(feats, index))


@pytest.mark.parametrize("name,kw", [("shared_separate", {"shared_dim": 16}), ("shared_attention", {"dim_feedforward": 48})])
@pytest.mark.parametrize("depth", [1, 2])
def test_segmentation_mask_logits_equal_the_reference(vlsm, name: str, kw: dict, depth: int) -> None:
    torch.manual_seed(3)
    learner = get_registry("learners").get(name)(n_ctx=3, prompt_depth=depth, **kw)
    learner.setup(vlsm, PHRASES)
    learner.eval()
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([2, 0, 1, 2])
    with torch.no_grad():
        ours = _segment(learner, vlsm, images, index)
        ref = _ref_masks(vlsm, PHRASES, images, index, learner.joint.text(), learner.joint.visual())
    assert ours.shape == ref.shape == (4, 64, 64)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours - ref).abs().max()
    if depth == 2:  # discriminative: the deepest prompts of each tower move the masks far beyond the tolerance
        with torch.no_grad():
            text, visual = learner.joint.text(), learner.joint.visual()
            g = torch.Generator().manual_seed(0)
            moved_t = _ref_masks(vlsm, PHRASES, images, index, [text[0], text[1] + 0.05 * torch.randn(text[1].shape, generator=g)], visual)
            moved_v = _ref_masks(vlsm, PHRASES, images, index, text, [visual[0], visual[1] + 0.05 * torch.randn(visual[1].shape, generator=g)])
        assert (moved_t - ref).abs().max() > 1e-2 and (moved_v - ref).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["shared_separate", "shared_attention"])
def test_segmentation_step_trains_every_tensor_and_depth_is_checked(vlsm, name: str) -> None:
    cls = get_registry("learners").get(name)
    assert "segmentation" in cls.tasks
    torch.manual_seed(0)
    learner = cls(n_ctx=2, prompt_depth=2, **({"dim_feedforward": 32} if name == "shared_attention" else {}))
    learner.setup(vlsm, PHRASES)
    learner.train()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    masks = (torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    logits = _segment(learner, vlsm, images, torch.tensor([1, 0]))
    F.binary_cross_entropy_with_logits(logits, masks).backward()
    missing = [k for k, p in learner.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    limit = min(vlsm.text_layers, vlsm.vision_layers)
    with pytest.raises(LearnerError, match=f"prompt_depth={limit + 1} but the backbone's tower has {limit}"):
        cls(prompt_depth=limit + 1).setup(vlsm, PHRASES)
