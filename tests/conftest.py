"""Test environment: offline, W&B disabled, caches in a temporary folder, 2 CPU threads."""

from __future__ import annotations

import os
from pathlib import Path

# idle OpenMP threads sleep instead of spinning: 4-70x faster on a shared 2-core machine (set before torch)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("VLPROMPT_LOG_LEVEL", "WARNING")
# bf16 tests check bf16 numbers on every CPU (tests/test_backbone_speed.py covers the fallback itself)
os.environ["VLPROMPT_ALLOW_EMULATED_PRECISION"] = "1"

os.environ.setdefault("CI", "1")  # no progress bars in test logs
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path_factory.getbasetemp() / "vlprompt-cache"))


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared real data not found at {SHARED_DATA}")
    return SHARED_DATA
