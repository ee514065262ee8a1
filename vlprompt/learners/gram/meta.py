"""Meta-training for GRAM (Li et al., ICCV 2023, arXiv 2303.06571): ``vlprompt meta-train --config FILE``.

Re-implementation from the paper (no official code). Steps 1-3 are :mod:`.corpus` and :mod:`.tasks`; this module is
step 4 and the driver. Pipeline:

1. **Corpus** of image-text pairs, read in chunks: the embedded toy world (rendered scenes + captions, styles mixed so
   that pseudo-domains exist) or a CSV / JSON-lines file of ``image path, caption`` (paths relative to the file).
   or webdataset shards (``.tar`` files of ``<key>.jpg``/``.png`` + ``<key>.txt``, as img2dataset writes CC3M), read
   as a stream with the ``webdataset`` package; their images, resized to the model's input, spill to a memory-mapped
   file instead of memory, so pre-training-scale corpora need disk, not RAM.
2. **Cross-modal hierarchical clustering** (paper Sec. 3, "CHC") on the frozen backbone's features: each pair is
   ``z = [f_img / |f_img|, f_txt / |f_txt|] / sqrt(2)``; k-means (k-means++ seeding, Lloyd iterations, seeded) at two
   levels: ``coarse`` clusters = pseudo-domains, then ``fine`` clusters inside each = pseudo-classes.
   Pseudo-label names: each fine cluster is named by the caption of its member whose text feature is closest to the
   cluster's mean text feature (the medoid caption).
3. **Tasks**: an ``n_way``-way task takes ``n_way`` fine clusters of one pseudo-domain A as the support classes
   (``support_shots`` pairs each) and ``n_way`` fine clusters of another pseudo-domain B != A as the query classes
   (``query_shots`` each); labels are the cluster indices within the task, class names their medoid captions. The
   inner learner must be class-agnostic (its prompts work for any names), as CoOp/VPT/MaPLe are.
4. **Bi-level optimisation** (paper eq. for the meta-objective): inner loop ``theta_{t+1} = theta_t - alpha *
   psi_phi(grad L_S(theta_t))`` for ``inner_steps`` steps with :func:`torch.func.grad` over
   :func:`torch.func.functional_call`; outer loss ``L_Q(theta_T)`` (cross-entropy on the query, another domain)
   averaged over ``tasks_per_step`` tasks, minimised over the initialisation ``theta_0`` and psi's parameters phi with
   Adam. ``first_order: true`` treats the inner gradients as constants (no second-order terms; phi still learns).

Choices where the paper is silent (all configurable): cluster counts, k-means as the clustering at both levels,
medoid-caption names, CE (not the inner learner's own regularised loss) in both loops, Adam in the outer loop,
plain SGD in the inner loop.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vlprompt.backbones.open_clip import file_sha256
from vlprompt.data.atomic import atomic_write_text
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.gram import GRAM
from vlprompt.learners.gram.artifact import save_artifact
from vlprompt.learners.gram.corpus import Corpus, MetaError, encode_corpus
from vlprompt.learners.gram.regulator import identity_regulator, regulate
from vlprompt.learners.gram.tasks import Task, hierarchical_clusters, sample_task
from vlprompt.learners.registry import resolve_config_names

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- bi-level optimisation
class TaskHead(nn.Module):
    """``forward(x)``: logits of the learner from images ``[B, 3, H, W]`` or cached image features ``[B, D]``."""

    def __init__(self, learner: PromptLearner) -> None:
        super().__init__()
        self.learner = learner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x if x.dim() == 2 else self.learner.encode_images(x)
        return self.learner.logits(feats)


def task_loss(head: TaskHead, params: dict[str, torch.Tensor], names: list[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the learner with tensors ``params`` (learned_state names) on ``x`` labelled ``y`` over ``names``."""
    head.learner.set_classnames(names)
    logits = torch.func.functional_call(head, {f"learner.{k}": v for k, v in params.items()}, (x,))
    return F.cross_entropy(logits, y)


