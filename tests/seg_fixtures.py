"""Hand-made segmentation result JSONs (Dice / IoU per seed, overlay PNGs in ``artifacts``) for leaderboard tests.

The segmentation module (branch seg-module) writes results of this shape; these fixtures pin the leaderboard side
without running it: ``metrics: {dice, iou}`` per seed and ``artifacts["seed<N>/overlays"]`` listing PNG paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, ImageDraw

from vlprompt.runs.results import make_result, write_result

#: (dataset, learner, per-seed (dice, iou)) of the fixture results; kvasir's zero_shot lists no overlays
SEG_ROWS = [
    ("toy_referring", "coop", [(71.5, 58.2), (73.1, 59.9)]),
    ("toy_referring", "zero_shot", [(52.0, 39.4), (52.0, 39.4)]),
    ("kvasir_seg", "coop", [(64.25, 50.5), (66.75, 52.0)]),
    ("kvasir_seg", "zero_shot", [(40.0, 27.5), (40.0, 27.5)]),
]


def _overlay(path: Path, shade: int) -> Path:
    img = Image.new("RGB", (48, 48), (shade, 90, 120))
    ImageDraw.Draw(img).ellipse((10, 12, 36, 40), fill=(230, 40, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def write_seg_results(results_dir: Path, overlays_dir: Path, *, overlays_per_seed: int = 3) -> list[Path]:
    """Write the :data:`SEG_ROWS` results (protocol ``referring``, benchmark ``seg-toy``, 2 seeds) and their overlay
    PNGs; returns the result paths. Overlays inside ``results_dir`` are recorded as ``results:<path in the tree>``
    (what a run writes, see :func:`vlprompt.runs.results.portable_path`), others as absolute paths (a result written
    before paths were made portable); kvasir/coop's are relative to the result file's folder (all forms occur)."""
    paths = []
    for k, (dataset, learner, seeds) in enumerate(SEG_ROWS):
        per_seed, artifacts = [], {}
        for s, (dice, iou) in enumerate(seeds, start=1):
            per_seed.append({"seed": s, "metrics": {"dice": dice, "iou": iou}, "epochs": 2})
            if learner == "zero_shot" and dataset == "kvasir_seg":
                continue
            pngs = [_overlay(overlays_dir / dataset / learner / f"seed{s}" / f"{i:02d}.png", 40 * k + 10 * i)
                    for i in range(overlays_per_seed)]
            artifacts[f"seed{s}/overlays"] = [str(p) for p in pngs]
        result = make_result(
            protocol="referring", benchmark="seg-toy", dataset=dataset, learner=learner,
            learner_config={"class_path": f"vlprompt.learners.{learner}.X"}, backbone={"model": "toyvlsm"},
            data={"dataset": dataset}, shots=None, seeds=[1, 2], per_seed=per_seed, config={}, command="vlprompt fit",
            wall_seconds=1.0)
        result.update(stage="fit", complete=True, created=f"2026-12-01T00:00:0{k}+00:00")
        result["artifacts"] = artifacts
        path = write_result(result, results_dir)
        inside = overlays_dir.resolve().is_relative_to(results_dir.resolve())
        if (dataset == "kvasir_seg" and learner == "coop") or not inside:
            data = json.loads(path.read_text())
            if dataset == "kvasir_seg" and learner == "coop":  # relative to the result file's folder
                data["artifacts"] = {key: [os.path.relpath(p, path.parent) for p in value]
                                     for key, value in artifacts.items()}
            else:  # absolute, as a result from before portable paths
                data["artifacts"] = artifacts
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
