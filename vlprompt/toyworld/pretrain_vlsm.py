"""Pretraining of the embedded toy VLSM: a CLIPSeg decoder on the frozen toy CLIP (a Lightning run).

``vlprompt pretrain --config configs/pretrain/toyvlsm.yaml`` builds a ``transformers.CLIPSegForImageSegmentation``
whose CLIP is the shipped toy CLIP converted exactly (:mod:`vlprompt.backbones.vlsm_convert`), freezes the CLIP, trains
the decoder on an endless stream of ``ToyReferring`` batches (image, referring phrase, mask of the referred
object) with Dice + BCE (segmentation-models-pytorch losses), then exports an HF ``save_pretrained`` folder
(fp16 safetensors, config, tokenizer and image-processor files) and a card (command, sha256 of every file,
steps, acceptance figures).

As in CLIPSeg (Lüddecke & Ecker, CVPR 2022, Sec. 3), the decoder's condition is the projected CLIP text feature
of the phrase, applied by FiLM, and the CLIP is frozen. Deliberate differences from the paper's training: the
data are toy referring scenes, not PhraseCut; a fraction ``negative_fraction`` of samples names a colour that is
absent from the image and has an empty target mask (so the decoder learns to answer "nothing here"); the loss is
Dice + BCE instead of BCE alone; the shipped config applies FiLM at the last decoder stage (``conditional_layer:
2``, where the shallowest, colour-local activations are added) instead of CLIPSeg's first stage (``0``): with ``0``,
600 CPU steps left the decoder phrase-agnostic (held-out Dice 0.550 with the right phrase, 0.548 with an absent
one), while ``2`` reached 0.745 / 0.320 in 650 steps (README, "The embedded toy VLSM").
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import open_clip
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlprompt.backbones.toyclip import (  # registers the toy config with open_clip
    TOY_CHECKPOINT,
    TOY_MODEL,
)
from vlprompt.backbones.vlsm_convert import (
    clipseg_config_from_open_clip,
    open_clip_to_clipseg_state_dict,
    save_clip_tokenizer,
)
from vlprompt.data.atomic import atomic_write_text, sha256_file
from vlprompt.data.toyworld.datasets import ToyReferring
from vlprompt.metrics import linear_warmup_cosine_schedule
from vlprompt.toyworld.toyvlsm_report import (
    OPENAI_MEAN,
    OPENAI_STD,
    TRAIN_SEED_BASE,
    absent_colour_phrases,
    acceptance,
    normalize,
)

log = logging.getLogger(__name__)


def train_seed(seed: int, worker: int, batch: int) -> int:
    """World seed of one training batch: always ``>= TRAIN_SEED_BASE``, so small seeds stay held out."""
    if not 0 <= batch < 10**6 or not 0 <= worker < 100 or not 0 <= seed < 9:
        raise ValueError(f"train_seed(seed={seed}, worker={worker}, batch={batch}) is out of range")
    return TRAIN_SEED_BASE + seed * 10**8 + worker * 10**6 + batch


class ReferringStream(IterableDataset):
    """Endless batches ``(images [B, 3, S, S] float, tokens [B, L] long, masks [B, S, S] float)`` of referring scenes.

    Each batch is ``ToyReferring(batch_size, seed=train_seed(...))``; a ``negative_fraction`` of its samples gets a
    phrase naming a colour absent from the image and an empty mask.
    """

    def __init__(self, model: str, batch_size: int, seed: int, negative_fraction: float, num_objects: int = 2) -> None:
        self.model = model
        self.batch_size = batch_size
        self.seed = seed
        self.negative_fraction = negative_fraction
        self.num_objects = num_objects

    def __iter__(self):
        info = get_worker_info()
        wid = 0 if info is None else info.id
        rng = random.Random(train_seed(self.seed, wid, 0))
        tokenizer = open_clip.get_tokenizer(self.model)
        k = 0
        while True:
            data = ToyReferring(self.batch_size, num_objects=self.num_objects, seed=train_seed(self.seed, wid, k))
            k += 1
            phrases = list(data.phrases)
            masks = data.masks.float()
            absent = absent_colour_phrases(data)
            for i in range(len(phrases)):
                if rng.random() < self.negative_fraction:
                    phrases[i] = absent[i]
                    masks[i] = 0.0
            yield data.images.float() / 255.0, tokenizer(phrases), masks


class ReferringData(pl.LightningDataModule):
    """Stream of rendered toy referring scenes (``ToyReferring``) for VLSM pretraining."""

    def __init__(
        self, *, model: str = TOY_MODEL, batch_size: int = 128, num_workers: int = 1, seed: int = 0,
        negative_fraction: float = 0.2, num_objects: int = 2,
    ) -> None:
        super().__init__()
        self.model = model
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.negative_fraction = negative_fraction
        self.num_objects = num_objects

    def train_dataloader(self) -> DataLoader:
        stream = ReferringStream(self.model, self.batch_size, self.seed, self.negative_fraction, self.num_objects)
        return DataLoader(
            stream, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            prefetch_factor=4 if self.num_workers > 0 else None,
        )


def build_toy_vlsm(
    clip_model: str = TOY_MODEL, clip_checkpoint: str | None = "embedded", **decoder: object
):
    """A ``CLIPSegForImageSegmentation`` whose CLIP is the open_clip ``clip_model`` (weights from ``clip_checkpoint``,
    ``embedded`` = the shipped toy CLIP, ``None`` = random) and whose decoder is freshly initialised."""
    from transformers import CLIPSegForImageSegmentation  # deferred: transformers is heavy (CLIPSeg only)

    config = clipseg_config_from_open_clip(open_clip.get_model_config(clip_model), **decoder)
    model = CLIPSegForImageSegmentation(config)
    path = str(TOY_CHECKPOINT) if clip_checkpoint == "embedded" else clip_checkpoint
    oc = open_clip.create_model(clip_model, pretrained=path)
    state = open_clip_to_clipseg_state_dict({k: v.float() for k, v in oc.state_dict().items()}, config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("decoder.") for k in missing):
        raise RuntimeError(f"CLIP conversion mismatch: missing {missing}, unexpected {unexpected}")
    return model


class VLSMPretraining(pl.LightningModule):
    """Train a CLIPSeg decoder on the frozen (converted) toy CLIP with Dice + BCE on referring masks.

    Args:
        clip_model, clip_checkpoint: open_clip model name and weights (``embedded`` = the shipped toy CLIP).
        extract_layers, reduce_dim, decoder_num_attention_heads, decoder_intermediate_size, conditional_layer,
            use_complex_transposed_convolution: CLIPSeg decoder settings (HF ``CLIPSegConfig`` names).
        lambda_dice, lambda_bce: loss weights.
        lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay over ``max_steps``.
        eval_every, eval_samples: steps between held-out Dice evaluations, and their size.
        final_eval_samples: size of the held-out evaluation written into the card.
        export_dir: the HF folder written by ``on_fit_end``; ``<export_dir>.card.json`` and ``.report.json`` beside it.
        init_decoder_from: a folder exported by an earlier run (same decoder settings) whose decoder weights this run
            continues from; the card then embeds that run's card (``<folder>.card.json``) and weights sha256.
    """

    def __init__(
        self, *, clip_model: str = TOY_MODEL, clip_checkpoint: str | None = "embedded",
        extract_layers: list[int] = [1, 3, 5], reduce_dim: int = 64, decoder_num_attention_heads: int = 4,  # noqa: B006
        decoder_intermediate_size: int = 256, conditional_layer: int = 0, use_complex_transposed_convolution: bool = False,
        lambda_dice: float = 1.0, lambda_bce: float = 1.0, lr: float = 2e-3, weight_decay: float = 1e-4,
        warmup_steps: int = 100, eval_every: int = 250, eval_samples: int = 256, final_eval_samples: int = 1000,
        export_dir: str = "runs/pretrain/vlprompt-toyvlsm", init_decoder_from: str | None = None,
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp  # deferred: smp is heavy (VLSM baseline only)

        self.save_hyperparameters()
        self.vlsm = build_toy_vlsm(
            clip_model, clip_checkpoint, extract_layers=list(extract_layers), reduce_dim=reduce_dim,
            decoder_num_attention_heads=decoder_num_attention_heads, decoder_intermediate_size=decoder_intermediate_size,
            conditional_layer=conditional_layer, use_complex_transposed_convolution=use_complex_transposed_convolution,
        )
        self.vlsm.clip.requires_grad_(False)
        self._init_card = self._load_decoder(init_decoder_from) if init_decoder_from else None
        self.dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
        self.bce = smp.losses.SoftBCEWithLogitsLoss()
        self.tokenizer = open_clip.get_tokenizer(clip_model)
        self._t0 = time.time()
        self.samples_seen = 0
        self.last_eval: dict = {}
        self._text_cache: dict[bytes, torch.Tensor] = {}  # frozen text tower: one feature per distinct phrase

    def _load_decoder(self, folder: str) -> dict:
        path = Path(folder) / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"init_decoder_from={folder!r} has no model.safetensors; pass a folder exported by this pretraining")
        state = {k.removeprefix("decoder."): v.float() for k, v in load_file(str(path)).items() if k.startswith("decoder.")}
        self.vlsm.decoder.load_state_dict(state, strict=True)  # a different decoder config fails here, before training
        card = Path(str(Path(folder)) + ".card.json")
        return {"folder": str(folder), "model_sha256": sha256_file(path),
                "card": json.loads(card.read_text()) if card.is_file() else None}

    def on_fit_start(self) -> None:
        self._device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else str(self.device)
        self.vlsm.clip.eval()

    def on_train_epoch_start(self) -> None:
        self.vlsm.clip.eval()  # frozen: no dropout/statistics updates even in train mode

    @torch.no_grad()
    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projected text features ``[B, D]`` of token ids ``[B, L]`` (HF ``get_text_features``, cached per phrase:
        the CLIP is frozen and the toy phrases are few)."""
        keys = [row.cpu().numpy().tobytes() for row in tokens]
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in self._text_cache:
                first.setdefault(k, i)
        new = list(first.values())
        if new:
            feats = self.vlsm.clip.get_text_features(input_ids=tokens[new]).pooler_output
            self._text_cache.update({keys[i]: f for i, f in zip(new, feats)})
        return torch.stack([self._text_cache[k] for k in keys])

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Mask logits ``[B, S, S]`` for images in ``[0, 1]`` and token ids (the CLIPSeg forward with the text
        condition given as ``conditional_embeddings``, which HF would compute the same way from ``input_ids``)."""
        logits = self.vlsm(pixel_values=normalize(images), conditional_embeddings=self.text_features(tokens)).logits
        return logits[None] if logits.dim() == 2 else logits

    def training_step(self, batch, batch_idx):
        images, tokens, masks = batch
        logits = self(images, tokens)
        dice = self.dice(logits[:, None], masks[:, None])
        bce = self.bce(logits, masks)
        loss = self.hparams.lambda_dice * dice + self.hparams.lambda_bce * bce
        self.samples_seen += images.shape[0]
        self.log_dict({"train/loss": loss, "train/dice_loss": dice, "train/bce": bce}, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.global_step % self.hparams.eval_every == 0 and self.global_step > 0:
            self.run_eval()

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def run_eval(self, samples: int | None = None, log_metrics: bool = True) -> dict:
        # held-out seed 3 for monitoring (the shipped acceptance report uses another held-out seed)
        row = acceptance(self.vlsm, self._tokenize, n=samples or self.hparams.eval_samples, seed=3)
        self.vlsm.clip.eval()
        if log_metrics:
            self.log_dict({f"val/{k}": float(v) for k, v in row.items() if k.startswith("dice_") and not k.endswith("_std")})
        log.info("step %d samples %d held-out Dice right %.3f absent %.3f other %.3f", self.global_step, self.samples_seen,
                 row["dice_right"], row["dice_absent"], row["dice_other"])
        self.last_eval = row
        return row

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.vlsm.decoder.named_parameters():
            (decay if p.ndim >= 2 else no_decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        return {"optimizer": opt, "lr_scheduler": linear_warmup_cosine_schedule(
            opt, max_steps=self.trainer.max_steps, warmup_steps=self.hparams.warmup_steps)}

    def on_fit_end(self) -> None:
        if self.trainer.global_rank != 0:
            return
        folder = Path(self.hparams.export_dir)
        export_folder(self.vlsm, folder)
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(folder.iterdir()) if p.is_file()}
        card = {
            "model": "vlprompt-toyvlsm",
            "format": "transformers CLIPSegForImageSegmentation save_pretrained folder (fp16 weights; load with dtype=torch.float32)",
            "folder": folder.name,
            "files": files,
            "bytes": sum(f["bytes"] for f in files.values()),
            "clip": {"open_clip_model": self.hparams.clip_model, "checkpoint_sha256": sha256_file(TOY_CHECKPOINT)
                     if self.hparams.clip_checkpoint == "embedded" else None},
            "command": _command(),
            "steps": int(self.global_step),
            "samples": int(self.samples_seen * self.trainer.world_size),
            "train_seeds": f"ToyReferring seeds >= {TRAIN_SEED_BASE} (vlprompt.toyworld.pretrain_vlsm.train_seed)",
            "wall_seconds": round(time.time() - self._t0, 1),
            "device": getattr(self, "_device_name", str(self.device)),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "hparams": dict(self.hparams),
            "continued_from": self._init_card,
            "final_heldout_dice": self.run_eval(samples=self.hparams.final_eval_samples, log_metrics=False),
        }
        card["stages"] = card_stages(card)  # every command of the chain, in order (also nested in continued_from)
        atomic_write_text(folder.parent / f"{folder.name}.card.json", json.dumps(card, indent=2) + "\n")
        log.info("exported %s (%d bytes)", folder, card["bytes"])


def card_stages(card: dict) -> list[dict]:
    """The pretraining stages behind ``card``, oldest first, read from its ``continued_from`` chain: each stage's
    ``command``, ``steps``, ``wall_seconds``, the weights sha256 it started from (``init_model_sha256``, ``None`` for
    a fresh decoder) and the one it exported (``model_sha256``)."""
    chain = []
    while card:
        prev = card.get("continued_from") or {}
        chain.append({"command": card.get("command"), "steps": card.get("steps"),
                      "wall_seconds": card.get("wall_seconds"), "init_model_sha256": prev.get("model_sha256"),
                      "model_sha256": card.get("files", {}).get("model.safetensors", {}).get("sha256")})
        card = prev.get("card")
    return chain[::-1]


def _command() -> str:
    """The ``vlprompt pretrain ...`` command line of this process (global flags such as ``--no-progress`` dropped)."""
    argv = [a for a in sys.argv[1:] if a != "--no-progress"]
    if argv and argv[0] == "pretrain":
        argv = argv[1:]
    return "vlprompt pretrain " + " ".join(argv)


def export_folder(model, folder: str | Path) -> Path:
    """Write ``model`` (a ``CLIPSegForImageSegmentation``) as an HF folder: fp16 safetensors, config, tokenizer
    files derived from open_clip's BPE (no ``tokenizer.json``: ``CLIPTokenizer`` rebuilds it from vocab/merges),
    and a ``ViTImageProcessor`` config (48 px, CLIP mean/std). Replaces ``folder`` atomically (rename)."""
    from transformers import ViTImageProcessor  # deferred: transformers is heavy (CLIPSeg only)

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        half = copy.deepcopy(model).to("cpu", torch.float16)
        half.save_pretrained(str(tmp), safe_serialization=True)
        length = model.config.text_config.max_position_embeddings
        save_clip_tokenizer(tmp, length)
        size = model.config.vision_config.image_size
        ViTImageProcessor(
            do_resize=True, size={"height": size, "width": size}, resample=3, do_rescale=True, do_normalize=True,
            image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD),
        ).save_pretrained(str(tmp))
        for p in tmp.iterdir():
            p.chmod(0o644)
        tmp.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
