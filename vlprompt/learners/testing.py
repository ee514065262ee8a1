"""Test helpers for learner plugins: a tiny random CLIP and a contract check to run in a plugin's own CI.

Example (in a plugin's test suite)::

    from vlprompt.learners.testing import check_learner
    from my_plugin import MyLearner

    def test_contract():
        check_learner(MyLearner, init_kwargs={"n_ctx": 4})

:func:`check_learner` raises :class:`AssertionError` naming the broken part of the
:class:`~vlprompt.learners.base.PromptLearner` contract.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import string
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import open_clip
import torch
from timm.models import is_model, register_model
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

from vlprompt.backbones.base import VLBackbone
from vlprompt.backbones.clipseg import CLIPSegBackbone, write_clip_tokenizer
from vlprompt.backbones.open_clip import OpenCLIPBackbone, Precision
from vlprompt.learners.base import FAMILIES, LearnerError, PromptLearner

log = logging.getLogger(__name__)

#: open_clip model name of the tiny random test CLIP
TINY_MODEL = "vlprompt-tiny-test"
#: seed of the tiny CLIP's random weights
TINY_SEED = 1234
#: class names :func:`check_learner` uses by default, and the different label space it switches to
DEFAULT_CLASSNAMES = ("red circle", "blue square", "green triangle", "yellow star")
OTHER_CLASSNAMES = ("purple ring", "orange cross", "white_dot")

_REGISTER_LOCK = threading.Lock()
_config_dir: Path | None = None


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (tiny models run fastest on one), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_clip_config() -> dict:
    """open_clip model config of the tiny test CLIP (ViT 32 px, patch 8, width 32, 2+2 layers, D=32)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


def _register_tiny_config() -> None:
    """Make :data:`TINY_MODEL` known to open_clip (once per process; the JSON lives in a temp dir)."""
    global _config_dir
    with _REGISTER_LOCK:
        if _config_dir is not None and open_clip.get_model_config(TINY_MODEL) is not None:
            return
        _config_dir = Path(tempfile.mkdtemp(prefix="vlprompt-tiny-clip-"))
        atexit.register(shutil.rmtree, _config_dir, True)
        (_config_dir / f"{TINY_MODEL}.json").write_text(json.dumps(tiny_clip_config()))
        open_clip.add_model_config(_config_dir)


def tiny_clip(*, precision: Precision = "fp32") -> OpenCLIPBackbone:
    """A tiny randomly initialised open_clip CLIP behind :class:`OpenCLIPBackbone`; identical on every call.

    The weights come from a fixed seed (the global RNG state is left untouched). Models are cached by
    :class:`OpenCLIPBackbone`, so later calls in a process share the same frozen weights.
    """
    _register_tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return OpenCLIPBackbone(TINY_MODEL, pretrained=None, precision=precision)


def tiny_clip_like(model: str) -> str:
    """Register (once per process) and return the open_clip name of a tiny random stand-in for ``model``: the widths
    of :func:`tiny_clip` (32, 32 px images, patch 8) with ``model``'s depth (text and vision layers), context length
    and vocabulary, so learner configs written for ``model`` (prompt depths, context positions) build on it. Used by
    ``vlprompt sweep --dry-run``; weights come from the global RNG when the backbone is built."""
    name = f"vlprompt-tiny-like-{model.replace('/', '_')}"
    with _REGISTER_LOCK:
        if open_clip.get_model_config(name) is not None:
            return name
        real = open_clip.get_model_config(model)
        if real is None:
            raise LearnerError(f"unknown open_clip model {model!r}: no tiny stand-in can copy its depth; pick a name "
                               "from open_clip.list_models()")
        vision, text = dict(real.get("vision_cfg") or {}), dict(real.get("text_cfg") or {})
        tiny = tiny_clip_config()
        tiny["vision_cfg"]["layers"] = int(vision.get("layers", tiny["vision_cfg"]["layers"]))
        tiny["text_cfg"].update({k: int(text[k]) for k in ("layers", "context_length", "vocab_size") if k in text})
        if real.get("quick_gelu"):
            tiny["quick_gelu"] = True
        folder = Path(tempfile.mkdtemp(prefix="vlprompt-tiny-like-"))
        atexit.register(shutil.rmtree, folder, True)
        (folder / f"{name}.json").write_text(json.dumps(tiny))
        open_clip.add_model_config(folder)
    return name


#: seed of the tiny VLSM's random weights
TINY_VLSM_SEED = 4321
_vlsm_dir: Path | None = None


