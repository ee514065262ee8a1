"""Acceptance figures of a toy CLIP: attribute zero-shot and linear-probe accuracy, dataset zero-shot.

``python -m vlprompt.toyclip_report [--out FILE.json]`` measures the embedded checkpoint (or
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
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import VLBackbone
from vlprompt.data.toyworld.datasets import ATTRIBUTE_PHRASES, TOY_DATASETS
from vlprompt.data.toyworld.render import STYLES, render, sample_scene
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


def _scenes(n: int, seed: int, style: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    scene = sample_scene(n, generator=g)
    images, _ = render(scene, generator=g, style=style)
    targets = {name: getattr(scene, name)[:, 0].clone() for name in ("colour", "texture", "size", "position")}
    targets["background"] = scene.background.clone()
    return images, targets


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
    for style in sorted({s for v in attribute_styles().values() for s in v}, key=STYLES.index):
        tr_img, tr_t = _scenes(n_train, 1001, style)
        te_img, te_t = _scenes(n_test, 2002, style)
        tr_f, te_f = _features(backbone, tr_img), _features(backbone, te_img)
        for attr, styles in attribute_styles().items():
            if style not in styles:
                continue
            values, phrase = ATTRIBUTE_PHRASES[attr]
            text = backbone.encode_text(backbone.tokenize([template.format(phrase(v)) for v in values]))
            zs = (F.normalize(te_f, dim=-1) @ F.normalize(text, dim=-1).T).argmax(1)
            with torch.enable_grad():
                probe = linear_probe_accuracy(tr_f, tr_t[attr], te_f, te_t[attr])
            rows.append({
                "attribute": attr, "style": style, "chance": round(100 / len(values), 2),
                "zero_shot": round(float((zs == te_t[attr]).float().mean() * 100), 2), "linear_probe": round(probe, 2),
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
    from rich.console import Console
    from rich.table import Table

    from vlprompt.backbones.toyclip import ToyCLIP

    parser = argparse.ArgumentParser(prog="python -m vlprompt.toyclip_report", description=__doc__)
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
        Path(args.out).write_text(json.dumps({"checkpoint_sha256": backbone.info.checkpoint_sha256, "attributes": attrs, "datasets": datasets}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
