"""The embedded generator: a small pixel-space diffusion model of the toy world that makes SDEdit variations.

DiffTPT (Feng et al., ICCV 2023, Sec. 3.2) augments each test image with Stable Diffusion image variations.
The toy world has no Stable Diffusion, so this package ships a small denoising diffusion model (DDPM, Ho et
al. 2020, eq. 14: the network predicts the noise ``eps`` of ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``)
trained on rendered toy scenes of every style by ``vlprompt pretrain --config configs/pretrain/toydiffusion.yaml``
(:mod:`vlprompt.toyworld.pretrain_diffusion`). Variations follow SDEdit (Meng et al., ICLR 2022, Sec. 3): noise the
image to ``t0 = strength * T`` with the forward process, then denoise it with DDIM (Song et al. 2021, eq. 12,
``eta = 0``) back to ``t = 0``; each variation starts from its own seeded noise.

The network is diffusers' :class:`~diffusers.UNet2DModel` working on ``2 x 2`` pixel-unshuffled images
(``[3, 48, 48] -> [12, 24, 24]``), which keeps every pixel (textures are 2-3 px patterns) at a quarter of the
convolution cost. Weights are fp16 safetensors with a JSON config (UNet and scheduler) beside them; a card
records the command, sha256 and training figures. Differences from DiffTPT's generator, all deliberate: no
image-embedding conditioning (the variation is anchored by the partly noised input instead), pixel space
instead of a VAE latent, 48 px instead of 512 px.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vlprompt.data.atomic import sha256_file
from vlprompt.generators.base import GeneratorError, ViewGenerator

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
TOY_DIFFUSION = ASSETS / "vlprompt-toydiffusion.safetensors"
PRETRAIN_HINT = "produce it with `vlprompt pretrain --config configs/pretrain/toydiffusion.yaml`"

#: the UNet of the shipped model (diffusers UNet2DModel keyword arguments), on 2x2 pixel-unshuffled 48 px images
DEFAULT_UNET: dict = {
    "sample_size": 24,
    "in_channels": 12,
    "out_channels": 12,
    "block_out_channels": [32, 64, 96],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 16,
}
#: the noise schedule (diffusers DDPMScheduler / DDIMScheduler keyword arguments)
DEFAULT_SCHEDULER: dict = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon"}


def config_path(weights: str | Path) -> Path:
    """The JSON config beside a weights file (``X.safetensors -> X.json``)."""
    return Path(str(weights).removesuffix(".safetensors") + ".json")


def card_path(weights: str | Path) -> Path:
    """The card beside a weights file (``X.safetensors -> X.card.json``)."""
    return Path(str(weights).removesuffix(".safetensors") + ".card.json")


def require_diffusers():
    """The ``diffusers`` module, imported on first use (it is the ``difftpt`` extra, not a core dependency);
    a clear error naming the install command where it is missing."""
    try:
        import diffusers  # deferred: optional (difftpt extra)
    except ImportError as exc:  # pragma: no cover - diffusers is a test and difftpt extra
        raise GeneratorError('toy_diffusion needs diffusers: pip install "vlprompt[difftpt]"') from exc
    return diffusers


def build_unet(unet: dict):
    """A randomly initialised diffusers ``UNet2DModel`` from its keyword arguments."""
    return require_diffusers().UNet2DModel(**unet)


def to_model_space(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Images ``[B, 3, S, S]`` in ``[0, 1]`` -> model inputs ``[B, 3 p^2, S/p, S/p]`` in ``[-1, 1]``."""
    return F.pixel_unshuffle(images * 2 - 1, patch) if patch > 1 else images * 2 - 1


