"""open_clip adapter: any open_clip model name with any weights, frozen, behind :class:`VLBackbone`.

``pretrained`` may be an open_clip tag (``openai``, ``laion2b_s34b_b88k``...), a local checkpoint file
(``.pt``/``.bin``/``.safetensors``), or empty for random weights; ``model`` may also be an
``hf-hub:org/repo`` or ``local-dir:/path`` name, as in open_clip itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import open_clip
import torch
from open_clip.transformer import VisionTransformer

from vlprompt.backbones.base import BackboneError, BackboneInfo, PreprocessConfig, VLBackbone

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_MODEL_CACHE: dict[tuple, torch.nn.Module] = {}
_SHA_CACHE: dict[tuple, str] = {}
_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, cached by (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _looks_like_openai_jit(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("constants.pkl") for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def resolve_quick_gelu(model: str, pretrained: str | None, quick_gelu: bool | None) -> bool:
    """Decide QuickGELU for a (model, pretrained) pair; refuse a pairing that silently drifts accuracy.

    OpenAI CLIP weights were trained with QuickGELU; open_clip's plain ``ViT-B-16`` config uses GELU.
    ``quick_gelu=None`` picks what the weights need; an explicit contradiction raises.
    """
    model_has_qg = model.endswith("-quickgelu") or bool((open_clip.get_model_config(model) or {}).get("quick_gelu"))
    needs: bool | None = None
    if pretrained and not Path(pretrained).exists() and pretrained in open_clip.list_pretrained_tags_by_model(model):
        needs = bool(open_clip.get_pretrained_cfg(model, pretrained).get("quick_gelu", False)) or model_has_qg
    elif pretrained and Path(pretrained).is_file() and _looks_like_openai_jit(Path(pretrained)):
        needs = True
    if needs is None:
        return bool(quick_gelu) if quick_gelu is not None else model_has_qg
    if quick_gelu is not None and quick_gelu != needs:
        raise BackboneError(
            f"quick_gelu={quick_gelu} contradicts pretrained={pretrained!r} for model {model!r}: those weights "
            f"were trained with {'QuickGELU' if needs else 'GELU'}, and a mismatch silently lowers accuracy. "
            "Remove quick_gelu from the config (it is chosen automatically) or use matching weights."
        )
    if needs and not model_has_qg:
        log.info("pretrained=%r was trained with QuickGELU: enabling it for %r", pretrained, model)
    return needs


def _check_pretrained(model: str, pretrained: str | None) -> None:
    """Fail fast, with the fix, before open_clip tries to download anything."""
    if not pretrained or model.startswith(("hf-hub:", "local-dir:")):
        if model.startswith("hf-hub:") and _is_offline():
            raise BackboneError(
                f"model {model!r} must be fetched from the Hugging Face Hub, but HF_HUB_OFFLINE=1. Download "
                "open_clip_config.json and the weights on a connected machine, then use "
                "model: local-dir:/path/to/that/folder"
            )
        return
    path = Path(pretrained).expanduser()
    looks_like_path = path.suffix in {".pt", ".pth", ".bin", ".safetensors", ".ckpt"} or os.sep in pretrained
    if looks_like_path or path.exists():
        if not path.is_file():
            raise BackboneError(
                f"checkpoint file {str(path)!r} (pretrained=) does not exist. Check the path, or pass an "
                f"open_clip tag; tags for {model!r}: {open_clip.list_pretrained_tags_by_model(model)}"
            )
        return
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise BackboneError(
            f"pretrained={pretrained!r} is neither a file nor an open_clip tag for model {model!r}. "
            f"Known tags: {tags or 'none'}; or pass a local checkpoint path."
        )
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    hf_hub = cfg.get("hf_hub", "")
    if _is_offline():
        try:
            from huggingface_hub import try_to_load_from_cache

            repo = hf_hub.rstrip("/")
            cached = any(
                isinstance(try_to_load_from_cache(repo, name), str)
                for name in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors")
            ) if repo else False
        except Exception:  # noqa: BLE001 - any failure means "not cached"
            cached = False
        if not cached:
            raise BackboneError(
                f"pretrained tag {pretrained!r} for {model!r} needs a download (hf-hub {hf_hub or cfg.get('url')}), "
                "but this process is offline (HF_HUB_OFFLINE=1). On a connected machine run "
                f"`python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{pretrained}')\"` "
                "and copy the downloaded file here, then pass pretrained: /path/to/open_clip_pytorch_model.bin"
            )


class OpenCLIPBackbone(VLBackbone):
    """Frozen open_clip CLIP behind the vlprompt backbone interface.

    Args:
        model: open_clip model name (``ViT-B-16``, ``ViT-B-16-quickgelu``, ``hf-hub:...``, ``local-dir:...``).
        pretrained: open_clip tag, local checkpoint path, or ``None`` for random weights.
        precision: weight dtype; ``bf16`` is ~4x faster on CPU. Outputs are always float32.
        quick_gelu: ``None`` chooses what the weights need; a contradiction raises.
        cache_dir: where open_clip keeps downloads.
    """

    def __init__(
        self,
        model: str = "ViT-B-16",
        pretrained: str | None = "openai",
        *,
        precision: Precision = "fp32",
        quick_gelu: bool | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if precision not in _DTYPES:
            raise BackboneError(f"precision={precision!r} is not one of {sorted(_DTYPES)}")
        _check_pretrained(model, pretrained)
        qg = resolve_quick_gelu(model, pretrained, quick_gelu) if not model.startswith(("hf-hub:", "local-dir:")) else False
        key = (model, pretrained, precision, qg, cache_dir)
        with _LOCK:
            clip = _MODEL_CACHE.get(key)
            if clip is None:
                clip = self._load(model, pretrained, qg, cache_dir)
                clip = clip.to(_DTYPES[precision])
                for p in clip.parameters():
                    p.requires_grad_(False)
                clip.eval()
                _MODEL_CACHE[key] = clip
        self.clip = clip
        self.dtype = _DTYPES[precision]
        self._tokenizer = open_clip.get_tokenizer(model)
        text = clip.text if hasattr(clip, "text") else clip
        self._text = text
        self.text_width = int(text.token_embedding.weight.shape[1])
        self.text_layers = len(text.transformer.resblocks)
        self.context_length = int(text.positional_embedding.shape[0])
        self.embed_dim = int(clip.text_projection.shape[1]) if hasattr(clip, "text_projection") and isinstance(
            clip.text_projection, torch.Tensor) else int(clip.visual.output_dim)
        visual = clip.visual
        self.supports_visual_prompts = isinstance(visual, VisionTransformer)
        if self.supports_visual_prompts:
            self.vision_width = int(visual.conv1.out_channels)
            self.vision_layers = len(visual.transformer.resblocks)
            self.grid_size = tuple(int(g) for g in visual.grid_size)
        else:
            self.vision_width = 0
            self.vision_layers = 0
            self.grid_size = (0, 0)
        pcfg = open_clip.get_model_preprocess_cfg(clip)
        size = pcfg.get("size", 224)
        size = size[0] if isinstance(size, (tuple, list)) else size
        self.preprocess = PreprocessConfig(
            image_size=int(size),
            mean=tuple(float(v) for v in pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=tuple(float(v) for v in pcfg.get("std", open_clip.OPENAI_DATASET_STD)),
            interpolation=str(pcfg.get("interpolation", "bicubic")),
            resize_mode=str(pcfg.get("resize_mode", "shortest")),
        )
        self.register_buffer("_mean", torch.tensor(self.preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.preprocess.std).view(1, 3, 1, 1), persistent=False)
        sha = None
        if pretrained and Path(pretrained).expanduser().is_file():
            sha = file_sha256(Path(pretrained).expanduser())
        self.info = BackboneInfo(
            name=type(self).__name__, model=model, pretrained=pretrained, checkpoint_sha256=sha,
            precision=precision, extra={"quick_gelu": qg},
        )
        self.freeze()

    @staticmethod
    def _load(model: str, pretrained: str | None, quick_gelu: bool, cache_dir: str | None) -> torch.nn.Module:
        kwargs = {"force_quick_gelu": quick_gelu} if quick_gelu else {}
        try:
            return open_clip.create_model(model, pretrained=pretrained or None, cache_dir=cache_dir, **kwargs)
        except BackboneError:
            raise
        except Exception as exc:  # noqa: BLE001 - rewrap with the value and the fix
            if pretrained and Path(pretrained).expanduser().is_file():
                raise BackboneError(
                    f"could not load checkpoint {pretrained!r} into open_clip model {model!r}: {exc}. The file is "
                    "corrupt, truncated, or for another architecture: re-download it or pick the matching model name."
                ) from exc
            if model not in open_clip.list_models() and not model.startswith(("hf-hub:", "local-dir:")):
                raise BackboneError(
                    f"unknown open_clip model {model!r}. Run `python -c \"import open_clip; "
                    "print(open_clip.list_models())\"` for the names."
                ) from exc
            raise BackboneError(
                f"could not build open_clip model {model!r} with pretrained={pretrained!r}: {exc}. Offline? Pass a "
                "local checkpoint file as pretrained."
            ) from exc

    # ----------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._text.token_embedding(tokens.to(self._mean.device)).float()

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        pool_type = getattr(self._text, "text_pool_type", getattr(self._text, "pool_type", "argmax"))
        if pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if pool_type == "eos":
            eos = getattr(self._text, "text_eos_id", None) or getattr(self._text, "eos_id", None)
            return (tokens == eos).int().argmax(dim=-1)
        if pool_type == "first":
            return torch.zeros(tokens.shape[0], dtype=torch.long)
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long)

    def encode_text_embeddings(
        self,
        embeddings: torch.Tensor,
        pool_index: torch.Tensor,
        *,
        deep_prompts: Sequence[torch.Tensor | None] | None = None,
        deep_prompt_start: int = 1,
    ) -> torch.Tensor:
        text = self._text
        x = embeddings.to(self.dtype) + text.positional_embedding.to(self.dtype)
        mask = text.attn_mask
        mask = mask.to(self.dtype) if mask is not None else None
        keep = _causal_prefix(mask, pool_index, deep_prompts, deep_prompt_start, x.shape[1])
        if keep < x.shape[1]:  # causal attention: later tokens never reach the pooled one (exact, faster)
            x, mask = x[:, :keep], mask[:keep, :keep]
        x = _run_blocks(
            text.transformer, x, mask, deep_prompts, lambda h, p: _replace_span(h, p, deep_prompt_start)
        )
        x = text.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), pool_index.to(x.device)]
        proj = text.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return x.float()

    # ----------------------------------------------------------------- image
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Mean/std normalisation of ``[B, 3, H, W]`` images in ``[0, 1]``."""
        return (images - self._mean) / self._std

    def encode_image(
        self,
        images: torch.Tensor,
        *,
        prompts: torch.Tensor | None = None,
        deep_prompts: Sequence[torch.Tensor | None] | None = None,
        dense: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(images).to(self.dtype)
        visual = self.clip.visual
        if not self.supports_visual_prompts:
            if prompts is not None or dense or (deep_prompts is not None and any(d is not None for d in deep_prompts)):
                self.require_visual_prompts("this request (visual prompts or dense features)")
            return visual(x).float()
        x = visual._embeds(x)  # [B, 1 + HW, Wv], after ln_pre
        n = 0
        if prompts is not None:
            p = _expand_prompt(prompts, x.shape[0], self.dtype)
            n = p.shape[1]
            # equivalent to concatenating before ln_pre (LayerNorm is per token), as VPT/MaPLe do for CLIP
            x = torch.cat([x, visual.ln_pre(p)], dim=1)
        elif deep_prompts is not None and any(d is not None for d in deep_prompts):
            raise BackboneError("deep visual prompts need shallow `prompts` too (they replace those tokens)")
        x = _run_blocks(visual.transformer, x, None, deep_prompts, lambda h, p: _replace_tail(h, p, n))
        if n:
            x = x[:, :-n]
        pooled, tokens = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        if not dense:
            return pooled.float()
        if visual.final_ln_after_pool:
            tokens = visual.ln_post(tokens)
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return pooled.float(), tokens.float()

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.detach().float().exp().reshape(())


def _expand_prompt(p: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    p = p.to(dtype)
    if p.dim() == 2:
        p = p.unsqueeze(0)
    return p.expand(batch, -1, -1) if p.shape[0] == 1 else p


def _causal_prefix(mask, pool_index: torch.Tensor, deep_prompts, start: int, length: int) -> int:
    """Tokens needed to compute the pooled states under a causal ``mask``: up to the last pooled index (and
    any deep prompt span); ``length`` when the mask is absent or not causal."""
    if mask is None or pool_index.numel() == 0 or mask.shape[-1] != length:
        return length
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=mask.device), diagonal=1)
    if not torch.equal(torch.isinf(mask) & (mask < 0), causal):
        return length
    keep = int(pool_index.max()) + 1
    for p in deep_prompts or []:
        if p is not None:
            keep = max(keep, start + int(p.shape[-2]))
    return min(length, keep)


