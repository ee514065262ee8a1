"""How strongly a CLIP text tower responds to a random prompt context: a one-minute screen of a backbone.

CoOp with ``M`` random context vectors (N(0, 0.02^2)) starts from prompts ``[V]_1 ... [V]_M {class}.``. If the text
tower's gradient with respect to that context is large, SGD with momentum, which collects the gradients of the
warm-up epoch at a learning rate of 1e-5, throws the context far away when the learning rate reaches 0.002, and
some seeds never fit their training images (docs/toyclip2-design.md, "Web chatter"). The screen scores each class
prompt against the features of ``"a photo of a {class}."`` standing in for that class's images, and reports, over
``trials`` random contexts, the cross-entropy at initialisation and the norm of its gradient with respect to the
context.

``python -m vlprompt.toyworld.context_sensitivity [--pretrained FILE] [--classes a,b,c] [--lengths 4,16]``
prints the table (default: the embedded toy CLIP 2 and the base half of toy_orchard).

:class:`GradientNormLog` is the per-step view of the same thing inside a real run: a Lightning callback that
appends, before every optimiser step, the learning rate, the norm of the trainable parameters' gradient and of the
parameters themselves, and the step's loss, as JSON lines::

    vlprompt fit ... --trainer.callbacks+=vlprompt.toyworld.context_sensitivity.GradientNormLog \\
        --trainer.callbacks.path runs/grad-norms.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from vlprompt.backbones.base import VLBackbone
from vlprompt.backbones.toyclip import ToyCLIP2
from vlprompt.data.atomic import atomic_write_text
from vlprompt.data.toyworld.species import SPECIES_DATASETS
from vlprompt.learners.prompts.layers import ClassPrompts, text_features
from vlprompt.protocols.base2new import split_base_new
from vlprompt.toyworld.toyclip2_report import text_features as prompt_features


def context_sensitivity(backbone: VLBackbone, classnames: Sequence[str], n_ctx: int, *, trials: int = 30,
                        std: float = 0.02, seed: int = 0) -> dict[str, float]:
    """Cross-entropy and gradient norm of ``trials`` random contexts of ``n_ctx`` vectors (N(0, std^2)).

    The targets are the normalised text features ``[C, D]`` of ``"a photo of a {class}."``; the logits
    ``logit_scale * targets @ prompts.T`` ``[C, C]``, class ``i``'s target scored against every class prompt.
    Returns ``{loss_median, grad_median, grad_p90, grad_max, end_position}`` (``end_position``: mean index of the
    pooled end token of the prompts). The backbone is left unchanged (its parameters get no gradient)."""
    g = torch.Generator().manual_seed(seed)
    requires = [p.requires_grad for p in backbone.parameters()]
    for p in backbone.parameters():
        p.requires_grad_(False)
    try:
        targets = prompt_features(backbone, list(classnames))  # "a photo of a {class}."
        prompts = ClassPrompts(backbone, list(classnames), n_ctx, position="end")
        labels = torch.arange(len(classnames))
        losses, grads = [], []
        for _ in range(trials):
            ctx = torch.nn.Parameter(torch.empty(n_ctx, backbone.text_width).normal_(0.0, std, generator=g))
            features = F.normalize(text_features(backbone, prompts(ctx), prompts.pool_index), dim=-1)
            loss = F.cross_entropy(backbone.logit_scale * targets @ features.t(), labels)
            loss.backward()
            losses.append(float(loss.detach()))
            grads.append(float(ctx.grad.norm()))
    finally:
        for p, r in zip(backbone.parameters(), requires):
            p.requires_grad_(r)
    gs = torch.tensor(grads)
    return {"loss_median": float(torch.tensor(losses).median()), "grad_median": float(gs.median()),
            "grad_p90": float(gs.quantile(0.9)), "grad_max": float(gs.max()),
            "end_position": float(prompts.pool_index.float().mean())}


class GradientNormLog(pl.Callback):
    """Per optimiser step: ``{step, lr, grad_norm, param_norm, loss}`` of the trainable parameters, written as
    JSON lines to ``path`` when training ends (atomically)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        params = [p for p in pl_module.parameters() if p.requires_grad and p.grad is not None]
        self.rows.append({
            "step": int(trainer.global_step), "lr": float(optimizer.param_groups[0]["lr"]),
            "grad_norm": math.sqrt(sum(float((p.grad.detach() ** 2).sum()) for p in params)),
            "param_norm": math.sqrt(sum(float((p.detach() ** 2).sum()) for p in params)),
        })

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self.rows and loss is not None:
            self.rows[-1]["loss"] = float(loss)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlprompt.toyworld.context_sensitivity",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default="embedded", help="toy CLIP 2 checkpoint (default: the embedded one)")
    parser.add_argument("--classes", default=None, help="comma-separated class names (default: toy_orchard's base half)")
    parser.add_argument("--lengths", default="4,8,12,16,20", help="context lengths M to screen")
    parser.add_argument("--trials", type=int, default=30, help="random contexts per length")
    args = parser.parse_args(argv)
    backbone = ToyCLIP2(pretrained=args.pretrained)
    if args.classes:
        classnames = [c.strip() for c in args.classes.split(",") if c.strip()]
    else:
        names = SPECIES_DATASETS["toy_orchard"]().classnames
        classnames = [names[i] for i in split_base_new(len(names))[0]]
    table = Table(title=f"random context, {len(classnames)} classes, {args.trials} trials: {args.pretrained}")
    for head in ("M", "end token at", "loss (median)", "grad norm median", "p90", "max"):
        table.add_column(head)
    for m in (int(x) for x in args.lengths.split(",")):
        r = context_sensitivity(backbone, classnames, m, trials=args.trials)
        table.add_row(str(m), f"{r['end_position']:.1f}", f"{r['loss_median']:.2f}", f"{r['grad_median']:.1f}",
                      f"{r['grad_p90']:.1f}", f"{r['grad_max']:.1f}")
    Console(width=140).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
