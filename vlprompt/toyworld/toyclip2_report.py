"""Acceptance figures of a second-generation toy CLIP: named kinds and the candidate datasets.

``python -m vlprompt.toyworld.toyclip2_report --pretrained FILE [--out FILE.json] [--quick]`` measures a
``vlprompt-toyclip2`` checkpoint (default: the embedded one, once it exists) and prints:

1. zero-shot accuracy on held-out clean scenes of the 64 named kinds ("a photo of a lemon."): by name (also per
   caption tier: common, regular, rare), by synonym (64-way), by family (4-way), and within each family
   (16-way) in every style, with a linear probe
   (logistic regression on frozen image features) of the 16-way species task for comparison;
2. zero-shot accuracy (all, base, new) on the test split of every candidate dataset of
   :mod:`vlprompt.data.toyworld.species`, in its native style (``--all-styles``: every style).

``--quick`` uses 400 instead of 2000 probe images per style.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from vlprompt.backbones.base import VLBackbone
from vlprompt.backbones.toyclip import ToyCLIP2
from vlprompt.data.atomic import atomic_write_text
from vlprompt.data.toyworld.lexicon import SPECIES, TIER_WEIGHTS, species_of
from vlprompt.data.toyworld.render import STYLES
from vlprompt.data.toyworld.species import SPECIES_DATASETS, species_scenes
from vlprompt.protocols.base2new import split_base_new
from vlprompt.toyworld.toyclip_report import linear_probe_accuracy

FAMILY_ORDER = ("fruit", "gem", "tile", "flag")


@torch.no_grad()
def features(backbone: VLBackbone, images: torch.Tensor) -> torch.Tensor:
    """Normalised image features ``[N, D]`` of images ``[N, 3, S, S]`` in [0, 1]."""
    return F.normalize(torch.cat([backbone.encode_image(chunk) for chunk in images.split(256)]), dim=-1)


@torch.no_grad()
def text_features(backbone: VLBackbone, names: list[str], template: str = "a photo of a {}.") -> torch.Tensor:
    """Normalised text features ``[C, D]`` of the prompts of ``names``."""
    return F.normalize(backbone.encode_text(backbone.tokenize([template.format(n) for n in names])), dim=-1)


def accuracy(image_features: torch.Tensor, text: torch.Tensor, target: torch.Tensor) -> float:
    """Percent of rows of ``image_features`` whose best-matching row of ``text`` is ``target``."""
    return float(((image_features @ text.T).argmax(1) == target).float().mean() * 100)


@torch.no_grad()
def species_report(backbone: VLBackbone, *, n: int = 2000, styles: tuple[str, ...] = STYLES) -> list[dict]:
    """Rows ``{style, task, classes, zero_shot, linear_probe}`` (percent) of the named kinds (module docstring)."""
    rows = []
    fam = torch.tensor([FAMILY_ORDER.index(s.family) for s in SPECIES])
    # prompts do not depend on the photography: their features are computed once for every style
    by_name = text_features(backbone, [s.name for s in SPECIES])
    tasks = (("species by name", by_name, None), ("species by synonym", text_features(backbone, [s.synonym for s in SPECIES]), None),
             ("family", text_features(backbone, list(FAMILY_ORDER)), fam))
    within_text = {family: text_features(backbone, [s.name for s in species_of(family)]) for family in FAMILY_ORDER}
    for style in styles:
        tr_img, tr_y = species_scenes(n, 1001, style)
        te_img, te_y = species_scenes(n, 2002, style)
        tr_f, te_f = features(backbone, tr_img), features(backbone, te_img)
        for task, text, relabel in tasks:
            target = te_y if relabel is None else relabel[te_y]
            rows.append({"style": style, "task": task, "classes": len(text),
                         "zero_shot": round(accuracy(te_f, text, target), 2), "linear_probe": None})
        for tier in TIER_WEIGHTS:  # name knowledge by caption tier (how often pretraining named the kind)
            sel = torch.tensor([SPECIES[int(t)].tier == tier for t in te_y])
            rows.append({"style": style, "task": f"species by name, {tier} tier", "classes": len(SPECIES),
                         "zero_shot": round(accuracy(te_f[sel], by_name, te_y[sel]), 2), "linear_probe": None})
        within, probes = [], []
        for family in FAMILY_ORDER:
            members = [k for k, s in enumerate(SPECIES) if s.family == family]
            index = {k: i for i, k in enumerate(members)}
            sel_tr, sel_te = torch.isin(tr_y, torch.tensor(members)), torch.isin(te_y, torch.tensor(members))
            local_tr = torch.tensor([index[int(t)] for t in tr_y[sel_tr]])
            local_te = torch.tensor([index[int(t)] for t in te_y[sel_te]])
            within.append(accuracy(te_f[sel_te], within_text[family], local_te))
            with torch.enable_grad():
                probes.append(linear_probe_accuracy(tr_f[sel_tr], local_tr, te_f[sel_te], local_te))
        rows.append({"style": style, "task": "species within family", "classes": 16,
                     "zero_shot": round(sum(within) / 4, 2), "linear_probe": round(sum(probes) / 4, 2)})
    return rows


@torch.no_grad()
def species_dataset_report(backbone: VLBackbone, *, template: str = "a photo of a {}.", all_styles: bool = False) -> list[dict]:
    """Zero-shot rows ``{dataset, style, native, all, base, new}`` (percent) on each candidate's test split."""
    rows = []
    for name, cls in SPECIES_DATASETS.items():
        for style in STYLES if all_styles else (cls.native_style,):
            ds = cls(style=style)
            data = ds.dataset("test")
            feats = features(backbone, data.images.float() / 255)
            text = text_features(backbone, ds.classnames, template)
            y = data.labels
            m = len(split_base_new(len(ds.classnames))[0])
            bm = y < m
            rows.append({
                "dataset": name, "style": style, "native": style == cls.native_style,
                "all": round(accuracy(feats, text, y), 2),
                "base": round(accuracy(feats[bm], text[:m], y[bm]), 2),
                "new": round(accuracy(feats[~bm], text[m:], y[~bm] - m), 2),
            })
    return rows