def from_model_space(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of :func:`to_model_space`, clamped to ``[0, 1]``."""
    x = F.pixel_shuffle(x, patch) if patch > 1 else x
    return ((x + 1) / 2).clamp(0, 1)


def load_toy_diffusion(path: str | Path | None = None, *, check_sha256: bool = False):
    """``(unet, scheduler_config, config)`` from fp16 safetensors weights and their JSON config (no pickle).

    ``check_sha256`` compares the weights with the card's sha256 and fails on a mismatch.
    """
    weights = Path(path).expanduser() if path else TOY_DIFFUSION
    cfg_file = config_path(weights)
    missing = [str(p) for p in (weights, cfg_file) if not p.is_file()]
    if missing:
        raise GeneratorError(f"toy_diffusion: {', '.join(missing)} not found; {PRETRAIN_HINT} (it writes the weights, "
                             "their .json config and a .card.json)")
    if check_sha256:
        card = json.loads(card_path(weights).read_text())
        got = sha256_file(weights)
        if got != card["sha256"]:
            raise GeneratorError(f"toy_diffusion: {weights} has sha256 {got}, its card says {card['sha256']}: the file "
                                 f"is corrupt or was replaced; reinstall the package or {PRETRAIN_HINT}")
    config = json.loads(cfg_file.read_text())
    unet = build_unet(config["unet"])
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    unet.load_state_dict(state)
    unet.eval().requires_grad_(False)
    return unet, config["scheduler"], config


class ToyDiffusion(ViewGenerator):
    """SDEdit variations from the embedded toy-world diffusion model (or another checkpoint of the same format).

    Args:
        path: weights file (``.safetensors`` with a ``.json`` config beside it); ``None`` is the embedded one.
        strength: SDEdit noise level ``t0 / T`` in ``(0, 1]``: higher gives more different variations.
        num_inference_steps: DDIM steps over the whole ``[0, T]`` range; ``int(strength * steps)`` of them run.
        batch: variations denoised per network call.
        device: torch device for generation.
    """

    family = "generator"

    def __init__(
        self,
        path: str | None = None,
        *,
        strength: float = 0.35,
        num_inference_steps: int = 3,
        batch: int = 64,
        device: str = "cpu",
    ) -> None:
        if not 0 < strength <= 1:
            raise GeneratorError(f"strength={strength} must be in (0, 1] (SDEdit noise level t0/T; e.g. 0.5)")
        if num_inference_steps < 1 or batch < 1:
            raise GeneratorError(f"num_inference_steps={num_inference_steps} and batch={batch} must be positive")
        if int(strength * num_inference_steps) < 1:
            raise GeneratorError(f"strength={strength} x num_inference_steps={num_inference_steps} runs no denoising step: raise either")
        self.path = Path(path).expanduser() if path else TOY_DIFFUSION
        if not self.path.is_file() or not config_path(self.path).is_file():
            raise GeneratorError(f"toy_diffusion: weights {str(self.path)!r} or config {str(config_path(self.path))!r} "
                                 f"missing; {PRETRAIN_HINT}")
        self.strength = strength
        self.num_inference_steps = num_inference_steps
        self.batch = batch
        self.device = device
        self._unet = None
        self._sha = None

    def identity(self) -> dict:
        if self._sha is None:
            self._sha = sha256_file(self.path)
        return {"name": "toy_diffusion", "weights": self._sha, "strength": self.strength,
                "num_inference_steps": self.num_inference_steps, "sampler": "ddim"}

    def _load(self):
        if self._unet is None:
            DDIMScheduler = require_diffusers().DDIMScheduler  # noqa: N806 - the diffusers class

            unet, sched_cfg, config = load_toy_diffusion(self.path)
            self._unet = unet.to(self.device)
            self._scheduler_config = sched_cfg
            self._patch = int(config.get("patch", 2))
            self._size = int(config.get("image_size", 48))
            # trailing spacing: the first of the int(strength * steps) steps run is at t0 = strength * T, and
            # the last one lands on t = 0 (diffusers' default "leading" spacing would start lower, at
            # strength * T minus one step, and end with a step at t = 0)
            self._ddim = DDIMScheduler(**sched_cfg, timestep_spacing="trailing", set_alpha_to_one=True)
        return self._unet

    def generate(self, image: torch.Tensor, n: int, *, seed: int) -> torch.Tensor:
        if image.dim() != 3 or image.shape[0] != 3:
            raise GeneratorError(f"toy_diffusion: image shape {tuple(image.shape)}, expected [3, H, W]")
        return self.variations(image[None], n, seed=seed)[0]

    @torch.no_grad()
    def variations(self, images: torch.Tensor, n: int, *, seed: int) -> torch.Tensor:
        """``[B, n, 3, H, W]`` variations of ``images [B, 3, H, W]`` (float ``[0, 1]`` or uint8), denoised in
        batches of ``batch`` across images; with ``B = 1`` identical to :meth:`generate` for the same seed."""
        unet = self._load()
        img = images.detach().float().cpu()
        img = img / 255.0 if images.dtype == torch.uint8 else img
        b, h, w = img.shape[0], *img.shape[-2:]
        if (h, w) != (self._size, self._size):
            img = F.interpolate(img, size=(self._size, self._size), mode="bilinear", antialias=True, align_corners=False)
        x0 = to_model_space(img, self._patch).repeat_interleave(n, dim=0)  # [B n, C, s, s], image-major
        sched = self._ddim
        sched.set_timesteps(self.num_inference_steps)
        run = int(self.strength * self.num_inference_steps)
        timesteps = sched.timesteps[len(sched.timesteps) - run:]
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(x0.shape, generator=g)
        out = []
        for start in range(0, x0.shape[0], self.batch):
            xs, eps0 = x0[start:start + self.batch].to(self.device), noise[start:start + self.batch].to(self.device)
            x = sched.add_noise(xs, eps0, timesteps[:1].repeat(xs.shape[0]))  # SDEdit: forward process to t0
            for t in timesteps:  # DDIM (eta = 0) from t0 down to 0
                x = sched.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
            out.append(from_model_space(x, self._patch).cpu())
        views = torch.cat(out)
        if (h, w) != (self._size, self._size):
            views = F.interpolate(views, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
        return views.view(b, n, 3, h, w)
