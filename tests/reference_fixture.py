"""What every reference-equivalence test does before comparing: read the fixture that
``tests/fixtures/<method>_reference/make_fixtures.py`` wrote (tensors + a JSON ``meta``), and check that the
random CLIP and the inputs regenerated here are the ones the fixture was made from (open_clip's random
initialisation or a recipe may change; the fix is to rerun the fixture script)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vl_reference_recipe import checksum


def load_fixture(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)`` of a fixture file (``meta``: the JSON under the safetensors metadata key ``meta``)."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(str(path)), meta


def check_regenerated(meta: Mapping, state: Mapping[str, torch.Tensor], script: str, *, prefix: str = "",
                      **inputs: torch.Tensor) -> None:
    """Assert that ``state`` (a regenerated CLIP's state dict) matches ``meta["clip_checksums"]`` (keys starting
    with ``prefix``, which is dropped, e.g. ``"teacher/"``) and each named input its ``meta[f"{name}_checksum"]``."""
    drift = sorted(k for k, v in meta["clip_checksums"].items() if k.startswith(prefix)
                   and abs(checksum(state[k[len(prefix):]]) - v) > 1e-3 * max(1.0, abs(v)))
    assert not drift, (f"the regenerated {prefix.rstrip('/') or 'test'} CLIP differs from the one the fixture was made "
                       f"with ({drift}): open_clip's random initialisation changed; rerun {script}")
    for name, tensor in inputs.items():
        assert abs(checksum(tensor) - meta[f"{name}_checksum"]) < 1e-6, f"input {name!r} changed; rerun {script}"