#: how each dataset's ``native_style`` was chosen, from zero-shot only (recorded in the report JSON)
NATIVE_STYLE_RULE = (
    "per dataset, set once from this table before any learner ran on this checkpoint: the style with the highest "
    "zero-shot base below 90 whose zero-shot new is below 95 and at least 20 points above chance "
    "(docs/toyclip2-design.md)")


def native_style(rows: list[dict], chance: float) -> str | None:
    """The style :data:`NATIVE_STYLE_RULE` picks from one dataset's zero-shot rows ``{style, base, new}`` (percent;
    ``chance``: percent of one half's chance level), ``None`` if no style qualifies. Zero-shot base below 90 is the
    issue's bar; new below 95 leaves the best learner's HM room below 98; 20 points above chance keeps the new half
    a real task."""
    fits = [r for r in rows if r["base"] < 90.0 and chance + 20.0 <= r["new"] < 95.0]
    return max(fits, key=lambda r: r["base"])["style"] if fits else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlprompt.toyworld.toyclip2_report", description=__doc__)
    parser.add_argument("--pretrained", default="embedded", help="checkpoint file (default: the embedded one)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--quick", action="store_true", help="400 probe images per style instead of 2000")
    parser.add_argument("--all-styles", action="store_true", help="every dataset in every style, not only native")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    backbone = ToyCLIP2(pretrained=args.pretrained)
    kinds = species_report(backbone, n=400 if args.quick else 2000)
    datasets = species_dataset_report(backbone, all_styles=args.all_styles)
    console = Console()
    t = Table(title="toy CLIP 2: named kinds (percent)")
    for col in ("style", "task", "classes", "zero-shot", "linear probe"):
        t.add_column(col)
    for r in kinds:
        t.add_row(r["style"], r["task"], str(r["classes"]), f"{r['zero_shot']:.1f}",
                  "" if r["linear_probe"] is None else f"{r['linear_probe']:.1f}")
    console.print(t)
    t = Table(title="toy CLIP 2: zero-shot on the candidate datasets, test split (percent; * = native style)")
    for col in ("dataset", "style", "all", "base", "new"):
        t.add_column(col)
    for r in datasets:
        t.add_row(r["dataset"], r["style"] + (" *" if r["native"] else ""), f"{r['all']:.1f}", f"{r['base']:.1f}", f"{r['new']:.1f}")
    console.print(t)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps({"checkpoint_sha256": backbone.info.checkpoint_sha256,
                                              "species": kinds, "datasets": datasets,
                                              "native_style_rule": NATIVE_STYLE_RULE}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
