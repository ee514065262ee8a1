"""Test-time prompt tuning: TPT's math against the reference procedure, episodic resets, DiffTPT selection,
views, chunked text encoding and bad inputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vlprompt.backbones.base import PreprocessConfig
from vlprompt.data.base import DataError
from vlprompt.data.toyworld.datasets import ToyMixtures
from vlprompt.data.tta_views import TPTViews, augmix
from vlprompt.learners.prompts.layers import chunked_text_encoding
from vlprompt.learners.base import LearnerError
from vlprompt.learners.coop import CoOp
from vlprompt.learners.difftpt import DiffTPT
from vlprompt.generators.testing import JitterGenerator
from vlprompt.learners.tpt import TPT
from vlprompt.learners.zero_shot import ZeroShot
from vlprompt.modules.test_time import TestTimeClassifier
from vlprompt.protocols.test_time import TestTimeProtocol
from vlprompt.learners.testing import tiny_clip
from vlprompt.learners.prompts.tta import (
    TTAError,
    confident_indices,
    difftpt_indices,
    marginal_entropy,
    tpt_step,
)

NAMES = ["red shape", "blue shape", "green dotted shape", "large checkered shape", "small shape"]


# ---------------------------------------------------------------- explicit restatements of the references
def ref_select_confident_samples(logits, top):
    """azshue/TPT tpt_classification.py select_confident_samples, restated."""
    batch_entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    idx = torch.argsort(batch_entropy, descending=False)[: int(batch_entropy.size()[0] * top)]
    return logits[idx], idx


def ref_avg_entropy(outputs):
    """azshue/TPT tpt_classification.py avg_entropy, restated."""
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
    min_real = torch.finfo(avg_logits.dtype).min
    avg_logits = torch.clamp(avg_logits, min=min_real)
    return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)


def ref_select_confident_samples_cosine(logits, selection_cosine, selection_selfentro):
    """chunmeifeng/DiffTPT difftpt_utils.py select_confident_samples_cosine, restated."""
    cos = torch.stack([torch.nn.CosineSimilarity(dim=0)(logits[0], logits[i]) for i in range(1, logits.shape[0])])
    idx_cosine = torch.argsort(cos, descending=True)[: int(cos.size()[0] * selection_cosine)] + 1
    pool = torch.cat((logits[0, :].unsqueeze(0), logits[idx_cosine]), dim=0)
    ent = -(pool.softmax(1) * pool.log_softmax(1)).sum(1)
    idx = torch.argsort(ent, descending=False)[: int(ent.size()[0] * selection_selfentro)]
    return pool[idx], [idx_cosine, idx]


@pytest.fixture(scope="module")
def backbone():
    return tiny_clip()


def _coop(backbone):
    torch.manual_seed(0)
    learner = CoOp(n_ctx=None, ctx_init="a photo of a")
    learner.setup(backbone, NAMES)
    return learner


# ---------------------------------------------------------------- pure functions
def test_selection_and_loss_match_reference():
    g = torch.Generator().manual_seed(0)
    for n, c in [(64, 10), (64, 1000), (17, 3)]:
        logits = torch.randn(n, c, generator=g) * 5
        _, ref_idx = ref_select_confident_samples(logits, 0.1 if n >= 10 else 0.5)
        assert torch.equal(confident_indices(logits, 0.1 if n >= 10 else 0.5), ref_idx)
        assert torch.allclose(marginal_entropy(logits[ref_idx]), ref_avg_entropy(logits[ref_idx]))
    # the loss is the entropy of the averaged probabilities
    logits = torch.randn(6, 7, generator=g)
    p = logits.softmax(1).mean(0)
    assert torch.allclose(marginal_entropy(logits), -(p * p.log()).sum(), atol=1e-6)


def test_difftpt_selection_matches_reference():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(128, 20, generator=g) * 3
    _, (ref_cos, ref_ent) = ref_select_confident_samples_cosine(logits, 0.8, 0.3)
    pool = torch.cat([torch.zeros(1, dtype=torch.long), ref_cos])
    assert torch.equal(difftpt_indices(logits, similarity_ratio=0.8, entropy_ratio=0.3), pool[ref_ent])
    # features as similarity scores and filtering only the generated views
    feats = torch.randn(128, 16, generator=g)
    idx = difftpt_indices(logits, scores=feats, candidates=torch.arange(65, 128))
    assert idx.numel() == int((1 + 64 + int(63 * 0.8)) * 0.3)


def test_bad_selection_is_refused():
    with pytest.raises(TTAError, match="keeps int"):
        confident_indices(torch.randn(8, 3), 0.1)
    with pytest.raises(TTAError, match="views >= 2"):
        confident_indices(torch.randn(1, 3), 1.0)
    with pytest.raises(LearnerError, match="keeps int"):
        TPT(views=64, selection=0.01)
    with pytest.raises(LearnerError, match="views >= 2"):
        TPT(views=1)


# ---------------------------------------------------------------- tpt_step against the reference procedure
def _reference_tpt(learner, views, steps, lr, top):
    """TPT's test_time_tuning + inference, restated (image features recomputed each step, as the reference)."""
    opt = torch.optim.AdamW([learner.ctx], lr)
    selected = None
    first = None
    for _ in range(steps):
        with torch.no_grad():
            feats = learner.backbone.encode_image(views)
        output = learner.logits(feats)
        if selected is not None:
            output = output[selected]
        else:
            output, selected = ref_select_confident_samples(output, top)
        loss = ref_avg_entropy(output)
        first = loss.detach() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = learner.logits(learner.backbone.encode_image(views[:1]))
    return selected, first, out


