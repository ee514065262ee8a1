"""CLIPSeg adapter: a vision-language segmentation model (VLSM) behind :class:`VLBackbone`.

Wraps ``transformers.CLIPSegForImageSegmentation`` (Lüddecke & Ecker, CVPR 2022) loaded from a local folder
(``save_pretrained`` layout, e.g. a saved ``CIDAS/clipseg-rd64-refined``), frozen. It serves both tracks:

* classification: text features (``get_text_features``) and image features (``get_image_features``: the full
  ViT, ``post_layernorm`` of the class token, ``visual_projection``), with shallow/deep text prompts and
  shallow/deep visual prompts exactly as the open_clip adapter inserts them (MaPLe eq. 5-7, VPT eq. 4-5);
* segmentation: inside :meth:`record_activations`, :meth:`encode_image` records the ViT hidden states at the
  decoder's ``extract_layers``; :meth:`decode_masks` runs CLIPSeg's decoder on them, FiLM-conditioned (CLIPSeg
  paper sec. 3) on one projected text embedding per image, and returns mask logits.

How prompts meet the decoder follows TuneVLSeg (Adhikari et al., ACCV 2024; naamiinepal/tunevlseg,
``src/models/core_models/coop/base_multimodal_clipseg.py``, ``base_clipseg.py``):

* visual prompt tokens are appended after the patch tokens *before* ``pre_layrnorm``; deep visual prompts replace
  those tokens at the input of layer ``i >= 1``;
* the decoder reads each extract layer's output *with* the prompt tokens (after the next layer's deep prompts
  replaced them, which is the tensor TuneVLSeg's in-place replacement leaves there) and drops the prompt
  positions only before the transposed convolution; ``ActivationRecord.activations`` holds the same states
  without prompt tokens (the interface's contract), the prompted ones are in ``record.extra["prompted"]``;
* the conditional embedding is the projected pooled text feature (``text_projection`` of the EOT state), not
  normalised, as ``get_text_features`` returns it.

Deliberate differences from TuneVLSeg:

* The reference runs the ViT only up to its last extract layer (``max(extract_layers)``) when visual prompts are
  used. Here the ViT always runs to the end so that :meth:`encode_image` returns ``get_image_features``
  (learners such as CoCoOp condition on it); the masks are identical, at the cost of the extra layers.
* Prompts at layer inputs after ``max(extract_layers) + 1`` cannot reach the masks (the reference silently
  ignores them). ``vision_layers`` is therefore ``min(ViT depth, max(extract_layers) + 2)`` (11 of 12 for the
  published CLIPSeg), so learners' depth checks refuse a deeper visual prompt before any work starts, for both
  tracks; ``vision_tower_layers`` is the full depth.
* Text longer than the context is cut to ``context_length - 1`` tokens plus EOT (open_clip's rule; HF's
  tokenizer would drop the EOT). Padding is id 0 (open_clip's) whatever the tokenizer's pad token; no attention
  mask is needed since the text tower is causal and pools the first EOT.
* Images come in ``[0, 1]`` at ``preprocess.image_size`` and are normalised here (the folder's
  ``preprocessor_config.json``; without one CLIPSeg's processor values: 352 px, ImageNet mean/std, bilinear).
  TuneVLSeg resizes with cv2 bicubic to 352 and normalises with the same mean/std.
* :meth:`decode_masks` resizes the logits bilinearly when an ``output_size`` other than the decoder's output
  (= the input size for the published model) is asked for; TuneVLSeg only reshapes.
* Inside one :meth:`record_activations` context only the first :meth:`encode_image` call is recorded (the
  learner's own prompted encoding; PromptSRC's later frozen encoding is counted, not decoded).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import snapshot_download
from open_clip.tokenizer import bytes_to_unicode, default_bpe

from vlprompt.backbones.base import (
    ActivationRecord,
    BackboneError,
    BackboneInfo,
    PreprocessConfig,
    VLBackbone,
)
from vlprompt.backbones.open_clip import (
    DTYPES,
    Precision,
    expand_prompt,
    is_offline,
    replace_span,
    replace_tail,
    file_sha256,
    resolve_precision,
)

log = logging.getLogger(__name__)

#: the published CLIPSeg checkpoint most work uses (TuneVLSeg: ``CIDAS/clipseg-rd64-refined`` and ``-rd64``)
PUBLISHED = "CIDAS/clipseg-rd64-refined"
#: CLIPSeg's processor values (``ViTImageProcessor`` config of the CIDAS checkpoints), used when a folder has no
#: ``preprocessor_config.json``: 352 px, ImageNet mean/std, PIL resample 2 (bilinear), resized to a square.
DEFAULT_PREPROCESS = PreprocessConfig(
    image_size=352, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear",
    resize_mode="squash",
)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_MODEL_CACHE: dict[tuple, torch.nn.Module] = {}
_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- tokenizer files
def clip_bpe_tokens() -> tuple[list[str], list[str]]:
    """CLIP's BPE vocabulary in id order (49408 tokens: 256 byte tokens, the same with ``</w>``, the 48,894 merges,
    then ``<|startoftext|>``/``<|endoftext|>``) and its merge lines, from open_clip's ``bpe_simple_vocab_16e6.txt.gz``."""
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [v + "</w>" for v in tokens] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return tokens, merges


