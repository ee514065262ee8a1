"""Tests for the entry-point plugin registry, using fake distributions written into ``tmp_path``."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vlprompt.learners import registry
from vlprompt.cli.listing import list_main
from vlprompt.learners.registry import get_registry, RegistryError, resolve_class_path

FAKE_PREFIX = "vlpfake_"

GOOD_LEARNER = '''
class FakeCoOp:
    """A fake third-party learner."""

    family = "text"
'''

GOOD_BACKBONE = '''
class FakeBackbone:
    """A fake third-party backbone."""
'''

BROKEN_MODULE = '''
raise ImportError("needs the missing package frobnicate")
'''


def make_dist(root: Path, dist: str, version: str, entry_points: dict[str, dict[str, str]],
              modules: dict[str, str]) -> None:
    """Write an installed-looking ``<dist>-<version>.dist-info`` plus module files under ``root``."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    sections = [f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in eps.items())
                for group, eps in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(sections))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh fake site directory on ``sys.path``; registry caches and fake modules are reset around it."""
    monkeypatch.delenv(registry.DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(registry.ALLOWED_PLUGINS_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.clear_cache()
    yield tmp_path
    for module in [m for m in sys.modules if m.startswith(FAKE_PREFIX)]:
        del sys.modules[module]
    registry.clear_cache()
    importlib.invalidate_caches()


def add_good_learner(site: Path, dist: str = "vlp-fake-coop", name: str = "fake_coop") -> None:
    make_dist(site, dist, "1.2.3", {"vlprompt.learners": {name: "vlpfake_coop:FakeCoOp"}},
              {"vlpfake_coop": GOOD_LEARNER})


def test_third_party_learner_is_registered(site: Path) -> None:
    add_good_learner(site)
    reg = get_registry("learners")
    assert "fake_coop" in reg.names()
    assert "fake_coop" in reg
    info = reg.info("fake_coop")
    assert reg.get("fake_coop") is info.obj
    assert info.obj.__name__ == "FakeCoOp"
    assert (info.distribution, info.version) == ("vlp-fake-coop", "1.2.3")
    assert info.value == "vlpfake_coop:FakeCoOp"
    assert info.class_path == "vlpfake_coop.FakeCoOp"
    assert info.family == "text"
    assert info in reg.entries()
    assert get_registry("learners") is reg  # cached


def test_backbone_family_defaults_to_kind(site: Path) -> None:
    make_dist(site, "vlp-fake-bb", "0.1", {"vlprompt.backbones": {"fake_bb": "vlpfake_bb:FakeBackbone"}},
              {"vlpfake_bb": GOOD_BACKBONE})
    assert get_registry("backbones").info("fake_bb").family == "backbone"


def test_broken_plugin_is_recorded_and_others_work(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    add_good_learner(site)
    make_dist(site, "vlp-fake-broken", "0.1", {"vlprompt.learners": {"fake_broken": "vlpfake_broken:Nope"}},
              {"vlpfake_broken": BROKEN_MODULE})
    with caplog.at_level(logging.WARNING, logger="vlprompt.learners.registry"):
        reg = get_registry("learners")
    assert reg.get("fake_coop").__name__ == "FakeCoOp"
    assert "fake_broken" not in reg
    [bad] = [b for b in reg.broken if b.name == "fake_broken"]
    assert bad.distribution == "vlp-fake-broken"
    assert "ImportError" in bad.error and "frobnicate" in bad.error
    warning = next(r.getMessage() for r in caplog.records if "fake_broken" in r.getMessage())
    assert "vlp-fake-broken" in warning and "frobnicate" in warning
    with pytest.raises(RegistryError, match="frobnicate"):
        reg.get("fake_broken")


def test_non_class_entry_point_is_broken(site: Path) -> None:
    make_dist(site, "vlp-fake-func", "0.1", {"vlprompt.learners": {"fake_func": "vlpfake_func:make"}},
              {"vlpfake_func": "def make():\n    return None\n"})
    reg = get_registry("learners")
    assert "fake_func" not in reg
    assert any(b.name == "fake_func" and "expected a class" in b.error for b in reg.broken)


def test_duplicate_name_across_distributions_disables_only_that_name(site: Path, capsys) -> None:
    add_good_learner(site, dist="vlp-fake-one")
    make_dist(site, "vlp-fake-two", "0.1", {"vlprompt.learners": {"fake_coop": "vlpfake_other:Other", "coop": "vlpfake_other:Other"}},
              {"vlpfake_other": "class Other:\n    pass\n"})
    reg = get_registry("learners")
    assert "fake_coop" not in reg and "coop" not in reg and "zero_shot" in reg  # everything else keeps working
    with pytest.raises(RegistryError) as excinfo:
        reg.get("fake_coop")
    message = str(excinfo.value)
    for part in ("fake_coop", "vlp-fake-one", "vlp-fake-two", "vlpfake_coop:FakeCoOp", "vlpfake_other:Other"):
        assert part in message
    assert "full class path" in message and "uninstall" in message
    coop = reg.failure("coop") or ""
    assert "vlprompt.learners.coop:CoOp" in coop and "vlp-fake-two" in coop
    assert "pip uninstall vlprompt" not in coop and "of vlp-fake-two" in coop  # never suggests removing vlprompt
    assert list_main(["learners", "--check"]) == 0  # --check imports the plugins: broken ones show up
    out = capsys.readouterr().out
    assert "broken plugins" in out and "registered twice" in out


def test_same_distribution_seen_twice_is_not_a_duplicate(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_good_learner(site)
    monkeypatch.syspath_prepend(str(site))  # the same site directory now appears twice on sys.path
    registry.clear_cache()
    assert get_registry("learners").get("fake_coop").__name__ == "FakeCoOp"


def test_disable_autoload_hides_third_party(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_good_learner(site)
    make_dist(site, "vlp-fake-bb", "0.1", {"vlprompt.learners": {"fake_bb_learner": "vlpfake_bb:FakeBackbone"}},
              {"vlpfake_bb": GOOD_BACKBONE})
    monkeypatch.setenv(registry.DISABLE_AUTOLOAD_ENV, "1")
    reg = get_registry("learners")
    assert "fake_coop" not in reg and "fake_bb_learner" not in reg
    assert not any(b.name.startswith("fake_") for b in reg.broken)
    with pytest.raises(RegistryError, match=registry.ALLOWED_PLUGINS_ENV):
        reg.get("fake_coop")

    monkeypatch.setenv(registry.ALLOWED_PLUGINS_ENV, "other-dist, VLP_fake_coop")
    reg = registry.reload("learners")
    assert "fake_coop" in reg
    assert "fake_bb_learner" not in reg


def test_unknown_name_lists_known_names_and_suggests(site: Path) -> None:
    add_good_learner(site)
    with pytest.raises(RegistryError) as excinfo:
        get_registry("learners").get("fake_cop")
    message = str(excinfo.value)
    assert "fake_cop" in message and "Known:" in message and "fake_coop" in message
    assert "Did you mean 'fake_coop'?" in message


def test_unknown_kind_raises() -> None:
    with pytest.raises(RegistryError, match="learners"):
        get_registry("optimizers")


def test_resolve_class_path(site: Path) -> None:
    add_good_learner(site)
    assert resolve_class_path("fake_coop") == "vlpfake_coop.FakeCoOp"
    assert resolve_class_path("fake_coop", group="learners") == "vlpfake_coop.FakeCoOp"
    assert resolve_class_path("vlpfake_coop.FakeCoOp") is None
    assert resolve_class_path("fake_coop", group="backbones") is None
    assert "fake_coop" in registry.known_names()["learners"]


def test_resolve_class_path_ambiguous_across_groups(site: Path) -> None:
    make_dist(site, "vlp-fake-multi", "0.1",
              {"vlprompt.learners": {"fake_twin": "vlpfake_coop:FakeCoOp"},
               "vlprompt.backbones": {"fake_twin": "vlpfake_bb:FakeBackbone"}},
              {"vlpfake_coop": GOOD_LEARNER, "vlpfake_bb": GOOD_BACKBONE})
    with pytest.raises(RegistryError, match="ambiguous"):
        resolve_class_path("fake_twin")
    assert resolve_class_path("fake_twin", group="backbones") == "vlpfake_bb.FakeBackbone"


def test_list_main_prints_table(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_good_learner(site)
    make_dist(site, "vlp-fake-broken", "0.1", {"vlprompt.learners": {"fake_broken": "vlpfake_broken:Nope"}},
              {"vlpfake_broken": BROKEN_MODULE})
    assert list_main(["learners", "--check"]) == 0
    out = capsys.readouterr().out
    for part in ("fake_coop", "text", "vlpfake_coop.FakeCoOp", "vlp-fake-coop 1.2.3", "broken plugins",
                 "fake_broken", "vlp-fake-broken"):
        assert part in out
    # without --check: from metadata only (nothing imported), family read from the source; no broken table
    assert list_main(["learners"]) == 0
    out = capsys.readouterr().out
    for part in ("fake_coop", "text", "vlpfake_coop.FakeCoOp", "vlp-fake-coop 1.2.3", "fake_broken"):
        assert part in out
    assert "broken plugins" not in out

    assert list_main(["learners", "--errors"]) == 0
    out = capsys.readouterr().out
    assert "fake_broken" in out and "fake_coop" not in out


def test_list_main_bad_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert list_main(["optimizers"]) == 2
    out = capsys.readouterr().out
    assert all(kind in out for kind in registry.GROUPS)


def test_using_a_broken_plugin_says_failed_to_load(site: Path) -> None:
    from vlprompt.learners.registry import ConfigError, resolve_config_names

    make_dist(site, "vlp-fake-broken", "0.1", {"vlprompt.learners": {"fake_broken": "vlpfake_broken:Nope"}},
              {"vlpfake_broken": BROKEN_MODULE})
    with pytest.raises(ConfigError, match="'fake_broken' under 'learner' failed to load: .*frobnicate"):
        resolve_config_names({"learner": {"class_path": "fake_broken"}})


def test_full_class_path_still_works_when_a_name_is_registered_twice(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlprompt.learners.registry import ConfigError
    from vlprompt.runs.config import build_cli, VlpromptCLI

    make_dist(site, "vlp-fake-two", "0.1", {"vlprompt.learners": {"coop": "vlpfake_other:Other"}},
              {"vlpfake_other": "class Other:\n    pass\n"})
    monkeypatch.setattr(VlpromptCLI, "instantiate_classes", lambda self: None)
    quick = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    with pytest.raises(ConfigError, match="registered twice"):
        build_cli("fit", ["--config", quick])  # the quickstart names `coop`
    cli = build_cli("fit", ["--config", quick, "--model.learner.class_path", "vlprompt.learners.coop.CoOp"])
    assert cli.config.model.learner.class_path == "vlprompt.learners.coop.CoOp"
    assert cli.config.model.learner.init_args.n_ctx == 4  # the config's other values still apply
