"""Issue 24: `vlprompt --help`, `vlprompt list ...` and usage errors answer without importing torch (the start-up
time itself is measured by benchmarks/cli_startup.py, not here); the static learner facts that `vlprompt list
learners` shows stay in sync with the real classes; `vlprompt list` lists the kinds and the shipped configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlprompt.cli.learner_facts import LEARNER_FACTS
from vlprompt.cli.listing import KINDS, PROMPT_LEARNER_DEFAULTS, config_files, learner_rows, list_main
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.registry import GROUPS, get_registry

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "open_clip", "transformers", "wandb")


@pytest.mark.parametrize("argv", [["--help"], [], ["list"], ["list", "learners"], ["list", "datasets"],
                                  ["list", "configs", "learners"], ["list", "bogus"], ["bogus"],
                                  ["list", "learners", "--bogus"]], ids=repr)
def test_help_list_and_usage_errors_import_no_torch(argv):
    script = (f"import sys\nfrom vlprompt.cli import main\ntry:\n    code = main({argv!r})\nexcept SystemExit as e:\n"
              f"    code = e.code\nheavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
              "print('HEAVY', heavy, file=sys.stderr)\nsys.exit(0 if not heavy else 99)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_learner_facts_match_the_classes():
    reg = get_registry("learners")
    builtin = {i.name: i.obj for i in reg.entries() if i.distribution == "vlprompt"}
    assert sorted(LEARNER_FACTS) == sorted(builtin)
    for name, cls in builtin.items():
        facts = LEARNER_FACTS[name]
        assert facts.family == cls.family, name
        expected = ("test-time",) if cls.family == "test-time" else tuple(cls.tasks)
        assert facts.tasks == expected, name
        assert facts.paper, name
        assert not facts.faithfulness or (REPO / facts.faithfulness).is_file(), name
        static = tuple(getattr(cls, "resources", ()))
        if cls.resource_track is PromptLearner.resource_track:  # the class attribute is the track
            assert facts.track == (", ".join(static) or "standard"), name
        else:  # a config option or the wrapped learner decides: the facts name every fixed resource
            assert all(word in facts.track for word in static) and facts.track != "standard", name
    assert PROMPT_LEARNER_DEFAULTS == {"family": PromptLearner.family, "tasks": tuple(PromptLearner.tasks)}
    assert {k: g for k, (g, _) in KINDS.items() if g is not None} == GROUPS


def test_list_learners_reads_a_plugin_from_its_metadata_and_source():
    rows = {r["name"]: r for r in learner_rows()}
    assert rows["coop"]["tasks"] == "classification, segmentation" and rows["tpt"]["tasks"] == "test-time"
    assert rows["coop"]["faithfulness"].endswith(".py") and rows["zero_shot"]["faithfulness"] == "no"
    if "kgcoop" in rows:  # the example plugin: family read from its source without importing it
        assert rows["kgcoop"]["family"] == "text" and rows["kgcoop"]["provided_by"].startswith("vlprompt-kgcoop")


def test_list_without_kind_lists_the_kinds_and_configs_their_first_comment(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert list_main([]) == 0
    out = capsys.readouterr().out
    assert all(kind in out for kind in KINDS)
    files = dict(config_files("learners"))
    assert "configs/learners/coop/base2new.yaml" in files or any(p.startswith("configs/learners/coop/") for p in files)
    assert all(comment for comment in files.values())
    assert list_main(["configs", "protocols"]) == 0
    out = capsys.readouterr().out
    assert "configs/protocols/base2new.yaml" in out and "Base-to-new" in out
    assert list_main(["configs", "nope"]) == 2


def test_fit_help_begins_with_vlprompt_options_and_help_all_has_the_rest(capsys):
    from vlprompt.cli import main

    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[:12]
    assert head[0].startswith("usage: vlprompt fit") and any("Train a prompt learner" in ln for ln in head)
    for option in ("--model.learner", "--model.backbone", "--data", "--seeds", "--run_id", "--resume", "--results_dir"):
        assert option in out
    assert "segmentation protocol" in out and "--help-all" in out and "--trainer.*" in out
    assert "--trainer.max_epochs" not in out  # Lightning's options only with --help-all
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(REPO / "configs" / "seg_quickstart.yaml"), "--help-all"])
    assert exc.value.code == 0
    full = capsys.readouterr().out
    assert "--model.overlays" in full and "--trainer.max_epochs" in full


def test_fit_help_imports_no_torch():
    script = ("import sys\nfrom vlprompt.cli import main\nmain(['fit', '--help'])\n"
              f"sys.exit(99 if any(m in sys.modules for m in {HEAVY!r}) else 0)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_seed_everything_is_refused_with_the_one_seed_option(capsys, tmp_path):
    from vlprompt.cli import main
    from vlprompt.learners.registry import ConfigError
    from vlprompt.runs.config import build_cli, validate_config

    assert main(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--seed_everything", "3"]) == 2
    assert "--seeds [N]" in capsys.readouterr().err
    cfg = tmp_path / "s.yaml"
    cfg.write_text("seed_everything: 3\n")
    cli = build_cli("fit", ["--config", str(REPO / "configs" / "quickstart.yaml"), "--config", str(cfg)])
    with pytest.raises(ConfigError, match="seeds: \\[N\\]"):
        validate_config("fit", cli.config)


def test_noise_is_off_narrowly(tmp_path, monkeypatch):
    """Library bars off (Hugging Face tqdm, W&B's per-run sparklines), Lightning's LeafSpec deprecation filtered
    by message and module only, and W&B's anonymous warning avoided at its cause."""
    import warnings

    import vlprompt.cli as cli
    from vlprompt.runs.wandb_logging import WandbLogger

    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["WANDB_QUIET"] == "true"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli._quiet_warnings()
        text = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
        warnings.warn_explicit(text, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(text, FutureWarning, "mine.py", 1, module="mine")  # elsewhere: still shown
    assert len(caught) == 1
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert "anonymous" not in WandbLogger(save_dir=str(tmp_path), offline=True)._wandb_init


def test_log_lines_are_plain_and_unwrapped_when_not_a_terminal():
    path = "/" + "/".join(["a-rather-long-folder-name"] * 8) + "/result.json"
    script = ("import logging\nfrom vlprompt import cli\ncli._setup_logging()\n"
              f"logging.getLogger('vlprompt').info('wrote result %s', {path!r})")
    env = {**os.environ, "VLPROMPT_LOG_LEVEL": "INFO"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert f"wrote result {path}" in proc.stdout
