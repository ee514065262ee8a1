"""The command line: every config parses, the quickstart runs end to end, bad input gets clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlprompt import cli
from vlprompt.data.base import DataError
from vlprompt.learners.registry import ConfigError
from vlprompt.runs.config import build_cli, VlpromptCLI
from vlprompt.runs.driver import run_experiment
from vlprompt.learners.base import LearnerError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUICK = str(CONFIGS / "quickstart.yaml")


def _fast(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config", QUICK, "--seeds", "[1]", "--trainer.max_epochs", "2",
        "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.dataset.init_args.per_class", "[16, 4, 8]", *extra,
    ]


@pytest.fixture
def no_instantiation(monkeypatch):
    """Parse and validate configs without building models (the mocked fit of the config test)."""
    monkeypatch.setattr(VlpromptCLI, "instantiate_classes", lambda self: None)


def _segmentation_dataset_yaml(path: Path) -> bool:
    """A dataset config naming a segmentation source (parsed on top of a segmentation protocol, not the quickstart;
    tests/test_seg_data.py checks their class paths and arguments)."""
    if "datasets" not in path.parts:
        return False
    import yaml

    from vlprompt.learners.registry import get_registry

    name = yaml.safe_load(path.read_text())["data"]["init_args"]["dataset"]["class_path"]
    return name in get_registry("datasets") and getattr(get_registry("datasets").get(name), "task", "") == "segmentation"


EXPERIMENT_YAMLS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if "pretrain" not in p.parts and "meta" not in p.parts and p.name != "quickstart.yaml"
    and not _segmentation_dataset_yaml(p)
)


def _segmentation_protocol_yaml(path: Path) -> bool:
    """A config that selects the segmentation protocol (seg_quickstart, protocols/segmentation.yaml): parsed on top
    of the segmentation quickstart by tests/test_segmentation_module.py."""
    import yaml

    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    return isinstance(data, dict) and data.get("class_path") == "segmentation"


EXPERIMENT_YAMLS = [p for p in EXPERIMENT_YAMLS if not _segmentation_protocol_yaml(p)]
# the learners' segmentation-track configs (model.decoder_branch is a segmentation-module option): parsed on top of
# the segmentation quickstart by tests/test_segmentation_module.py (tunevlseg_cris.yaml: tests/test_cris.py)
EXPERIMENT_YAMLS = [p for p in EXPERIMENT_YAMLS
                    if not (p.parent.parent.name == "learners" and p.name.startswith("tunevlseg"))]


@pytest.mark.parametrize("path", EXPERIMENT_YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_experiment_yaml_parses_on_top_of_the_quickstart(path: Path, no_instantiation) -> None:
    if "kgcoop" in path.parts:
        from vlprompt.learners.registry import get_registry

        if "kgcoop" not in get_registry("learners"):
            pytest.skip("the example plugin vlprompt-kgcoop is not installed")
    c = build_cli("fit", ["--config", QUICK, "--config", str(path)])
    assert c.config.model.learner.class_path.count(".") >= 1  # registry names resolved to import paths
    assert c.config.data.class_path.startswith("vlprompt.") or "." in c.config.data.class_path


def test_quickstart_yaml_parses(no_instantiation) -> None:
    c = build_cli("fit", ["--config", QUICK])
    assert c.config.model.learner.class_path == "vlprompt.learners.coop.CoOp"
    assert c.config.data.init_args.dataset.class_path.endswith("ToyPatterns")
    assert c.config.seeds == [1, 2, 3]


def test_pretrain_yaml_parses_with_mocked_fit(monkeypatch, tmp_path) -> None:
    import lightning.pytorch as pl

    called = {}
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, model, datamodule=None, **kw: called.setdefault("fit", (model, datamodule)))
    from vlprompt.cli.pretrain import pretrain_main

    pretrain_main(["--config", str(CONFIGS / "pretrain" / "toyclip.yaml"), "--model.export_path", str(tmp_path / "x.safetensors")])
    model, data = called["fit"]
    assert type(model).__name__ == "CLIPPretraining" and data.batch_size == 512


def test_quickstart_end_to_end_writes_a_result(tmp_path) -> None:
    result = run_experiment("fit", _fast(tmp_path))
    path = Path(result["_path"])
    saved = json.loads(path.read_text())
    assert saved["protocol"] == "base2new" and saved["benchmark"] == "toy" and saved["dataset"] == "toy_patterns"
    assert saved["learner"] == "coop"
    assert saved["backbone"]["checkpoint_sha256"]
    row = saved["per_seed"][0]
    assert set(row["metrics"]) == {"base", "new", "hm", "base_ece", "new_ece"} and row["epochs"] == 2
    assert 0 <= row["metrics"]["hm"] <= 100
    assert all(0 <= row["metrics"][k] <= 100 for k in ("base_ece", "new_ece"))
    # cost fields for the leaderboards' cost columns
    assert row["train_images"] > 0 and row["test_images"] > 0 and row["train_seconds"] >= 0
    assert row["test_seconds"] >= 0 and row["peak_rss_mib"] > 0
    assert row["train_cpu_seconds"] > 0 and row["test_cpu_seconds"] > 0  # process CPU time, all threads
    assert isinstance(saved["trainable_params"], int) and saved["trainable_params"] > 0
    assert Path(row["prompts"]).is_file()
    assert saved["command"].startswith("vlprompt fit --config")
    assert saved["versions"]["torch"]


def test_zero_shot_fit_only_evaluates_and_learned_prompts_reload(tmp_path) -> None:
    zs = run_experiment("fit", _fast(tmp_path, "--config", str(CONFIGS / "learners" / "zero_shot" / "default.yaml")))
    assert "epochs" not in zs["per_seed"][0]
    coop = run_experiment("fit", _fast(tmp_path))
    prompts = coop["per_seed"][0]["prompts"]
    again = run_experiment("test", _fast(tmp_path, "--prompts", prompts))
    assert again["per_seed"][0]["metrics"] == coop["per_seed"][0]["metrics"]


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "vlprompt.cli", "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--seeds" in out.stdout and "--config" in out.stdout


def test_unknown_learner_name_lists_the_known_ones(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  learner:\n    class_path: cooop\n")
    with pytest.raises(ConfigError, match=r"unknown learner 'cooop'.*coop.*zero_shot"):
        build_cli("fit", ["--config", QUICK, "--config", str(bad)])


def test_config_key_typo_is_rejected(capsys) -> None:
    with pytest.raises(SystemExit):
        build_cli("fit", ["--config", QUICK, "--model.learner.init_args.n_ctxx", "4"])
    assert "n_ctxx" in capsys.readouterr().err


def test_too_many_shots_names_the_fix(tmp_path) -> None:
    with pytest.raises(DataError, match="shots=16.*lower shots"):
        run_experiment("fit", _fast(tmp_path, "--data.init_args.dataset.init_args.per_class", "[8, 4, 8]"))


def test_class_specific_coop_refuses_new_classes(tmp_path) -> None:
    with pytest.raises(LearnerError, match="class_specific: false"):
        run_experiment("fit", _fast(tmp_path, "--config", str(CONFIGS / "learners" / "coop" / "csc.yaml")))


def test_wandb_logger_selectable_and_disabled_in_tests(tmp_path) -> None:
    result = run_experiment("fit", _fast(tmp_path, "--config", str(CONFIGS / "trainer" / "wandb.yaml"),
                                         "--trainer.logger.init_args.save_dir", str(tmp_path)))
    assert result["config"]["trainer"]["logger"]["class_path"].endswith("WandbLogger")


def test_list_command_shows_builtins(capsys) -> None:
    assert cli.main(["list", "learners"]) == 0
    out = capsys.readouterr().out
    assert "coop" in out and "zero_shot" in out and "text" in out and "vlprompt" in out


def test_print_config_shows_the_resolved_config(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_cli("fit", ["--config", QUICK, "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "vlprompt.learners.coop.CoOp" in out and "ctx_init: a photo of a" in out and "seeds:" in out


def test_toy_referring_segmentation_samples() -> None:
    from vlprompt.data.toyworld.datasets import ToyReferring

    data = ToyReferring(6, seed=3)
    image, phrase, mask = data[0]
    assert image.shape == (3, 48, 48) and mask.dtype == torch.bool and mask.any()
    assert phrase.startswith("the ") and len(phrase.split()) == 4
    again = ToyReferring(6, seed=3)
    assert torch.equal(again.masks, data.masks) and again.phrases == data.phrases


def test_prompts_from_other_classes_are_refused(tmp_path) -> None:
    coop = run_experiment("fit", _fast(tmp_path))
    prompts = coop["per_seed"][0]["prompts"]
    other = str(CONFIGS / "datasets" / "toy_colors.yaml")
    with pytest.raises(LearnerError, match="trained on other classes"):
        run_experiment("test", _fast(tmp_path, "--config", other, "--prompts", prompts))


def test_console_errors_are_one_line_with_exit_code_2(capsys, tmp_path) -> None:
    code = cli.main(["fit", "--config", QUICK, "--model.learner.class_path", "cooop"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown learner 'cooop'" in err and "Traceback" not in err
    code = cli.main(["fit", "--config", QUICK, "--config", str(CONFIGS / "datasets" / "eurosat.yaml"),
                     "--data.init_args.dataset.init_args.root", str(tmp_path / "nowhere"), "--seeds", "[1]"])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "datasets/eurosat.md" in err


def test_registered_names_work_on_the_command_line(tmp_path) -> None:
    result = run_experiment("fit", _fast(tmp_path, "--model.learner", "zero_shot"))
    assert result["learner"] == "zero_shot"


def test_data_check_command_on_shared_eurosat(shared_data, capsys) -> None:
    assert cli.main(["data", "check", "eurosat", "--root", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "differs from the official" in out
    assert cli.main(["data", "check", "eurosat", "--root", str(shared_data), "--strict"]) == 1


@pytest.mark.parametrize("value", ["{}", "{} photo.", "a photo of a {}."])
def test_prompt_template_on_the_command_line_stays_text(value, capsys) -> None:
    """`--model.learner.template "{}"` (the class name alone) is text, not an empty YAML mapping."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", "--config", QUICK, "--model.learner", "zero_shot", "--model.learner.template", value,
                  "--print_config"])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    assert f"template: {value!r}" in printed or f"template: {value}" in printed
