"""Contrastive pretraining of the embedded toy CLIP on toy-world captions (a Lightning run).

``vlprompt pretrain --config configs/pretrain/toyclip.yaml`` trains an open_clip model from its config
with open_clip's :class:`~open_clip.ClipLoss` on an endless stream of rendered scenes and captions, then
exports fp16 safetensors weights plus a card (command, sha256, steps, accuracies).

Batches mix random scenes with hard negatives: a copy of a scene in which exactly one attribute changed,
whose captions are forced to mention that attribute, so the model must bind every attribute it is shown.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import open_clip
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlprompt.data.atomic import atomic_write_text, save_safetensors
from vlprompt.backbones.open_clip import file_sha256
from vlprompt.backbones.toyclip import TOY_MODEL  # registers the toy config with open_clip
from vlprompt.data.toyworld.captions import caption, scene_attributes
from vlprompt.data.toyworld.datasets import attribute_scenes
from vlprompt.data.toyworld.render import ATTRIBUTES, BACKGROUNDS, render, sample_scene
from vlprompt.metrics import linear_warmup_cosine_schedule
from vlprompt.toyworld.toyclip_report import attribute_zero_shot

log = logging.getLogger(__name__)

_HARD_ATTRS = ("colour", "texture", "size", "position", "background", "shape")


class CaptionStream(IterableDataset):
    """Endless batches ``(images [B, 3, S, S] float, tokens [B, L] long)`` of toy scenes and captions."""

    def __init__(self, model: str, batch_size: int, seed: int, hard_negative_fraction: float) -> None:
        self.model = model
        self.batch_size = batch_size
        self.seed = seed
        self.hard = hard_negative_fraction

    def __iter__(self):
        info = get_worker_info()
        wid = 0 if info is None else info.id
        g = torch.Generator().manual_seed(self.seed * 100_003 + wid)
        rng = random.Random(self.seed * 100_003 + wid)
        tokenizer = open_clip.get_tokenizer(self.model)
        b = self.batch_size
        n_pairs = int(b * self.hard) // 2
        while True:
            scene = sample_scene(b, generator=g)
            changed: list[str | None] = [None] * b
            for i in range(n_pairs):  # scene b-1-i is scene i with one attribute changed
                j = b - 1 - i
                name = rng.choice(_HARD_ATTRS)
                for attr in ("colour", "texture", "shape", "size", "position"):
                    getattr(scene, attr)[j] = getattr(scene, attr)[i]
                scene.background[j] = scene.background[i]
                n_values = len(BACKGROUNDS) if name == "background" else len(ATTRIBUTES[name])
                tensor = scene.background if name == "background" else getattr(scene, name)[:, 0]
                tensor[j] = (tensor[i] + rng.randrange(1, n_values)) % n_values
                changed[i] = changed[j] = name
            images, _ = render(scene, generator=g)
            texts = [
                caption(scene_attributes(scene, k), rng, require=(changed[k],) if changed[k] else ())
                for k in range(b)
            ]
            yield images, tokenizer(texts)


class CaptionData(pl.LightningDataModule):
    """Stream of rendered toy scenes with captions for pretraining."""

    def __init__(
        self, *, model: str = TOY_MODEL, batch_size: int = 512, num_workers: int = 2, seed: int = 0,
        hard_negative_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        self.model = model
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.hard = hard_negative_fraction

    def train_dataloader(self) -> DataLoader:
        stream = CaptionStream(self.model, self.batch_size, self.seed, self.hard)
        return DataLoader(
            stream, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            prefetch_factor=4 if self.num_workers > 0 else None,
        )


class CLIPPretraining(pl.LightningModule):
    """Train an open_clip model from its config (random init) with the CLIP contrastive loss.

    Args:
        model: open_clip model name (config only; weights start random).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay over ``max_steps``.
        export_path: where ``on_fit_end`` writes fp16 safetensors weights; a ``.card.json`` goes beside it.
        eval_every: steps between attribute zero-shot evaluations on a fixed probe set.
    """

    def __init__(
        self, *, model: str = TOY_MODEL, lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 500,
        export_path: str = "runs/pretrain/vlprompt-toyclip.safetensors", eval_every: int = 500,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_name = model
        self.clip = open_clip.create_model(model, pretrained=None)
        self.loss_fn = open_clip.ClipLoss()
        self.tokenizer = open_clip.get_tokenizer(model)
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self._t0 = time.time()
        self.samples_seen = 0
        self.last_eval: dict[str, float] = {}

    def on_fit_start(self) -> None:
        self._device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else str(self.device)

    def training_step(self, batch, batch_idx):
        images, tokens = batch
        img = self.clip.encode_image((images - self.mean) / self.std, normalize=True)
        txt = self.clip.encode_text(tokens, normalize=True)
        loss = self.loss_fn(img, txt, self.clip.logit_scale.exp())
        self.samples_seen += images.shape[0]
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", self.clip.logit_scale.exp(), prog_bar=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, math.log(100))
        if (self.global_step % self.hparams.eval_every == 0) and self.global_step > 0:
            self.run_eval()

    def run_eval(self, log_metrics: bool = True) -> dict[str, float]:
        if not hasattr(self, "_probe"):
            self._probe = attribute_scenes(2000, 12345)
        images, targets = self._probe
        was = self.clip.training
        self.clip.eval()
        with torch.no_grad():
            feats = torch.cat([self.clip.encode_image((c.to(self.device) - self.mean) / self.std) for c in images.split(500)])
        acc = attribute_zero_shot(feats, lambda texts: self.clip.encode_text(self.tokenizer(texts).to(self.device)), targets)
        self.clip.train(was)
        self.last_eval = acc
        if log_metrics:
            for k, v in acc.items():
                self.log(f"zeroshot/{k}", v)
        log.info("step %d samples %d zero-shot %s", self.global_step, self.samples_seen, {k: round(v, 3) for k, v in acc.items()})
        return acc

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.clip.named_parameters():
            (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, betas=(0.9, 0.98), eps=1e-6,
        )
        return {"optimizer": opt, "lr_scheduler": linear_warmup_cosine_schedule(
            opt, max_steps=self.trainer.max_steps, warmup_steps=self.hparams.warmup_steps)}

    def card_extra(self) -> dict:
        """More fields for the exported card (subclasses: e.g. the checkpoint a run started from)."""
        return {}

    def on_fit_end(self) -> None:
        if self.trainer.global_rank != 0:
            return
        acc = self.run_eval(log_metrics=False)
        path = Path(self.hparams.export_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in self.clip.state_dict().items()}
        save_safetensors(state, path, metadata={"model": self.model_name, "format": "open_clip"})
        card = {
            "model": self.model_name,
            "model_config": open_clip.get_model_config(self.model_name),
            "file": path.name,
            "sha256": file_sha256(path),
            "bytes": path.stat().st_size,
            "command": "vlprompt pretrain " + " ".join(sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "pretrain" else sys.argv[1:]),
            "steps": int(self.global_step),
            "samples": int(self.samples_seen * self.trainer.world_size),
            "wall_seconds": round(time.time() - self._t0, 1),
            "device": getattr(self, "_device_name", str(self.device)),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "hparams": dict(self.hparams),
            "final_attribute_zero_shot": acc,
            **self.card_extra(),
        }
        atomic_write_text(Path(str(path).removesuffix(".safetensors") + ".card.json"), json.dumps(card, indent=2) + "\n")
        log.info("exported %s (%d bytes, sha256 %s)", path, card["bytes"], card["sha256"])

