"""Convert an open_clip ViT CLIP into the CLIP part of a Hugging Face CLIPSeg, and its tokenizer into HF files.

The embedded toy VLSM is a :class:`transformers.CLIPSegForImageSegmentation` whose CLIP is the shipped toy CLIP
(open_clip layout). CLIPSeg (Lüddecke & Ecker, CVPR 2022) keeps the CLIP frozen; its decoder reads the
vision activations of the ``extract_layers`` and is conditioned (FiLM) on the projected text feature, Eq. (1)
of the paper: ``x' = film_mul(t) * x + film_add(t)``.

Key mapping (open_clip ``VisionTransformer`` / ``TextTransformer`` -> HF ``CLIPSegModel``):

- ``visual.conv1`` -> ``vision_model.embeddings.patch_embedding`` (both bias-free convolutions);
  ``visual.class_embedding`` / ``visual.positional_embedding`` -> ``embeddings.class_embedding`` /
  ``embeddings.position_embedding.weight``; ``visual.ln_pre`` -> ``vision_model.pre_layrnorm`` (HF's spelling);
  ``visual.ln_post`` -> ``vision_model.post_layernorm``; ``visual.proj`` ``[width, D]`` (``x @ proj``) ->
  ``visual_projection.weight`` ``[D, width]`` (its transpose, no bias).
- each residual block: ``ln_1``/``ln_2`` -> ``layer_norm1``/``layer_norm2``; ``attn.in_proj_weight``/``bias``
  ``[3W, W]`` split in three along dim 0 -> ``self_attn.{q,k,v}_proj``; ``attn.out_proj`` -> ``self_attn.out_proj``;
  ``mlp.c_fc``/``mlp.c_proj`` -> ``mlp.fc1``/``mlp.fc2``.
- text: ``token_embedding`` -> ``text_model.embeddings.token_embedding``; ``positional_embedding`` ->
  ``embeddings.position_embedding.weight``; ``ln_final`` -> ``text_model.final_layer_norm``;
  ``text_projection`` ``[width, D]`` -> ``text_projection.weight`` (transpose); ``logit_scale`` as is.

Facts that must agree for equal features: open_clip builds ``nn.GELU`` (exact) unless ``quick_gelu`` is set, so
``hidden_act`` is ``gelu`` (HF's CLIP default is ``quick_gelu``); LayerNorm eps 1e-5; attention scale
``head_dim ** -0.5`` in both; open_clip pools text at ``argmax(tokens)`` (the end-of-text id 49407 is the largest
id) and HF at the first ``eos_token_id`` (49407): the same position because open_clip pads with id 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlprompt.backbones.clipseg import clip_bpe_tokens

__all__ = [
    "clipseg_config_from_open_clip",
    "open_clip_to_clipseg_state_dict",
    "open_clip_bpe_files",
    "save_clip_tokenizer",
    "PAD_TOKEN",
]

#: open_clip pads token sequences with id 0 (the byte token ``!``). HF adds its pad token as a special token that
#: is split out of any text, so ``!`` itself cannot be the pad token (``"wow!"`` would change ids); the vocabulary
#: gets a second name for id 0 instead, which no text contains.
PAD_TOKEN = "<|pad|>"


def clipseg_config_from_open_clip(
    model_cfg: dict,
    *,
    extract_layers: tuple[int, ...] | list[int],
    reduce_dim: int = 64,
    decoder_num_attention_heads: int = 4,
    decoder_intermediate_size: int = 256,
    conditional_layer: int = 0,
    use_complex_transposed_convolution: bool = False,
    quick_gelu: bool = False,
):
    """A :class:`transformers.CLIPSegConfig` whose CLIP matches an open_clip ViT model config (``open_clip.get_model_config``).

    Args:
        model_cfg: open_clip config (``embed_dim``, ``vision_cfg``, ``text_cfg``); ViT towers only.
        extract_layers: vision layers (0-based) whose outputs feed the decoder.
        reduce_dim, decoder_num_attention_heads, decoder_intermediate_size, conditional_layer,
            use_complex_transposed_convolution: CLIPSeg decoder settings (HF names).
        quick_gelu: whether the open_clip model was built with ``quick_gelu`` (else exact GELU).
    """
    from transformers import CLIPSegConfig  # deferred: transformers is heavy (CLIPSeg only)

    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    unsupported = [k for k in ("timm_model_name", "hf_model_name", "attentional_pool", "no_ln_pre", "final_ln_after_pool",
                               "pool_type", "act_kwargs", "norm_kwargs", "ls_init_value", "patch_dropout") if v.get(k) or t.get(k)]
    if isinstance(v.get("layers"), (list, tuple)) or unsupported:
        raise ValueError(f"only plain open_clip ViT/Transformer towers convert to CLIPSeg; this config has {unsupported or 'a ResNet'}")
    act = "quick_gelu" if quick_gelu else "gelu"
    width_v = int(v["width"])
    heads_v = width_v // int(v.get("head_width", 64))
    layers_v = int(v["layers"])
    bad = [i for i in extract_layers if not 0 <= int(i) < layers_v]
    if bad:
        raise ValueError(f"extract_layers {list(extract_layers)} must lie in [0, {layers_v - 1}] for a {layers_v}-layer ViT")
    return CLIPSegConfig(
        text_config=dict(
            vocab_size=int(t.get("vocab_size", 49408)), hidden_size=int(t["width"]), intermediate_size=int(t["width"] * t.get("mlp_ratio", 4.0)),
            num_hidden_layers=int(t["layers"]), num_attention_heads=int(t["heads"]), max_position_embeddings=int(t.get("context_length", 77)),
            hidden_act=act, layer_norm_eps=1e-5, pad_token_id=0, bos_token_id=49406, eos_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=width_v, intermediate_size=int(width_v * v.get("mlp_ratio", 4.0)), num_hidden_layers=layers_v,
            num_attention_heads=heads_v, image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
            hidden_act=act, layer_norm_eps=1e-5,
        ),
        projection_dim=int(model_cfg["embed_dim"]),
        extract_layers=[int(i) for i in extract_layers],
        reduce_dim=reduce_dim,
        decoder_num_attention_heads=decoder_num_attention_heads,
        decoder_intermediate_size=decoder_intermediate_size,
        conditional_layer=conditional_layer,
        use_complex_transposed_convolution=use_complex_transposed_convolution,
    )


def _blocks(sd: dict[str, torch.Tensor], src: str, dst: str, n: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(n):
        s, d = f"{src}.{i}.", f"{dst}.{i}."
        for name, t in zip(("q", "k", "v"), sd[s + "attn.in_proj_weight"].chunk(3, dim=0)):
            out[d + f"self_attn.{name}_proj.weight"] = t
        for name, t in zip(("q", "k", "v"), sd[s + "attn.in_proj_bias"].chunk(3, dim=0)):
            out[d + f"self_attn.{name}_proj.bias"] = t
        pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for a, b in pairs.items():
            out[d + b + ".weight"] = sd[s + a + ".weight"]
            out[d + b + ".bias"] = sd[s + a + ".bias"]
    return out


def open_clip_to_clipseg_state_dict(sd: dict[str, torch.Tensor], config, prefix: str = "clip.") -> dict[str, torch.Tensor]:
    """Rename (and split/transpose) an open_clip ViT CLIP state dict into HF ``CLIPSegModel`` keys under ``prefix``.

    ``config`` is the :class:`transformers.CLIPSegConfig` from :func:`clipseg_config_from_open_clip`. Every
    source tensor is used exactly once; a missing or left-over key raises ``KeyError``/``ValueError``.
    """
    nv, nt = config.vision_config.num_hidden_layers, config.text_config.num_hidden_layers
    out = {
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].t(),
        "logit_scale": sd["logit_scale"],
        **_blocks(sd, "visual.transformer.resblocks", "vision_model.encoder.layers", nv),
        **_blocks(sd, "transformer.resblocks", "text_model.encoder.layers", nt),
    }
    used = 14 + 12 * (nv + nt)  # one source tensor per target, except in_proj weight/bias (3 targets each)
    expected = len([k for k in sd if k != "attn_mask"])
    if used != expected:
        raise ValueError(f"open_clip state dict has {expected} tensors but the conversion used {used}: unexpected keys")
    return {prefix + k: v.contiguous().clone() for k, v in out.items()}


def open_clip_bpe_files() -> tuple[dict[str, int], list[str]]:
    """HF ``vocab.json`` dict and ``merges.txt`` lines derived from open_clip's ``bpe_simple_vocab_16e6.txt.gz``.

    The vocabulary follows open_clip's ``SimpleTokenizer`` order (256 byte tokens, the same with ``</w>``, the
    48,894 merges, then start/end of text as 49406/49407), with HF's special token spellings, plus
    :data:`PAD_TOKEN` as a second name of id 0.
    """
    tokens, merges = clip_bpe_tokens()
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != 49408:
        raise ValueError(f"derived BPE vocabulary has {len(vocab)} entries, expected 49408")
    vocab[PAD_TOKEN] = 0  # alias of "!" (id 0), open_clip's padding id
    return vocab, merges


def save_clip_tokenizer(folder: str | Path, context_length: int, *, fast_file: bool = False):
    """Write ``CLIPTokenizer`` files into ``folder`` (offline-loadable) giving open_clip's ids; returns the tokenizer.

    Sequences of ``context_length`` ids padded with id 0, as open_clip pads, when called with
    ``padding="max_length", max_length=context_length, truncation=True``. Texts containing the literal special
    tokens (``<|endoftext|>``...) differ, as in every HF CLIP tokenizer. ``fast_file=False`` drops the 3.6 MB
    ``tokenizer.json`` (``CLIPTokenizer`` rebuilds it from ``vocab.json`` and ``merges.txt``).
    """
    from transformers import CLIPTokenizer  # deferred: transformers is heavy (CLIPSeg only)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = open_clip_bpe_files()
    tmp_vocab, tmp_merges = folder / "vocab.json", folder / "merges.txt"
    tmp_vocab.write_text(json.dumps(vocab, ensure_ascii=False))
    tmp_merges.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(vocab=str(tmp_vocab), merges=str(tmp_merges), pad_token=PAD_TOKEN, model_max_length=context_length)
    tok.save_pretrained(str(folder))
    if not fast_file:
        (folder / "tokenizer.json").unlink(missing_ok=True)
    return tok
