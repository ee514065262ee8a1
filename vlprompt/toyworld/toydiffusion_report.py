"""Acceptance figures of the embedded generator (``toy_diffusion``): does it keep the class, and does it vary?

``python -m vlprompt.toyworld.toydiffusion_report [--out FILE.json] [--grid FILE.png]`` renders ``per_class`` scenes of
every ``toy_mixtures`` class (24 classes, colour x texture) in each toy-world style, makes ``variations``
SDEdit variations of each, and reports per style:

* **class kept**: the fraction of variations that the embedded toy CLIP (zero-shot, "a photo of a {class}.")
  assigns to the same class as their input (chance: 1/24), and the toy CLIP's accuracy against the true label
  on inputs and on variations;
* **pixel distance** (RMSE over pixels in ``[0, 1]``, mean over images): variation vs. input, against two
  yardsticks measured on the same inputs: the input's own *render noise* (the same scene, same attributes,
  rendered again with another seed: the renderer's colour jitter, tint, +-2 px position and radius jitter and
  background noise) and *pixel noise* (the input plus Gaussian noise of std ``noise_std``, the size of
  augmentation a jitter test double adds).

The grid PNG shows one input per row (styles in turn) followed by its variations, upscaled 2x.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torchvision.utils import save_image

from vlprompt.backbones.toyclip import ToyCLIP
from vlprompt.data.atomic import atomic_write_text
from vlprompt.data.toyworld.datasets import VALUE_INDEX, TOY_DATASETS
from vlprompt.data.toyworld.render import STYLES, render, sample_scene
from vlprompt.generators.toydiffusion import ToyDiffusion

log = logging.getLogger(__name__)


def rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image root-mean-square pixel distance: ``[N, 3, H, W] x [N, 3, H, W] -> [N]``."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1).sqrt()


def scenes(per_class: int, style: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, rerendered, labels)``: ``per_class`` scenes of each toy_mixtures class, and the same scenes
    (identical attributes) rendered again with another seed. Images ``[24 per_class, 3, 48, 48]``."""
    ds = TOY_DATASETS["toy_mixtures"](style="clean")
    g = torch.Generator().manual_seed(seed)
    images, again, labels = [], [], []
    for label, attrs in enumerate(ds.class_attributes()):
        fixed = {k: torch.full((per_class,), VALUE_INDEX[k][v]) for k, v in attrs.items()}
        scene = sample_scene(per_class, generator=g, fixed=fixed)
        images.append(render(scene, generator=g, style=style)[0])
        again.append(render(scene, generator=torch.Generator().manual_seed(seed + 7919 * (label + 1)), style=style)[0])
        labels.append(torch.full((per_class,), label))
    return torch.cat(images), torch.cat(again), torch.cat(labels)


