"""Tests for vlprompt.runs.results: provenance, round-trip, validation, console summary."""

import io
import json
import re

import pytest
from rich.console import Console

from vlprompt.metrics import harmonic_mean
from vlprompt.runs.results import (
    REQUIRED_KEYS,
    SCHEMA,
    ResultError,
    collect_versions,
    device_string,
    git_state,
    load_result,
    load_results,
    make_result,
    print_summary,
    write_result,
)

BACKBONE = {"name": "ToyCLIP", "model": "toyclip-s", "pretrained": "weights/toyclip.pt",
            "checkpoint_sha256": "ab" * 32, "precision": "fp32"}


def _result(metrics=None, **overrides):
    metrics = metrics or [{"base": 80.0, "new": 60.0, "hm": harmonic_mean(80.0, 60.0)},
                          {"base": 82.0, "new": 64.0, "hm": harmonic_mean(82.0, 64.0)}]
    kw = dict(
        protocol="base2new", benchmark="toy", dataset="toy_colors", learner="coop",
        learner_config={"n_ctx": 4}, backbone=BACKBONE, data={"name": "toy_colors", "version": 1}, shots=16,
        seeds=list(range(1, len(metrics) + 1)),
        per_seed=[{"seed": i + 1, "metrics": m, "wall_seconds": 1.0, "epochs": 2} for i, m in enumerate(metrics)],
        config={"trainer": {"max_epochs": 2}}, command="vlprompt fit --config x.yaml", wall_seconds=2.5,
        device="cpu",
    )
    kw.update(overrides)
    return make_result(**kw)


def test_collect_versions():
    v = collect_versions()
    assert v["python"].count(".") == 2
    assert "vlprompt" in v and "torch" in v
    assert all(isinstance(x, str) for x in v.values())


def test_device_string_cpu():
    s = device_string("cpu")
    assert s.startswith("cpu (") and "threads" in s
    assert isinstance(device_string(), str)
    assert device_string("weird-device") == "weird-device"


def test_git_state_outside_repo(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    assert git_state(tmp_path / "does-not-exist") == {"commit": None, "dirty": None}


def test_make_result_fills_provenance():
    r = _result()
    assert r["schema"] == SCHEMA
    assert set(REQUIRED_KEYS) <= set(r)
    assert r["summary"]["base"] == pytest.approx(81.0)
    assert r["summary"]["hm"] == pytest.approx(harmonic_mean(81.0, 62.0))
    assert r["summary"]["n_seeds"] == 2
    assert r["device"].startswith("cpu")
    assert set(r["git"]) == {"commit", "dirty"}
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", r["created"])


def test_make_result_rejects_per_seed_without_metrics():
    with pytest.raises(ResultError, match="per_seed\\[0\\]"):
        make_result(
            protocol="p", benchmark="b", dataset="d", learner="l", learner_config={}, backbone={}, data={},
            shots=1, seeds=[1], per_seed=[{"seed": 1}], config={}, command="c", wall_seconds=0.0,
        )


def test_write_and_load_round_trip(tmp_path):
    r = _result()
    path = write_result(r, tmp_path / "results")
    rel = path.relative_to(tmp_path / "results")
    assert rel.parts[:3] == ("base2new", "toy", "toy_colors")
    assert re.fullmatch(r"coop-\d{8}-\d{6}-[0-9a-f]{6}\.json", rel.parts[3])
    loaded = load_result(path)
    assert loaded == json.loads(json.dumps(r))
    (again,) = load_results(tmp_path / "results")
    assert again["_path"] == str(path)
    assert again["summary"] == loaded["summary"]


def test_write_result_twice_gives_two_files(tmp_path):
    r = _result()
    assert write_result(r, tmp_path) != write_result(r, tmp_path)
    assert len(load_results(tmp_path)) == 2


def test_load_result_wrong_schema(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(ResultError, match=r"x\.json.*'other/9'"):
        load_result(p)
    p.write_text(json.dumps({"protocol": "base2new"}))
    with pytest.raises(ResultError, match="schema is None"):
        load_result(p)


def test_load_result_missing_key_names_file_and_key(tmp_path):
    r = _result()
    del r["command"]
    p = tmp_path / "partial.json"
    p.write_text(json.dumps(r))
    with pytest.raises(ResultError, match=r"partial\.json: missing required key 'command'"):
        load_result(p)


def test_load_result_bad_json_and_missing_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(ResultError, match=r"broken\.json: not valid JSON"):
        load_result(p)
    with pytest.raises(ResultError, match="nope.json"):
        load_result(tmp_path / "nope.json")
    with pytest.raises(ValueError):  # ResultError is a ValueError
        load_results(tmp_path / "missing-folder")


def test_load_results_validates_every_file(tmp_path):
    write_result(_result(), tmp_path)
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "junk.json").write_text("[]")
    with pytest.raises(ResultError, match="junk.json"):
        load_results(tmp_path)


def _render(result) -> str:
    buf = io.StringIO()
    print_summary(result, console=Console(file=buf, width=160, color_system=None))
    return buf.getvalue()


def test_print_summary_base2new():
    out = _render(_result())
    assert "toy_colors / coop / toyclip-s" in out
    for head in ("seed", "base", "new", "HM"):
        assert head in out
    assert "80.00" in out and "64.00" in out
    mean_line = next(line for line in out.splitlines() if "mean" in line)
    assert "81.00 ± 1.41" in mean_line
    assert "62.00 ± 2.83" in mean_line
    assert f"{harmonic_mean(81.0, 62.0):.2f}" in mean_line  # HM of means


def test_print_summary_generic_metrics():
    r = _result(metrics=[{"accuracy": 50.0}, {"accuracy": 52.0}], protocol="few_shot")
    out = _render(r)
    assert "accuracy" in out and "HM" not in out
    mean_line = next(line for line in out.splitlines() if "mean" in line)
    assert "51.00 ± 1.41" in mean_line


def test_print_summary_single_seed_record():
    r = _result(metrics=[{"base": 70.0, "new": 70.0}])
    console = Console(record=True, width=160)
    print_summary(r, console=console)
    text = console.export_text()
    assert "70.00" in text and "±" not in text


def test_summary_notes_give_the_validation_dice_and_name_a_domain_gap():
    from vlprompt.runs.results import summary_notes

    result = {"per_seed": [{"seed": 1, "metrics": {"dice": 26.6}, "selected_val_dice": 78.0},
                           {"seed": 2, "metrics": {"dice": 26.7}, "selected_val_dice": 79.0}],
              "data": {"style": "clean", "test_style": "scan"}}
    line = next(x for x in summary_notes(result, ["dice"]) if x.startswith("validation Dice"))
    assert "78.50" in line and "'clean'" in line and "'scan'" in line and "validation-test gap" in line
    result["data"] = {"style": "scan", "test_style": "scan"}
    line = next(x for x in summary_notes(result, ["dice"]) if x.startswith("validation Dice"))
    assert "gap" not in line
    assert not any(x.startswith("validation Dice") for x in summary_notes({"per_seed": [{"metrics": {"dice": 1}}]}))
