"""Issue 30, fixes A, B and C on the tiny random CLIPSeg (fast; the equivalence against TuneVLSeg's own code on the
real CLIPSeg architecture is tests/test_tunevlseg_equivalence.py).

A. One prompt-text rule for every learner: on the segmentation track the dataset's prompt (``"polyp."`` with
   ``stop_at_end``, TuneVLSeg's ``insert_stop_at_last``) follows the learner's context verbatim; no learner adds
   a full stop of its own. Checked on the tokens: the prompt ends in ``"." (269)``, never ``".." (852)``, and the
   tokens after the context are those of the dataset prompt, for every tunevlseg config.
B. The decoder is conditioned on the raw projected text feature for every learner (templates included).
C. MaPLe's coupling: the paper's Linear by default, TuneVLSeg's per-layer MLP + LayerNorm with its config.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vlprompt.learners.base import LearnerError
from vlprompt.learners.cocoop import CoCoOp
from vlprompt.learners.prompts.vl_layers import mlp_projection
from vlprompt.learners.prompts.layers import ClassPrompts, prompt_end, segmentation_text, template_features
from vlprompt.learners.maple import MaPLe
from vlprompt.modules.segmentation import PromptSegmenter
from vlprompt.learners.registry import get_registry
from vlprompt.learners.testing import tiny_vlsm, torch_threads

REPO = Path(__file__).resolve().parents[1]
#: CLIP BPE ids: "." and ".." (what the double full stop of issue 30 tokenised to)
FULL_STOP_ID, DOUBLE_STOP_ID = 269, 852
TUNEVLSEG_CONFIGS = ["coop", "cocoop", "vpt", "maple", "shared_separate", "shared_attention"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def learner_from_config(path: Path, **override):
    """The learner of a ``configs/learners/**.yaml`` file (``model.learner`` class_path + init_args)."""
    spec = yaml.safe_load(path.read_text())["model"]["learner"]
    cls = get_registry("learners").get(spec["class_path"])
    return cls(**{**spec.get("init_args", {}), **override})


def tunevlseg_learner(name: str, **override):
    return learner_from_config(REPO / "configs" / "learners" / name / "tunevlseg.yaml", **override)


def recorded_texts(module: PromptSegmenter, prompts: list[str]) -> tuple[list[str], torch.Tensor]:
    """Every text the backbone tokenised while the module computed masks for ``prompts``, and the conditional."""
    backbone = module.backbone
    texts, conds = [], []
    tokenize, decode = backbone.tokenize, backbone.decode_masks

    def spy_tokenize(batch):
        texts.extend(batch)
        return tokenize(batch)

    def spy_decode(record, conditional, **kw):
        conds.append(conditional.detach().clone())
        return decode(record, conditional, **kw)

    backbone.tokenize, backbone.decode_masks = spy_tokenize, spy_decode
    try:
        module.mask_logits(torch.rand(len(prompts), 3, 64, 64, generator=torch.Generator().manual_seed(0)), prompts)
    finally:
        del backbone.tokenize, backbone.decode_masks
    return texts, conds[0]


@pytest.mark.parametrize("name", TUNEVLSEG_CONFIGS)
def test_one_full_stop_rule_on_the_tokens(name: str) -> None:
    """Fix A: with the dataset's full stop (kvasir_seg.yaml stop_at_end: true) every learner's prompt tokens end in
    one ``.`` and, after the context, are exactly the dataset prompt's tokens (TuneVLSeg inserts the context in
    front of the tokenised prompt)."""
    assert yaml.safe_load((REPO / "configs/datasets/kvasir_seg.yaml").read_text())["data"]["init_args"]["dataset"][
        "init_args"]["stop_at_end"] is True
    module = PromptSegmenter(tiny_vlsm(), tunevlseg_learner(name), overlays=0)
    texts, _ = recorded_texts(module, ["polyp.", "polyp."])
    prompt_texts = [t for t in texts if t.endswith("polyp.") or t.endswith("polyp..")]
    assert prompt_texts, texts
    bb = module.backbone
    want = bb.tokenize(["polyp."])[0]
    want = want[1 : int(bb.pool_index(want[None])[0]) + 1].tolist()  # "polyp", ".", EOT
    for text in prompt_texts:
        assert not text.endswith(".."), f"{name}: {text!r} has a double full stop"
        tokens = bb.tokenize([text])[0]
        end = int(bb.pool_index(tokens[None])[0])
        assert int(tokens[end - 1]) == FULL_STOP_ID and DOUBLE_STOP_ID not in tokens.tolist()
        assert tokens[end + 1 - len(want) : end + 1].tolist() == want
    learner = module.learner
    if getattr(learner, "prompts", None) is not None:  # the token buffer the text tower actually reads
        row = learner.prompts.tokens[0]
        end = int(learner.prompts.pool_index[0])
        assert row[end + 1 - len(want) : end + 1].tolist() == want
        assert DOUBLE_STOP_ID not in row.tolist()


def test_the_rule_itself_and_classification_prompts_unchanged() -> None:
    """Classification keeps the references' ``"X X X X {name}."``; the segmentation track adds nothing."""
    bb = tiny_vlsm()
    assert prompt_end() == "."
    cls = ClassPrompts(bb, ["red_circle"], 4)
    assert cls.tokens[0].tolist() == bb.tokenize(["X X X X red circle."])[0].tolist()
    with segmentation_text():
        assert prompt_end() == ""
        seg = ClassPrompts(bb, ["a polyp."], 4)
        lead = ClassPrompts(bb, ["polyp."], 4, lead_text="a photo of a")
    assert prompt_end() == "."  # restored on exit
    assert seg.tokens[0].tolist() == bb.tokenize(["X X X X a polyp."])[0].tolist()
    assert lead.tokens[0].tolist() == bb.tokenize(["a photo of a polyp."])[0].tolist()
    # an explicit suffix is the caller's text on both tracks (DePT's "" words)
    with segmentation_text():
        assert ClassPrompts(bb, ["cat"], 2, suffix_text="!").tokens[0].tolist() == bb.tokenize(["X X cat!"])[0].tolist()


@pytest.mark.parametrize("name,config", [("vpt", "learners/vpt/tunevlseg.yaml"),
                                         ("zero_shot", "learners/zero_shot/segmentation.yaml")])
def test_decoder_conditioned_on_the_raw_text_feature(name: str, config: str) -> None:
    """Fix B: learners whose text side is a hand-written template give the decoder the text tower's raw projected
    feature of the prompt (CLIPSeg's get_conditional_embeddings), not an L2-normalised one."""
    module = PromptSegmenter(tiny_vlsm(), learner_from_config(REPO / "configs" / config), overlays=0)
    _, cond = recorded_texts(module, ["polyp.", "a polyp"])
    bb = module.backbone
    raw = bb.encode_text(bb.tokenize(["polyp.", "a polyp"]))
    assert (raw.norm(dim=-1) - 1).abs().min() > 0.1  # the test can tell raw from normalised
    torch.testing.assert_close(cond, raw, rtol=1e-6, atol=1e-6)


def test_template_features_raw_only_inside_segmentation_text() -> None:
    bb = tiny_vlsm()
    norm = template_features(bb, ["cat", "dog"], ["a photo of a {}.", "a {}."])
    torch.testing.assert_close(norm.norm(dim=-1), torch.ones(2))
    with segmentation_text():
        raw = template_features(bb, ["cat", "dog"], ["a photo of a {}.", "a {}."])
    feats = bb.encode_text(bb.tokenize(["a photo of a cat.", "a cat.", "a photo of a dog.", "a dog."])).view(2, 2, -1)
    torch.testing.assert_close(raw, feats.mean(1), rtol=1e-6, atol=1e-6)
    # the cache keeps the two apart
    torch.testing.assert_close(template_features(bb, ["cat", "dog"], ["a photo of a {}.", "a {}."]), norm)


def test_maple_coupling_options() -> None:
    """Fix C: the paper's Linear(Wt, Wv) by default; TuneVLSeg's per-layer Linear(Wt, 64) -> ReLU ->
    Linear(64, Wv, no bias) -> LayerNorm(Wv) from its config; unified = one module for every layer."""
    bb = tiny_vlsm()
    wt, wv = bb.text_width, bb.vision_width
    paper = MaPLe(n_ctx=2, prompt_depth=2)
    paper.setup(bb, ["cat"])
    assert isinstance(paper.proj, nn.Linear) and all(isinstance(p, nn.Linear) for p in paper.projections)
    tv = tunevlseg_learner("maple", prompt_depth=2)
    assert (tv.intermediate_dim, tv.proj_norm, tv.unified_projection) == (64, True, False)
    tv.setup(bb, ["cat"])
    for proj in [tv.proj, *tv.projections]:
        kinds = [type(m) for m in proj]
        assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.LayerNorm]
        assert (proj[0].in_features, proj[0].out_features, proj[2].out_features) == (wt, 64, wv)
        assert proj[0].bias is not None and proj[2].bias is None and proj[3].normalized_shape == (wv,)
    assert not torch.equal(tv.proj[0].weight, tv.projections[0][0].weight)  # drawn per layer, as the reference
    shallow, deep = tv.visual_prompts()
    torch.testing.assert_close(shallow, tv.proj(tv.ctx))
    torch.testing.assert_close(deep[1], tv.projections[0](tv.text_deep.prompts[0]))
    uni = MaPLe(n_ctx=2, prompt_depth=2, intermediate_dim=64, proj_norm=True, unified_projection=True)
    uni.setup(bb, ["cat"])
    assert all(p is uni.proj for p in uni.projections)
    assert len(uni.learned_state()) == 2 + 5  # ctx, 1 deep text prompt, one MLP (w, b, w, ln w, ln b)
    with pytest.raises(Exception, match="intermediate_dim: null"):
        tv.import_reference_state({})


def test_projection_options_lora_and_final_bias() -> None:
    """TuneVLSeg's get_lora_projection: Linear(in, r, no bias) -> Linear(r, out[, bias]) [-> LayerNorm]; with r above
    out only Linear(in, out, no bias); a list of widths is refused; final_bias=False drops every last bias."""
    lora = mlp_projection(32, 48, intermediate_dim=8, final_norm=True, lora=True)
    assert [type(m) for m in lora] == [nn.Linear, nn.Linear, nn.LayerNorm]
    assert lora[0].bias is None and lora[1].bias is None and lora[2].bias is not None
    assert (lora[0].out_features, lora[1].in_features) == (8, 8)
    plain = mlp_projection(32, 48, intermediate_dim=8, final_norm=False, lora=True)
    assert [type(m) for m in plain] == [nn.Linear, nn.Linear] and plain[1].bias is not None
    wide = mlp_projection(32, 16, intermediate_dim=64, final_norm=False, lora=True)
    assert len(wide) == 1 and wide[0].out_features == 16 and wide[0].bias is None
    with pytest.raises(ValueError, match="lora_proj needs one rank"):
        mlp_projection(32, 48, intermediate_dim=[8, 8], lora=True)
    nobias = mlp_projection(32, 48, intermediate_dim=8, final_norm=True, final_bias=False)
    assert nobias[2].bias is None and nobias[3].bias is None and nobias[0].bias is not None
    assert isinstance(mlp_projection(32, 48, lora=True), nn.Linear)  # no intermediate_dim: one Linear, as the reference


def test_cocoop_tunevlseg_meta_net() -> None:
    """TuneVLSeg's CoCoOp (configs/model/cocoop/clipseg.yaml): Linear(D, 64) -> ReLU -> Linear(64, Wt, no bias) ->
    LayerNorm(Wt, no bias) on the unnormalised image feature; CoCoOp's meta-net by default."""
    bb = tiny_vlsm()
    tv = tunevlseg_learner("cocoop")
    tv.setup(bb, ["cat"])
    assert [type(m) for m in tv.meta_net] == [nn.Linear, nn.ReLU, nn.Linear, nn.LayerNorm]
    assert (tv.meta_net[0].in_features, tv.meta_net[0].out_features, tv.meta_net[2].out_features) == (
        bb.embed_dim, 64, bb.text_width)
    assert tv.meta_net[2].bias is None and tv.meta_net[3].bias is None
    feats = torch.randn(3, bb.embed_dim, generator=torch.Generator().manual_seed(0)) * 5
    torch.testing.assert_close(tv.conditioned_context(feats), tv.ctx[None] + tv.meta_net(feats)[:, None])
    paper = CoCoOp(n_ctx=4)
    paper.setup(bb, ["cat"])
    torch.testing.assert_close(paper.conditioned_context(feats),
                               paper.ctx[None] + paper.meta_net(F.normalize(feats, dim=-1))[:, None])
    with pytest.raises(LearnerError, match="needs intermediate_dim"):
        CoCoOp(proj_norm=True)
    with pytest.raises(LearnerError, match="intermediate_dim: null to import"):
        tv.import_reference_state({})