def measure(
    *, per_class: int = 2, variations: int = 4, styles: tuple[str, ...] = STYLES, strength: float = 0.35,
    num_inference_steps: int = 3, noise_std: float = 0.05, seed: int = 0, grid: str | None = None,
    path: str | None = None,
) -> dict:
    """Acceptance figures (see the module docstring) as a dict; writes the grid PNG when ``grid`` is set."""
    gen = ToyDiffusion(path, strength=strength, num_inference_steps=num_inference_steps)
    clip = ToyCLIP()
    names = TOY_DATASETS["toy_mixtures"](style="clean").classnames
    with torch.no_grad():
        text = clip.encode_text(clip.tokenize([f"a photo of a {c}." for c in names]))
        text = text / text.norm(dim=-1, keepdim=True)

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = torch.cat([clip.encode_image(c) for c in x.split(256)])
        return (f / f.norm(dim=-1, keepdim=True) @ text.T).argmax(-1)

    out: dict = {"generator": gen.identity(), "per_class": per_class, "variations": variations,
                 "chance_percent": 100 / len(names), "noise_std": noise_std, "seed": seed, "styles": {}}
    rows = []
    for k, style in enumerate(styles):
        images, again, labels = scenes(per_class, style, seed + 1000 * k)
        var = gen.variations(images, variations, seed=seed + k)  # [N, v, 3, H, W]
        flat = var.flatten(0, 1)
        p_in, p_var = predict(images), predict(flat).view(len(images), variations)
        g = torch.Generator().manual_seed(seed + 17 + k)
        jitter = (images + noise_std * torch.randn(images.shape, generator=g)).clamp(0, 1)
        d_var = rmse(flat, images.repeat_interleave(variations, 0))
        # variations of one input against each other (how much they differ among themselves)
        d_pair = rmse(var[:, 0], var[:, 1]) if variations > 1 else torch.zeros(1)
        out["styles"][style] = {
            "images": len(images),
            "class_kept_percent": float((p_var == p_in[:, None]).float().mean() * 100),
            "toyclip_accuracy_inputs_percent": float((p_in == labels).float().mean() * 100),
            "toyclip_accuracy_variations_percent": float((p_var == labels[:, None]).float().mean() * 100),
            "rmse_variation_vs_input": float(d_var.mean()),
            "rmse_variation_vs_variation": float(d_pair.mean()),
            "rmse_rerender_vs_input": float(rmse(again, images).mean()),
            "rmse_pixel_noise_vs_input": float(rmse(jitter, images).mean()),
        }
        log.info("%s: %s", style, {a: round(b, 3) for a, b in out["styles"][style].items()})
        rows += [torch.cat([images[i:i + 1], var[i]]) for i in (0, len(images) // 2 + 1)]
    keys = [k for k in next(iter(out["styles"].values())) if k != "images"]
    out["mean_over_styles"] = {k: sum(s[k] for s in out["styles"].values()) / len(out["styles"]) for k in keys}
    if grid:
        tiles = torch.nn.functional.interpolate(torch.cat(rows), scale_factor=2, mode="nearest")
        Path(grid).parent.mkdir(parents=True, exist_ok=True)
        save_image(tiles, grid, nrow=variations + 1, padding=2, pad_value=1.0)
        out["grid"] = str(grid)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlprompt.toyworld.toydiffusion_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=2, help="scenes per toy_mixtures class and style (24 classes)")
    ap.add_argument("--variations", type=int, default=4, help="variations per input")
    ap.add_argument("--strength", type=float, default=0.35, help="SDEdit strength of the generator")
    ap.add_argument("--steps", type=int, default=3, help="DDIM steps over [0, T] (strength x steps run)")
    ap.add_argument("--noise-std", type=float, default=0.05, help="std of the pixel-noise yardstick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrained", default=None, help="weights file (default: the embedded one)")
    ap.add_argument("--grid", default=None, help="write a PNG grid of inputs and variations here")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = measure(per_class=args.per_class, variations=args.variations, strength=args.strength,
                  num_inference_steps=args.steps, noise_std=args.noise_std, seed=args.seed, grid=args.grid,
                  path=args.pretrained)
    res["command"] = "python -m vlprompt.toyworld.toydiffusion_report " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    text = json.dumps(res, indent=2) + "\n"
    if args.out:
        atomic_write_text(Path(args.out), text)
    header = f"{'style':14s} {'kept%':>6s} {'acc_in%':>7s} {'acc_var%':>8s} {'d_var':>6s} {'d_var2':>6s} {'d_rerender':>10s} {'d_noise':>7s}"
    lines = [header]
    for style, s in [*res["styles"].items(), ("mean", res["mean_over_styles"])]:
        lines.append(f"{style:14s} {s['class_kept_percent']:6.1f} {s['toyclip_accuracy_inputs_percent']:7.1f} "
                     f"{s['toyclip_accuracy_variations_percent']:8.1f} {s['rmse_variation_vs_input']:6.3f} "
                     f"{s['rmse_variation_vs_variation']:6.3f} {s['rmse_rerender_vs_input']:10.3f} {s['rmse_pixel_noise_vs_input']:7.3f}")
    log.info("chance %.1f%%\n%s", res["chance_percent"], "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
