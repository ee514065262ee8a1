"""Several processes, one run (Lightning DDP): helpers that keep the metrics those of one process.

``vlprompt fit --trainer.strategy ddp --trainer.devices N`` (or ``ddp_spawn``) runs N processes. Three things
make its metrics equal to a one-process run:

* evaluation sees every test image exactly once: :func:`eval_sampler` gives each process a disjoint share
  without the padding (repeated images) of ``DistributedSampler``;
* the correct / total counts of every evaluation set are summed over processes before the accuracy is taken
  (:meth:`vlprompt.modules.classification.PromptClassifier._reduce_counts`);
* the few-shot draw is the same in every process: it is seeded by the run seed, and
  :func:`check_same_in_every_process` compares its fingerprint across processes before training.

With the ``ddp`` strategy Lightning re-runs the command line for ranks 1..N-1; :func:`is_secondary_process` tells
``vlprompt fit`` that it is one of those, so that only rank 0 writes the run folder and the result JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

__all__ = ["check_same_in_every_process", "eval_sampler", "fingerprint", "is_distributed", "is_secondary_process"]


def is_distributed(trainer: Any) -> bool:
    """Whether ``trainer`` runs with several processes and their process group is up."""
    return (trainer is not None and int(getattr(trainer, "world_size", 1) or 1) > 1
            and torch.distributed.is_available() and torch.distributed.is_initialized())


def is_secondary_process() -> bool:
    """Whether this process is a rank > 0 started by a launcher (Lightning's ``ddp`` script launcher, torchrun)."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        value = os.environ.get(var, "0")
        if value.isdigit() and int(value) != 0:
            return True
    return False


def eval_sampler(trainer: Any, dataset: Any) -> torch.utils.data.Sampler | None:
    """A sampler giving this process its share of ``dataset``, every item in exactly one process, in order
    (Lightning's ``UnrepeatedDistributedSampler``); ``None`` outside DDP. Lightning keeps a loader's
    ``DistributedSampler`` as it is, so the default padded sampler is not put in its place."""
    if not is_distributed(trainer):
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                        shuffle=False)


def fingerprint(value: Any) -> str:
    """sha256 (16 hex digits) of ``value``'s canonical JSON, e.g. of a list of few-shot indices."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def check_same_in_every_process(trainer: Any, value: str, what: str) -> None:
    """Raise ``RuntimeError`` (on every rank) if ``value`` differs between the processes of ``trainer``; a no-op
    outside DDP. ``what`` names the value in the message (e.g. ``"few-shot draw of toy_colors"``)."""
    if not is_distributed(trainer):
        return
    values: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    if len(set(values)) > 1:
        raise RuntimeError(
            f"{what} differs between DDP processes ({', '.join(f'rank {i}: {v}' for i, v in enumerate(values))}): "
            "every process must draw the same data; set a seed (vlprompt fit sets --seeds) and do not draw it "
            "with a process-dependent random state.")
