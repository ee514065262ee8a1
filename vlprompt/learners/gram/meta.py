"""Meta-training for GRAM (Li et al., ICCV 2023, arXiv 2303.06571): ``vlprompt meta-train --config FILE``.

Re-implementation from the paper (no official code). Pipeline:

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

import argparse
import csv
import importlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vlprompt.learners.base import LearnerError, PromptLearner
from vlprompt.learners.gram.regulator import identity_regulator, regulate

log = logging.getLogger(__name__)


class MetaError(ValueError):
    """Bad meta-training input; the message names the value and the fix."""


# ---------------------------------------------------------------------------------------------- corpus
def toy_corpus(size: int, *, image_size: int, seed: int, chunk: int = 64) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Chunks ``(images [b, 3, S, S] in [0, 1], captions)`` of rendered toy-world scenes, styles mixed per chunk."""
    from vlprompt.data.toyworld.captions import caption, scene_attributes
    from vlprompt.data.toyworld.render import STYLES, render, sample_scene

    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    done = 0
    while done < size:
        b = min(chunk, size - done)
        scene = sample_scene(b, generator=g)
        images, _ = render(scene, generator=g, style=rng.choice(STYLES), image_size=image_size)
        yield images, [caption(scene_attributes(scene, k), rng) for k in range(b)]
        done += b


def _pil_input(im, image_size: int) -> torch.Tensor:
    """A PIL image as a model input ``[3, S, S]`` in ``[0, 1]``: shorter side resized to ``S``, centre crop."""
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    img = pil_to_tensor(im.convert("RGB")).float() / 255.0
    return center_crop(resize(img, image_size, antialias=True), [image_size, image_size])


