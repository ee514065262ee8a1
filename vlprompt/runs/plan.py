"""What a sweep needs before cluster hours are spent: ``vlprompt sweep --plan`` and ``vlprompt sweep --dry-run``.

:func:`plan_cell` parses a cell with the sweep's own parser (:func:`vlprompt.runs.sweep.parse_cell`, no model is
built) and reports: the backbone weights (open_clip tag found in the local cache, or a local file with its sha256),
the data (the data module and its dataset source are built: root, split file, class and image counts; no image is
decoded), the optimizer steps per seed (train images / batch, the last incomplete batch dropped as Dassl does
when a full batch exists, x epochs) and the test images, and an estimate of device-hours from a :class:`CostModel`.

:func:`dry_run_cell` runs a cell through the ordinary driver with one training step and one test batch, on CPU,
with a tiny random backbone of the same family in place of the real weights (open_clip cells: the tiny open_clip
model of :func:`vlprompt.learners.testing.tiny_clip_like`: the widths of ``tiny_clip()`` with the real model's depth
and context length; the toy CLIP is tiny already), results into a temp folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonargparse
import lightning.pytorch as pl
import open_clip
from huggingface_hub import try_to_load_from_cache

from vlprompt.backbones.open_clip import OpenCLIPBackbone
from vlprompt.learners.testing import tiny_clip_like, tiny_vlsm_folder
from vlprompt.runs.config import learner_trainable
from vlprompt.runs.sweep import Cell, SweepError, parse_cell, run_cell

__all__ = ["CostModel", "CellPlan", "DEFAULT_STEP_S", "DEFAULT_IMAGE_S", "DEFAULT_TTA_IMAGE_S", "plan_cell", "calibrate", "weights_status",
           "DRY_RUN_ARGS", "dry_run_cell", "DryRunResult", "root_cause"]

#: default seconds per optimizer step: an order-of-magnitude assumption for a prompt learner on ViT-B/16 with a
#: batch of 32 on one current data-centre GPU (not a measurement: calibrate with ``--calibrate RESULT.json``)
DEFAULT_STEP_S = 0.25
#: default seconds per test image (ViT-B/16 forward, decoding included; same caveat)
DEFAULT_IMAGE_S = 0.004
#: default seconds per test image of a test-time (``stage: tta``) cell: TPT's 0.9 s per image (RN50, ImageNet) from
#: the run times in TDA's README (kdiAAA/TDA), used for every test-time method until calibrated with a tta result
DEFAULT_TTA_IMAGE_S = 0.9
#: Lightning's epoch count when neither max_epochs nor max_steps is set
LIGHTNING_DEFAULT_EPOCHS = 1000


@dataclass(frozen=True)
class CostModel:
    """Seconds per optimizer step and per test image; ``source`` says where they come from."""

    step_s: float = DEFAULT_STEP_S
    image_s: float = DEFAULT_IMAGE_S
    source: str = "defaults"

    def seconds(self, steps: int, images: int) -> float:
        return steps * self.step_s + images * self.image_s


def calibrate(paths: Sequence[str | os.PathLike]) -> CostModel:
    """A :class:`CostModel` from measured result JSONs: their seeds' ``wall_seconds``, ``optimizer_steps`` and
    ``test_images`` (recorded per seed by ``vlprompt fit``). The default ratio of image to step cost is kept and
    both are scaled so that the model reproduces the measured total wall time; with no training steps (a frozen
    learner) the image cost is the measured time per image and the step cost is scaled by the same factor."""
    wall = steps = images = 0.0
    for path in paths:
        p = Path(path)
        try:
            result = json.loads(p.read_text(encoding="utf-8"))
            rows = list(result["per_seed"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SweepError(f"--calibrate {p}: not a readable vlprompt result JSON ({exc}); pass a result file "
                             "written by `vlprompt fit` (results/<benchmark>/<dataset>/<learner>-*.json)") from exc
        for row in rows:
            if not isinstance(row, Mapping) or float(row.get("wall_seconds") or 0.0) <= 0.0:
                continue  # a seed reused from an earlier evaluation took no time of its own
            if "test_images" not in row:
                raise SweepError(f"--calibrate {p}: seed {row.get('seed')} has no test_images/optimizer_steps (the "
                                 "result predates them); rerun the cell with this version of vlprompt and pass its "
                                 "new result file")
            wall += float(row["wall_seconds"])
            steps += float(row.get("optimizer_steps") or 0)
            images += float(row["test_images"])
    if wall <= 0.0 or steps + images <= 0.0:
        raise SweepError(f"--calibrate {', '.join(map(str, paths))}: no seed with a measured wall time and steps or "
                         "images; pass a result of a cell that trained or tested")
    ratio = DEFAULT_IMAGE_S / DEFAULT_STEP_S
    if steps > 0:
        step_s = wall / (steps + ratio * images)
        image_s = ratio * step_s
    else:
        image_s = wall / images
        step_s = image_s / ratio
    return CostModel(step_s, image_s, source=f"calibrated on {', '.join(str(p) for p in paths)}")


@dataclass
class CellPlan:
    """What one cell needs; ``missing`` lists every absent item (each with its fix)."""

    label: str
    weights: str = ""
    data: str = ""
    seeds: int = 0
    train_images: int | None = None
    steps_per_seed: int | None = None
    test_images: int | None = None
    devices: int = 1
    device_hours: float | None = None
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_open_clip(model: str, tag: str, cache_dir: str | None) -> Path | None:
    """The local file open_clip would load for ``model``/``tag`` without a download, or None."""
    cfg = open_clip.get_pretrained_cfg(model, tag) or open_clip.get_pretrained_cfg(
        model.removesuffix("-quickgelu"), tag) or {}
    repo = str(cfg.get("hf_hub") or "").rstrip("/")
    if repo:
        for name in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors"):
            try:
                found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            except Exception:  # noqa: BLE001 - any failure means "not cached"
                found = None
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = str(cfg.get("url") or "")
    for folder in (cache_dir, os.path.expanduser("~/.cache/clip")) if url else ():
        if folder and (Path(folder) / os.path.basename(url)).is_file():
            return Path(folder) / os.path.basename(url)
    return None


def weights_status(backbone: Any) -> tuple[str, str | None]:
    """``(description, problem)`` of a parsed backbone config: what it loads and, when absent, what is missing."""
    class_path = str(getattr(backbone, "class_path", "") or "")
    args = dict(vars(getattr(backbone, "init_args", None) or {}))
    kind = class_path.rsplit(".", 1)[-1]
    if "pretrained" not in args:
        return f"{kind} (no pretrained argument)", None
    pretrained = args["pretrained"]
    if pretrained is None:
        return f"{kind} {args.get('model', '')} random weights (pretrained: null)", None
    value = str(pretrained)
    if value == "embedded":
        return f"{kind} embedded weights (ship with vlprompt)", None
    path = Path(value).expanduser()
    if path.is_file():
        return f"{kind} local file {path} (present, sha256 {_sha256(path)})", None
    if path.is_dir():
        return f"{kind} local folder {path} (present)", None
    if os.sep in value or value.endswith((".bin", ".pt", ".pth", ".safetensors")):
        return (f"{kind} local file {path} (absent)",
                f"backbone weights {path}: no such file or folder; copy the checkpoint there or fix model.backbone.init_args."
                "pretrained")
    if class_path == f"{OpenCLIPBackbone.__module__}.{OpenCLIPBackbone.__name__}":
        model = str(args.get("model", ""))
        found = _cached_open_clip(model, value, args.get("cache_dir"))
        if found is not None:
            return f"open_clip {model}/{value} (in the local cache: {found}, sha256 {_sha256(found)})", None
        return (f"open_clip {model}/{value} (not in the local cache)",
                f"backbone weights open_clip {model}/{value}: not downloaded here; on a connected machine run "
                f"python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{value}')\", or set "
                "model.backbone.init_args.pretrained to a local checkpoint file (configs/backbones/vit_b16_openai.yaml)")
    return f"{kind} {value} (cannot tell whether present)", None


def root_cause(exc: BaseException) -> str:
    """The message of the innermost exception of ``exc``'s chain (jsonargparse wraps a class's own error)."""
    seen, last = set(), exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if str(exc).strip():
            last = exc
        exc = exc.__cause__ or exc.__context__
    text = str(last).strip()
    return text.splitlines()[0] if text else type(last).__name__


def _build_data(cfg: Any) -> Any:
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(pl.LightningDataModule, "data")
    parsed = parser.parse_object({"data": cfg.data.as_dict()})
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    return build(parsed).data


def _world_size(trainer: Any) -> int:
    devices, strategy = getattr(trainer, "devices", 1), str(getattr(trainer, "strategy", "auto") or "auto")
    if "ddp" in strategy and isinstance(devices, int) and devices > 1:
        return devices * int(getattr(trainer, "num_nodes", 1) or 1)
    return 1


def _steps_per_epoch(n: int, batch: int, drop_last: bool, world: int) -> int:
    per_rank = math.ceil(n / world)
    full = drop_last and n >= batch  # Dassl: drop the incomplete last batch when one full batch exists
    return per_rank // batch if full else math.ceil(per_rank / batch)


def _epochs_and_cap(trainer: Any) -> tuple[int, int | None]:
    epochs = trainer.max_epochs
    max_steps = int(trainer.max_steps if trainer.max_steps is not None else -1)
    if epochs is None or int(epochs) < 0:
        epochs = LIGHTNING_DEFAULT_EPOCHS if max_steps < 0 else 10**9
    return int(epochs), (max_steps if max_steps >= 0 else None)


def _limited(n: int, limit: Any) -> int:
    if limit is None:
        return n
    if isinstance(limit, float) and limit <= 1.0:
        return int(n * limit)
    return min(n, int(limit))


def plan_cell(spec: Mapping[str, Any], cell: Cell, out: Path, cost: CostModel) -> CellPlan:
    """Parse ``cell`` (no model is built), build its data module, and count what it needs (see the module)."""
    cfg = parse_cell(spec, cell, out)
    plan = CellPlan(label=cell.label(), seeds=len(list(cfg.seeds or [])) or 1)
    plan.weights, problem = weights_status(cfg.model.backbone)
    if problem:
        plan.missing.append(problem)
    try:
        data = _build_data(cfg)
    except Exception as exc:  # noqa: BLE001 - any data error is a missing item, named with the source's own fix
        plan.data = "absent"
        plan.missing.append(f"data: {root_cause(exc)}")
        return plan
    dataset = getattr(data, "dataset", None)
    root, split = getattr(dataset, "root", None), getattr(dataset, "split_file", None)
    plan.data = f"{getattr(dataset, 'name', type(dataset).__name__)}" + (f" root {root}" if root else "") + (
        f", split {split} (present)" if split else "")
    spaces = getattr(data, "label_spaces", None)
    if not isinstance(spaces, Mapping) or not hasattr(dataset, "labels"):
        plan.data += " (counts: not a classification protocol)"
        return plan
    shots, batch = getattr(data, "shots", None), int(getattr(data, "batch_size", 1) or 1)
    train_classes = set(spaces[data.train_space])
    if shots is not None:
        plan.train_images = int(shots) * len(train_classes)
        counts = Counter(int(y) for y in dataset.labels("train"))  # the draw covers every class before base/new
        short = sorted((n, c) for c, n in counts.items() if n < int(shots))
        if short:
            plan.missing.append(
                f"data: {len(short)} class(es) of {plan.data.split(' root ')[0]} have fewer than shots={shots} training "
                f"images (class {short[0][1]}: {short[0][0]}); the run would stop there: use the full dataset, or "
                f"lower --data.init_args.shots to at most {short[0][0]}")
    else:
        plan.train_images = sum(1 for y in dataset.labels("train") if y in train_classes)
    if getattr(data, "unlabeled_pool", None) is not None:  # the pool (train_all_classes) trains instead
        plan.train_images = len(dataset.labels("train"))
    cap = getattr(data, "images_per_set", None)  # a test-time protocol may draw a fixed number per test set
    plan.test_images = sum(_limited(sum(1 for y in data.space_source(space).labels("test") if y in set(spaces[space])),
                                    cap if isinstance(cap, int) else None)
                           for _, space in data.test_sets)
    trainer = cfg.trainer
    plan.devices = _world_size(trainer) if str(getattr(trainer, "accelerator", "")) != "cpu" else 1
    trainable = spec["stage"] == "fit" and learner_trainable(cfg)
    if trainable:
        batches = _limited(_steps_per_epoch(plan.train_images, batch, bool(getattr(data, "drop_last", True)),
                                            _world_size(trainer)), trainer.limit_train_batches)
        epochs, cap = _epochs_and_cap(trainer)
        if trainer.max_epochs is None and cap is None:
            plan.notes.append(f"trainer.max_epochs is not set: Lightning's default {LIGHTNING_DEFAULT_EPOCHS} epochs "
                              "are counted; set it in the learner config or the sweep's args")
        steps = batches // max(1, int(trainer.accumulate_grad_batches or 1)) * epochs
        plan.steps_per_seed = min(steps, cap) if cap is not None else steps
    else:
        plan.steps_per_seed = 0
    test_time = spec["stage"] == "tta"
    # a frozen learner is evaluated once for all seeds; a test-time method draws new views for every seed
    evaluations = plan.seeds if trainable or test_time else 1
    if test_time and cost.source == "defaults":
        cost = CostModel(cost.step_s, DEFAULT_TTA_IMAGE_S, source="test-time default")
        plan.notes.append(f"test-time cell: {DEFAULT_TTA_IMAGE_S} s per test image assumed (TPT's figure from TDA's "
                          "README); calibrate with a `vlprompt tta` result: --calibrate RESULT.json")
    seconds = cost.seconds(plan.steps_per_seed * plan.seeds, plan.test_images * evaluations)
    plan.device_hours = seconds / 3600.0 * max(1, plan.devices)
    return plan


# ---------------------------------------------------------------------------------------------------- dry run
#: the overrides of a dry run: one training step, one test batch, one seed, CPU, no progress bars
DRY_RUN_ARGS = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                "--trainer.limit_test_batches", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--seeds", "[1]", "--trainer.check_val_every_n_epoch", "1")
#: added where the cell's module has a warm-up (classification; the segmentation module has none)
DRY_RUN_NO_WARMUP = ("--model.warmup_epochs", "0")


@dataclass
class DryRunResult:
    label: str
    status: str  # ok | skipped | failed
    detail: str = ""


def _tiny_backbone_args(cfg: Any) -> list[str] | None:
    """Overrides that swap the cell's backbone for a tiny random one of its family; None: no tiny stand-in."""
    class_path = str(cfg.model.backbone.class_path)
    if class_path == f"{OpenCLIPBackbone.__module__}.{OpenCLIPBackbone.__name__}":
        tiny = tiny_clip_like(str(cfg.model.backbone.init_args.model))  # tiny widths, the real depth and context
        return ["--model.backbone.init_args.model", tiny, "--model.backbone.init_args.pretrained", "null",
                "--model.backbone.init_args.precision", "fp32", "--model.backbone.init_args.quick_gelu", "null"]
    if class_path.endswith(".ToyCLIP"):
        return ["--model.backbone.init_args.precision", "fp32"]  # the embedded toy CLIP is tiny already
    if class_path.endswith((".CLIPSegBackbone", ".ToyVLSM")):  # the tiny random CLIPSeg (a 4-layer ViT, 2-layer text)
        return ["--model.backbone.init_args.pretrained", str(tiny_vlsm_folder()),
                "--model.backbone.init_args.precision", "fp32"]
    return None