@pytest.mark.parametrize("steps", [1, 3])
def test_tpt_step_matches_reference_procedure(backbone, steps):
    ours = _coop(backbone)
    ref = copy.deepcopy(ours)
    torch.manual_seed(3)
    image = torch.rand(3, 40, 52)
    views = TPTViews(backbone.preprocess, 20)(image)
    opt = torch.optim.AdamW([ours.ctx], lr=5e-3)
    got = tpt_step(ours, views, opt, selection=0.1, steps=steps)
    with torch.enable_grad():
        ref_idx, ref_loss, ref_logits = _reference_tpt(ref, views, steps, 5e-3, 0.1)
    assert torch.equal(got.selected, ref_idx)
    assert torch.allclose(got.loss, ref_loss, atol=1e-6)
    assert torch.allclose(got.logits, ref_logits, atol=1e-5)
    assert torch.allclose(ours.ctx, ref.ctx, atol=1e-6)
    assert not torch.allclose(ours.ctx, _coop(backbone).ctx)  # it did tune


def test_chunked_text_encoding_same_values_and_grads(backbone):
    a, b = _coop(backbone), _coop(backbone)
    fa = a.text_features()
    with chunked_text_encoding(2):
        fb = b.text_features()
    assert torch.allclose(fa, fb, atol=1e-6)
    fa.sum().backward()
    fb.sum().backward()
    assert torch.allclose(a.ctx.grad, b.ctx.grad, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- the learner interface and episodic resets
def test_nothing_to_tune_is_a_clear_error(backbone):
    with pytest.raises(LearnerError, match="nothing to tune"):
        ZeroShot().setup(backbone, NAMES) or ZeroShot().tunable_parameters()
    learner = TPT(ZeroShot())
    with pytest.raises(LearnerError, match="nothing to tune"):
        learner.setup(backbone, NAMES)


def test_snapshot_restore_invalidates_text_cache(backbone):
    learner = _coop(backbone)
    snap = learner.snapshot_tunable()
    with torch.no_grad():
        before = learner.cached_text_features().clone()
        learner.ctx.add_(1.0)
        learner.restore_tunable(snap)
        assert learner._text_cache is None
        assert torch.allclose(learner.cached_text_features(), before)
    with pytest.raises(LearnerError, match="snapshot holds"):
        learner.restore_tunable({"other": snap["ctx"]})


def test_module_is_episodic(backbone):
    task = {"label_spaces": {"source": NAMES, "t": NAMES}, "train_space": "source", "test_sets": [["t", "t"]]}
    module = TestTimeClassifier(backbone, TPT(views=16, selection=0.25, steps=2), task=task)
    module.on_test_epoch_start()
    module._use_space("t")
    a, b = torch.rand(3, 32, 32), torch.rand(3, 36, 30)
    torch.manual_seed(5)
    fresh = module.predict_image(b)
    torch.manual_seed(9)
    module.predict_image(a)
    assert module._optimizer.state  # AdamW state exists after tuning on a
    torch.manual_seed(5)
    again = module.predict_image(b)
    assert torch.allclose(fresh, again, atol=1e-6)
    module.on_test_epoch_end()
    assert torch.equal(module.learner.learner.ctx, module._snapshot["ctx"])


def test_plain_learner_is_evaluated_on_the_original(backbone):
    task = {"label_spaces": {"source": NAMES, "t": NAMES}, "train_space": "source", "test_sets": [["t", "t"]]}
    module = TestTimeClassifier(backbone, ZeroShot(), task=task)
    module.on_test_epoch_start()
    module._use_space("t")
    image = torch.randint(0, 256, (3, 32, 32)) / 255  # on the 8-bit grid, as every dataset's images are
    with torch.no_grad():
        assert torch.allclose(module.predict_image(image), module.learner(image[None]), atol=1e-5)


def _task(space_names=NAMES):
    return {"label_spaces": {"source": NAMES, "t": space_names}, "train_space": "source", "test_sets": [["t", "t"]]}


def test_module_predicts_with_the_tuned_prompt(backbone):
    """The module's TPT prediction is the logits after the step (not the untuned prompt's), and equals one
    :func:`tpt_step` on a fresh copy of the same prompt with the same views."""
    tuned = TestTimeClassifier(backbone, TPT(_coop(backbone), views=16, selection=0.25, steps=1, lr=5e-2), task=_task())
    untuned = TestTimeClassifier(backbone, TPT(_coop(backbone), views=16, selection=0.25, steps=0), task=_task())
    for m in (tuned, untuned):
        m.on_test_epoch_start()
        m._use_space("t")
    image = torch.rand(3, 40, 36)
    torch.manual_seed(4)
    got = tuned.predict_image(image)
    torch.manual_seed(4)
    before = untuned.predict_image(image)
    assert (got - before).abs().max() > 1e-3  # tuning reached the prediction
    ref = _coop(backbone)
    torch.manual_seed(4)
    views = tuned.learner.build_views(image)
    step = tpt_step(ref, views, torch.optim.AdamW([ref.ctx], lr=5e-2), selection=0.25, steps=1)
    assert torch.allclose(got, step.logits, atol=1e-5)
    with torch.no_grad():  # steps=0 predicts the untuned prompt on the original view
        assert torch.allclose(before, _coop(backbone)(views[:1]), atol=1e-5)


@pytest.mark.parametrize("tta", [False, True])
def test_loaded_prompts_reach_test_time_logits(backbone, tmp_path, tta):
    """Prompts loaded after the module is built (as ``vlprompt tta --prompts`` does) are the ones evaluated
    (plain learner) and the ones TPT resets to before every image (``steps=0``: no tuning)."""
    trained = _coop(backbone)
    with torch.no_grad():
        trained.ctx.add_(0.5 * torch.randn_like(trained.ctx))
    path = trained.save_prompts(tmp_path / "prompts.safetensors")

    def make():
        return TPT(_coop(backbone), views=8, selection=0.25, steps=0) if tta else _coop(backbone)

    fresh, loaded = (TestTimeClassifier(backbone, make(), task=_task()) for _ in range(2))
    loaded.learner.load_prompts(path, check_classnames=False)
    for m in (fresh, loaded):
        m.on_test_epoch_start()
        m._use_space("t")
    image = torch.rand(3, 32, 32)
    logits = []
    for m in (fresh, loaded):
        torch.manual_seed(2)
        logits.append(m.predict_image(image))
    with torch.no_grad():
        expected = trained(fresh._views.original(image)[None])
    assert torch.allclose(logits[1], expected, atol=1e-5)
    assert (logits[1] - logits[0]).abs().max() > 1e-2


# ---------------------------------------------------------------- views
def test_views_original_first_and_augmix_in_range(backbone):
    torch.manual_seed(0)
    image = torch.rand(3, 50, 40)
    builder = TPTViews(backbone.preprocess, 8, augmix=True)
    views = builder(image)
    assert views.shape == (8, 3, 32, 32)
    assert torch.allclose(views[0], builder.original(image))
    assert views.min() >= 0 and views.max() <= 1
    crop = torch.rand(3, 32, 32)
    mixed = augmix(crop, generator=torch.Generator().manual_seed(0))
    assert mixed.shape == crop.shape and not torch.allclose(mixed, crop)


def _reference_views(pil: Image.Image, size: int, n: int, seed: int) -> torch.Tensor:
    """azshue/TPT 63ecbac ``AugMixAugmenter`` without AugMix, restated with the torchvision calls it makes: the
    test transform (``tpt_classification.py``: bicubic ``Resize`` + ``CenterCrop``) and ``n`` crops
    (``data/datautils.py`` ``get_preaugment``: ``RandomResizedCrop`` + ``RandomHorizontalFlip``), all on the PIL
    image, then ``ToTensor``; crop and flip draw from torch's global generator seeded with ``seed``."""
    torch.manual_seed(seed)
    base = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor()])
    pre = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])
    return torch.stack([base(pil)] + [pre(pil) for _ in range(n)])


