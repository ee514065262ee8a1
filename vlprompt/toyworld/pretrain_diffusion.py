"""Pretraining of the embedded toy-world diffusion model (a Lightning run; the generator is
:class:`vlprompt.generators.toydiffusion.ToyDiffusion`).

``vlprompt pretrain --config configs/pretrain/toydiffusion.yaml`` trains a diffusers ``UNet2DModel`` with the
DDPM noise-prediction loss (Ho et al. 2020, eq. 14, the "simple" loss ``|| eps - eps_theta(x_t, t) ||^2``)
on an endless stream of rendered one-object toy scenes in every style, then exports fp16 safetensors
weights, a JSON config (UNet, scheduler, patch) and a card (command, sha256, steps, wall time, last loss).

Timesteps are drawn uniformly from ``[0, max_timestep_fraction * T)``: SDEdit variations never start above
their ``strength``, so the network is trained only on the noise levels it is used at (a compute saving on a
CPU budget; set the fraction to 1 for a full generative model).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlprompt.data.atomic import atomic_write_text, save_safetensors, sha256_file
from vlprompt.data.toyworld.render import IMAGE_SIZE, STYLES, render, sample_scene
from vlprompt.generators.toydiffusion import (
    DEFAULT_SCHEDULER,
    DEFAULT_UNET,
    build_unet,
    card_path,
    config_path,
    require_diffusers,
    to_model_space,
)
from vlprompt.metrics import linear_warmup_cosine_schedule

log = logging.getLogger(__name__)


class SceneStream(IterableDataset):
    """Endless batches ``[B, 3, S, S]`` (float, ``[0, 1]``) of one-object toy scenes, styles drawn per image."""

    def __init__(self, batch_size: int, seed: int, styles: tuple[str, ...]) -> None:
        self.batch_size = batch_size
        self.seed = seed
        self.styles = styles

    def __iter__(self):
        info = get_worker_info()
        wid = 0 if info is None else info.id
        g = torch.Generator().manual_seed(self.seed * 100_003 + wid)
        while True:
            style_idx = torch.randint(0, len(self.styles), (self.batch_size,), generator=g)
            images = torch.empty(self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
            for k, style in enumerate(self.styles):
                sel = (style_idx == k).nonzero().flatten()
                if len(sel):
                    images[sel], _ = render(sample_scene(len(sel), generator=g), generator=g, style=style)
            yield images


class ToySceneData(pl.LightningDataModule):
    """Stream of rendered toy scenes (no captions) for diffusion pretraining.

    Args:
        batch_size: images per step. num_workers: rendering processes (0: in the training process).
        seed: stream seed. styles: rendering styles drawn uniformly per image (default: all).
    """

    def __init__(self, *, batch_size: int = 32, num_workers: int = 0, seed: int = 0, styles: list[str] | None = None) -> None:
        super().__init__()
        styles = list(STYLES) if styles is None else list(styles)
        unknown = [s for s in styles if s not in STYLES]
        if unknown or not styles:
            raise ValueError(f"styles={styles!r}: each must be one of {list(STYLES)}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.styles = tuple(styles)

    def train_dataloader(self) -> DataLoader:
        stream = SceneStream(self.batch_size, self.seed, self.styles)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)


def diffusion_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """DDPM simple loss (Ho et al. 2020, eq. 14): mean squared error of the predicted noise. ``[B, ...] -> []``."""
    return F.mse_loss(eps_pred.float(), eps.float())


class DiffusionPretraining(pl.LightningModule):
    """Train a small ``UNet2DModel`` to denoise toy scenes (DDPM, epsilon prediction), then export it.

    Args:
        block_out_channels, layers_per_block, norm_num_groups: the UNet (3 resolution levels, no attention).
        patch: pixel-unshuffle factor (the network sees ``[3 p^2, S/p, S/p]``).
        num_train_timesteps, beta_schedule: the noise schedule (diffusers scheduler arguments).
        max_timestep_fraction: timesteps are drawn from ``[0, fraction * T)`` (see the module docstring).
        lr, warmup_steps: AdamW with linear warm-up and cosine decay over ``max_steps``.
        ema_decay: decay of the exported exponential moving average of the weights (0: export raw weights).
        export_path: where ``on_fit_end`` writes fp16 safetensors; ``.json`` config and ``.card.json`` beside it.
    """

    def __init__(
        self, *, block_out_channels: list[int] = (32, 64, 96), layers_per_block: int = 1, norm_num_groups: int = 16,
        patch: int = 2, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
        max_timestep_fraction: float = 0.7, lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 50,
        ema_decay: float = 0.99, export_path: str = "runs/pretrain/vlprompt-toydiffusion.safetensors",
    ) -> None:
        super().__init__()
        if not 0 < max_timestep_fraction <= 1:
            raise ValueError(f"max_timestep_fraction={max_timestep_fraction} must be in (0, 1]")
        if IMAGE_SIZE % patch:
            raise ValueError(f"patch={patch} must divide the toy image size {IMAGE_SIZE}")
        self.save_hyperparameters()
        size = IMAGE_SIZE // patch
        self.unet_config = dict(DEFAULT_UNET, sample_size=size, in_channels=3 * patch * patch, out_channels=3 * patch * patch,
                                block_out_channels=list(block_out_channels), layers_per_block=layers_per_block,
                                norm_num_groups=norm_num_groups,
                                down_block_types=["DownBlock2D"] * len(block_out_channels),
                                up_block_types=["UpBlock2D"] * len(block_out_channels))
        self.scheduler_config = dict(DEFAULT_SCHEDULER, num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
        self.unet = build_unet(self.unet_config)
        self.noise_scheduler = require_diffusers().DDPMScheduler(**self.scheduler_config)
        self.ema = {k: v.detach().clone() for k, v in self.unet.state_dict().items()} if ema_decay > 0 else None
        self._t0 = time.time()
        self.samples_seen = 0
        self.last_loss = float("nan")

    def training_step(self, batch, batch_idx):
        x0 = to_model_space(batch, self.hparams.patch)
        t_max = max(1, int(self.hparams.max_timestep_fraction * self.hparams.num_train_timesteps))
        t = torch.randint(0, t_max, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        xt = self.noise_scheduler.add_noise(x0, eps, t)
        loss = diffusion_loss(self.unet(xt, t).sample, eps)
        self.samples_seen += x0.shape[0]
        self.last_loss = float(loss.detach())
        self.log("train/loss", loss, prog_bar=True)
        if self.global_step % 50 == 0:
            log.info("step %d samples %d loss %.4f (%.0f s)", self.global_step, self.samples_seen, self.last_loss, time.time() - self._t0)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is None:
            return
        d = min(self.hparams.ema_decay, (1 + self.global_step) / (10 + self.global_step))  # warm-up of the average
        with torch.no_grad():
            for k, v in self.unet.state_dict().items():
                e = self.ema[k]
                if e.device != v.device:
                    self.ema[k] = e = e.to(v.device)
                if v.dtype.is_floating_point:
                    e.mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    e.copy_(v)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": opt, "lr_scheduler": linear_warmup_cosine_schedule(
            opt, max_steps=self.trainer.max_steps, warmup_steps=self.hparams.warmup_steps)}

    def export_state(self) -> dict[str, torch.Tensor]:
        """fp16 CPU weights to export: the moving average when kept, else the raw weights."""
        state = self.ema if self.ema is not None else self.unet.state_dict()
        return {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in state.items()}

    def on_fit_end(self) -> None:
        if self.trainer.global_rank != 0:
            return
        diffusers = require_diffusers()
        path = Path(self.hparams.export_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.export_state(), path, metadata={"format": "diffusers.UNet2DModel", "model": "vlprompt-toydiffusion"})
        config = {"unet": self.unet_config, "scheduler": self.scheduler_config, "patch": self.hparams.patch,
                  "image_size": IMAGE_SIZE}
        atomic_write_text(config_path(path), json.dumps(config, indent=2) + "\n")
        argv = sys.argv[1:]
        argv = argv[argv.index("pretrain") + 1:] if "pretrain" in argv else argv
        card = {
            "model": "vlprompt-toydiffusion",
            "file": path.name,
            "config_file": config_path(path).name,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "parameters": int(sum(p.numel() for p in self.unet.parameters())),
            "command": "vlprompt pretrain " + " ".join(argv),
            "steps": int(self.global_step),
            "samples": int(self.samples_seen * self.trainer.world_size),
            "wall_seconds": round(time.time() - self._t0, 1),
            "device": str(self.device),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "hparams": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.hparams.items()},
            "last_train_loss": self.last_loss,
            "exported": "ema" if self.ema is not None else "raw",
        }
        atomic_write_text(card_path(path), json.dumps(card, indent=2) + "\n")
        log.info("exported %s (%d bytes, sha256 %s)", path, card["bytes"], card["sha256"])