def tiny_vlsm_config() -> dict:
    """``CLIPSegConfig`` keywords of the tiny test VLSM: ViT of 4 layers (width 32, patch 16, weights for 48 px run
    at 64 px, so position embeddings are interpolated as for the published CLIPSeg at 352 px), text tower of 2
    layers (width 32, context 32, CLIP's 49408-token vocabulary), D=32, decoder reading layers 0 and 1 with the
    refined (complex) transposed convolution."""
    return {
        "text_config": {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "max_position_embeddings": 32},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
                          "image_size": 48, "patch_size": 16},
        "projection_dim": 32, "extract_layers": [0, 1], "reduce_dim": 16, "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 32, "conditional_layer": 0, "use_complex_transposed_convolution": True,
    }


def save_random_clipseg(folder: str | Path, config: dict, *, seed: int, image_size: int,
                        mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)) -> Path:
    """Save a randomly initialised ``CLIPSegForImageSegmentation`` (``config``: ``CLIPSegConfig`` keywords, weights
    from ``seed``; the global RNG is left untouched) as a folder :class:`~vlprompt.backbones.clipseg.CLIPSegBackbone`
    loads: weights, ``preprocessor_config.json`` (``image_size``, ``mean``/``std``, bilinear) and CLIP's tokenizer."""
    from transformers import (  # deferred: transformers is heavy (CLIPSeg only)
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
    )

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPSegForImageSegmentation(CLIPSegConfig(**config))
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "do_normalize": True, "resample": 2,
        "size": {"height": image_size, "width": image_size}, "image_mean": list(mean), "image_std": list(std),
    }, indent=2))
    write_clip_tokenizer(folder)
    return folder


def tiny_vlsm_folder() -> Path:
    """The tiny VLSM's folder (written once per process into a temp dir, removed at exit)."""
    global _vlsm_dir
    with _REGISTER_LOCK:
        if _vlsm_dir is None or not (_vlsm_dir / "config.json").is_file():
            root = Path(tempfile.mkdtemp(prefix="vlprompt-tiny-vlsm-"))
            atexit.register(shutil.rmtree, root, True)
            _vlsm_dir = save_random_clipseg(root / "tiny-clipseg", tiny_vlsm_config(), seed=TINY_VLSM_SEED, image_size=64)
        return _vlsm_dir


def tiny_vlsm(*, precision: Precision = "fp32"):
    """A tiny randomly initialised CLIPSeg behind :class:`~vlprompt.backbones.clipseg.CLIPSegBackbone` (the same
    adapter as a real CLIPSeg folder); identical weights on every call, cached per process."""
    return CLIPSegBackbone(str(tiny_vlsm_folder()), precision=precision)


# ---------------------------------------------------------------------------------------------- tiny SigLIP
#: open_clip model name of the tiny random test SigLIP, and timm name of its image tower
TINY_SIGLIP = "vlprompt-tiny-siglip"
TINY_SIGLIP_VIT = "vlprompt_tiny_siglip_vit"
#: seed of the tiny SigLIP's random weights
TINY_SIGLIP_SEED = 4242
#: words the tiny SigLIP tokenizer knows whole (others are spelled letter by letter, as sentencepiece does for
#: rare words): the test prompts and :data:`DEFAULT_CLASSNAMES` / :data:`OTHER_CLASSNAMES`
TINY_SIGLIP_WORDS = ("a", "photo", "of", "the", "x", "red", "circle", "blue", "square", "green", "triangle", "yellow",
                     "star", "purple", "ring", "orange", "cross", "white", "dot", "an", "image", "picture")
_siglip_dir: Path | None = None


