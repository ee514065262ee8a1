"""Issue 25: GPU trainer configs (Dassl's precisions, DDP), the SLURM sweep keys, ``vlprompt sweep --plan`` and
``--dry-run``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

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


# ------------------------------------------------------------------------------------------------ --plan
from vlprompt.cli.sweep import sweep_main  # noqa: E402
from vlprompt.runs.plan import CostModel, calibrate  # noqa: E402

SLURM_EXAMPLE = str(REPO / "sweeps" / "slurm_example.yaml")


def test_plan_names_missing_weights_and_data_and_exits_non_zero(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("VLPROMPT_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(REPO / "nonexistent-hf-home"))  # nothing cached
    assert sweep_main(["--config", SLURM_EXAMPLE, "--plan"]) == 1
    out = capsys.readouterr().out
    assert out.count("backbone weights open_clip ViT-B-16/openai: not downloaded here") == 2
    assert out.count("data: no data root: pass root: /path/to/DATA") == 2 and "MISSING (4)" in out


def test_plan_counts_steps_and_images_on_real_data_and_a_local_weights_file(tmp_path, capsys, monkeypatch,
                                                                              shared_data):
    monkeypatch.chdir(REPO)
    weights = tmp_path / "open_clip_pytorch_model.bin"
    weights.write_bytes(b"not really weights")
    spec = yaml.safe_load(Path(SLURM_EXAMPLE).read_text())
    spec["args"] += ["--data.init_args.dataset.init_args.root", str(shared_data),
                     "--model.backbone.init_args.pretrained", str(weights)]
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert sweep_main(["--config", str(path), "--plan", "--step-s", "0.5", "--image-s", "0.01"]) == 0
    out = capsys.readouterr().out
    import hashlib

    assert f"local file {weights} (present, sha256 {hashlib.sha256(b'not really weights').hexdigest()})" in out
    assert f"split {shared_data}/eurosat/split_zhou_EuroSAT.json (present)" in out
    # EuroSAT base-to-new: 5 base classes x 16 shots = 80 train images; 500 base + 500 new test images
    # CoOp: batch 32, drop_last -> 2 steps x Lightning's 1000 epochs (ctx16_rand sets none, the plan says so)
    assert "train images 80, optimizer steps per seed 2000, test images 1000" in out
    assert "trainer.max_epochs is not set" in out
    # CoCoOp: batch 1 x 10 epochs; 3 seeds: (3 x 800 x 0.5 s + 3 x 1000 x 0.01 s) / 3600 = 0.342 h
    assert "train images 80, optimizer steps per seed 800, test images 1000, devices 1, device-hours 0.342" in out


def test_plan_of_a_toy_sweep_has_nothing_missing(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert sweep_main(["--config", "sweeps/toy_smoke.yaml", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "toyclip embedded weights" in out.lower() and "MISSING" not in out
    assert "optimizer steps per seed 0" in out  # zero-shot trains nothing


def test_calibrate_fits_the_measured_wall_time(tmp_path):
    result = tmp_path / "r.json"
    result.write_text(json.dumps({"per_seed": [
        {"seed": 1, "wall_seconds": 30.0, "optimizer_steps": 100, "test_images": 500},
        {"seed": 2, "wall_seconds": 0.0, "test_images": 500},  # reused evaluation: no time of its own
    ]}))
    cost = calibrate([result])
    assert cost.seconds(100, 500) == pytest.approx(30.0)
    assert cost.image_s / cost.step_s == pytest.approx(CostModel().image_s / CostModel().step_s)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"per_seed": [{"seed": 1, "wall_seconds": 3.0, "epochs": 2}]}))
    with pytest.raises(SweepError, match=r"old.json: seed 1 has no test_images/optimizer_steps .*rerun the cell"):
        calibrate([old])
    with pytest.raises(SweepError, match=r"--calibrate .*nope.json: not a readable vlprompt result JSON"):
        calibrate([tmp_path / "nope.json"])


@pytest.mark.slow
def test_fit_records_steps_and_images_and_calibrate_reads_them(tmp_path, capsys, monkeypatch):
    from vlprompt.runs.driver import run_experiment

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = run_experiment("fit", [
        "--config", "configs/quickstart.yaml", "--seeds", "[1]", "--trainer.max_epochs", "2",
        "--model.warmup_epochs", "0", "--data.init_args.dataset.init_args.per_class", "[8, 4, 8]",
        "--data.init_args.batch_size", "4", "--data.init_args.shots", "4", "--check_images", "none", "--results_dir", str(tmp_path / "results"),
        "--trainer.default_root_dir", str(tmp_path / "runs")], show_summary=False)
    row = result["per_seed"][0]
    # 4 shots of each base class, batch 4: 2 epochs x (4 x base classes // 4) steps
    assert row["optimizer_steps"] > 0 and row["optimizer_steps"] % 2 == 0 and row["test_images"] > 0
    cost = calibrate([result["_path"]])
    assert cost.seconds(row["optimizer_steps"], row["test_images"]) == pytest.approx(row["wall_seconds"], rel=1e-6)
    assert sweep_main(["--config", "sweeps/toy_smoke.yaml", "--plan", "--calibrate", result["_path"]]) == 0
    assert f"calibrated on {result['_path']}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ --dry-run
@pytest.mark.slow
def test_dry_run_builds_eurosat_cells_with_a_tiny_open_clip_and_skips_cells_without_data(tmp_path, capsys,
                                                                                          monkeypatch, shared_data):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = yaml.safe_load(Path(SLURM_EXAMPLE).read_text())
    spec["args"] += ["--data.init_args.dataset.init_args.root", str(shared_data)]
    spec["grid"]["dataset"] = ["eurosat", "oxford_pets"]  # Oxford Pets' images are not in shared/data
    # MaPLe's ViT-B/16 config prompts 9 layers deep: the tiny stand-in has the real model's 12 layers
    spec["grid"]["learner"] = ["coop/ctx16_rand", "maple/vit_b16_c2_ep5_batch4_2ctx"]
    path = tmp_path / "dry.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert sweep_main(["--config", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count("ok       [learner=") == 2 and "dataset=eurosat" in out
    assert out.count("skipped  [learner=") == 2 and "data absent: Oxford" in out
    assert "ok: 2, skipped: 2, failed: 0" in out
    assert not (REPO / "sweeps-out" / "slurm_example").exists() and not (tmp_path / "out" / "runs").exists()


def test_tiny_stand_in_keeps_the_real_models_depth_and_context():
    import open_clip

    from vlprompt.learners.testing import tiny_clip_config, tiny_clip_like

    name = tiny_clip_like("ViT-B-16-quickgelu")
    cfg = open_clip.get_model_config(name)
    assert cfg["vision_cfg"]["layers"] == cfg["text_cfg"]["layers"] == 12 and cfg["text_cfg"]["context_length"] == 77
    assert cfg["vision_cfg"]["width"] == tiny_clip_config()["vision_cfg"]["width"] == 32 and cfg["quick_gelu"] is True
    assert tiny_clip_like("ViT-B-16-quickgelu") == name
    with pytest.raises(Exception, match="unknown open_clip model 'ViT-Nope'"):
        tiny_clip_like("ViT-Nope")


# ------------------------------------------------------------------------------------ sweeps/paper/base2new_vitb16
PAPER = REPO / "sweeps" / "paper" / "base2new_vitb16.yaml"


def test_paper_grid_every_cell_parses_with_the_full_fit_parser(tmp_path, monkeypatch):
    from vlprompt.runs.sweep import check_cells, expand_cells

    monkeypatch.chdir(REPO)
    spec = load_sweep(PAPER)
    cells = expand_cells(spec)
    learners = sorted({dict(c.params)["learner"] for c in cells})
    assert len(cells) == 11 * len(learners) and len(learners) == 6
    assert all(Path(f"configs/learners/{name}.yaml").name.startswith("vit_b16") for name in learners)
    check_cells(spec, cells, tmp_path / "out")  # every cell, the full `vlprompt fit` parser


def test_paper_plan_names_missing_weights_and_data_here(capsys, monkeypatch, shared_data):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("VLPROMPT_DATA", str(shared_data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(REPO / "nonexistent-hf-home"))
    assert sweep_main(["--config", str(PAPER), "--plan"]) == 1
    out = capsys.readouterr().out
    assert out.count("backbone weights open_clip ViT-B-16/openai: not downloaded here") == 66
    for absent in ("ImageNet", "OxfordPets", "StanfordCars", "Food101", "FGVCAircraft", "SUN397", "UCF101"):
        assert f"data: {absent}: expected the dataset folder" in out, absent
    # the Caltech-101 subset has 8 training images per class: 16 shots would stop the run
    assert out.count("have fewer than shots=16 training images (class 0: 8)") == 6
    # EuroSAT is there: CoCoOp trains 80 images at batch 1 for 10 epochs
    assert "data: eurosat root" in out and "train images 80, optimizer steps per seed 800, test images 1000" in out


@pytest.mark.slow
def test_paper_dry_run_passes_for_the_eurosat_cells(tmp_path, capsys, monkeypatch, shared_data):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("VLPROMPT_DATA", str(shared_data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    spec = yaml.safe_load(PAPER.read_text())
    spec["grid"]["dataset"] = ["eurosat"]
    path = tmp_path / "eurosat.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert sweep_main(["--config", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert "ok: 6, skipped: 0, failed: 0" in capsys.readouterr().out


def test_plan_finds_weights_in_open_clips_cache_and_respects_step_limits(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    hub = tmp_path / "hf" / "hub" / "models--timm--vit_base_patch16_clip_224.openai"
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text("abc123")
    (hub / "snapshots" / "abc123").mkdir(parents=True)
    (hub / "snapshots" / "abc123" / "open_clip_pytorch_model.bin").write_bytes(b"cached")
    from vlprompt.runs.plan import weights_status

    class Backbone:  # a parsed backbone config
        class_path = "vlprompt.backbones.open_clip.OpenCLIPBackbone"
        init_args = SimpleNamespace(model="ViT-B-16", pretrained="openai", cache_dir=str(tmp_path / "hf" / "hub"))

    import hashlib

    text, problem = weights_status(Backbone())
    assert problem is None and "(in the local cache:" in text and hashlib.sha256(b"cached").hexdigest() in text
    spec = yaml.safe_load((REPO / "sweeps" / "toy_smoke.yaml").read_text())
    spec["grid"] = {"dataset": ["toy_colors"], "learner": ["coop/ctx4_init"], "seeds": [[1]],
                    "trainer.max_epochs": [2], "trainer.max_steps": [-1, 3]}
    path = tmp_path / "limits.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert sweep_main(["--config", str(path), "--plan"]) == 0
    steps = [int(line.split("optimizer steps per seed ")[1].split(",")[0])
             for line in capsys.readouterr().out.splitlines() if "optimizer steps per seed" in line]
    assert len(steps) == 2 and steps[0] > 3 and steps[1] == 3


# ------------------------------------------------------------------------------------ every paper sweep
PAPER_SWEEPS = sorted((REPO / "sweeps" / "paper").glob("*.yaml"))
#: per paper sweep, overrides that point one or two of its cells at the shared subsets for a dry run
SUBSET = {
    "cross_dataset_vitb16": {"args": ["--data.init_args.dataset", "caltech101", "--data.init_args.targets",
                                      '[{"class_path": "eurosat"}]', "--data.init_args.shots", "4"], "learner": 2},
    "domain_generalization_vitb16": {"args": ["--data.init_args.dataset", "caltech101", "--data.init_args.targets",
                                              '[{"class_path": "eurosat"}]', "--data.init_args.shots", "4"],
                                     "learner": 1},
    "segmentation_clipseg": {"grid": {"dataset": ["kvasir_seg_release"]}, "learner": 2},
    "base2new_vitb16": {"grid": {"dataset": ["eurosat"]}, "learner": 1},
    "test_time_vitb16": {"args": ["--data.init_args.dataset", "eurosat", "--data.init_args.targets",
                                  '[{"class_path": "eurosat"}]', "--data.init_args.images_per_set", "2"], "learner": 2},
}


def test_every_paper_sweep_parses_and_has_a_dry_run_subset(tmp_path, monkeypatch):
    from vlprompt.runs.sweep import check_cells, expand_cells

    monkeypatch.chdir(REPO)
    assert {p.stem for p in PAPER_SWEEPS} == set(SUBSET)
    for path in PAPER_SWEEPS:
        spec = load_sweep(path)
        assert spec["executor"] == "slurm" and spec["slurm"]["gpus_per_node"] == 1, path.name
        check_cells(spec, expand_cells(spec), tmp_path / path.stem)  # every cell, the full `vlprompt fit` parser


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SUBSET))
def test_paper_sweep_dry_run_on_the_shared_subsets(name, tmp_path, capsys, monkeypatch, shared_data):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("VLPROMPT_DATA", str(shared_data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    spec = yaml.safe_load((REPO / "sweeps" / "paper" / f"{name}.yaml").read_text())
    sub = SUBSET[name]
    spec["args"] = [*spec["args"], *sub.get("args", [])]
    spec["grid"].update(sub.get("grid", {}))
    spec["grid"]["learner"] = spec["grid"]["learner"][: sub["learner"]]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert sweep_main(["--config", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert f"ok: {sub['learner']}, skipped: 0, failed: 0" in capsys.readouterr().out