def _u8(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _checkerboard(h: int, w: int, cell: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    board = (((ys // cell + xs // cell) % 2) * 255).to(torch.uint8)  # hard 0/255 edges: bicubic overshoots, PIL clips
    return torch.stack([board, 255 - board, board // 2])


HAND_MADE = {
    "noise_upsampled": _u8(3, 50, 40),
    "noise_downsampled": _u8(3, 300, 251, seed=1),
    "checkerboard": _checkerboard(97, 130, 7),
    "thin": _u8(3, 7, 300, seed=2),  # aspect ratio outside 3/4-4/3: RandomResizedCrop's fallback crop
}


def _pil(image_u8: torch.Tensor) -> Image.Image:
    return Image.fromarray(image_u8.permute(1, 2, 0).numpy())


def _assert_views_equal_reference(image_u8: torch.Tensor, size: int) -> None:
    pre = PreprocessConfig(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    expected = _reference_views(_pil(image_u8), size, 5, seed=3)
    for image in (image_u8.float() / 255, image_u8):  # float on the 8-bit grid or uint8: same views
        torch.manual_seed(3)
        views = TPTViews(pre, 6)(image, generator=torch.Generator().manual_seed(0))
        assert views.dtype == torch.float32 and views.shape == expected.shape
        assert torch.equal(views, expected), float((views - expected).abs().max())


@pytest.mark.parametrize("name", sorted(HAND_MADE))
@pytest.mark.parametrize("size", [32, 224])
def test_views_equal_the_reference_pil_pipeline(name, size):
    _assert_views_equal_reference(HAND_MADE[name], size)


def test_views_equal_the_reference_pil_pipeline_on_real_images(shared_data):
    paths = [*sorted((shared_data / "eurosat/2750/SeaLake").glob("*.jpg"))[:2],
             *sorted((shared_data / "caltech-101/101_ObjectCategories/scorpion").glob("*.jpg"))[:2]]
    if len(paths) < 4:
        pytest.skip("EuroSAT SeaLake / Caltech-101 scorpion images not in the shared data")
    for path in paths:
        with Image.open(path) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        _assert_views_equal_reference(image, 224)


def test_views_quantise_off_grid_images_and_reject_non_rgb(backbone):
    builder = TPTViews(backbone.preprocess, 2)
    image = torch.rand(3, 40, 50)
    assert torch.equal(builder.original(image), builder.original((image * 255).round().to(torch.uint8)))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        builder.original(torch.rand(1, 40, 50))
    with pytest.raises(ValueError, match="int64"):
        builder.original(torch.zeros(3, 40, 50, dtype=torch.int64))


# ---------------------------------------------------------------- DiffTPT
def test_difftpt_generated_views_equal_the_reference_pil_pipeline(backbone, tmp_path):
    """chunmeifeng/DiffTPT 03f1169 ``difftpt_utils.py``: generated images are opened with PIL and test-transformed
    (bicubic ``Resize`` + ``CenterCrop`` + ``ToTensor``), as the original."""
    learner = DiffTPT(generator=JitterGenerator(), generated=3, views=4, cache_dir=str(tmp_path))
    learner.setup(backbone, NAMES)
    image = HAND_MADE["noise_upsampled"].float() / 255
    views = learner.generated_views(image)
    size = backbone.preprocess.image_size
    base = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor()])
    expected = torch.stack([base(_pil(v)) for v in learner.generated_cache.get(image, 3)])
    assert torch.equal(views, expected)


def test_difftpt_needs_a_generator_and_sane_ratios(backbone):
    with pytest.raises(LearnerError, match="need a generator"):
        DiffTPT(generated=63).setup(backbone, NAMES)
    with pytest.raises(LearnerError, match="keeps"):
        DiffTPT(generated=0, views=4, selection=0.1)


def test_difftpt_without_generated_views_runs(backbone):
    learner = DiffTPT(generated=0, views=20, steps=2)
    learner.setup(backbone, NAMES)
    opt = learner.make_optimizer(list(learner.tunable_parameters().values()))
    out = learner.adapt(learner.build_views(torch.rand(3, 32, 32)), opt)
    assert out.selected.numel() == int((1 + int(19 * 0.8)) * 0.3)
    assert len(out.losses) == 2


# ---------------------------------------------------------------- protocol
def test_label_subset_mismatch_is_a_clear_error():
    ds = ToyMixtures(style="clean")
    with pytest.raises(DataError, match="not classes of.*did you mean"):
        TestTimeProtocol(ds, classnames=["red dotted shape", "red dottted shape"])
    proto = TestTimeProtocol(ds, classnames=["red dotted shape", "blue solid shape"], images_per_set=5)
    space = proto.test_sets[0][0]
    assert sorted(proto.task["label_spaces"][space]) == ["blue solid shape", "red dotted shape"]
    loader = proto.test_dataloader()[0]
    assert len(loader.dataset) == 5


def test_causal_prefix_truncation_is_exact(backbone):
    """The text tower stops at the last pooled token (causal mask): same features as the full context."""
    from vlprompt.backbones.open_clip import _causal_prefix

    tokens = backbone.tokenize(["a photo of a red shape.", "a photo of a large checkered shape on a noisy background."])
    emb, idx = backbone.embed_tokens(tokens), backbone.pool_index(tokens)
    mask = backbone._text.attn_mask
    assert _causal_prefix(mask, idx, None, 1, tokens.shape[1]) == int(idx.max()) + 1 < tokens.shape[1]
    assert _causal_prefix(None, idx, None, 1, tokens.shape[1]) == tokens.shape[1]
    with torch.no_grad():
        ref = backbone.clip.encode_text(tokens)
        ours = backbone.encode_text_embeddings(emb, idx)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


class _VisualPromptLearner(ZeroShot):
    """A third-party-style learner that tunes visual prompt tokens (opts in through tunable_parameters)."""

    modifies_image_encoder = True

    def build(self, backbone, classnames):
        super().build(backbone, classnames)
        self.vis = torch.nn.Parameter(torch.zeros(2, backbone.vision_width).normal_(0, 0.02))

    def encode_images(self, images):
        return self.backbone.encode_image(images, prompts=self.vis)


def test_image_side_learner_is_re_encoded_each_step(backbone):
    learner = TPT(_VisualPromptLearner(), views=16, selection=0.25, steps=2)
    learner.setup(backbone, NAMES)
    assert set(learner.tunable_parameters()) == {"vis"}
    before = learner.snapshot_tunable()
    opt = learner.make_optimizer(list(learner.tunable_parameters().values()))
    out = learner.adapt(learner.build_views(torch.rand(3, 32, 32)), opt)
    assert out.features is None and len(out.losses) == 2
    assert not torch.allclose(learner.learner.vis, before["vis"])