def vlprompt_tiny_siglip_vit(pretrained: bool = False, **kwargs) -> TimmVisionTransformer:
    """timm ``VisionTransformer`` of the tiny SigLIP (registered in timm under this name): timm's ``vit_base_patch16_siglip_224`` layout (no class
    token, attention-pool ``map`` head) at width 32, 2 layers, 32 px images, patch 8 (random weights only)."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "class_token": False,
            "global_pool": "map"}
    return TimmVisionTransformer(**{**args, **kwargs})


def tiny_siglip_tokenizer_json() -> dict:
    """``tokenizer.json`` of a T5-style unigram tokenizer laid out as SigLIP's: no start token, the text, the end
    token ``</s>`` (id 1) and padding with that same id; ``"▁"``-prefixed words, letters for unknown words."""
    specials = ["<pad>", "</s>", "<unk>"]
    vocab = [[t, 0.0] for t in specials] + [["\u2581", -5.0]]
    vocab += [[c, -8.0] for c in string.ascii_lowercase + string.digits]
    vocab += [["\u2581" + w, -1.0] for w in TINY_SIGLIP_WORDS]
    end = {"SpecialToken": {"id": "</s>", "type_id": 0}}
    meta = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None, "pre_tokenizer": meta, "decoder": meta,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(specials)],
        "post_processor": {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}, end],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, end, {"Sequence": {"id": "B", "type_id": 0}}, end],
                           "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}},
        "model": {"type": "Unigram", "unk_id": 2, "vocab": vocab, "byte_fallback": False},
    }


def tiny_siglip_config(tokenizer_dir: str) -> dict:
    """open_clip model config of the tiny SigLIP: ``ViT-B-16-SigLIP.json``'s text tower (no causal mask, pooled at
    the last position, projection with bias, LayerNorm eps 1e-6, canonicalising tokenizer, logit bias -10) at
    width 32, 2 layers, context 64 (as SigLIP's), with the tokenizer in ``tokenizer_dir`` and :func:`vlprompt_tiny_siglip_vit`."""
    return {
        "embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": TINY_SIGLIP_VIT, "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {"context_length": 64, "vocab_size": 128, "hf_tokenizer_name": tokenizer_dir,
                     "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 32, "heads": 2, "layers": 2,
                     "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
    }


def _register_tiny_siglip() -> None:
    """Make :data:`TINY_SIGLIP` known to open_clip and :data:`TINY_SIGLIP_VIT` to timm (once per process)."""
    global _siglip_dir
    with _REGISTER_LOCK:
        if not is_model(TINY_SIGLIP_VIT):
            register_model(vlprompt_tiny_siglip_vit)
        if _siglip_dir is not None and open_clip.get_model_config(TINY_SIGLIP) is not None:
            return
        _siglip_dir = Path(tempfile.mkdtemp(prefix="vlprompt-tiny-siglip-"))
        atexit.register(shutil.rmtree, _siglip_dir, True)
        tok = _siglip_dir / "tokenizer"
        tok.mkdir()
        (tok / "tokenizer.json").write_text(json.dumps(tiny_siglip_tokenizer_json()))
        (tok / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>",
            "model_max_length": 64}))
        (_siglip_dir / f"{TINY_SIGLIP}.json").write_text(json.dumps(tiny_siglip_config(str(tok))))
        open_clip.add_model_config(_siglip_dir)


def tiny_siglip(*, precision: Precision = "fp32") -> OpenCLIPBackbone:
    """A tiny randomly initialised open_clip SigLIP (:func:`tiny_siglip_config`) behind :class:`OpenCLIPBackbone`;
    identical on every call (fixed seed, global RNG untouched), offline (its tokenizer is written locally)."""
    _register_tiny_siglip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SIGLIP_SEED)
        return OpenCLIPBackbone(TINY_SIGLIP, pretrained=None, precision=precision)


# ---------------------------------------------------------------------------------------------- contract


def _device(backbone: VLBackbone) -> torch.device:
    tensor = next(iter(backbone.parameters()), None)
    if tensor is None:
        tensor = next(iter(backbone.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _build(learner_cls: type, kwargs: dict, backbone: VLBackbone, names: Sequence[str], seed: int) -> PromptLearner:
    """Instantiate and set up a learner under ``torch.manual_seed(seed)``, on the backbone's device."""
    torch.manual_seed(seed)
    name = learner_cls.__name__
    try:
        learner = learner_cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - report any failure as a contract violation
        raise AssertionError(f"{name}(**{kwargs!r}) failed: {type(exc).__name__}: {exc}") from exc
    try:
        learner.setup(backbone, list(names))
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"{name}.setup(backbone, {list(names)!r}) failed: {type(exc).__name__}: {exc}") from exc
    return learner.to(_device(backbone))


def _eval_logits(learner: PromptLearner, images: torch.Tensor) -> torch.Tensor:
    learner.eval()
    with torch.no_grad():
        return learner(images)


def _check_logits(name: str, logits: Any, batch: int, n_cls: int, what: str) -> None:
    assert isinstance(logits, torch.Tensor), f"{name}: {what} returned {type(logits).__name__}, expected a Tensor"
    assert tuple(logits.shape) == (batch, n_cls), (
        f"{name}: {what} returned logits of shape {tuple(logits.shape)}, expected [B, C] = {(batch, n_cls)}"
    )
    assert logits.is_floating_point(), f"{name}: {what} returned {logits.dtype} logits, expected floating point"
    assert bool(torch.isfinite(logits).all()), f"{name}: {what} returned non-finite logits"


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-5, atol=1e-5))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}


