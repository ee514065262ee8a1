"""One test per bad input of the reliability issue: each ends in a one-line message naming the file or value and
the fix, before anything is trained (the table of these messages is in docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vlprompt import cli
from vlprompt.learners.registry import ConfigError
from vlprompt.runs.driver import run_experiment

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quickstart.yaml")


def _fast(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", QUICK, "--seeds", "[1]", "--trainer.max_epochs", "2",
            "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--data.init_args.dataset.init_args.per_class", "[4, 2, 4]", "--data.init_args.shots", "2", *extra]


def _error(capsys, argv: list[str]) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("vlprompt: error:")]
    assert lines, err
    return lines[-1]


@pytest.mark.parametrize(("content", "expected"), [
    ("model:\n  learner: [unclosed\n", "invalid YAML at line"),
    ("", "the file is empty"),
    ("- a\n- b\n", "expected a mapping of keys"),
    ("model: {learner: x}\n\tbad: tab\n", "invalid YAML"),
])
def test_bad_yaml_files_are_named(tmp_path: Path, capsys, content: str, expected: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    msg = _error(capsys, ["fit", "--config", QUICK, "--config", str(bad)])
    assert str(bad) in msg and expected in msg


def test_missing_config_file(tmp_path: Path, capsys) -> None:
    msg = _error(capsys, ["fit", "--config", str(tmp_path / "nope.yaml")])
    assert "nope.yaml: no such file" in msg


@pytest.mark.parametrize(("extra", "expected"), [
    (["--seeds", "[1,1]"], "repeats seed(s) [1]"),
    (["--seeds", "[]"], "--seeds is empty"),
    (["--trainer.max_epochs", "1"], "max_epochs=1 <= model.warmup_epochs=1"),
    (["--seeds", "[1,2]", "--prompts", "p.safetensors"], "evaluates one checkpoint"),
    (["--data.init_args.batch_size", "0"], "batch_size=0 must be >= 1"),
    (["--check_images", "sometimes"], "must be cheap, full or none"),
])
def test_bad_config_values_fail_before_training(tmp_path: Path, capsys, extra: list[str], expected: str) -> None:
    msg = _error(capsys, ["fit", *_fast(tmp_path), *extra])
    assert expected in msg
    assert not (tmp_path / "runs").exists()  # refused before a run folder exists


def test_n_ctx_that_contradicts_ctx_init(tmp_path: Path, capsys) -> None:
    msg = _error(capsys, ["fit", *_fast(tmp_path, "--model.learner.init_args.n_ctx", "8")])
    assert "ctx_init='a photo of a' is 4 tokens but n_ctx=8" in msg


def test_results_dir_that_is_a_file_fails_before_training(tmp_path: Path, capsys) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    msg = _error(capsys, ["fit", *_fast(tmp_path), "--results_dir", str(f)])
    assert "results_dir" in msg and "not writable" in msg and "nothing has been trained" in msg
    assert not (tmp_path / "runs").exists()


def test_runs_folder_that_is_a_file_fails_before_training(tmp_path: Path, capsys) -> None:
    f = tmp_path / "runsfile"
    f.write_text("x")
    msg = _error(capsys, ["fit", *_fast(tmp_path), "--trainer.default_root_dir", str(f)])
    assert "not writable" in msg


def _image_folder(root: Path) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(root / c / f"{i}.jpg")
    return root


@pytest.mark.parametrize("damage", ["truncate", "empty", "text"])
def test_corrupt_image_fails_before_the_first_seed_trains(tmp_path: Path, capsys, damage: str) -> None:
    root = _image_folder(tmp_path / "imgs")
    bad = root / "dog" / "3.jpg"
    data = bad.read_bytes()
    bad.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "text": b"not an image"}[damage])
    args = ["fit", "--config", QUICK, "--config", str(REPO / "configs/datasets/image_folder.yaml"),
            "--data.init_args.dataset.init_args.root", str(root), "--seeds", "[1]", "--trainer.max_epochs", "2",
            "--data.init_args.shots", "1", "--results_dir", str(tmp_path / "r"), "--trainer.default_root_dir", str(tmp_path / "runs")]
    msg = _error(capsys, args)
    assert str(bad) in msg and "nothing has been trained yet" in msg
    assert not list((tmp_path / "runs").rglob("*.safetensors"))


def test_truncated_prompts_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "prompts.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    msg = _error(capsys, ["test", *_fast(tmp_path), "--prompts", str(bad)])
    assert str(bad) in msg and "not a readable safetensors file" in msg


def test_renamed_prompts_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "result.safetensors"
    bad.write_text('{"schema": "vlprompt.result/1"}')
    msg = _error(capsys, ["test", *_fast(tmp_path), "--prompts", str(bad)])
    assert "not a readable safetensors file" in msg


def test_missing_prompts_file(tmp_path: Path, capsys) -> None:
    msg = _error(capsys, ["test", *_fast(tmp_path), "--prompts", str(tmp_path / "nope.safetensors")])
    assert "does not exist" in msg


def test_prompts_for_another_backbone_are_refused(tmp_path: Path) -> None:
    from vlprompt.learners.base import LearnerError

    first = run_experiment("fit", _fast(tmp_path), show_summary=False)
    prompts = first["per_seed"][0]["prompts"]
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other.safetensors"
    from safetensors import safe_open

    with safe_open(prompts, framework="pt") as f:
        meta = f.metadata()
    meta["backbone"] = meta["backbone"].replace(first["backbone"]["checkpoint_sha256"], "0" * 64)
    save_file(load_file(prompts), str(other), metadata=meta)
    with pytest.raises(LearnerError, match="trained on backbone checkpoint_sha256 '0000"):
        run_experiment("test", _fast(tmp_path, "--prompts", str(other)), show_summary=False)
    forced = run_experiment("test", _fast(tmp_path, "--prompts", str(other), "--force_prompts", "true"), show_summary=False)
    assert forced["per_seed"][0]["metrics"] == first["per_seed"][0]["metrics"]


def test_resume_of_a_folder_without_a_run(tmp_path: Path, capsys) -> None:
    msg = _error(capsys, ["fit", "--resume", str(tmp_path)])
    assert "no run.json there" in msg


def test_data_check_of_an_in_memory_dataset(capsys) -> None:
    assert cli.main(["data", "check", "toy_patterns", "--root", "/nonexistent"]) == 0
    assert "generated in memory" in capsys.readouterr().out


def test_warnings_are_printed_once_per_run() -> None:
    import logging

    from vlprompt.runs.driver import OncePerRun

    once = OncePerRun()
    rec = logging.LogRecord("vlprompt.data", logging.WARNING, __file__, 1, "split differs", None, None)
    info = logging.LogRecord("vlprompt.data", logging.INFO, __file__, 1, "seed done", None, None)
    assert once.filter(rec) and not once.filter(rec) and once.filter(info) and once.filter(info)


def test_progress_bars_on_by_default_off_with_one_flag_or_in_ci(monkeypatch) -> None:
    from vlprompt.runs.config import build_cli
    from vlprompt.data.progress import progress_enabled

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("VLPROMPT_PROGRESS", raising=False)
    assert progress_enabled()
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setenv("VLPROMPT_PROGRESS", "0")  # what `vlprompt --no-progress ...` sets
    assert not progress_enabled()
    for name in ("cpu.yaml",):
        assert "enable_progress_bar" not in (REPO / "configs" / "trainer" / name).read_text()
    assert "enable_progress_bar" not in Path(QUICK).read_text()


def test_warmup_rule_applies_only_to_learners_that_train(monkeypatch) -> None:
    from vlprompt.runs.config import build_cli, validate_config, VlpromptCLI

    monkeypatch.setattr(VlpromptCLI, "instantiate_classes", lambda self: None)
    zs = build_cli("fit", ["--config", QUICK, "--config", str(REPO / "configs/learners/zero_shot/default.yaml"),
                           "--trainer.max_epochs", "1"])
    validate_config("fit", zs.config)  # zero-shot trains nothing: no warm-up to exceed
    coop = build_cli("fit", ["--config", QUICK, "--trainer.max_epochs", "1"])
    with pytest.raises(ConfigError, match="warmup_epochs"):
        validate_config("fit", coop.config)
