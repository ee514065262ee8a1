"""GRAM meta-training, steps 2-3: cross-modal hierarchical clustering (pseudo-domains and pseudo-classes) and
task sampling (support from one pseudo-domain, query from another). See :mod:`vlprompt.learners.gram.meta`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlprompt.learners.gram.corpus import Corpus, MetaError


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
    """One meta-training task: support pairs from one pseudo-domain, query pairs from another, task-local labels."""

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