def _load_image(path: Path, image_size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _pil_input(im, image_size)
    except (OSError, ValueError) as exc:
        raise MetaError(f"cannot read image {str(path)!r} ({exc}); fix or remove its row") from exc


def _shard_urls(urls: str | list[str]) -> list[str]:
    """Expand brace patterns (``cc3m-{000000..000009}.tar``) and check that local shards exist before any work."""
    import braceexpand

    patterns = [urls] if isinstance(urls, str) else list(urls)
    out = [u for pat in patterns for u in braceexpand.braceexpand(str(pat))]
    if not out:
        raise MetaError("corpus.urls is empty: give webdataset shard paths, e.g. shards/cc3m-{000000..000009}.tar")
    missing = [u for u in out if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        raise MetaError(f"webdataset shard {missing[0]!r} does not exist ({len(missing)} of {len(out)} shards missing); "
                        "check corpus.urls")
    return out


def webdataset_pairs(urls: str | list[str], *, image_key: str = "jpg;jpeg;png;webp", caption_key: str = "txt",
                     image_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, str]]:
    """Stream ``(image [3, S, S] in [0, 1], caption)`` from webdataset shards (``image_key`` may list alternatives
    separated by ``;``). The first sample's keys are checked before any work; a sample missing them is an error
    naming its key and shard."""
    try:
        import webdataset as wds
    except ImportError as exc:
        raise MetaError("corpus.source 'webdataset' needs the webdataset package: pip install webdataset") from exc
    shards = _shard_urls(urls)
    wanted = [k.strip().lower() for k in image_key.split(";") if k.strip()]
    stream = wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode("pil")
    n = 0
    try:
        for sample in stream:
            keys = {k.lower(): k for k in sample if not k.startswith("__")}
            img_k = next((keys[k] for k in wanted if k in keys), None)
            cap_k = keys.get(caption_key.lower())
            if img_k is None or cap_k is None:
                col = "image_key" if img_k is None else "caption_key"
                raise MetaError(
                    f"webdataset sample {sample.get('__key__')!r} in {sample.get('__url__')!r} has no "
                    f"{image_key if img_k is None else caption_key!r} entry (it holds {sorted(keys)}); set corpus.{col}"
                )
            cap = sample[cap_k]
            cap = cap.decode("utf-8") if isinstance(cap, bytes) else str(cap)
            yield _pil_input(sample[img_k], image_size), cap.strip()
            n += 1
            if limit is not None and n >= limit:
                return
    except (OSError, ValueError) as exc:
        if isinstance(exc, MetaError):
            raise
        raise MetaError(f"webdataset shards {shards[0]!r}...: unreadable ({exc})") from exc
    if n == 0:
        raise MetaError(f"webdataset shards {shards[0]!r}... hold no samples")


class ImageSpill:
    """Append-only uint8 image store on disk, memory-mapped when read (``[N, 3, S, S]``); deleted at exit."""

    def __init__(self, image_size: int, directory: str | Path | None = None) -> None:
        import atexit
        import os
        import tempfile

        fd, name = tempfile.mkstemp(prefix="vlprompt-corpus-", suffix=".u8", dir=directory)
        os.close(fd)
        self.path = Path(name)
        atexit.register(self.path.unlink, missing_ok=True)
        self.image_size = image_size
        self.count = 0

    def append(self, images: torch.Tensor) -> None:
        """Add images ``[b, 3, S, S]`` in ``[0, 1]``."""
        with self.path.open("ab") as fh:
            fh.write((images * 255).round().to(torch.uint8).contiguous().numpy().tobytes())
        self.count += int(images.shape[0])

    def tensor(self) -> torch.Tensor:
        """The stored images as a memory-mapped uint8 tensor ``[N, 3, S, S]`` (pages are read on access)."""
        s = self.image_size
        flat = torch.from_file(str(self.path), shared=False, size=self.count * 3 * s * s, dtype=torch.uint8)
        return flat.view(self.count, 3, s, s)


def caption_rows(path: str | Path, *, image_column: str = "image", caption_column: str = "caption") -> Iterator[tuple[Path, str]]:
    """Stream ``(image path, caption)`` from a CSV (header row) or JSON-lines file; paths are relative to the file.

    The file and its columns are checked on the first row, before any work.
    """
    path = Path(path)
    if not path.is_file():
        raise MetaError(f"corpus file {str(path)!r} does not exist")
    jsonl = path.suffix.lower() in {".jsonl", ".json", ".ndjson"}
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise MetaError(f"corpus file {str(path)!r} is unreadable ({exc})") from exc
    n = 0
    with fh:
        try:
            if jsonl:
                rows: Iterator[dict] = (json.loads(line) for line in fh if line.strip())
            else:
                rows = csv.DictReader(fh)
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise MetaError(f"{str(path)!r} line {i + 1} is not a JSON object")
                for col in (image_column, caption_column):
                    if col not in row:
                        raise MetaError(
                            f"corpus file {str(path)!r} has no column {col!r} (columns: {sorted(row)}); set "
                            f"corpus.image_column / corpus.caption_column"
                        )
                n += 1
                yield (path.parent / str(row[image_column])), str(row[caption_column])
        except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
            raise MetaError(f"corpus file {str(path)!r} is unreadable ({exc}); expected CSV with a header or JSON lines") from exc
    if n == 0:
        raise MetaError(f"corpus file {str(path)!r} is empty: it needs image-caption rows")


@dataclass
class Corpus:
    """Encoded pairs: features ``[N, D]`` (L2-normalised), captions, and a way to get images back."""

    image_features: torch.Tensor
    text_features: torch.Tensor
    captions: list[str]
    images: torch.Tensor | None = None  # uint8 [N, 3, S, S] (toy world)
    paths: list[Path] = field(default_factory=list)  # (caption files: images are re-read on demand)
    image_size: int = 0

    def __len__(self) -> int:
        return len(self.captions)

    def get_images(self, idx: list[int]) -> torch.Tensor:
        if self.images is not None:
            return self.images[idx].float() / 255.0
        if not self.paths:
            raise MetaError("this corpus was encoded without keeping its images (keep_images=False)")
        return torch.stack([_load_image(self.paths[i], self.image_size) for i in idx])


@torch.no_grad()
def encode_corpus(backbone, source: dict, *, seed: int, keep_images: bool, chunk: int = 64) -> Corpus:
    """Encode a corpus config in chunks: ``{source: toyworld, size}``, ``{source: captions, path, image_column,
    caption_column}`` or ``{source: webdataset, urls, image_key, caption_key, size (optional limit), spill_dir}``."""
    size = backbone.preprocess.image_size
    kind = source.get("source", "toyworld")
    img_f, txt_f, caps, imgs, paths = [], [], [], [], []
    if kind == "toyworld":
        chunks = toy_corpus(int(source.get("size", 256)), image_size=size, seed=seed, chunk=chunk)
    elif kind == "captions":
        rows = caption_rows(source["path"], image_column=source.get("image_column", "image"),
                            caption_column=source.get("caption_column", "caption"))

        def _chunks() -> Iterator[tuple[torch.Tensor, list[str]]]:
            buf: list[tuple[Path, str]] = []
            for row in rows:
                buf.append(row)
                if len(buf) == chunk:
                    paths.extend(p for p, _ in buf)
                    yield torch.stack([_load_image(p, size) for p, _ in buf]), [c for _, c in buf]
                    buf = []
            if buf:
                paths.extend(p for p, _ in buf)
                yield torch.stack([_load_image(p, size) for p, _ in buf]), [c for _, c in buf]

        chunks = _chunks()
    elif kind == "webdataset":
        if "urls" not in source:
            raise MetaError("corpus.source 'webdataset' needs corpus.urls (shard paths, e.g. shards/cc3m-{000000..000009}.tar)")
        pairs = webdataset_pairs(source["urls"], image_key=source.get("image_key", "jpg;jpeg;png;webp"),
                                 caption_key=source.get("caption_key", "txt"), image_size=size,
                                 limit=int(source["size"]) if source.get("size") is not None else None)

        def _wds_chunks() -> Iterator[tuple[torch.Tensor, list[str]]]:
            buf: list[tuple[torch.Tensor, str]] = []
            for pair in pairs:
                buf.append(pair)
                if len(buf) == chunk:
                    yield torch.stack([i for i, _ in buf]), [c for _, c in buf]
                    buf = []
            if buf:
                yield torch.stack([i for i, _ in buf]), [c for _, c in buf]

        chunks = _wds_chunks()
    else:
        raise MetaError(f"corpus.source={kind!r} is unknown; use 'toyworld', 'captions' (CSV / JSON lines) or 'webdataset'")
    spill = ImageSpill(size, source.get("spill_dir")) if keep_images and kind == "webdataset" else None
    for images, captions in chunks:
        img_f.append(F.normalize(backbone.encode_image(images).float(), dim=-1))
        txt_f.append(F.normalize(backbone.encode_text(backbone.tokenize(captions)).float(), dim=-1))
        caps.extend(captions)
        if keep_images and kind == "toyworld":
            imgs.append((images * 255).round().to(torch.uint8))
        if spill is not None:
            spill.append(images)
    stored = torch.cat(imgs) if imgs else (spill.tensor() if spill is not None else None)
    if kind == "webdataset" and spill is None:
        log.info("webdataset corpus: images not kept (the inner learner reads image features only)")
    return Corpus(torch.cat(img_f), torch.cat(txt_f), caps, stored, paths, size)


# ---------------------------------------------------------------------------------------------- clustering
def kmeans(x: torch.Tensor, k: int, *, seed: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means (k-means++ seeding, Lloyd). ``x [N, D]`` -> ``(labels [N] long, centroids [k, D])``. Deterministic."""
    n = x.shape[0]
    if k < 1 or n < k:
        raise MetaError(f"cannot make {k} clusters from {n} pairs: give more pairs or fewer clusters")
    g = torch.Generator().manual_seed(seed)
    cent = [x[int(torch.randint(n, (1,), generator=g))]]
    for _ in range(1, k):
        d = torch.cdist(x, torch.stack(cent)).min(dim=1).values.pow(2)
        probs = d / d.sum() if float(d.sum()) > 0 else torch.full((n,), 1.0 / n)
        cent.append(x[int(torch.multinomial(probs, 1, generator=g))])
    c = torch.stack(cent)
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        labels = torch.cdist(x, c).argmin(dim=1)
        new = torch.stack([x[labels == j].mean(0) if bool((labels == j).any()) else c[j] for j in range(k)])
        if torch.allclose(new, c):
            break
        c = new
    return labels, c


@dataclass
class Hierarchy:
    """Two-level clustering: ``coarse[i]`` pseudo-domain and ``fine[i]`` global pseudo-class id of pair ``i``."""

    coarse: torch.Tensor
    fine: torch.Tensor
    fine_domain: list[int]  # pseudo-domain of each fine cluster
    names: list[str]  # medoid caption of each fine cluster
    stats: dict


def cross_modal_features(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """``[N, 2D]`` joint features ``[f_img, f_txt] / sqrt(2)`` of L2-normalised ``[N, D]`` image and text features."""
    return torch.cat([F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)], dim=1) / math.sqrt(2)


def hierarchical_clusters(corpus: Corpus, *, coarse: int, fine: int, seed: int) -> Hierarchy:
    """Cross-modal hierarchical clustering (see module docstring); raises :class:`MetaError` for too few pairs."""
    n = len(corpus)
    if n < coarse * fine:
        raise MetaError(f"the corpus has {n} pairs, fewer than clusters.coarse * clusters.fine = {coarse} * {fine}; "
                        "give more pairs or fewer clusters")
    z = cross_modal_features(corpus.image_features, corpus.text_features)
    top, _ = kmeans(z, coarse, seed=seed)
    fine_labels = torch.full((n,), -1, dtype=torch.long)
    fine_domain: list[int] = []
    names: list[str] = []
    for d in range(coarse):
        idx = torch.nonzero(top == d).flatten()
        k = min(fine, len(idx))
        if k == 0:
            continue
        sub, _ = kmeans(z[idx], k, seed=seed + 1 + d)
        for j in range(k):
            members = idx[sub == j]
            if len(members) == 0:
                continue
            mean_t = corpus.text_features[members].mean(0)
            medoid = members[int((corpus.text_features[members] @ mean_t).argmax())]
            fine_labels[members] = len(names)
            fine_domain.append(d)
            names.append(corpus.captions[int(medoid)])
    sizes_c = torch.bincount(top, minlength=coarse)
    sizes_f = torch.bincount(fine_labels, minlength=len(names))

    def cohesion(labels: torch.Tensor, m: int) -> float:
        sims = [float((z[labels == j] @ z[labels == j].T).mean()) for j in range(m) if int((labels == j).sum()) > 0]
        return round(sum(sims) / len(sims), 4)

    stats = {
        "pairs": n,
        "coarse_clusters": coarse,
        "coarse_sizes": sizes_c.tolist(),
        "fine_clusters": len(names),
        "fine_size_min": int(sizes_f.min()),
        "fine_size_mean": round(float(sizes_f.float().mean()), 2),
        "fine_size_max": int(sizes_f.max()),
        "distinct_fine_names": len(set(names)),
        "mean_cosine_all": round(float((z @ z.T).mean()), 4),
        "mean_cosine_within_coarse": cohesion(top, coarse),
        "mean_cosine_within_fine": cohesion(fine_labels, len(names)),
    }
    return Hierarchy(top, fine_labels, fine_domain, names, stats)


@dataclass
class Task:
    support: list[int]
    support_labels: torch.Tensor
    support_names: list[str]
    query: list[int]
    query_labels: torch.Tensor
    query_names: list[str]


def _pick_classes(h: Hierarchy, domain: int, n_way: int, rng: random.Random) -> list[int]:
    pool = [c for c, d in enumerate(h.fine_domain) if d == domain]
    rng.shuffle(pool)
    out, seen = [], set()
    for c in pool:
        if h.names[c] not in seen:
            out.append(c)
            seen.add(h.names[c])
        if len(out) == n_way:
            break
    return out


def sample_task(h: Hierarchy, *, n_way: int, support_shots: int, query_shots: int, rng: random.Random) -> Task:
    """Support from pseudo-domain A, query from pseudo-domain B != A (see module docstring)."""
    domains = [d for d in sorted(set(h.fine_domain)) if sum(1 for x in h.fine_domain if x == d) >= n_way]
    if len(domains) < 2:
        raise MetaError(f"fewer than 2 pseudo-domains have {n_way} fine clusters: lower tasks.n_way or raise clusters.fine")
    a, b = rng.sample(domains, 2)

    def draw(domain: int, shots: int) -> tuple[list[int], torch.Tensor, list[str]]:
        classes = _pick_classes(h, domain, n_way, rng)
        idx, labels = [], []
        for y, c in enumerate(classes):
            members = torch.nonzero(h.fine == c).flatten().tolist()
            idx += [rng.choice(members) for _ in range(shots)] if len(members) < shots else rng.sample(members, shots)
            labels += [y] * shots
        return idx, torch.tensor(labels), [h.names[c] for c in classes]

    s = draw(a, support_shots)
    q = draw(b, query_shots)
    return Task(s[0], s[1], s[2], q[0], q[1], q[2])


# ---------------------------------------------------------------------------------------------- bi-level optimisation
class _Head(nn.Module):
    """``forward(x)``: logits of the learner from images ``[B, 3, H, W]`` or cached image features ``[B, D]``."""

    def __init__(self, learner: PromptLearner) -> None:
        super().__init__()
        self.learner = learner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x if x.dim() == 2 else self.learner.encode_images(x)
        return self.learner.logits(feats)


def task_loss(head: _Head, params: dict[str, torch.Tensor], names: list[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the learner with tensors ``params`` (learned_state names) on ``x`` labelled ``y`` over ``names``."""
    head.learner.set_classnames(names)
    logits = torch.func.functional_call(head, {f"learner.{k}": v for k, v in params.items()}, (x,))
    return F.cross_entropy(logits, y)


def adapt(
    head: _Head,
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


def _attention_for(first_order: bool):
    """Second-order meta-gradients need attention's double backward, which only the math SDPA kernel has (CPU flash
    attention's backward is not differentiable); first order keeps the default kernels."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

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
    from vlprompt.runs.driver import _resolve_names

    if not isinstance(node, dict) or "class_path" not in node:
        raise MetaError(f"config key {key!r} needs a class_path (e.g. {key}: {{class_path: coop, init_args: {{...}}}})")
    node = _resolve_names({key: node})[key]
    module, _, name = node["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return cls(**(node.get("init_args") or {}))


def load_config(path: str | Path) -> dict:
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
    from vlprompt.backbones.open_clip import file_sha256
    from vlprompt.learners.gram import GRAM
    from vlprompt.learners.gram.artifact import save_artifact

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
    head = _Head(inner)
    inner.train()
    history = []
    for step in range(steps):
        tasks = [sample_task(h, n_way=n_way, support_shots=int(tasks_cfg.get("support_shots", 2)),
                             query_shots=int(tasks_cfg.get("query_shots", 4)), rng=rng)
                 for _ in range(int(tasks_cfg.get("per_step", 2)))]
        opt.zero_grad(set_to_none=True)
        with _attention_for(first_order):
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
    from vlprompt.data.atomic import atomic_write_text

    atomic_write_text(Path(str(out) + ".json"), json.dumps(card, indent=2, default=str))
    log.info("meta-train: wrote %s (sha256 %s)", out, card["sha256"])
    return card


def main(argv: list[str]) -> int:
    """``vlprompt meta-train --config FILE [--out PATH] [--steps N] [--first_order]``."""
    parser = argparse.ArgumentParser(prog="vlprompt meta-train", description="meta-train a GRAM artifact (init + gradient regulator)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", default=None, help="artifact path (overrides the config's out)")
    parser.add_argument("--steps", type=int, default=None, help="meta-steps (overrides meta.steps)")
    parser.add_argument("--first_order", action="store_true", help="first-order approximation (overrides meta.first_order)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.out:
            cfg["out"] = args.out
        if args.steps is not None:
            cfg.setdefault("meta", {})["steps"] = args.steps
        if args.first_order:
            cfg.setdefault("meta", {})["first_order"] = True
        meta_train(cfg, command=["vlprompt", "meta-train", *argv], config_text=Path(args.config).read_text())
    except (MetaError, LearnerError) as exc:
        log.error("%s", exc)
        return 2
    return 0