def adapt(
    head: TaskHead,
    init: dict[str, torch.Tensor],
    regulator: dict[str, torch.Tensor],
    names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool,
) -> dict[str, torch.Tensor]:
    """Inner loop: ``steps`` regulated SGD steps from ``init`` on the support set; differentiable in ``init`` and
    ``regulator`` (second order unless ``first_order``)."""
    params = dict(init)
    grad_fn = torch.func.grad(lambda p: task_loss(head, p, names, x, y))
    for _ in range(steps):
        g = grad_fn(params)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        params = {k: params[k] - lr * regulate(g[k], regulator[k]) for k in params}
    return params


def attention_for(first_order: bool):
    """Second-order meta-gradients need attention's double backward, which only the math SDPA kernel has (CPU flash
    attention's backward is not differentiable); first order keeps the default kernels."""
    return contextlib.nullcontext() if first_order else sdpa_kernel(SDPBackend.MATH)


def _task_inputs(corpus: Corpus, idx: list[int], use_images: bool) -> torch.Tensor:
    return corpus.get_images(idx) if use_images else corpus.image_features[idx]


def meta_step(head, init, regulator, tasks: list[Task], corpus: Corpus, *, inner_steps: int, inner_lr: float,
              first_order: bool, use_images: bool) -> tuple[torch.Tensor, float]:
    """Mean outer (query) loss over ``tasks`` after adaptation, and the mean query loss *before* adaptation."""
    outer, before = [], 0.0
    for t in tasks:
        xs, xq = _task_inputs(corpus, t.support, use_images), _task_inputs(corpus, t.query, use_images)
        adapted = adapt(head, init, regulator, t.support_names, xs, t.support_labels, steps=inner_steps, lr=inner_lr,
                        first_order=first_order)
        outer.append(task_loss(head, adapted, t.query_names, xq, t.query_labels))
        with torch.no_grad():
            before += float(task_loss(head, {k: v.detach() for k, v in init.items()}, t.query_names, xq, t.query_labels))
    return torch.stack(outer).mean(), before / len(tasks)


# ---------------------------------------------------------------------------------------------- config + driver
def _instantiate(node: dict, key: str):
    if not isinstance(node, dict) or "class_path" not in node:
        raise MetaError(f"config key {key!r} needs a class_path (e.g. {key}: {{class_path: coop, init_args: {{...}}}})")
    node = resolve_config_names({key: node})[key]
    module, _, name = node["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return cls(**(node.get("init_args") or {}))


def load_config(path: str | Path) -> dict:
    """The meta-train config at ``path`` (a YAML mapping with ``inner`` and ``out``), else :class:`MetaError`."""
    path = Path(path)
    if not path.is_file():
        raise MetaError(f"meta-train config {str(path)!r} does not exist")
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict):
        raise MetaError(f"meta-train config {str(path)!r} must be a YAML mapping")
    for key in ("inner", "out"):
        if key not in cfg:
            raise MetaError(f"meta-train config {str(path)!r} has no {key!r}")
    return cfg


