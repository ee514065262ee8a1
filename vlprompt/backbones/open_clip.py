"""open_clip adapter: any open_clip model name with any weights, frozen, behind :class:`VLBackbone`.

``pretrained`` may be an open_clip tag (``openai``, ``laion2b_s34b_b88k``...), a local checkpoint file
(``.pt``/``.bin``/``.safetensors``), or empty for random weights; ``model`` may also be an
``hf-hub:org/repo`` or ``local-dir:/path`` name, as in open_clip itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import contextlib
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer
from safetensors import safe_open
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

from vlprompt.backbones.base import (
    BackboneError,
    BackboneInfo,
    PreprocessConfig,
    VLBackbone,
)

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
#: torch dtype of each precision name (shared with the CLIPSeg backbone)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_MODEL_CACHE: dict[tuple, torch.nn.Module] = {}
_SHA_CACHE: dict[tuple, str] = {}
_LOCK = threading.Lock()
#: the adapter of :meth:`OpenCLIPBackbone.attention_adapter` active in this context (``None``: none)
_ADAPTER: ContextVar[Callable | None] = ContextVar("vlprompt_attention_adapter", default=None)
#: the adapter of :meth:`OpenCLIPBackbone.residual_adapter` active in this context (``None``: none)
_RESIDUAL: ContextVar[Callable | None] = ContextVar("vlprompt_residual_adapter", default=None)


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


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network (``1``/``true``/``yes``/``on``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _looks_like_openai_jit(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("constants.pkl") for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


_SHA_IN_URL = __import__("re").compile(r"/([0-9a-f]{64})/")


def _known_quick_gelu_sha256(model: str) -> dict[str, bool]:
    """sha256 -> quick_gelu of the releases of ``model`` that open_clip lists with a sha256 (in their URL)."""
    out: dict[str, bool] = {}
    for tag in open_clip.list_pretrained_tags_by_model(model):
        cfg = open_clip.get_pretrained_cfg(model, tag)
        m = _SHA_IN_URL.search(str(cfg.get("url", "")))
        if m:
            out[m.group(1)] = bool(cfg.get("quick_gelu", False))
    return out


def _has_openai_layout(path: Path) -> bool:
    """True for a state dict in OpenAI's original layout (it keeps the ``input_resolution``, ``context_length``
    and ``vocab_size`` entries that open_clip drops when it re-saves weights)."""
    keys: set[str] = set()
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else {}
            keys = {k.removeprefix("module.") for k in sd}
    except Exception:  # noqa: BLE001 - unreadable files are reported by the loader
        return False
    return {"input_resolution", "context_length", "vocab_size"} <= keys


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
    elif pretrained and Path(pretrained).is_file() and _has_openai_layout(Path(pretrained)):
        needs = True
    elif pretrained and Path(pretrained).is_file() and not model_has_qg and quick_gelu is None:
        releases = [t for t in open_clip.list_pretrained_tags_by_model(model)
                    if open_clip.get_pretrained_cfg(model, t).get("quick_gelu")]
        if releases:  # a file of unknown origin for an architecture with QuickGELU releases: never guess
            known = _known_quick_gelu_sha256(model)
            digest = file_sha256(Path(pretrained))
            if digest in known:
                needs = known[digest]
            else:
                raise BackboneError(
                    f"pretrained={pretrained!r} is a local file for model {model!r}, whose releases {releases} were "
                    "trained with QuickGELU while others use GELU, and the file is not one vlprompt recognises. Say "
                    f"which: `model: {model}-quickgelu` (or `quick_gelu: true`) for OpenAI weights such as the "
                    "open_clip_pytorch_model.bin of the 'openai' tag, `quick_gelu: false` for GELU weights (LAION, "
                    "DataComp...). A wrong choice silently moves every logit."
                )
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
        if model.startswith("hf-hub:") and is_offline():
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
    if is_offline():
        try:
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


def _check_tokenizer(model: str) -> None:
    """Fail fast, with the fix, when an open_clip model's Hugging Face tokenizer (SigLIP's
    ``timm/ViT-B-16-SigLIP``...) would need a download in an offline process."""
    if not is_offline() or model.startswith(("hf-hub:", "local-dir:")):
        return
    name = ((open_clip.get_model_config(model) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if not name or Path(name).is_dir():
        return
    try:
        cached = any(isinstance(try_to_load_from_cache(name, f), str) for f in ("tokenizer.json", "tokenizer_config.json"))
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        cached = False
    if not cached:
        raise BackboneError(
            f"open_clip model {model!r} uses the Hugging Face tokenizer {name!r}, which is not in the local cache, "
            "and this process is offline (HF_HUB_OFFLINE=1). On a connected machine run `python -c \"import "
            f"open_clip; open_clip.get_tokenizer('{model}')\"` and copy its Hugging Face cache (~/.cache/huggingface) "
            "here, or set HF_HOME to a copy of it."
        )


OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def _load_openai_layout(model: str, path: Path, cache_dir: str | None, kwargs: dict) -> torch.nn.Module:
    """An open_clip ``model`` with the weights of a state dict in OpenAI's original layout (``.safetensors``, or a
    ``.pt`` read with ``weights_only``): the same tensor names as open_clip's, plus the three integer entries
    :data:`OPENAI_EXTRA_KEYS` that open_clip has no place for and that are dropped here. Every model tensor must be
    in the file with its shape, and nothing else. A safetensors file is copied in one tensor at a time, so loading
    never holds a second copy of the weights (peak memory: the model plus its largest tensor)."""
    clip = open_clip.create_model(model, pretrained=None, cache_dir=cache_dir, **kwargs)
    target = clip.state_dict()  # shares storage with the model's tensors
    if path.suffix != ".safetensors":
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}
        clip.load_state_dict(state, strict=True)
        return clip
    copy_safetensors_into(path, target, skip=OPENAI_EXTRA_KEYS)
    return clip


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def copy_safetensors_into(path: Path, target: dict[str, torch.Tensor], *, skip: Sequence[str] = ()) -> None:
    """Copy every tensor of the safetensors file ``path`` into the tensor of the same name in ``target`` (cast to
    its dtype), reading one tensor at a time with plain file reads: no memory map, so the file's pages never count
    in this process's resident memory, and at most one file tensor is held at once. The names (less ``skip``) must
    be exactly ``target``'s and the shapes equal; otherwise ``RuntimeError`` names what differs."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        header.pop("__metadata__", None)
        start = 8 + size
        names = set(header) - set(skip)
        missing, unexpected = sorted(set(target) - names), sorted(names - set(target))
        if missing or unexpected:
            raise RuntimeError(f"missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
        with torch.no_grad():
            for name in sorted(names, key=lambda n: header[n]["data_offsets"][0]):
                info = header[name]
                if tuple(info["shape"]) != tuple(target[name].shape):
                    raise RuntimeError(f"{name} has shape {tuple(info['shape'])} in the file, "
                                       f"{tuple(target[name].shape)} in the model")
                begin, end = info["data_offsets"]
                buf = torch.empty(end - begin, dtype=torch.uint8)
                fh.seek(start + begin)
                if fh.readinto(memoryview(buf.numpy())) != end - begin:
                    raise RuntimeError(f"{name}: the file ends inside the tensor (truncated)")
                target[name].copy_(buf.view(SAFETENSORS_DTYPES[info["dtype"]]).view(info["shape"]))


ALLOW_EMULATED_ENV = "VLPROMPT_ALLOW_EMULATED_PRECISION"


def _cpu_runs_natively(precision: str) -> bool:
    """Whether this CPU has native kernels for ``precision`` (bf16: AVX-512 BF16 / AMX; fp16: AVX-512 FP16 / AMX)."""
    if precision == "fp32":
        return True
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch built without oneDNN
        return False


def resolve_precision(precision: str) -> str:
    """The weight precision to use, refusing a silent slowdown on a CPU-only machine.

    Without CUDA, a half precision the CPU has no native kernels for is emulated (measured 25-85x slower
    than fp32 for ViT-B/16 on an AVX2-only CPU, see ``benchmarks/README.md``). ``bf16`` then falls back to
    ``fp32`` with a warning (the result JSON records ``precision: fp32`` and ``requested_precision: bf16``);
    ``fp16`` raises. Setting ``VLPROMPT_ALLOW_EMULATED_PRECISION=1`` keeps the requested precision (to
    reproduce half-precision numbers on such a CPU, slowly).
    """
    if precision == "fp32" or torch.cuda.is_available() or _cpu_runs_natively(precision):
        return precision
    if os.environ.get(ALLOW_EMULATED_ENV, "0").lower() in {"1", "true", "yes", "on"}:
        return precision
    if precision == "fp16":
        raise BackboneError(
            "precision=fp16 on a CPU without native fp16 kernels (no AVX-512 FP16 / AMX-FP16, no CUDA): every "
            "matmul would be emulated, many times slower than fp32. Use precision: fp32 (or bf16 on a CPU with "
            f"AVX-512 BF16 / AMX), or set {ALLOW_EMULATED_ENV}=1 to run emulated anyway."
        )
    log.warning(
        "precision=bf16 requested, but this CPU has no native bf16 kernels (no AVX-512 BF16 / AMX, no CUDA): "
        "emulated bf16 is many times slower than fp32, so the backbone runs in fp32 (recorded in the result as "
        "precision fp32, requested_precision bf16). Set precision: fp32 to silence this, or %s=1 to keep bf16.",
        ALLOW_EMULATED_ENV,
    )
    return "fp32"


class OpenCLIPBackbone(VLBackbone):
    """Frozen open_clip CLIP behind the vlprompt backbone interface.

    Text towers: CLIP's (causal mask, start token, pooled at the end token) and SigLIP's (no causal mask, no
    start token, pooled at the last of the padded positions; :attr:`text_start` is then 0 and :meth:`text_end`
    finds the end token). Image towers that take visual prompts: open_clip's ``VisionTransformer`` and timm's
    ``VisionTransformer`` (SigLIP). SigLIP's learned logit bias is :attr:`logit_bias`.

    Args:
        model: open_clip model name (``ViT-B-16``, ``ViT-B-16-quickgelu``, ``hf-hub:...``, ``local-dir:...``).
        pretrained: open_clip tag, local checkpoint path, or ``None`` for random weights.
        precision: weight dtype; ``bf16`` is ~4x faster on a CPU with AVX-512 BF16 / AMX. Outputs are always
            float32. Without CUDA and without native kernels, bf16 falls back to fp32 with a warning and fp16
            raises (see :func:`resolve_precision`).
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
        if precision not in DTYPES:
            raise BackboneError(f"precision={precision!r} is not one of {sorted(DTYPES)}")
        requested, precision = precision, resolve_precision(precision)
        _check_pretrained(model, pretrained)
        _check_tokenizer(model)
        qg = resolve_quick_gelu(model, pretrained, quick_gelu) if not model.startswith(("hf-hub:", "local-dir:")) else False
        key = (model, pretrained, precision, qg, cache_dir)
        with _LOCK:
            clip = _MODEL_CACHE.get(key)
            if clip is None:
                clip = self._load(model, pretrained, qg, cache_dir)
                clip = clip.to(DTYPES[precision])
                for p in clip.parameters():
                    p.requires_grad_(False)
                clip.eval()
                _MODEL_CACHE[key] = clip
        self.clip = clip
        self.dtype = DTYPES[precision]
        self._tokenizer = open_clip.get_tokenizer(model)
        text = clip.text if hasattr(clip, "text") else clip
        self._text = text
        self.text_width = int(text.token_embedding.weight.shape[1])
        self.text_layers = len(text.transformer.resblocks)
        self.context_length = int(text.positional_embedding.shape[0])
        self.text_start, self._end_id = _start_and_end(self._tokenizer)
        proj = getattr(text, "text_projection", None)
        if isinstance(proj, torch.nn.Linear):  # SigLIP's text tower: a projection with bias
            self.embed_dim = int(proj.out_features)
        else:
            self.embed_dim = int(proj.shape[1]) if isinstance(proj, torch.Tensor) else int(clip.visual.output_dim)
        visual = clip.visual
        trunk = getattr(visual, "trunk", None)
        self._timm_vit = trunk if isinstance(trunk, TimmVisionTransformer) else None
        self.supports_visual_prompts = isinstance(visual, VisionTransformer) or self._timm_vit is not None
        if self._timm_vit is not None:  # timm ViT tower (SigLIP)
            self.vision_width = int(trunk.embed_dim)
            self.vision_layers = len(trunk.blocks)
            self.grid_size = tuple(int(g) for g in trunk.patch_embed.grid_size)
        elif self.supports_visual_prompts:
            self.vision_width = int(visual.conv1.out_channels)
            self.vision_layers = len(visual.transformer.resblocks)
            self.grid_size = tuple(int(g) for g in visual.grid_size)
        else:
            self.vision_width = 0
            self.vision_layers = 0
            self.grid_size = (0, 0)
        # mid-layer insertion and prompt states: open_clip's CLIP ViT (class-token pooling, per-token ln_post)
        self.supports_inserted_prompts = (isinstance(visual, VisionTransformer)
                                          and getattr(visual, "attn_pool", None) is None)
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
            precision=precision, extra={"quick_gelu": qg, **({"requested_precision": requested} if requested != precision else {})},
        )
        self.freeze()

    @staticmethod
    def _load(model: str, pretrained: str | None, quick_gelu: bool, cache_dir: str | None) -> torch.nn.Module:
        kwargs = {"force_quick_gelu": quick_gelu} if quick_gelu else {}
        try:
            if pretrained and Path(pretrained).expanduser().is_file() and _has_openai_layout(Path(pretrained).expanduser()):
                return _load_openai_layout(model, Path(pretrained).expanduser(), cache_dir, kwargs)
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

    def text_end(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the end-of-text token: the pooled one for CLIP-style pooling (``argmax``/``eos``), else the
        first occurrence of the tokenizer's end token (SigLIP pads with that same id, after the text)."""
        pool_type = getattr(self._text, "text_pool_type", getattr(self._text, "pool_type", "argmax"))
        if pool_type in ("argmax", "eos"):
            return self.pool_index(tokens)
        return (tokens == self._end_id).int().argmax(dim=-1)

    def encode_text_embeddings(
        self,
        embeddings: torch.Tensor,
        pool_index: torch.Tensor,
        *,
        deep_prompts: Sequence[torch.Tensor | None] | None = None,
        deep_prompt_start: int | None = None,
        insert_deep_prompts: bool = False,
    ) -> torch.Tensor:
        text = self._text
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            raise BackboneError(
                f"open_clip model {self.info.model!r} has a text tower with an appended class token or a padding "
                "mask (CoCa-style), which the prompt path does not reproduce. Use a CLIP or SigLIP model."
            )
        if deep_prompt_start is None:
            deep_prompt_start = self.text_start
        x = embeddings.to(self.dtype) + text.positional_embedding.to(self.dtype)
        mask = text.attn_mask
        mask = mask.to(self.dtype) if mask is not None else None
        inserted = 0
        if insert_deep_prompts:
            first = next((p for p in (deep_prompts or [])[1:] if p is not None), None)
            if first is None:
                raise BackboneError("insert_deep_prompts=True needs a deep prompt at some layer >= 1 (deep_prompts[i])")
            if mask is not None and not _is_causal(mask):
                raise BackboneError(f"insert_deep_prompts=True needs a causal or absent text mask; model "
                                    f"{self.info.model!r} has another one")
            inserted = int(first.shape[-2])
        # inserted tokens need no original positions: only the pooled index bounds the causal prefix then
        keep = _causal_prefix(mask, pool_index, None if inserted else deep_prompts, deep_prompt_start, x.shape[1])
        if keep < x.shape[1]:  # causal attention: later tokens never reach the pooled one (exact, faster)
            x, mask = x[:, :keep], mask[:keep, :keep]
        replace = (inserting(lambda h, p: insert_span(h, p, deep_prompt_start),
                             lambda h, p: replace_span(h, p, deep_prompt_start))
                   if inserted else (lambda h, p: replace_span(h, p, deep_prompt_start)))
        x = _run_blocks(text.transformer, x, mask, deep_prompts, replace, tower="text")
        x = text.ln_final(x)
        pool_index = pool_index.to(x.device)
        if inserted:  # the inserted span moved the tokens from deep_prompt_start on
            pool_index = pool_index + inserted * (pool_index >= deep_prompt_start).long()
        x = x[torch.arange(x.shape[0], device=x.device), pool_index]
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
        prompt_states: bool = False,
        insert_deep_prompts: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x = self.normalize(images).to(self.dtype)
        visual = self.clip.visual
        has_deep = deep_prompts is not None and any(d is not None for d in deep_prompts)
        if not self.supports_visual_prompts:
            if prompts is not None or dense or prompt_states or has_deep:
                self.require_visual_prompts("this request (visual prompts or dense features)")
            return visual(x).float()
        if (prompt_states or insert_deep_prompts) and not self.supports_inserted_prompts:
            raise BackboneError(
                f"model {self.info.model!r}: prompt_states=True or insert_deep_prompts=True (tokens inserted at a "
                "middle layer) need an open_clip CLIP ViT image tower; use e.g. model: ViT-B-16")
        first = next((d for d in (deep_prompts or [])[1:] if d is not None), None)
        if insert_deep_prompts and (prompts is not None or first is None):
            raise BackboneError("insert_deep_prompts=True needs deep prompts (deep_prompts[k], k >= 1) and no shallow "
                                "`prompts`: the first given layer's tokens are inserted there")
        if self._timm_vit is not None:
            return self._encode_timm_vit(x, prompts, deep_prompts, dense)
        x = visual._embeds(x)  # [B, 1 + HW, Wv], after ln_pre
        n = 0
        if prompts is not None:
            p = expand_prompt(prompts, x.shape[0], self.dtype)
            n = p.shape[1]
            # equivalent to concatenating before ln_pre (LayerNorm is per token), as VPT/MaPLe do for CLIP
            x = torch.cat([x, visual.ln_pre(p)], dim=1)
        elif has_deep and not insert_deep_prompts:
            raise BackboneError("deep visual prompts need shallow `prompts` too (they replace those tokens), or "
                                "insert_deep_prompts=True (they enter at the first given layer)")
        if not insert_deep_prompts:
            replace = lambda h, p: replace_tail(h, p, n)  # noqa: E731
        else:  # appended at the first given layer's input, replaced at the later ones
            n = int(first.shape[-2])
            replace = inserting(lambda h, p: torch.cat([h, expand_prompt(p, h.shape[0], h.dtype)], dim=1),
                                lambda h, p: replace_tail(h, p, n))
        x = _run_blocks(visual.transformer, x, None, deep_prompts, replace, tower="vision")
        states = visual.ln_post(x[:, x.shape[1] - n:]) if prompt_states else None
        if n:
            x = x[:, :-n]
        pooled, tokens = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        if not dense:
            return (pooled.float(), states.float()) if prompt_states else pooled.float()
        if visual.final_ln_after_pool:
            tokens = visual.ln_post(tokens)
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return (pooled.float(), tokens.float(), states.float()) if prompt_states else (pooled.float(), tokens.float())

    def _encode_timm_vit(self, x, prompts, deep_prompts, dense: bool) -> torch.Tensor:
        """timm ``VisionTransformer.forward_features`` + ``forward_head`` and open_clip's head (SigLIP), with the
        visual prompt tokens appended after the patch tokens (as for open_clip's ViT) and dropped before the
        pooling (SigLIP's attention pool then reads the image tokens only, as the class token does for CLIP)."""
        if dense:
            raise BackboneError(
                f"dense=True: model {self.info.model!r} has a timm image tower pooled by attention (SigLIP), whose "
                "patch tokens are not in the joint space. Use a CLIP ViT (model: ViT-B-16) for dense features."
            )
        if _ADAPTER.get() is not None or _RESIDUAL.get() is not None:
            raise BackboneError(
                f"an attention or residual adapter (LoRA, MMA) is active, but model {self.info.model!r} has a timm image tower (SigLIP) "
                "that takes none: adapt the text tower only, or use a CLIP ViT model (e.g. model: ViT-B-16)."
            )
        trunk = self._timm_vit
        x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(x))))
        n = 0
        if prompts is not None:
            p = expand_prompt(prompts, x.shape[0], self.dtype)
            n = p.shape[1]
            x = torch.cat([x, trunk.norm_pre(p)], dim=1)  # norm_pre is per token: same as before it
        elif deep_prompts is not None and any(d is not None for d in deep_prompts):
            raise BackboneError("deep visual prompts need shallow `prompts` too (they replace those tokens)")
        if deep_prompts is not None and len(deep_prompts) > len(trunk.blocks):
            raise BackboneError(f"{len(deep_prompts)} deep prompt layers given but the tower has {len(trunk.blocks)} layers")
        for i, block in enumerate(trunk.blocks):
            if i > 0 and deep_prompts is not None and i < len(deep_prompts) and deep_prompts[i] is not None:
                x = replace_tail(x, deep_prompts[i], n)
            x = block(x)
        x = trunk.norm(x)
        if n:
            x = x[:, :-n]
        return self.clip.visual.head(trunk.forward_head(x)).float()

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.detach().float().exp().reshape(())

    def attention_layers(self) -> dict[str, int]:
        out = {}
        if all(_is_plain_block(b) for b in self._text.transformer.resblocks):
            out["text"] = self.text_layers
        visual = self.clip.visual
        if isinstance(visual, VisionTransformer) and all(_is_plain_block(b) for b in visual.transformer.resblocks):
            out["vision"] = self.vision_layers
        return out

    @contextlib.contextmanager
    def attention_adapter(self, adapter: Callable[[str, int, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
        token = _ADAPTER.set(adapter)
        try:
            yield
        finally:
            _ADAPTER.reset(token)

    @contextlib.contextmanager
    def residual_adapter(self, adapter: Callable[[str, int, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
        token = _RESIDUAL.set(adapter)
        try:
            yield
        finally:
            _RESIDUAL.reset(token)

    @property
    def supports_dense_features(self) -> bool:
        return self.supports_visual_prompts and self._timm_vit is None

    @property
    def logit_bias(self) -> torch.Tensor | None:
        bias = getattr(self.clip, "logit_bias", None)
        return None if bias is None else bias.detach().float().reshape(())


def _start_and_end(tokenizer) -> tuple[int, int]:
    """``(text_start, end id)`` of an open_clip tokenizer, read from its own output: the empty text is
    ``[start?, end, ...]``; a first id that every text shares (the empty one included) is a start token."""
    probe = tokenizer(["", "a photo", "zebra crossing"])
    start = 1 if bool((probe[:, 0] == probe[0, 0]).all()) else 0
    return start, int(probe[0, start])


def expand_prompt(p: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """Prompt tokens ``[n, d]`` (shared) or ``[B, n, d]`` as ``[batch, n, d]`` in ``dtype``."""
    p = p.to(dtype)
    if p.dim() == 2:
        p = p.unsqueeze(0)
    return p.expand(batch, -1, -1) if p.shape[0] == 1 else p


def _is_causal(mask: torch.Tensor) -> bool:
    """Whether an additive ``[L, L]`` mask is the causal one (``-inf`` exactly above the diagonal)."""
    length = mask.shape[-1]
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=mask.device), diagonal=1)
    return torch.equal(torch.isinf(mask) & (mask < 0), causal) and bool((mask[~causal] == 0).all())


def causal_mask(length: int, like: torch.Tensor) -> torch.Tensor:
    """The additive causal mask ``[length, length]`` (``-inf`` above the diagonal) in ``like``'s dtype and device."""
    return torch.full((length, length), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)


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


def replace_span(h: torch.Tensor, p: torch.Tensor, start: int) -> torch.Tensor:
    """``h`` with tokens ``start:start+n`` replaced by the (deep) prompt ``p`` of ``n`` tokens."""
    p = expand_prompt(p, h.shape[0], h.dtype)
    n = p.shape[1]
    return torch.cat([h[:, :start], p, h[:, start + n :]], dim=1)


def insert_span(h: torch.Tensor, p: torch.Tensor, start: int) -> torch.Tensor:
    """``h`` with the (deep) prompt ``p`` of ``n`` tokens inserted before token ``start`` (the sequence grows by ``n``)."""
    p = expand_prompt(p, h.shape[0], h.dtype)
    return torch.cat([h[:, :start], p, h[:, start:]], dim=1)


def inserting(insert: Callable, replace: Callable) -> Callable:
    """A ``replace(h, p)`` for :func:`_run_blocks` that calls ``insert`` for the first deep prompt it is given and
    ``replace`` for every later one (prompts that enter at a middle layer, then are replaced layer by layer)."""
    done = False

    def step(h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        nonlocal done
        out = replace(h, p) if done else insert(h, p)
        done = True
        return out

    return step


def replace_tail(h: torch.Tensor, p: torch.Tensor, n: int) -> torch.Tensor:
    """``h`` with its last ``n`` tokens replaced by the (deep) prompt ``p``."""
    p = expand_prompt(p, h.shape[0], h.dtype)
    if p.shape[1] != n:
        raise BackboneError(f"deep visual prompts have {p.shape[1]} tokens but the shallow prompts have {n}")
    return torch.cat([h[:, :-n], p], dim=1)


def _run_blocks(transformer, x, mask, deep_prompts, replace, *, tower: str | None = None) -> torch.Tensor:
    """Run open_clip residual blocks (batch-first ``[B, L, W]``), injecting deep prompts per layer and, for a
    ``tower`` named, the active attention adapter's q/k/v deltas and residual adapter's block-output terms."""
    batch_first = getattr(transformer, "batch_first", True)
    blocks = transformer.resblocks
    if deep_prompts is not None and len(deep_prompts) > len(blocks):
        raise BackboneError(f"{len(deep_prompts)} deep prompt layers given but the tower has {len(blocks)} layers")
    adapter = _ADAPTER.get() if tower is not None else None
    residual = _RESIDUAL.get() if tower is not None else None
    for i, block in enumerate(blocks):
        if i > 0 and deep_prompts is not None and i < len(deep_prompts) and deep_prompts[i] is not None:
            x = replace(x, deep_prompts[i])
        if mask is not None and mask.shape[-1] != x.shape[1]:  # tokens were inserted: a causal mask grows
            mask = causal_mask(x.shape[1], mask)
        if adapter is not None or residual is not None:
            if not (batch_first and _is_plain_block(block)):
                raise BackboneError(f"an attention or residual adapter needs plain open_clip attention blocks; {tower} "
                                    f"layer {i} is {type(block).__name__}")
            x = _block_forward(block, x, mask, None if adapter is None else (lambda h, i=i: adapter(tower, i, h)),
                               None if residual is None else (lambda h, i=i: residual(tower, i, h)))
        elif batch_first and _FAST_BLOCKS and _is_plain_block(block):
            x = _block_forward(block, x, mask)
        elif batch_first:
            x = block(x, attn_mask=mask)
        else:  # pragma: no cover - old open_clip layouts
            x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
    return x


# ----------------------------------------------------------------------------- residual blocks, fast
#: private switch used only by ``benchmarks/`` to measure the path without these fixes in the same run
_FAST_BLOCKS = True


def _is_plain_block(block) -> bool:
    """An open_clip ``ResidualAttentionBlock`` of the standard form (self-attention, ``c_fc``/act/``c_proj``)."""
    attn = getattr(block, "attn", None)
    mlp = getattr(block, "mlp", None)
    return (
        isinstance(block, ResidualAttentionBlock)
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, torch.nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and isinstance(mlp, torch.nn.Sequential)
        and list(mlp._modules) == ["c_fc", "gelu", "c_proj"]
    )


def _adapted_attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None,
                       delta: torch.Tensor | None) -> torch.Tensor:
    """Self-attention of batch-first ``x`` ``[B, L, W]`` with ``delta`` ``[B, L, 3W]`` added to the packed q/k/v
    projection: ``nn.MultiheadAttention``'s math (scaled dot product per head, additive ``mask``, out projection)."""
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    if delta is not None:
        qkv = qkv + delta.to(qkv.dtype)
    b, n, w = x.shape
    q, k, v = (t.reshape(b, n, attn.num_heads, w // attn.num_heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.linear(out.transpose(1, 2).reshape(b, n, w), attn.out_proj.weight, attn.out_proj.bias)


def _attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Self-attention of batch-first ``x`` ``[B, L, W]``, as ``nn.MultiheadAttention`` computes it.

    Without gradients this is the module itself (PyTorch's fused fast path). With gradients the module
    would transpose ``x`` to ``[L, B, W]`` as a *view* and ``F.linear`` would then run the input projection
    as a batched matmul against an expanded copy of the ``[3W, W]`` weight per position (about 0.8 s per
    ViT-B/16 text forward in bf16 on CPU). Here the transposed input is made contiguous first and handed to
    the same ``F.multi_head_attention_forward`` the module calls, so the math is unchanged.
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return attn(x, x, x, need_weights=False, attn_mask=mask)[0]
    q = x.transpose(0, 1).contiguous()
    out = F.multi_head_attention_forward(
        q, q, q, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False,
        attn.dropout, attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
        attn_mask=mask,
    )[0]
    return out.transpose(0, 1)


def _quick_gelu_(h: torch.Tensor) -> torch.Tensor:
    """QuickGELU ``h * sigmoid(1.702 h)`` without gradients, in two in-place passes (same rounding per op)."""
    s = h * 1.702
    s.sigmoid_()
    return s.mul_(h)


def _block_forward(block, x: torch.Tensor, mask: torch.Tensor | None, delta: Callable | None = None,
                   residual: Callable | None = None) -> torch.Tensor:
    """open_clip ``ResidualAttentionBlock.forward`` for self-attention, with the two fixes above; ``delta(h)``: an
    attention adapter's q/k/v term for the attention input ``h`` (see :meth:`OpenCLIPBackbone.attention_adapter`);
    ``residual(h)``: a residual adapter's term added to the block's output (:meth:`VLBackbone.residual_adapter`)."""
    extra = None
    if delta is not None or residual is not None:
        h = block.ln_1(x)
        extra = residual(h) if residual is not None else None
        attn = _adapted_attention(block.attn, h, mask, delta(h)) if delta is not None else _attention(block.attn, h, mask)
        x = x + block.ls_1(attn)
    else:
        x = x + block.ls_1(_attention(block.attn, block.ln_1(x), mask))
    mlp = block.mlp
    h = mlp.c_fc(block.ln_2(x))
    if isinstance(mlp.gelu, QuickGELU) and not (torch.is_grad_enabled() and h.requires_grad):
        h = _quick_gelu_(h)
    else:
        h = mlp.gelu(h)
    x = x + block.ls_2(mlp.c_proj(h))
    return x if extra is None else x + extra.to(x.dtype)


def clear_model_cache() -> None:
    """Forget cached frozen models (tests; freeing memory between sweeps)."""
    _MODEL_CACHE.clear()


__all__ = ["OpenCLIPBackbone", "file_sha256", "resolve_quick_gelu", "resolve_precision", "clear_model_cache"]
