"""``vlprompt tta`` / ``vlprompt generate`` end to end on the toy world (tiny subsets)."""

from __future__ import annotations

import json

from vlprompt.cli import main
from vlprompt.runs.test_time import run_tta

SMALL = [
    "--config", "configs/protocols/test_time/toy_shifts.yaml", "--config", "configs/backbones/toyclip.yaml",
    "--seeds", "[1]", "--data.init_args.images_per_set", "3", "--data.init_args.targets",
    '[{"class_path": "toy_mixtures", "init_args": {"style": "clean", "test_style": "noise"}}]',
]


def test_tta_writes_result_with_settings(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    result = run_tta([
        *SMALL, "--config", "configs/learners/tpt/default.yaml", "--model.learner.init_args.views", "8",
        "--model.learner.init_args.selection", "0.25", "--results_dir", str(tmp_path),
    ], show_summary=False)
    data = json.loads(open(result["_path"]).read())
    assert data["learner"] == "tpt" and data["protocol"] == "test_time"
    assert data["test_time"]["views"] == 8 and data["test_time"]["steps"] == 1 and data["test_time"]["selected_views"] == 2
    assert "toy_mixtures-noise" in data["per_seed"][0]["metrics"]
    assert data["per_seed"][0]["test_time_stats"]["mean_seconds"] > 0
    assert data["data"]["images_per_set"] == 3
    row = data["per_seed"][0]  # ECE per test set and the cost fields of the leaderboards' cost columns
    assert 0 <= row["metrics"]["toy_mixtures-noise_ece"] <= 100
    assert row["test_images"] > 0 and row["test_seconds"] > 0 and row["peak_rss_mib"] > 0
    assert row["test_cpu_seconds"] > 0  # process CPU time, all threads (what vs_reference.py compares under load)


def test_baseline_and_bad_inputs_through_the_cli(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    result = run_tta([*SMALL, "--config", "configs/learners/zero_shot/default.yaml", "--results_dir", str(tmp_path)], show_summary=False)
    assert result["test_time"]["steps"] == 0
    rc = main(["tta", *SMALL, "--config", "configs/learners/tpt/default.yaml", "--model.learner.init_args.learner", "zero_shot"])
    assert rc == 2 and "nothing to tune" in capsys.readouterr().err
    rc = main(["tta", *SMALL, "--config", "configs/learners/tpt/default.yaml", "--data.init_args.classnames", "[red shape]"])
    assert rc == 2 and "not classes of" in capsys.readouterr().err
    rc = main(["generate", *SMALL, "--config", "configs/learners/tpt/default.yaml"])
    assert rc == 2 and "generates no views" in capsys.readouterr().err


def test_generate_fills_the_cache_and_resumes(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    args = [
        *SMALL, "--model.learner", "difftpt", "--model.learner.init_args.generator",
        '{"class_path": "vlprompt.generators.testing.JitterGenerator"}', "--model.learner.init_args.generated", "4",
        "--model.learner.init_args.views", "6", "--model.learner.init_args.cache_dir", str(tmp_path / "views"),
    ]
    assert main(["generate", *args]) == 0
    files = sorted((tmp_path / "views").rglob("*.safetensors"))
    assert len(files) == 3
    stamp = [f.stat().st_mtime_ns for f in files]
    assert main(["generate", *args]) == 0  # resumable: nothing is regenerated
    assert [f.stat().st_mtime_ns for f in files] == stamp
    result = run_tta([*args, "--results_dir", str(tmp_path / "res")], show_summary=False)
    assert result["test_time"]["method"] == "difftpt" and result["test_time"]["generated"] == 4


def test_published_protocol_configs_name_registered_plugins(repo):
    import yaml

    from vlprompt.learners import registry

    for protocol, n in (("domain_shift", 5), ("cross_dataset", 10)):
        cfg = yaml.safe_load((repo / "configs/protocols/test_time" / f"{protocol}.yaml").read_text())["data"]
        assert cfg["class_path"] == "test_time" and len(cfg["init_args"]["targets"]) == n
        for target in [cfg["init_args"]["dataset"], *cfg["init_args"]["targets"]]:
            assert target["class_path"] in registry.get_registry("datasets").names()


def test_tpt_on_real_eurosat_images(repo, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    result = run_tta([
        "--config", "configs/protocols/test_time/cross_dataset.yaml", "--config", "configs/backbones/toyclip.yaml",
        "--config", "configs/learners/tpt/augmix.yaml", "--model.learner.init_args.views", "8",
        "--model.learner.init_args.selection", "0.25", "--data.init_args.images_per_set", "2",
        "--data.init_args.dataset", '{"class_path": "eurosat", "init_args": {"root": "%s"}}' % shared_data,
        "--data.init_args.targets", '[{"class_path": "eurosat", "init_args": {"root": "%s"}}]' % shared_data,
        "--results_dir", str(tmp_path),
    ], show_summary=False)
    assert "eurosat" in result["per_seed"][0]["metrics"] and result["test_time"]["augmix"] is True