def meta_train(cfg: dict, *, command: list[str] | None = None, config_text: str = "", backbone=None) -> dict:
    """Run meta-training from a config dict; writes the artifact and a card JSON beside it; returns the card.

    ``backbone``: an already built backbone (tests), else ``cfg["backbone"]`` is instantiated.
    """

    seed = int(cfg.get("seed", 1))
    clusters, tasks_cfg, meta = cfg.get("clusters", {}), cfg.get("tasks", {}), cfg.get("meta", {})
    n_way = int(tasks_cfg.get("n_way", 4))
    steps, inner_steps = int(meta.get("steps", 20)), int(meta.get("inner_steps", 2))
    inner_lr, first_order = float(meta.get("inner_lr", 0.01)), bool(meta.get("first_order", False))
    torch.manual_seed(seed)
    if backbone is None:
        if "backbone" not in cfg:
            raise MetaError("meta-train config has no 'backbone' (e.g. backbone: {class_path: toyclip, init_args: {pretrained: embedded}})")
        backbone = _instantiate(cfg["backbone"], "backbone")
    inner = _instantiate(cfg["inner"], "inner")
    if isinstance(inner, GRAM):
        raise MetaError("inner: meta-train the prompt learner itself (e.g. coop), not a gram learner")
    if not inner.trainable:
        raise MetaError(f"inner: {type(inner).__name__} has nothing to tune; meta-train a prompt learner (coop, vpt, maple)")
    if not inner.transfers_to_new_classes:
        raise MetaError(f"inner: {type(inner).__name__} with this config is tied to its classes; meta-tasks change classes every task")
    use_images = bool(inner.modifies_image_encoder)
    t0 = time.time()
    corpus = encode_corpus(backbone, cfg.get("corpus", {"source": "toyworld", "size": 256}), seed=seed, keep_images=use_images)
    h = hierarchical_clusters(corpus, coarse=int(clusters.get("coarse", 4)), fine=int(clusters.get("fine", 6)), seed=seed)
    log.info("meta-train: %d pairs encoded in %.1fs; clusters %s", len(corpus), time.time() - t0, h.stats)
    rng = random.Random(seed)
    first = sample_task(h, n_way=n_way, support_shots=1, query_shots=1, rng=random.Random(seed))
    inner.setup(backbone, first.support_names)
    state = inner.learned_state()
    if not state:
        raise MetaError(f"inner: {type(inner).__name__} has no trainable tensors with this config")
    init = {k: v.clone().requires_grad_(True) for k, v in state.items()}
    regulator = {k: v.requires_grad_(True) for k, v in identity_regulator(list(state)).items()}
    opt = torch.optim.Adam([
        {"params": list(init.values()), "lr": float(meta.get("outer_lr", 1e-3))},
        {"params": list(regulator.values()), "lr": float(meta.get("regulator_lr", 1e-2))},
    ])
    head = TaskHead(inner)
    inner.train()
    history = []
    for step in range(steps):
        tasks = [sample_task(h, n_way=n_way, support_shots=int(tasks_cfg.get("support_shots", 2)),
                             query_shots=int(tasks_cfg.get("query_shots", 4)), rng=rng)
                 for _ in range(int(tasks_cfg.get("per_step", 2)))]
        opt.zero_grad(set_to_none=True)
        with attention_for(first_order):
            loss, before = meta_step(head, init, regulator, tasks, corpus, inner_steps=inner_steps, inner_lr=inner_lr,
                                     first_order=first_order, use_images=use_images)
            loss.backward()
        opt.step()
        history.append({"step": step, "query_loss_before": round(before, 5), "query_loss_after": round(float(loss.detach()), 5)})
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log.info("meta-step %d/%d: query loss %.4f (before adaptation %.4f)", step + 1, steps, float(loss.detach()), before)
    provenance = {
        "method": "GRAM (Li et al., ICCV 2023, arXiv 2303.06571), re-implementation without official code",
        "config": cfg, "config_text": config_text, "command": command or sys.argv, "seed": seed,
        "cluster_stats": h.stats, "corpus_pairs": len(corpus), "steps": steps, "first_order": first_order,
        "history_first_last": [history[0], history[-1]] if history else [], "seconds": round(time.time() - t0, 2),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "regulator": {k: [round(float(x), 6) for x in v.detach()] for k, v in regulator.items()},
    }
    out = save_artifact(cfg["out"], init=init, regulator=regulator, backbone=backbone, inner=inner, provenance=provenance)
    card = {**provenance, "artifact": str(out), "sha256": file_sha256(out), "history": history}
    atomic_write_text(Path(str(out) + ".json"), json.dumps(card, indent=2, default=str))
    log.info("meta-train: wrote %s (sha256 %s)", out, card["sha256"])
    return card


