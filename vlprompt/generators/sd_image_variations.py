"""Stable Diffusion image variations (diffusers ``StableDiffusionImageVariationPipeline``), DiffTPT's generator.

DiffTPT (Feng et al., ICCV 2023; chunmeifeng/DiffTPT ``image_generator_R.py``) uses the weights
``lambdalabs/sd-image-variations-diffusers`` (revision ``v2.0``) with guidance scale 3. The input is resized to
224 x 224 (bicubic) and normalised with CLIP's mean and std, then passed to the pipeline as a tensor, as the
reference does. Weights are read from a local folder only (this package never downloads them).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt.generators.base import GeneratorError, ViewGenerator

log = logging.getLogger(__name__)

#: sub-folder -> config file it must hold (weights: ``*.safetensors`` or ``*.bin`` next to it)
LAYOUT = {
    "unet": "config.json",
    "vae": "config.json",
    "image_encoder": "config.json",
    "scheduler": "scheduler_config.json",
    "feature_extractor": "preprocessor_config.json",
}
_WEIGHTED = ("unet", "vae", "image_encoder")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

LAYOUT_HELP = (
    "Expected a diffusers folder: model_index.json, unet/{config.json, diffusion_pytorch_model.safetensors}, "
    "vae/{config.json, diffusion_pytorch_model.safetensors}, image_encoder/{config.json, model.safetensors}, "
    "scheduler/scheduler_config.json, feature_extractor/preprocessor_config.json. Obtain it on a machine with "
    "internet access: `huggingface-cli download lambdalabs/sd-image-variations-diffusers --revision v2.0 "
    "--local-dir sd-image-variations` (or StableDiffusionImageVariationPipeline.from_pretrained(...)"
    ".save_pretrained(DIR)), copy the folder here and pass it as `path`."
)


def check_layout(path: Path) -> list[str]:
    """Problems with a pipeline folder (empty list when complete)."""
    if not path.is_dir():
        return [f"folder {str(path)!r} does not exist"]
    problems = []
    if not (path / "model_index.json").is_file():
        problems.append("model_index.json is missing")
    for sub, cfg in LAYOUT.items():
        if not (path / sub / cfg).is_file():
            problems.append(f"{sub}/{cfg} is missing")
        elif sub in _WEIGHTED and not any((path / sub).glob("*.safetensors")) and not any((path / sub).glob("*.bin")):
            problems.append(f"{sub}/ has no weights (*.safetensors or *.bin)")
    return problems


class SDImageVariations(ViewGenerator):
    """Image variations from a local ``StableDiffusionImageVariationPipeline`` folder.

    Args:
        path: the pipeline folder (see :data:`LAYOUT_HELP`).
        guidance_scale: classifier-free guidance (DiffTPT: 3).
        num_inference_steps: denoising steps (diffusers' default 50, which the reference keeps).
        batch: images generated per pipeline call.
        device: torch device for generation.
    """

    def __init__(
        self,
        path: str,
        *,
        guidance_scale: float = 3.0,
        num_inference_steps: int = 50,
        batch: int = 8,
        device: str = "cpu",
    ) -> None:
        self.path = Path(path).expanduser()
        problems = check_layout(self.path)
        if problems:
            raise GeneratorError(f"sd_image_variations: {str(self.path)!r} is not a complete pipeline folder ({'; '.join(problems)}). {LAYOUT_HELP}")
        if num_inference_steps < 1 or batch < 1:
            raise GeneratorError(f"num_inference_steps={num_inference_steps} and batch={batch} must be positive")
        self.guidance_scale = guidance_scale
        self.num_inference_steps = num_inference_steps
        self.batch = batch
        self.device = device
        self._pipe = None

    def identity(self) -> dict:
        h = hashlib.sha256()
        for f in sorted(self.path.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(self.path)}:{st.st_size}".encode())
                if f.suffix == ".json":
                    h.update(f.read_bytes())
        return {
            "name": "sd_image_variations", "weights": h.hexdigest()[:32], "guidance_scale": self.guidance_scale,
            "num_inference_steps": self.num_inference_steps,
        }

    def pipeline(self):
        """The diffusers pipeline, loaded on first use (diffusers is imported lazily)."""
        if self._pipe is None:
            try:
                from diffusers import StableDiffusionImageVariationPipeline  # deferred: optional (difftpt extra)
            except ImportError as exc:
                raise GeneratorError("sd_image_variations needs diffusers and transformers: pip install 'vlprompt[difftpt]'") from exc
            pipe = StableDiffusionImageVariationPipeline.from_pretrained(
                str(self.path), safety_checker=None, requires_safety_checker=False, local_files_only=True
            )
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe.to(self.device)
        return self._pipe

    def _input(self, image: torch.Tensor, size: int) -> torch.Tensor:
        x = F.interpolate(image[None].float(), size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def generate(self, image: torch.Tensor, n: int, *, seed: int) -> torch.Tensor:
        pipe = self.pipeline()
        size = int(pipe.image_encoder.config.image_size)
        x = self._input(image.cpu(), size).to(self.device)
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        out = []
        done = 0
        while done < n:
            k = min(self.batch, n - done)
            res = pipe(x, guidance_scale=self.guidance_scale, num_inference_steps=self.num_inference_steps,
                       num_images_per_prompt=k, generator=g, output_type="pt")
            out.append(res.images.float().cpu())
            done += k
        return torch.cat(out).clamp(0, 1)


__all__ = ["SDImageVariations", "check_layout", "LAYOUT_HELP", "json"]
