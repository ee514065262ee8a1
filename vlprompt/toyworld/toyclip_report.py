"""Acceptance figures of a toy CLIP: attribute zero-shot and linear-probe accuracy, dataset zero-shot.

``python -m vlprompt.toyworld.toyclip_report [--out FILE.json]`` measures the embedded checkpoint (or
``--pretrained FILE``) and prints three tables:

1. per attribute (colour, texture, size, position, background) on random scenes: zero-shot accuracy with
   class-name wording (``a photo of a red shape.``) and a linear probe (multinomial logistic regression on
   frozen image features), in the clean style and in each style a toy dataset renders that attribute in;
2. zero-shot accuracy on every toy dataset (all classes, base, new) for its native style and every shift.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from vlprompt.backbones.base import VLBackbone
from vlprompt.backbones.toyclip import ToyCLIP
from vlprompt.data.atomic import atomic_write_text
from vlprompt.data.toyworld.datasets import (
    VALUE_INDEX,
    ATTRIBUTE_PHRASES,
    TOY_DATASETS,
    attribute_scenes,
)
from vlprompt.data.toyworld.render import STYLES
from vlprompt.protocols.base2new import split_base_new

log = logging.getLogger(__name__)


def linear_probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
    l2: float = 1e-3, max_iter: int = 200,
) -> float:
    """Test accuracy (percent) of L2-regularised logistic regression fit with L-BFGS.

    ``train_x [N, D]``, ``train_y [N]`` (labels ``0..C-1``), ``test_x [M, D]``, ``test_y [M]``. Features
    are standardised with the training mean/std.
    """
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True) + 1e-6
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    c = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(xtr.shape[1], c, requires_grad=True)
    b = torch.zeros(c, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, train_y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == test_y).float().mean() * 100)


@torch.no_grad()
def _features(backbone: VLBackbone, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([backbone.encode_image(chunk) for chunk in images.split(256)])



@torch.no_grad()
def attribute_zero_shot(
    image_features: torch.Tensor,
    encode_text: Callable[[list[str]], torch.Tensor],
    targets: dict[str, torch.Tensor],
    *,
    attributes: Sequence[str] | None = None,
    template: str = "a photo of a {}.",
) -> dict[str, float]:
    """Fraction of images whose attribute value is the best-matching class-name prompt
    (``a photo of a red shape.``), per attribute. ``image_features [N, D]``, ``targets {name: [N]}``;
    ``encode_text`` maps prompts to features ``[V, D]``."""
    feats = F.normalize(image_features, dim=-1)
    out = {}
    for name in attributes or list(ATTRIBUTE_PHRASES):
        values, phrase = ATTRIBUTE_PHRASES[name]
        assert [VALUE_INDEX[name][v] for v in values] == list(range(len(values)))
        text = F.normalize(encode_text([template.format(phrase(v)) for v in values]), dim=-1)
        pred = (feats @ text.to(feats.device).T).argmax(dim=1).cpu()
        out[name] = float((pred == targets[name]).float().mean())
    return out


def attribute_styles() -> dict[str, list[str]]:
    """Each attribute used by a toy dataset's class names -> the styles those datasets render it in."""
    out: dict[str, set[str]] = {}
    for cls in TOY_DATASETS.values():
        ds = cls()
        for attrs in ds.class_attributes():
            for name in attrs:
                out.setdefault(name, {"clean"}).add(ds.native_style)
    return {k: sorted(v, key=STYLES.index) for k, v in out.items()}


@torch.no_grad()
def attribute_report(backbone: VLBackbone, *, n_train: int = 2000, n_test: int = 2000, template: str = "a photo of a {}.") -> list[dict]:
    """Rows ``{attribute, style, chance, zero_shot, linear_probe}`` (percent) for every used attribute."""
    rows = []
    used = attribute_styles()
    for style in sorted({s for v in used.values() for s in v}, key=STYLES.index):
        tr_img, tr_t = attribute_scenes(n_train, 1001, style)
        te_img, te_t = attribute_scenes(n_test, 2002, style)
        tr_f, te_f = _features(backbone, tr_img), _features(backbone, te_img)
        attrs = [a for a, styles in used.items() if style in styles]
        zero_shot = attribute_zero_shot(
            te_f, lambda texts: backbone.encode_text(backbone.tokenize(texts)), te_t, attributes=attrs, template=template
        )
        for attr in attrs:
            with torch.enable_grad():
                probe = linear_probe_accuracy(tr_f, tr_t[attr], te_f, te_t[attr])
            rows.append({
                "attribute": attr, "style": style, "chance": round(100 / len(ATTRIBUTE_PHRASES[attr][0]), 2),
                "zero_shot": round(zero_shot[attr] * 100, 2), "linear_probe": round(probe, 2),
            })
    return rows


@torch.no_grad()
def dataset_report(backbone: VLBackbone, *, template: str = "a photo of a {}.", native_only: bool = False) -> list[dict]:
    """Zero-shot rows ``{dataset, style, native, all, base, new}`` (percent) on each toy dataset's test split."""
    rows = []
    for name, cls in TOY_DATASETS.items():
        for style in [cls.native_style] if native_only else STYLES:
            ds = cls(style=style)
            data = ds.dataset("test")
            feats = F.normalize(_features(backbone, data.images.float() / 255), dim=-1)
            text = F.normalize(backbone.encode_text(backbone.tokenize([template.format(c) for c in ds.classnames])), dim=-1)
            y = data.labels
            base, new = split_base_new(len(ds.classnames))
            m = len(base)
            bm = y < m
            acc_all = float(((feats @ text.T).argmax(1) == y).float().mean() * 100)
            acc_b = float(((feats[bm] @ text[:m].T).argmax(1) == y[bm]).float().mean() * 100)
            acc_n = float(((feats[~bm] @ text[m:].T).argmax(1) == y[~bm] - m).float().mean() * 100)
            rows.append({
                "dataset": name, "style": style, "native": style == cls.native_style,
                "all": round(acc_all, 2), "base": round(acc_b, 2), "new": round(acc_n, 2),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlprompt.toyworld.toyclip_report", description=__doc__)
    parser.add_argument("--pretrained", default="embedded", help="checkpoint file (default: the embedded one)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    backbone = ToyCLIP(pretrained=args.pretrained)
    attrs = attribute_report(backbone)
    datasets = dataset_report(backbone)
    console = Console()
    t = Table(title="toy CLIP: attributes (percent)")
    for col in ("attribute", "style", "chance", "zero-shot", "linear probe"):
        t.add_column(col, justify="right" if col not in ("attribute", "style") else "left")
    for r in attrs:
        t.add_row(r["attribute"], r["style"], f"{r['chance']:.1f}", f"{r['zero_shot']:.1f}", f"{r['linear_probe']:.1f}")
    console.print(t)
    t = Table(title="toy CLIP: zero-shot on toy datasets, test split (percent; * = native style)")
    for col in ("dataset", "style", "all", "base", "new"):
        t.add_column(col, justify="right" if col not in ("dataset", "style") else "left")
    for r in datasets:
        t.add_row(r["dataset"], r["style"] + (" *" if r["native"] else ""), f"{r['all']:.1f}", f"{r['base']:.1f}", f"{r['new']:.1f}")
    console.print(t)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps({"checkpoint_sha256": backbone.info.checkpoint_sha256, "attributes": attrs, "datasets": datasets}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