def dry_run_cell(spec: Mapping[str, Any], cell: Cell, out: Path) -> DryRunResult:
    """Build ``cell`` and run one training step and one test batch on CPU with a tiny backbone (see the module)."""
    cfg = parse_cell(spec, cell, out)
    backbone = _tiny_backbone_args(cfg)
    if backbone is None:
        return DryRunResult(cell.label(), "skipped", f"no tiny stand-in for backbone {cfg.model.backbone.class_path}")
    try:
        _build_data(cfg)
    except Exception as exc:  # noqa: BLE001 - a cell without its data is skipped with the reason
        return DryRunResult(cell.label(), "skipped", f"data absent: {root_cause(exc)}")
    with tempfile.TemporaryDirectory(prefix="vlprompt-dry-run-") as tmp:
        warmup = DRY_RUN_NO_WARMUP if "warmup_epochs" in vars(getattr(cfg.model, "init_args", cfg.model)) else ()
        argv = [*cell.argv, *backbone, *DRY_RUN_ARGS, *warmup, "--results_dir", str(Path(tmp) / "results"),
                "--trainer.default_root_dir", str(Path(tmp) / "runs"), "--run_id", f"dry-{cell.cell_id}"]
        try:
            run_cell(spec["stage"], argv)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the failure is the dry run's answer
            text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            return DryRunResult(cell.label(), "failed", text[:500])
    return DryRunResult(cell.label(), "ok", "1 training step and 1 test batch on CPU with a tiny backbone")