def _check_backbone(name: str, backbone: VLBackbone, before: dict[str, torch.Tensor], when: str) -> None:
    trainable = [k for k, p in backbone.named_parameters() if p.requires_grad]
    assert not trainable, f"{name}: backbone parameters require grad {when}: {trainable[:5]} (the backbone must stay frozen)"
    with_grad = [k for k, p in backbone.named_parameters() if p.grad is not None]
    assert not with_grad, f"{name}: gradients reached backbone parameters {when}: {with_grad[:5]}"
    changed = [k for k, v in backbone.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert not changed, f"{name}: backbone tensors changed {when}: {changed[:5]} (the backbone must stay frozen)"
    in_train = [k or "<root>" for k, m in backbone.named_modules() if m.training]
    assert not in_train, f"{name}: backbone modules left eval mode {when}: {in_train[:5]}"


def _check_training(
    name: str, learner: PromptLearner, images: torch.Tensor, targets: torch.Tensor, steps: int
) -> None:
    params = {k: p for k, p in learner.named_parameters() if p.requires_grad}
    assert params, f"{name} has trainable=True but no parameter requires grad"
    before = {k: p.detach().clone() for k, p in params.items()}
    reached: set[str] = set()
    opt = torch.optim.SGD(params.values(), lr=0.01)
    learner.train()
    for step in range(max(1, steps)):
        opt.zero_grad(set_to_none=True)
        feats = learner.encode_images(images)
        logits = learner.logits(feats)
        _check_logits(name, logits, images.shape[0], len(learner.classnames), f"training step {step} logits()")
        loss = learner.loss(logits, targets, feats)
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0, (
            f"{name}.loss returned {type(loss).__name__} of shape {getattr(loss, 'shape', None)}, expected a 0-d tensor"
        )
        assert bool(torch.isfinite(loss)), f"{name}.loss is not finite at step {step}: {float(loss)}"
        assert loss.requires_grad, f"{name}.loss does not depend on any trainable parameter (no grad_fn)"
        loss.backward()
        bad = [k for k, p in params.items() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        assert not bad, f"{name}: non-finite gradients at step {step} for {bad}"
        reached.update(k for k, p in params.items() if p.grad is not None and bool(p.grad.abs().sum() > 0))
        opt.step()
        log.debug("%s step %d loss %.6f", name, step, loss.item())
    unreached = sorted(set(params) - reached)
    assert not unreached, f"{name}: no (non-zero) gradient reached trainable parameters {unreached} in {steps} steps"
    unchanged = [k for k, p in params.items() if torch.equal(p.detach(), before[k])]
    assert not unchanged, f"{name}: trainable parameters {unchanged} did not change after {steps} SGD steps"


def check_learner(
    learner_cls: type,
    *,
    init_kwargs: dict | None = None,
    backbone: VLBackbone | None = None,
    classnames: Sequence[str] | None = None,
    steps: int = 3,
) -> None:
    """Check that ``learner_cls`` honours the :class:`PromptLearner` contract; raise AssertionError if not.

    Checks: ``family`` is one of :data:`FAMILIES`; construction with ``init_kwargs`` and ``setup`` work;
    the learner is deterministic under a fixed seed; ``forward`` maps random images in ``[0, 1]`` to finite
    ``[B, C]`` logits; evaluation without gradients gives stable (cached) results that match a fresh
    computation; ``modifies_image_encoder=False`` means ``encode_images`` is the backbone's image features;
    ``set_classnames`` changes the logit width, or raises :class:`LearnerError` for class-tied learners;
    trainable learners have parameters that receive non-zero gradients and change under ``steps`` SGD
    steps of ``learner.loss``, non-trainable ones have none; the backbone never requires or receives
    gradients and its tensors do not change; ``save_prompts``/``load_prompts`` restore identical logits.

    Args:
        learner_cls: the learner class (as registered).
        init_kwargs: constructor arguments (default: none).
        backbone: a frozen backbone (default: :func:`tiny_clip`).
        classnames: training class names (default: four short names).
        steps: SGD steps for the training checks.
    """
    kwargs = dict(init_kwargs or {})
    name = getattr(learner_cls, "__name__", repr(learner_cls))
    assert isinstance(learner_cls, type) and issubclass(learner_cls, PromptLearner), (
        f"{name} is not a subclass of vlprompt.learners.base.PromptLearner"
    )
    assert learner_cls.family in FAMILIES, f"{name}.family={learner_cls.family!r} is not one of {FAMILIES}"
    backbone = backbone if backbone is not None else tiny_clip()
    names = list(classnames or DEFAULT_CLASSNAMES)
    k = 2 if len(names) == 3 else 3
    other = ([c for c in OTHER_CLASSNAMES if c not in names] + [f"object {i}" for i in range(k)])[:k]
    device = _device(backbone)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        _check(learner_cls, name, kwargs, backbone, names, other, device, steps)
    log.info("%s passed the learner contract check", name)


def _check(
    learner_cls: type,
    name: str,
    kwargs: dict,
    backbone: VLBackbone,
    names: list[str],
    other: list[str],
    device: torch.device,
    steps: int,
) -> None:
    """The body of :func:`check_learner` (run with the caller's RNG state saved and restored)."""
    size = backbone.preprocess.image_size
    gen = torch.Generator().manual_seed(0)
    batch = 4
    images = torch.rand(batch, 3, size, size, generator=gen).to(device)
    targets = torch.arange(batch, device=device) % len(names)
    backbone_before = _snapshot(backbone)

    learner = _build(learner_cls, kwargs, backbone, names, seed=0)
    _check_backbone(name, backbone, backbone_before, "after setup()")
    assert learner.classnames == names, f"{name}: after setup, classnames is {learner.classnames!r}, expected {names!r}"

    # forward: shape, finiteness, caching and determinism
    logits = _eval_logits(learner, images)
    _check_logits(name, logits, batch, len(names), "forward (eval, no grad)")
    again = _eval_logits(learner, images)
    assert torch.equal(logits, again), f"{name}: two evaluation forwards without grad disagree (stale text cache?)"
    learner.eval()
    with torch.enable_grad():
        fresh = learner(images).detach()
    assert _close(logits, fresh), (
        f"{name}: cached evaluation logits differ from a fresh computation with grad enabled "
        f"(max diff {float((logits - fresh).abs().max()):.3g})"
    )
    twin = _build(learner_cls, kwargs, backbone, names, seed=0)
    twin_logits = _eval_logits(twin, images)
    assert _close(logits, twin_logits), f"{name}: two instances built after torch.manual_seed(0) give different logits"
    del twin

    # image features
    if not learner.modifies_image_encoder:
        with torch.no_grad():
            feats, ref = learner.encode_images(images), backbone.encode_image(images)
        assert isinstance(feats, torch.Tensor) and _close(feats, ref), (
            f"{name} has modifies_image_encoder=False but encode_images() differs from backbone.encode_image()"
        )

    # label spaces
    if learner.transfers_to_new_classes:
        learner.set_classnames(other)
        _check_logits(name, _eval_logits(learner, images), batch, len(other), f"forward after set_classnames({other!r})")
        learner.set_classnames(names)
        back = _eval_logits(learner, images)
        assert _close(logits, back), f"{name}: switching class names away and back changed the logits"
    else:
        try:
            learner.set_classnames(other)
        except LearnerError:
            pass
        else:
            raise AssertionError(
                f"{name} has transfers_to_new_classes=False but set_classnames({other!r}) did not raise LearnerError"
            )
        assert learner.classnames == names, f"{name}: a refused set_classnames() still changed classnames"

    # training
    if learner.trainable:
        _check_training(name, learner, images, targets, steps)
    else:
        grads = [k for k, p in learner.named_parameters() if p.requires_grad]
        assert not grads, f"{name} has trainable=False but parameters {grads} require grad"
    _check_backbone(name, backbone, backbone_before, "after training steps")

    # learned prompts on disk
    trained = _eval_logits(learner, images)
    _check_logits(name, trained, batch, len(names), "forward after training")
    with tempfile.TemporaryDirectory(prefix="vlprompt-check-") as tmp:
        path = learner.save_prompts(Path(tmp) / "prompts.safetensors")
        restored = _build(learner_cls, kwargs, backbone, names, seed=1)
        try:
            restored.load_prompts(path)
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"{name}.load_prompts() of its own save_prompts() file failed: {exc}") from exc
    reloaded = _eval_logits(restored, images)
    assert _close(trained, reloaded), (
        f"{name}: logits after save_prompts/load_prompts differ from the saved learner's "
        f"(max diff {float((trained - reloaded).abs().max()):.3g}); is some learned state not a trainable parameter?"
    )
    _check_backbone(name, backbone, backbone_before, "at the end of the check")


__all__ = [
    "TINY_MODEL", "check_learner", "save_random_clipseg", "tiny_clip", "tiny_clip_config", "tiny_clip_like", "tiny_vlsm",
    "tiny_vlsm_config", "tiny_vlsm_folder", "TINY_SIGLIP", "TINY_SIGLIP_VIT", "TINY_SIGLIP_WORDS", "tiny_siglip",
    "tiny_siglip_config", "tiny_siglip_tokenizer_json", "vlprompt_tiny_siglip_vit",
]