def _replace_span(h: torch.Tensor, p: torch.Tensor, start: int) -> torch.Tensor:
    p = _expand_prompt(p, h.shape[0], h.dtype)
    n = p.shape[1]
    return torch.cat([h[:, :start], p, h[:, start + n :]], dim=1)


def _replace_tail(h: torch.Tensor, p: torch.Tensor, n: int) -> torch.Tensor:
    p = _expand_prompt(p, h.shape[0], h.dtype)
    if p.shape[1] != n:
        raise BackboneError(f"deep visual prompts have {p.shape[1]} tokens but the shallow prompts have {n}")
    return torch.cat([h[:, :-n], p], dim=1)


def _run_blocks(transformer, x, mask, deep_prompts, replace) -> torch.Tensor:
    """Run open_clip residual blocks (batch-first ``[B, L, W]``), injecting deep prompts per layer."""
    batch_first = getattr(transformer, "batch_first", True)
    blocks = transformer.resblocks
    if deep_prompts is not None and len(deep_prompts) > len(blocks):
        raise BackboneError(f"{len(deep_prompts)} deep prompt layers given but the tower has {len(blocks)} layers")
    for i, block in enumerate(blocks):
        if i > 0 and deep_prompts is not None and i < len(deep_prompts) and deep_prompts[i] is not None:
            x = replace(x, deep_prompts[i])
        if batch_first:
            x = block(x, attn_mask=mask)
        else:  # pragma: no cover - old open_clip layouts
            x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
    return x


def clear_model_cache() -> None:
    """Forget cached frozen models (tests; freeing memory between sweeps)."""
    _MODEL_CACHE.clear()


__all__ = ["OpenCLIPBackbone", "file_sha256", "resolve_quick_gelu", "clear_model_cache"]
