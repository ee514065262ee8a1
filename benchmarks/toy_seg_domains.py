"""How hard is the toy segmentation benchmark for a VLSM that never saw it? Zero-shot Dice per domain and prompt.

Loads a CLIPSeg folder (the embedded toy VLSM by default, HF ``save_pretrained`` layout) with ``transformers``
and reports the mean Dice (threshold 0.5 on the sigmoid, averaged over samples, torchmetrics) of the test
split of ``toy_seg`` rendered in each domain, for each prompt key, plus a control where every phrase names a
category absent from the image. It measures the headroom prompt learning has: the domain shift (clean ->
scan) should cost Dice, the category alone (p1) should be weaker than the referring phrase (p3) the toy VLSM
was pretrained on.

    python benchmarks/toy_seg_domains.py --folder vlprompt/backbones/assets/vlprompt-toyvlsm --n 256
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

log = logging.getLogger("toy_seg_domains")


def _dice(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean per-sample Dice, the segmentation module's metric (:func:`vlprompt.metrics.segmentation.dice_per_sample`)."""
    from vlprompt.metrics.segmentation import dice_per_sample

    return float(dice_per_sample(logits, masks).mean())


@torch.no_grad()
def evaluate(folder: str, *, n: int, domains: list[str], keys: list[str], batch: int = 64) -> dict:
    from transformers import CLIPSegForImageSegmentation, CLIPTokenizer

    from vlprompt.data.toyworld.segmentation import CATEGORIES, ToySegmentation

    model = CLIPSegForImageSegmentation.from_pretrained(folder, dtype=torch.float32).eval()
    tok = CLIPTokenizer.from_pretrained(folder)
    cfg = json.loads((Path(folder) / "preprocessor_config.json").read_text())
    mean = torch.tensor(cfg["image_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["image_std"]).view(1, 3, 1, 1)
    out: dict = {}
    for domain in domains:
        src = ToySegmentation(sizes=(1, 1, n), test_style=domain)
        ds = src.dataset("test", preprocess=None)
        images = torch.stack([ds[i]["image"] for i in range(n)])
        masks = torch.stack([ds[i]["mask"][0] for i in range(n)])
        records = src.records["test"]
        row = {}
        for key in [*keys, "absent"]:
            if key == "absent":  # the category missing from the image (3 distinct of 4 are drawn)
                texts = [next(c for c in CATEGORIES if c not in r.present) for r in records]
                target = torch.zeros_like(masks)
            else:
                texts = [r.prompts[key] for r in records]
                target = masks
            logits = []
            for s in range(0, n, batch):
                enc = tok(texts[s:s + batch], padding="max_length", max_length=32, truncation=True,
                          return_tensors="pt")
                px = (images[s:s + batch] - mean) / std
                logits.append(model(input_ids=enc["input_ids"], pixel_values=px).logits.reshape(-1, 48, 48))
            logits = torch.cat(logits)
            if key == "absent":
                row[key] = float((torch.sigmoid(logits) > 0.5).float().mean())  # fraction of pixels predicted
            else:
                row[key] = _dice(logits, target)
        out[domain] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="vlprompt/backbones/assets/vlprompt-toyvlsm")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--domains", default="clean,scan,noise,low_contrast,blur")
    parser.add_argument("--keys", default="p1,p2,p3,p4")
    args = parser.parse_args()
    torch.manual_seed(0)
    res = evaluate(args.folder, n=args.n, domains=args.domains.split(","), keys=args.keys.split(","))
    keys = [*args.keys.split(","), "absent"]
    print("| domain | " + " | ".join(f"Dice {k}" if k != "absent" else "predicted fg, absent category"
                                     for k in keys) + " |")
    print("|" + " --- |" * (len(keys) + 1))
    for domain, row in res.items():
        print(f"| {domain} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
