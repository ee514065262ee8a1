"""Acceptance of the embedded toy VLSM: referring segmentation Dice on held-out toy scenes.

``python -m vlprompt.toyworld.toyvlsm_report`` loads the shipped folder with ``CLIPSegForImageSegmentation.from_pretrained``
and ``CLIPTokenizer.from_pretrained`` (offline), renders ``ToyReferring`` scenes of a seed never used in training
(training seeds are ``>= TRAIN_SEED_BASE``) and measures the mean per-sample Dice (threshold 0.5) of the mask
predicted for three phrases against the referred object's mask:

- ``right``: the object's own phrase (``the red dotted circle``);
- ``absent``: the same phrase with a colour that no object of the image has (the object is not in the scene);
- ``other``: the phrase of the other object in the image (present, but not the referred one).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from vlprompt.data.atomic import atomic_write_text, sha256_file
from vlprompt.data.toyworld.captions import referring_phrase, scene_attributes
from vlprompt.data.toyworld.datasets import ToyReferring
from vlprompt.data.toyworld.render import COLOURS

log = logging.getLogger(__name__)

#: every ToyReferring seed used in pretraining is at least this (held-out evaluation uses small seeds)
TRAIN_SEED_BASE = 1_000_000_000
#: the evaluation seed of the shipped report
EVAL_SEED = 7
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TOYVLSM_DIR = Path(__file__).parents[1] / "backbones" / "assets" / "vlprompt-toyvlsm"
TOYVLSM_CARD = TOYVLSM_DIR.parent / "vlprompt-toyvlsm.card.json"
TOYVLSM_REPORT = TOYVLSM_DIR.parent / "vlprompt-toyvlsm.report.json"


def mask_dice(logits: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-sample Dice of thresholded ``sigmoid(logits)`` ``[N, H, W]`` against binary ``masks`` ``[N, H, W]`` -> ``[N]``.

    Dice is the F1 score of the pixels (segmentation-models-pytorch's metrics); an empty prediction of an
    empty mask scores 1.
    """
    import segmentation_models_pytorch as smp  # deferred: smp is heavy (VLSM baseline only)

    tp, fp, fn, tn = smp.metrics.get_stats(
        logits.float().sigmoid()[:, None], masks.long()[:, None], mode="binary", threshold=threshold
    )
    return smp.metrics.f1_score(tp, fp, fn, tn, reduction="none", zero_division=1.0)[:, 0]


def absent_colour_phrases(data: ToyReferring) -> list[str]:
    """For each sample, the referred object's phrase with a colour that no object of that image has."""
    scene = data.scene
    names = list(COLOURS)
    out = []
    for i in range(len(data)):
        present = set(scene.colour[i].tolist())
        t = int(data.target[i])
        # deterministic: the first absent colour after the target's own colour, cyclically
        c0 = int(scene.colour[i, t])
        absent = next(names[(c0 + k) % len(names)] for k in range(1, len(names) + 1) if (c0 + k) % len(names) not in present)
        out.append(referring_phrase({**scene_attributes(scene, i, t), "colour": absent}))
    return out


def other_object_phrases(data: ToyReferring) -> list[str]:
    """For each sample, the phrase of another object in the same image (the next one after the referred object)."""
    n_obj = data.scene.num_objects
    return [referring_phrase(scene_attributes(data.scene, i, (int(data.target[i]) + 1) % n_obj)) for i in range(len(data))]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, S, S]`` in ``[0, 1]`` -> CLIP-normalised pixel values."""
    mean = torch.tensor(OPENAI_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def referring_dice(
    model, tokenize: Callable[[list[str]], torch.Tensor], data: ToyReferring, phrases: list[str], batch_size: int = 256
) -> torch.Tensor:
    """Per-sample Dice ``[N]`` of ``model`` (a ``CLIPSegForImageSegmentation``) on ``data`` images with ``phrases``."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(data), batch_size):
        images = data.images[s : s + batch_size].float().div(255).to(device)
        ids = tokenize(phrases[s : s + batch_size]).to(device)
        logits = model(input_ids=ids, pixel_values=normalize(images)).logits
        if logits.dim() == 2:  # HF squeezes a batch of one
            logits = logits[None]
        out.append(mask_dice(logits.cpu(), data.masks[s : s + batch_size]))
    return torch.cat(out)


def acceptance(model, tokenize: Callable[[list[str]], torch.Tensor], *, n: int = 1000, seed: int = EVAL_SEED,
               style: str = "clean") -> dict:
    """Mean Dice with the right, absent-object and other-object phrases on ``ToyReferring(n, seed=seed, style=style)``."""
    if seed >= TRAIN_SEED_BASE:
        raise ValueError(f"seed {seed} is in the pretraining range (>= {TRAIN_SEED_BASE}); pick a held-out seed")
    was = model.training
    model.eval()
    data = ToyReferring(n, seed=seed, style=style)
    row = {"samples": n, "seed": seed, "style": style}
    for name, phrases in (("right", data.phrases), ("absent", absent_colour_phrases(data)), ("other", other_object_phrases(data))):
        d = referring_dice(model, tokenize, data, phrases)
        row[f"dice_{name}"] = round(float(d.mean()), 4)
        row[f"dice_{name}_std"] = round(float(d.std()), 4)
    model.train(was)
    return row


def load_folder(folder: str | Path = TOYVLSM_DIR, device: str = "cpu"):
    """The shipped folder as ``(CLIPSegForImageSegmentation fp32, tokenize)``, offline."""
    from transformers import (  # deferred: transformers is heavy (CLIPSeg only)
        CLIPSegForImageSegmentation,
        CLIPTokenizer,
    )

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; build it with `vlprompt pretrain --config configs/pretrain/toyvlsm.yaml`")
    model = CLIPSegForImageSegmentation.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).to(device).eval()
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    length = model.config.text_config.max_position_embeddings

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids

    return model, tokenize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlprompt.toyworld.toyvlsm_report", description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=str(TOYVLSM_DIR))
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--styles", nargs="+", default=["clean"], help="rendering styles (clean = the pretraining domain)")
    p.add_argument("--out", default=None, help="write the report JSON here (e.g. the shipped report)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, tokenize = load_folder(args.folder)
    rows = [acceptance(model, tokenize, n=args.samples, seed=args.seed, style=s) for s in args.styles]
    for r in rows:
        log.info("%s", r)
    weights = Path(args.folder) / "model.safetensors"
    report = {
        "command": "python -m vlprompt.toyworld.toyvlsm_report " + " ".join(sys.argv[1:] if argv is None else argv),
        "weights_sha256": sha256_file(weights) if weights.is_file() else None,
        "metric": "mean per-sample Dice (threshold 0.5 on sigmoid logits) against the referred object's mask",
        "rows": rows,
    }
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    else:
        print(json.dumps(report, indent=2))  # noqa: T201 - console report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