def write_clip_tokenizer(folder: str | os.PathLike) -> Path:
    """Write CLIP BPE tokenizer files (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``,
    ``special_tokens_map.json``) that ``transformers.CLIPTokenizer`` loads offline, derived from open_clip's
    ``bpe_simple_vocab_16e6.txt.gz`` (the vocabulary of OpenAI CLIP, 49408 tokens, in the same order).

    Tokens equal open_clip's tokenizer output (the adapter pads with id 0 itself, as open_clip does). Returns the
    folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_bpe_tokens()
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    files = {
        "vocab.json": json.dumps({v: i for i, v in enumerate(vocab)}, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2),
        "tokenizer_config.json": json.dumps(
            {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}, indent=2
        ),
    }
    for name, text in files.items():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, folder / name)
    return folder


# ----------------------------------------------------------------------------- folder resolution
def _save_hint(name: str) -> str:
    return (
        "On a connected machine run `python -c \"from transformers import CLIPSegForImageSegmentation as M, "
        f"CLIPSegProcessor as P; M.from_pretrained('{name}').save_pretrained('clipseg'); "
        f"P.from_pretrained('{name}').save_pretrained('clipseg')\"`, copy the folder `clipseg` here and pass "
        "pretrained: /path/to/clipseg"
    )


def resolve_folder(pretrained: str | os.PathLike) -> Path:
    """The local folder of ``pretrained`` (a folder, or a hub name downloaded when online); clear errors first."""
    text = str(pretrained)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    looks_like_hub = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_hub:
        raise BackboneError(f"CLIPSeg folder {text!r} (pretrained=) does not exist. {_save_hint(PUBLISHED)}")
    if is_offline():
        raise BackboneError(
            f"pretrained={text!r} is a Hugging Face Hub name, but this process is offline (HF_HUB_OFFLINE=1) and "
            f"vlprompt loads CLIPSeg from a local folder. {_save_hint(text)}"
        )
    try:
        return Path(snapshot_download(text, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
    except Exception as exc:  # noqa: BLE001 - rewrap with the fix
        raise BackboneError(f"could not download {text!r} from the Hub: {exc}. {_save_hint(text)}") from exc


def _weights_file(folder: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise BackboneError(
        f"CLIPSeg folder {str(folder)!r} has no weights file ({' or '.join(_WEIGHT_FILES)}; sharded checkpoints are "
        f"not supported). {_save_hint(PUBLISHED)}"
    )


def _check_folder(folder: Path) -> tuple[dict, Path]:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise BackboneError(f"CLIPSeg folder {str(folder)!r} has no config.json. {_save_hint(PUBLISHED)}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise BackboneError(f"{str(cfg_path)!r} is not valid JSON ({exc}); save the folder again") from exc
    if cfg.get("model_type") != "clipseg":
        raise BackboneError(
            f"{str(cfg_path)!r} has model_type={cfg.get('model_type')!r}, expected 'clipseg': this folder is not a "
            f"CLIPSeg checkpoint. {_save_hint(PUBLISHED)}"
        )
    weights = _weights_file(folder)
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) and not (
        folder / "tokenizer.json"
    ).is_file():
        raise BackboneError(
            f"CLIPSeg folder {str(folder)!r} has no tokenizer files (vocab.json + merges.txt, or tokenizer.json). Save "
            "the processor too (CLIPSegProcessor.from_pretrained(...).save_pretrained(folder)), or write CLIP's BPE "
            "tokenizer there: `python -c \"from vlprompt.backbones.clipseg import write_clip_tokenizer; "
            f"write_clip_tokenizer('{folder}')\"`"
        )
    return cfg, weights


def _load_tokenizer(folder: Path, vocab_size: int):
    from transformers import CLIPTokenizer  # deferred: transformers is heavy (CLIPSeg only)

    try:
        tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - rewrap with the folder and the fix
        raise BackboneError(f"could not load the tokenizer of {str(folder)!r}: {exc}") from exc
    ids = set(tok.get_vocab().values())
    if len(ids) != vocab_size or max(ids, default=-1) >= vocab_size:  # an added token may share an id (a pad at 0)
        raise BackboneError(
            f"the tokenizer loaded from {str(folder)!r} has {len(ids)} token ids (largest {max(ids, default=-1)}) but "
            f"the model's text vocabulary has {vocab_size} (config.json text_config.vocab_size). An offline "
            "CLIPTokenizer.from_pretrained can silently "
            "return an almost empty tokenizer; refusing to tokenise with it. Save the processor's tokenizer files into "
            "the folder, or run `python -c \"from vlprompt.backbones.clipseg import write_clip_tokenizer; "
            f"write_clip_tokenizer('{folder}')\"` (CLIP's BPE vocabulary, 49408 tokens)."
        )
    return tok


def _preprocess(folder: Path) -> PreprocessConfig:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return DEFAULT_PREPROCESS
    cfg = json.loads(path.read_text())
    size = cfg.get("size", DEFAULT_PREPROCESS.image_size)
    if isinstance(size, dict):
        h, w = size.get("height", size.get("shortest_edge")), size.get("width", size.get("shortest_edge"))
        if h != w:
            raise BackboneError(f"{str(path)!r}: size {size} is not square; CLIPSeg's decoder needs square images")
        size = h
    return PreprocessConfig(
        image_size=int(size),
        mean=tuple(float(v) for v in cfg.get("image_mean", DEFAULT_PREPROCESS.mean)),
        std=tuple(float(v) for v in cfg.get("image_std", DEFAULT_PREPROCESS.std)),
        interpolation=_PIL_RESAMPLE.get(int(cfg.get("resample", 2)), "bilinear"),
        resize_mode="squash",
    )


def _load_model(folder: Path, weights: Path, precision: str) -> torch.nn.Module:
    from transformers import CLIPSegForImageSegmentation  # deferred: transformers is heavy (CLIPSeg only)

    st = weights.stat()
    key = (str(folder.resolve()), st.st_size, st.st_mtime_ns, precision)
    with _LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            try:
                model = CLIPSegForImageSegmentation.from_pretrained(
                    str(folder), local_files_only=True, dtype=torch.float32, attn_implementation="sdpa"
                )
            except Exception as exc:  # noqa: BLE001 - rewrap with the folder and the fix
                raise BackboneError(
                    f"could not load CLIPSeg from {str(folder)!r}: {exc}. The weights are corrupt, truncated or of "
                    f"another architecture than config.json says: save the folder again. {_save_hint(PUBLISHED)}"
                ) from exc
            model = model.to(DTYPES[precision])
            model.requires_grad_(False)
            model.eval()
            _MODEL_CACHE[key] = model
    return model


def clear_model_cache() -> None:
    """Forget cached frozen CLIPSeg models (tests; freeing memory)."""
    _MODEL_CACHE.clear()


# ----------------------------------------------------------------------------- the adapter
class CLIPSegBackbone(VLBackbone):
    """Frozen CLIPSeg (``transformers``) behind the vlprompt backbone interface; serves classification and
    segmentation.

    Args:
        pretrained: a local folder saved with ``save_pretrained`` (model + processor), e.g. of
            ``CIDAS/clipseg-rd64-refined``. A Hub name is downloaded only when online; offline it fails at once
            with the command that saves the folder.
        precision: weight dtype (``fp32``, ``bf16``, ``fp16``); outputs are float32. Without CUDA and without
            native kernels, bf16 falls back to fp32 with a warning and fp16 raises (as for open_clip).
    """

    tasks = ("classification", "segmentation")

    def __init__(self, pretrained: str = PUBLISHED, *, precision: Precision = "fp32") -> None:
        super().__init__()
        if precision not in DTYPES:
            raise BackboneError(f"precision={precision!r} is not one of {sorted(DTYPES)}")
        folder = resolve_folder(pretrained)
        cfg, weights = _check_folder(folder)
        requested, precision = precision, resolve_precision(precision)
        tcfg, vcfg = cfg.get("text_config", {}), cfg.get("vision_config", {})
        self._tokenizer = _load_tokenizer(folder, int(tcfg.get("vocab_size", 49408)))
        self.preprocess = _preprocess(folder)
        model = _load_model(folder, weights, precision)
        self.model = model
        self.dtype = DTYPES[precision]
        config = model.config
        tc, vc = config.text_config, config.vision_config
        self.embed_dim = int(config.projection_dim)
        self.text_width = int(tc.hidden_size)
        self.text_layers = int(tc.num_hidden_layers)
        self.context_length = int(tc.max_position_embeddings)
        self.vision_width = int(vc.hidden_size)
        self.vision_tower_layers = int(vc.num_hidden_layers)
        self.extract_layers = tuple(int(i) for i in config.extract_layers)
        if not self.extract_layers or max(self.extract_layers) >= self.vision_tower_layers or min(self.extract_layers) < 0:
            raise BackboneError(
                f"{str(folder / 'config.json')!r}: extract_layers={list(self.extract_layers)} must be layer indices "
                f"in 0..{self.vision_tower_layers - 1} of the {self.vision_tower_layers}-layer vision transformer"
            )
        #: visual prompt depth whose tokens reach the masks: inputs of layers 0..max(extract_layers)+1
        self.vision_layers = min(self.vision_tower_layers, max(self.extract_layers) + 2)
        self.patch_size = int(vc.patch_size)
        self.decoder_width = int(config.reduce_dim)  # the decoder's last feature map, before the transposed conv
        self.decoder_stride = self.patch_size
        if self.preprocess.image_size % self.patch_size:
            raise BackboneError(
                f"image size {self.preprocess.image_size} (preprocessor_config.json of {str(folder)!r}) is not a "
                f"multiple of the patch size {self.patch_size}"
            )
        g = self.preprocess.image_size // self.patch_size
        self.grid_size = (g, g)
        self.supports_visual_prompts = True
        self.eos_token_id = int(tc.eos_token_id) if tc.eos_token_id is not None else 2
        self.register_buffer("_mean", torch.tensor(self.preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.preprocess.std).view(1, 3, 1, 1), persistent=False)
        cfg_sha = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
        self.info = BackboneInfo(
            name=type(self).__name__,
            model=_model_name(str(cfg.get("_name_or_path") or getattr(config, "name_or_path", "") or ""), folder),
            pretrained=str(pretrained),
            checkpoint_sha256=file_sha256(weights),
            precision=precision,
            extra={
                "folder": str(folder.resolve()),
                "weights_file": weights.name,
                "config_sha256": cfg_sha,
                "config": {
                    "projection_dim": self.embed_dim, "reduce_dim": int(config.reduce_dim),
                    "extract_layers": list(self.extract_layers), "conditional_layer": int(config.conditional_layer),
                    "use_complex_transposed_convolution": bool(config.use_complex_transposed_convolution),
                    "vision": {"layers": self.vision_tower_layers, "width": self.vision_width,
                               "patch_size": self.patch_size, "image_size": int(vc.image_size),
                               "hidden_act": str(vc.hidden_act)},
                    "text": {"layers": self.text_layers, "width": self.text_width, "context_length": self.context_length,
                             "vocab_size": int(tc.vocab_size), "hidden_act": str(tc.hidden_act)},
                },
                "preprocess": self.preprocess.to_dict(),
                **({"requested_precision": requested} if requested != precision else {}),
            },
        )
        # inside record_activations(): the decoder's inputs of the first encode_image call (the learner's own,
        # prompted encoding); later calls (e.g. PromptSRC's frozen features) only counted in extra["later_calls"]
        self._recording: ActivationRecord | None = None
        self.freeze()

    # ----------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        tok, length = self._tokenizer, self.context_length
        ids = tok(list(texts), add_special_tokens=True, padding=False, truncation=False)["input_ids"]
        eot = tok.eos_token_id
        out = torch.zeros((len(ids), length), dtype=torch.long)  # padded with 0, as open_clip
        for row, seq in enumerate(ids):
            if len(seq) > length:  # keep the EOT, as open_clip does
                seq = [*seq[: length - 1], eot]
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.model.clip.text_model.embeddings.token_embedding
        return emb(tokens.to(self._mean.device)).float()

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        # CLIPSegTextModel: eos_token_id == 2 (configs before transformers PR #24773) pools the largest id,
        # otherwise the first EOS
        if self.eos_token_id == 2:
            return tokens.argmax(dim=-1)
        return (tokens == self.eos_token_id).int().argmax(dim=-1)

    def encode_text_embeddings(
        self,
        embeddings: torch.Tensor,
        pool_index: torch.Tensor,
        *,
        deep_prompts: Sequence[torch.Tensor | None] | None = None,
        deep_prompt_start: int = 1,
    ) -> torch.Tensor:
        text = self.model.clip.text_model
        layers = text.encoder.layers
        _check_deep(deep_prompts, len(layers), "text")
        length = embeddings.shape[1]
        if length > self.context_length:
            raise BackboneError(f"{length} token embeddings given but the text context holds {self.context_length}")
        keep = int(pool_index.max()) + 1 if pool_index.numel() else length
        for p in deep_prompts or []:
            if p is not None:
                keep = max(keep, deep_prompt_start + int(p.shape[-2]))
        keep = min(keep, length)  # causal attention: later tokens never reach the pooled one (exact, faster)
        pos = text.embeddings.position_embedding.weight[:keep]
        x = embeddings[:, :keep].to(self.dtype) + pos.to(self.dtype)
        mask = torch.full((keep, keep), torch.finfo(self.dtype).min, dtype=self.dtype, device=x.device).triu_(1)
        mask = mask[None, None]
        for i, layer in enumerate(layers):
            if i > 0 and deep_prompts is not None and i < len(deep_prompts) and deep_prompts[i] is not None:
                x = replace_span(x, deep_prompts[i], deep_prompt_start)
            x = layer(x, mask)
        x = text.final_layer_norm(x)
        x = x[torch.arange(x.shape[0], device=x.device), pool_index.to(x.device)]
        return self.model.clip.text_projection(x).float()

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
        vision = self.model.clip.vision_model
        layers = vision.encoder.layers
        has_deep = deep_prompts is not None and any(d is not None for d in deep_prompts)
        if deep_prompts is not None and len(deep_prompts) > self.vision_layers:
            deepest = max(i for i, d in enumerate(deep_prompts) if d is not None) if has_deep else 0
            if deepest >= self.vision_layers:
                raise BackboneError(
                    f"deep visual prompt at layer {deepest}, but CLIPSeg's decoder reads the vision transformer only at "
                    f"extract_layers={list(self.extract_layers)}: prompts after layer {self.vision_layers - 1} cannot "
                    f"reach the masks. Use a visual prompt depth of at most {self.vision_layers} (backbone.vision_layers)."
                )
        if has_deep and prompts is None:
            raise BackboneError("deep visual prompts need shallow `prompts` too (they replace those tokens)")
        record = self._recording if self._recording is not None and not self._recording.activations else None
        if self._recording is not None and record is None:
            self._recording.extra["later_calls"] = self._recording.extra.get("later_calls", 0) + 1
        x = vision.embeddings(self.normalize(images).to(self.dtype), interpolate_pos_encoding=True)
        n = 0
        if prompts is not None:
            p = expand_prompt(prompts, x.shape[0], self.dtype)
            n = p.shape[1]
            x = torch.cat([x, p], dim=1)  # before pre_layrnorm, as TuneVLSeg (per-token LayerNorm: same as after)
        x = vision.pre_layrnorm(x)
        taken: dict[int, torch.Tensor] = {}
        want = set(self.extract_layers) if record is not None else set()
        for i, layer in enumerate(layers):
            if i > 0 and deep_prompts is not None and i < len(deep_prompts) and deep_prompts[i] is not None:
                x = replace_tail(x, deep_prompts[i], n)
            if i - 1 in want:  # output of layer i-1, with layer i's deep prompts in place (TuneVLSeg)
                taken[i - 1] = x
            x = layer(x, None)
        if len(layers) - 1 in want:
            taken[len(layers) - 1] = x
        if record is not None:
            acts = [taken[i] for i in self.extract_layers]
            record.activations = [a[:, : a.shape[1] - n] for a in acts]
            record.extra["prompted"] = acts if n else None
            record.extra["n_prompts"] = n
            record.image_size = (int(images.shape[-2]), int(images.shape[-1]))
        if n:
            x = x[:, :-n]
        pooled = self.model.clip.visual_projection(vision.post_layernorm(x[:, 0]))
        if not dense:
            return pooled.float()
        tokens = self.model.clip.visual_projection(vision.post_layernorm(x[:, 1:]))
        return pooled.float(), tokens.float()

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.clip.logit_scale.detach().float().exp().reshape(())

    # ----------------------------------------------------------------- segmentation
    def decode_masks(
        self,
        record: ActivationRecord,
        conditional: torch.Tensor,
        *,
        output_size: tuple[int, int] | None = None,
        branch=None,
    ) -> torch.Tensor:
        """Mask logits ``[B, H, W]`` (float32) from CLIPSeg's decoder: FiLM with ``conditional [B, D]`` at
        ``conditional_layer``, then one decoder layer per extract layer (deepest first), prompt tokens dropped
        before the transposed convolution (TuneVLSeg). ``branch`` (see :meth:`VLBackbone.decode_masks`) gets the
        ``[B, reduce_dim, h, w]`` map the transposed convolution reads and its logits, as TuneVLSeg's
        ``use_new_last_layer`` branch does. Logits are resized bilinearly when ``output_size`` (default: the
        encoded images' size) differs from the decoder's output."""
        if not record.activations:
            raise BackboneError(
                "decode_masks() got an empty ActivationRecord: call learner.encode_images(images) (or "
                "backbone.encode_image) inside `with backbone.record_activations() as record:` first"
            )
        acts = record.extra.get("prompted") or record.activations
        n = int(record.extra.get("n_prompts", 0)) if record.extra.get("prompted") else 0
        batch = acts[0].shape[0]
        if conditional.dim() != 2 or conditional.shape != (batch, self.embed_dim):
            raise BackboneError(
                f"decode_masks() needs one conditional embedding per image, shape [B, D] = [{batch}, {self.embed_dim}], "
                f"got {tuple(conditional.shape)}"
            )
        decoder = self.model.decoder
        cond = conditional.to(device=acts[0].device, dtype=self.dtype)
        out = None
        for i, (act, layer, reduce) in enumerate(zip(acts[::-1], decoder.layers, decoder.reduces)):
            out = reduce(act) if out is None else reduce(act) + out
            if i == decoder.conditional_layer:
                out = decoder.film_mul(cond)[:, None] * out + decoder.film_add(cond)[:, None]
            out = layer(out, None)
        out = out[:, 1 : out.shape[1] - n]  # drop the class token and the visual prompt tokens
        gh, gw = _grid(out.shape[1], record.image_size, self.patch_size)
        out = out.transpose(1, 2).reshape(batch, -1, gh, gw)
        logits = decoder.transposed_convolution(out)
        if branch is not None:
            logits = branch(out.float(), logits.float())
        logits = logits.squeeze(1).float()
        size = tuple(output_size) if output_size is not None else record.image_size
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return logits


#: the embedded toy VLSM (HF ``save_pretrained`` folder shipped in the package, built by
#: ``vlprompt pretrain --config configs/pretrain/toyvlsm.yaml``)
TOY_VLSM_FOLDER = Path(__file__).parent / "assets" / "vlprompt-toyvlsm"


def embedded_folder() -> Path:
    """Path of the shipped toy VLSM folder; a clear error if the package was installed without it."""
    if not (TOY_VLSM_FOLDER / "config.json").is_file():
        raise BackboneError(
            f"the embedded toy VLSM folder {str(TOY_VLSM_FOLDER)!r} is missing or incomplete (no config.json). Reinstall "
            "vlprompt, or rebuild it with `vlprompt pretrain --config configs/pretrain/toyvlsm.yaml`."
        )
    return TOY_VLSM_FOLDER


class ToyVLSM(CLIPSegBackbone):
    """The embedded toy VLSM: a small CLIPSeg whose CLIP is the embedded toy CLIP, loaded through the same
    adapter as a real CLIPSeg folder.

    Args:
        pretrained: ``embedded`` for the shipped folder, or another local CLIPSeg folder.
        precision: weight dtype.
    """

    def __init__(self, pretrained: str = "embedded", *, precision: Precision = "fp32") -> None:
        super().__init__(str(embedded_folder()) if pretrained == "embedded" else pretrained, precision=precision)
        if pretrained == "embedded":  # provenance names the shipped model, not this machine's install path
            self.info = dataclasses.replace(self.info, pretrained="embedded")


def _model_name(name_or_path: str, folder: Path) -> str:
    """A portable model name for provenance: a hub name as is, a local path (what transformers records after
    loading from a folder) as the folder's name."""
    if not name_or_path or Path(name_or_path).is_absolute() or Path(name_or_path).exists():
        return folder.name or "clipseg"
    return name_or_path


def _grid(tokens: int, image_size: tuple[int, int] | None, patch: int) -> tuple[int, int]:
    if image_size is not None and (image_size[0] // patch) * (image_size[1] // patch) == tokens:
        return image_size[0] // patch, image_size[1] // patch
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise BackboneError(f"cannot arrange {tokens} patch tokens into a grid (image size {image_size}, patch {patch})")
    return side, side


def _check_deep(deep_prompts, layers: int, tower: str) -> None:
    if deep_prompts is not None and len(deep_prompts) > layers:
        raise BackboneError(f"{len(deep_prompts)} deep prompt layers given but the {tower} tower has {layers} layers")


__all__ = ["CLIPSegBackbone", "ToyVLSM", "TOY_VLSM_FOLDER", "embedded_folder", "DEFAULT_PREPROCESS", "PUBLISHED", "clear_model_cache", "resolve_folder", "write_clip_tokenizer"]
