"""One run of the reference code (KaiyangZhou/CoOp on Dassl.pytorch) for ``vs_reference.py``, in its own process.

Run by ``vs_reference.py`` with the reference's Python environment (see ``benchmarks/README.md``); it imports
the user's checkout of the reference from ``--reference-dir`` and ``--dassl-dir`` and ships none of it. It runs
the reference's own ``train.py`` functions (``setup_cfg``, ``build_trainer``, ``trainer.train()``) for one seed
and writes one JSON object of measurements to ``--out``. Changes at run time, all outside the measured code:

- ``load_clip_to_cpu`` of the trainer module builds the model with the reference's own ``clip.build_model``
  from the ``--weights`` safetensors file (the original downloads a TorchScript archive and unpickles it);
- ``torch.utils.tensorboard`` is replaced by a no-op ``SummaryWriter`` when the ``tensorboard`` package is
  absent (Dassl imports it at start; the benchmark writes no event files);
- ``LRScheduler.__init__`` accepts (and ignores) the ``verbose`` argument Dassl's warm-up scheduler still passes
  (torch 2.7 removed it);
- ``wilds`` is an empty stand-in when absent (imported by Dassl's WILDS datasets only).

Timing wraps the trainer instance's ``run_epoch`` (training, wall and process CPU seconds summed over epochs),
``forward_backward`` (images trained) and ``test`` (the final evaluation), without changing what they do.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import resource
import sys
import time
import types


def _stub_missing(name: str, **attrs) -> None:
    """Register an empty module ``name`` (with ``attrs``) when the real one is not installed."""
    try:
        missing = importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod


class NoWriter:
    """Stand-in for ``SummaryWriter`` that writes nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-dir", required=True)
    p.add_argument("--dassl-dir", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--root", required=True, help="data root (CoOp layout) the reference may write split pickles into")
    p.add_argument("--trainer", default="CoOp", choices=["CoOp", "CoCoOp"])
    p.add_argument("--config-file", required=True, help="trainer config, relative to --reference-dir")
    p.add_argument("--dataset-config-file", required=True, help="dataset config, relative to --reference-dir")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--out", required=True, help="JSON file for the measurements")
    p.add_argument("opts", nargs="*", help="yacs overrides KEY VALUE ...")
    a = p.parse_args()

    sys.path[:0] = [a.reference_dir, a.dassl_dir]
    os.chdir(a.reference_dir)
    try:
        import tensorboard  # noqa: F401  # deferred: optional in the reference environment
    except ImportError:
        board = types.ModuleType("torch.utils.tensorboard")
        board.__spec__ = importlib.machinery.ModuleSpec(board.__name__, None)
        board.SummaryWriter = NoWriter
        sys.modules[board.__name__] = board
    _stub_missing("wilds", get_dataset=None)
    import torch  # deferred: after the stand-ins above

    scheduler_init = torch.optim.lr_scheduler.LRScheduler.__init__

    def scheduler_init_compat(self, optimizer, last_epoch=-1, verbose=None):
        scheduler_init(self, optimizer, last_epoch)

    torch.optim.lr_scheduler.LRScheduler.__init__ = scheduler_init_compat
    from safetensors.torch import load_file  # deferred: after the stand-ins above

    import train as ref_train  # deferred: the reference checkout is on sys.path only now
    from clip import clip as ref_clip  # deferred: the reference checkout is on sys.path only now
    from dassl.engine import build_trainer  # deferred: the reference checkout is on sys.path only now
    from dassl.utils import set_random_seed  # deferred: the reference checkout is on sys.path only now

    def load_clip_from_weights(cfg):
        return ref_clip.build_model(load_file(a.weights))

    module = sys.modules[f"trainers.{a.trainer.lower()}"]
    module.load_clip_to_cpu = load_clip_from_weights

    args = argparse.Namespace(
        root=a.root, output_dir=a.output_dir, resume="", seed=a.seed, source_domains=None, target_domains=None,
        transforms=None, trainer=a.trainer, backbone="", head="", config_file=a.config_file,
        dataset_config_file=a.dataset_config_file, opts=a.opts, eval_only=False, model_dir="", load_epoch=None,
        no_train=False,
    )
    cfg = ref_train.setup_cfg(args)
    set_random_seed(cfg.SEED)
    t0 = time.perf_counter()
    trainer = build_trainer(cfg)
    build_s = time.perf_counter() - t0
    stats = {"train_s": 0.0, "test_s": 0.0, "train_cpu_s": 0.0, "test_cpu_s": 0.0, "train_images": 0, "epochs": 0}
    run_epoch, forward_backward, test = trainer.run_epoch, trainer.forward_backward, trainer.test

    def timed_epoch():
        t, c = time.perf_counter(), time.process_time()
        run_epoch()
        stats["train_s"] += time.perf_counter() - t
        stats["train_cpu_s"] += time.process_time() - c
        stats["epochs"] += 1

    def counted_step(batch):
        stats["train_images"] += int(batch["img"].shape[0])
        return forward_backward(batch)

    def timed_test(split=None):
        t, c = time.perf_counter(), time.process_time()
        out = test(split)
        stats["test_s"] += time.perf_counter() - t
        stats["test_cpu_s"] += time.process_time() - c
        return out

    trainer.run_epoch, trainer.forward_backward, trainer.test = timed_epoch, counted_step, timed_test
    trainer.train()
    stats.update(
        build_s=build_s, test_images=len(trainer.test_loader.dataset), classes=trainer.dm.num_classes,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, threads=torch.get_num_threads(),
        torch=torch.__version__,
    )
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(stats, f)


if __name__ == "__main__":
    main()
