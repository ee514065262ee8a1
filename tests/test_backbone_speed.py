"""The backbone's fast residual-block path computes exactly what open_clip's own blocks compute.

``_FAST_BLOCKS`` (private, for benchmarks) switches between the adapter's block forward (contiguous
attention input under autograd, in-place QuickGELU without autograd) and calling open_clip's
``ResidualAttentionBlock`` directly. Without autograd (evaluation, zero-shot, cached features) both call
the same kernels on the same values: bit-for-bit equal in fp32 and bf16. With autograd (prompt training)
the attention input projection becomes one matmul over ``[L*B, W]`` instead of ``L`` batched matmuls of
``[B, W]`` against an expanded weight copy; the math is the same but float32 summation order may differ:
relative differences up to ~3e-6 (tiny model; ViT-B/16 text came out bit-equal), so the bound is 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from vlprompt.backbones import open_clip as oc
from vlprompt.backbones.open_clip import OpenCLIPBackbone
from vlprompt.learners.testing import TINY_MODEL, TINY_SEED, tiny_clip


def _backbone(precision: str = "fp32", quick_gelu: bool = False) -> OpenCLIPBackbone:
    tiny_clip()  # registers the tiny config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return OpenCLIPBackbone(TINY_MODEL, pretrained=None, precision=precision, quick_gelu=quick_gelu)


def _outputs(b: OpenCLIPBackbone, fast: bool) -> dict[str, torch.Tensor]:
    """Text/image features and prompt gradients, with and without autograd, shallow and deep prompts."""
    old = oc._FAST_BLOCKS
    oc._FAST_BLOCKS = fast
    try:
        g = torch.Generator().manual_seed(0)
        tokens = b.tokenize(["a photo of a cat.", "a small dotted square", "x"])
        emb, pool = b.embed_tokens(tokens), b.pool_index(tokens)
        ctx = (emb[:, 1:5].clone() + 0.01 * torch.randn(3, 4, b.text_width, generator=g)).requires_grad_(True)
        deep_t = (0.02 * torch.randn(4, b.text_width, generator=g)).requires_grad_(True)
        prompted = torch.cat([emb[:, :1], ctx, emb[:, 5:]], dim=1)
        text = b.encode_text_embeddings(prompted, pool, deep_prompts=[None, deep_t])
        images = torch.rand(2, 3, 32, 32, generator=g)
        vp = (0.02 * torch.randn(3, b.vision_width, generator=g)).requires_grad_(True)
        deep_v = (0.02 * torch.randn(3, b.vision_width, generator=g)).requires_grad_(True)
        image, dense = b.encode_image(images, prompts=vp, deep_prompts=[None, deep_v], dense=True)
        (text.square().sum() + image.square().sum() + dense.mean()).backward()
        out = {"text": text.detach(), "image": image.detach(), "dense": dense.detach()}
        out.update({f"grad_{k}": t.grad for k, t in {"ctx": ctx, "deep_t": deep_t, "vp": vp, "deep_v": deep_v}.items()})
        with torch.no_grad():
            out["text_nograd"] = b.encode_text(tokens)
            out["image_nograd"] = b.encode_image(images)
        with torch.inference_mode():
            out["image_inference"] = b.encode_image(images, prompts=vp.detach())
        return out
    finally:
        oc._FAST_BLOCKS = old


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_fast_blocks_match_open_clip_blocks_in_fp32(quick_gelu: bool) -> None:
    b = _backbone("fp32", quick_gelu)
    assert all(oc._is_plain_block(blk) for blk in b.clip.transformer.resblocks)
    ref, fast = _outputs(b, False), _outputs(b, True)
    for k in ref:
        if k.endswith(("nograd", "inference")):
            assert torch.equal(ref[k], fast[k]), k
        else:
            assert float((ref[k] - fast[k]).abs().max()) <= 1e-5 * float(ref[k].abs().max()), k


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_fast_blocks_in_bf16_within_tolerance(quick_gelu: bool) -> None:
    """bf16: the contiguous input projection runs as one matmul instead of a batched matmul of an expanded
    weight, which may round differently; features agree to bf16 resolution (cosine > 0.999, well inside
    the bf16-vs-fp32 gap of ~1e-2 relative)."""
    b = _backbone("bf16", quick_gelu)
    ref, fast = _outputs(b, False), _outputs(b, True)
    for k in ref:
        a, c = ref[k].float().flatten(1), fast[k].float().flatten(1)
        if torch.equal(a, c):
            continue
        cos = torch.nn.functional.cosine_similarity(a, c, dim=-1)
        assert float(cos.min()) > 0.999, (k, float(cos.min()))
    for k in ("text_nograd", "image_nograd", "image_inference"):  # no autograd: same kernels, same rounding
        assert torch.equal(ref[k], fast[k]), k


def test_quick_gelu_in_place_equals_open_clip() -> None:
    from open_clip.transformer import QuickGELU

    x = torch.randn(4, 7, 33, generator=torch.Generator().manual_seed(0)) * 4
    for dtype in (torch.float32, torch.bfloat16):
        h = x.to(dtype)
        assert torch.equal(oc._quick_gelu_(h.clone()), QuickGELU()(h))


# ----------------------------------------------------------------------------- precision the CPU cannot run
def test_emulated_half_precision_is_never_silent(monkeypatch, caplog) -> None:
    monkeypatch.delenv(oc.ALLOW_EMULATED_ENV, raising=False)
    monkeypatch.setattr(oc.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(oc, "_cpu_runs_natively", lambda p: p == "fp32")
    with caplog.at_level("WARNING", logger=oc.__name__):
        b = _backbone("bf16")
    assert b.info.precision == "fp32" and b.info.extra["requested_precision"] == "bf16"
    assert b.dtype == torch.float32 and "no native bf16" in caplog.text
    with pytest.raises(oc.BackboneError, match="fp16.*precision: fp32"):
        _backbone("fp16")
    monkeypatch.setenv(oc.ALLOW_EMULATED_ENV, "1")
    kept = _backbone("bf16")
    assert kept.info.precision == "bf16" and "requested_precision" not in kept.info.extra
    monkeypatch.setattr(oc, "_cpu_runs_natively", lambda p: True)
    monkeypatch.delenv(oc.ALLOW_EMULATED_ENV)
    assert oc.resolve_precision("bf16") == "bf16" and oc.resolve_precision("fp16") == "fp16"
