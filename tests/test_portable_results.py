"""Results carry no machine paths of vlprompt's: shipped assets by package name (and checksum), files in the
results tree relative to it, the user's own paths as they gave them; published results (`vlprompt leaderboard
migrate`) name the rest relative to the working directory or by the path below its first two folders, and the
committed results and pages are checked for absolute paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlprompt.cli.leaderboard import leaderboard_main
from vlprompt.runs.results import (
    find_absolute_paths, make_result, migrate_results, portable_path, portable_result, portable_text, resolve_recorded_path,
    write_result,
)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vlprompt"
ASSET = "backbones/assets/vlprompt-toyclip.safetensors"


def test_portable_path_rules(tmp_path):
    results = tmp_path / "results"
    cwd = tmp_path / "work"
    assert portable_path(str(PACKAGE / ASSET)) == f"vlprompt:{ASSET}"
    # a shipped asset inside another checkout (a developer's work tree) is the same shipped asset
    assert portable_path(f"/home/someone/wt/feature/vlprompt/{ASSET}") == f"vlprompt:{ASSET}"
    assert portable_path(str(results / "a" / "b.png"), results_root=results, cwd=cwd) == "results:a/b.png"
    # the user's own absolute paths stay as given, so the result still finds them on their machine ...
    assert portable_path(str(cwd / "runs" / "coop-1"), results_root=results, cwd=cwd) == str(cwd / "runs" / "coop-1")
    assert portable_path("/tmp/zooruns", cwd=cwd) == "/tmp/zooruns"
    # ... until published: relative to the working directory, else below the first two folders
    assert portable_path(str(cwd / "runs" / "coop-1"), results_root=results, cwd=cwd, publish=True) == "runs/coop-1"
    assert portable_path("/tmp/zooruns/coop-1/seed1/prompts.safetensors", cwd=cwd, publish=True) == \
        "external:coop-1/seed1/prompts.safetensors"
    assert portable_path("/tmp/zooruns", cwd=cwd, publish=True) == "external:zooruns"
    assert portable_path(str(results / "a.png"), results_root=results, publish=True) == "results:a.png"
    assert portable_path("runs/coop-1") == "runs/coop-1"  # relative: as given
    assert resolve_recorded_path(f"vlprompt:{ASSET}") == PACKAGE.resolve() / ASSET
    assert resolve_recorded_path("results:a/b.png", results_root=results) == results / "a" / "b.png"
    assert resolve_recorded_path("external:coop-1/x") is None


@pytest.mark.parametrize("text", [
    "km/h", "base / new", "https://example.org/a/b", "1/2/3", "</div>", "/[&<>]/g", "a photo of a {}.", "x/y/z",
])
def test_non_paths_are_untouched(text):
    assert portable_text(text, cwd="/nowhere", publish=True) == text
    assert find_absolute_paths(text) == []


def test_command_lines_are_rewritten_token_by_token(tmp_path):
    cmd = ("vlprompt fit --config configs/a.yaml --trainer.default_root_dir /tmp/zooruns "
           f"--model.backbone.init_args.pretrained={tmp_path}/weights/vit.pt --results_dir {tmp_path}/out")
    assert portable_text(cmd, cwd=tmp_path) == cmd  # the user's own paths, as given
    out = portable_text(cmd, cwd=tmp_path, publish=True)
    assert out == ("vlprompt fit --config configs/a.yaml --trainer.default_root_dir external:zooruns "
                   "--model.backbone.init_args.pretrained=weights/vit.pt --results_dir out")
    assert find_absolute_paths(out) == []


def test_write_result_records_portable_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = make_result(
        protocol="base2new", benchmark="toy", dataset="toy_colors", learner="coop", learner_config={},
        backbone={"pretrained": str(PACKAGE / ASSET), "checkpoint_sha256": "ab" * 32}, data={}, shots=16, seeds=[1],
        per_seed=[{"seed": 1, "metrics": {"base": 80.0}}], config={}, command="vlprompt fit", wall_seconds=1.0,
        device="cpu")
    result["created"] = "2026-12-06T00:00:00.000+00:00"
    result["run_dir"] = str(tmp_path / "runs" / "coop-1")
    result["artifacts"] = {"seed1/prompts": {"path": Path("/scratch/me/runs/coop-1/seed1/prompts.safetensors"),
                                             "sha256": "cd" * 32}}
    result["artifacts"]["seed1/overlays"] = {"path": str(tmp_path / "results" / "overlays" / "0.png")}
    path = write_result(result, tmp_path / "results")
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["backbone"] == {"pretrained": f"vlprompt:{ASSET}", "checkpoint_sha256": "ab" * 32}
    assert saved["artifacts"]["seed1/overlays"]["path"] == "results:overlays/0.png"
    # the user's own folders stay as given until published
    assert saved["run_dir"] == str(tmp_path / "runs" / "coop-1")
    assert saved["artifacts"]["seed1/prompts"]["path"] == "/scratch/me/runs/coop-1/seed1/prompts.safetensors"
    assert saved["per_seed"] == result["per_seed"]
    assert migrate_results(tmp_path / "results") == [path]
    published = json.loads(path.read_text(encoding="utf-8"))
    assert find_absolute_paths(json.dumps(published)) == []
    assert published["run_dir"] == "runs/coop-1"
    assert published["artifacts"]["seed1/prompts"]["path"] == "external:runs/coop-1/seed1/prompts.safetensors"


def test_migrate_changes_only_paths(tmp_path, caplog):
    src = next((REPO / "leaderboards" / "results" / "base2new" / "toy" / "toy_mixtures").glob("vpt-*.json"))
    good = json.loads(src.read_text(encoding="utf-8"))
    bad = json.loads(json.dumps(good).replace("external:", "/tmp/zooruns/../zooruns/")
                     .replace(f"vlprompt:{ASSET}", f"/work/wt/other/vlprompt/{ASSET}"))
    folder = tmp_path / "results" / "base2new" / "toy" / "toy_mixtures"
    folder.mkdir(parents=True)
    (folder / src.name).write_text(json.dumps(bad, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    assert leaderboard_main(["migrate", str(tmp_path / "results"), "--check"]) == 1
    assert leaderboard_main(["migrate", str(tmp_path / "results")]) == 0
    migrated = json.loads((folder / src.name).read_text(encoding="utf-8"))
    assert find_absolute_paths(json.dumps(migrated)) == []
    assert migrated["summary"] == good["summary"] and migrated["per_seed"][0]["metrics"] == good["per_seed"][0]["metrics"]
    assert migrated["backbone"] == good["backbone"]
    assert leaderboard_main(["migrate", str(tmp_path / "results"), "--check"]) == 0
    assert migrate_results(tmp_path / "results") == []


def test_portable_result_keeps_non_strings():
    value = {"a": [1, 2.5, None, True, {"b": "/tmp/x/y"}], "c": 3}
    assert portable_result(value, cwd="/elsewhere", publish=True) == {"a": [1, 2.5, None, True, {"b": "external:y"}],
                                                                      "c": 3}


def test_committed_results_and_pages_carry_no_absolute_paths():
    """No committed result, page, table or note under leaderboards/ names a machine path (the shared plotly.js
    asset is vendored code, and the run_*.sh scripts are commands, not results or pages)."""
    offenders = {}
    for path in sorted((REPO / "leaderboards").rglob("*")):
        if not path.is_file() or path.suffix not in {".json", ".md", ".csv", ".html", ".yaml"}:
            continue
        hits = find_absolute_paths(path.read_text(encoding="utf-8"))
        if hits:
            offenders[str(path.relative_to(REPO))] = sorted(set(hits))[:3]
    assert not offenders, ("absolute paths in committed leaderboards (run `vlprompt leaderboard migrate "
                           f"leaderboards/results`, then rebuild the pages): {offenders}")


def test_migrate_checks_every_file_before_rewriting_any(tmp_path):
    """A file that is not a valid result stops the migration with its name, and nothing is rewritten."""
    src = next((REPO / "leaderboards" / "results" / "base2new" / "toy" / "toy_mixtures").glob("vpt-*.json"))
    good = json.loads(src.read_text(encoding="utf-8"))
    with_path = json.dumps(good).replace("external:", "/tmp/zooruns/")
    folder = tmp_path / "results" / "base2new" / "toy" / "toy_mixtures"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text(with_path, encoding="utf-8")
    (folder / "b.json").write_text("[" * 100_000, encoding="utf-8")  # nested too deeply to be a result
    with pytest.raises(ValueError, match="b.json"):
        migrate_results(tmp_path / "results")
    assert (folder / "a.json").read_text(encoding="utf-8") == with_path
    assert leaderboard_main(["migrate", str(tmp_path / "results")]) == 1
