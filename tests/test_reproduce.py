"""Issue 25: GPU trainer configs (Dassl's precisions, DDP), the SLURM sweep keys, ``vlprompt sweep --plan`` and
``--dry-run``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from vlprompt.runs.config import VlpromptCLI, build_cli, validate_config
from vlprompt.runs.sweep import SweepError, load_sweep

REPO = Path(__file__).resolve().parents[1]
GPU_CONFIGS = {  # file -> (trainer precision, backbone weight precision, strategy, devices), Dassl's PREC in comments
    "gpu_fp32": ("32-true", "fp32", "auto", 1),        # PREC fp32
    "gpu_fp16": ("32-true", "fp16", "auto", 1),        # PREC fp16: CLIP cast to half
    "gpu_amp": ("16-mixed", "fp32", "auto", 1),        # PREC amp: autocast fp16
    "gpu_bf16_mixed": ("bf16-mixed", "fp32", "auto", 1),
    "gpu_ddp8": ("16-mixed", "fp32", "ddp", 8),
}


def _parse(argv: list[str]):
    saved = VlpromptCLI.instantiate_classes
    VlpromptCLI.instantiate_classes = lambda self: None  # type: ignore[method-assign]
    try:
        cli = build_cli("fit", argv)
    finally:
        VlpromptCLI.instantiate_classes = saved  # type: ignore[method-assign]
    validate_config("fit", cli.config)
    return cli.config


@pytest.mark.parametrize("name", sorted(GPU_CONFIGS))
def test_gpu_trainer_configs_set_dassls_precisions(name, monkeypatch):
    monkeypatch.chdir(REPO)
    path = REPO / "configs" / "trainer" / f"{name}.yaml"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and len(first) > 20, f"{path}: the first comment line says what it is"
    cfg = _parse(["--config", "configs/protocols/base2new.yaml", "--config", "configs/backbones/vit_b16_openai.yaml",
                  "--config", f"configs/trainer/{name}.yaml", "--config", "configs/datasets/eurosat.yaml",
                  "--config", "configs/learners/coop/ctx16_rand.yaml"])
    precision, weights, strategy, devices = GPU_CONFIGS[name]
    assert str(cfg.trainer.precision) == precision
    assert cfg.model.backbone.init_args.precision == weights  # overrides vit_b16_openai.yaml's bf16
    assert cfg.model.backbone.init_args.pretrained == "openai"  # the rest of the backbone config is kept
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.strategy == strategy and cfg.trainer.devices == devices


def _sweep(tmp_path: Path, **extra) -> Path:
    spec = {"name": "s", "args": ["--config", str(REPO / "configs" / "quickstart.yaml")],
            "grid": {"seeds": [[1]]}, "executor": "slurm", **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_slurm_block_reaches_submitit(tmp_path, monkeypatch):
    # submitit's SLURM executor needs `srun` on PATH to be built; a stand-in that is never called is enough here
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    from vlprompt.runs.sweep import _make_executor

    spec = load_sweep(REPO / "sweeps" / "slurm_example.yaml")
    ex = _make_executor(spec, tmp_path / "out")
    params = ex._executor.parameters  # noqa: SLF001 - what sbatch will get
    assert params["gpus_per_node"] == 1 and params["cpus_per_task"] == 8 and params["mem"] == "32GB"
    assert params["partition"] == "gpu" and params["time"] == 240 and params["ntasks_per_node"] == 1


@pytest.mark.parametrize("block, match", [
    ({"gpus_pernode": 1}, r"slurm.gpus_pernode: 1 is not accepted by submitit .*use submitit's names"),
    ({"slurm_partitionn": "gpu"}, r"slurm.slurm_partitionn: 'gpu' is not accepted.*slurm_partition"),
    ({"mem_gb": "lots"}, r"slurm.mem_gb: 'lots' is not accepted"),
    (["gpu"], r"slurm must be a mapping"),
])
def test_bad_slurm_keys_fail_when_the_sweep_file_is_read(tmp_path, block, match):
    with pytest.raises(SweepError, match=match) as info:
        load_sweep(_sweep(tmp_path, slurm=block))
    assert str(tmp_path / "sweep.yaml") in str(info.value)
