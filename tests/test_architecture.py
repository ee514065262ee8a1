"""The package's architecture, enforced: layered imports (import-linter), no import cycles, no private names
across modules, no imports inside functions except deferred heavy optional dependencies, and the deprecated
module paths of the 0.1 layout change (docs/architecture.md)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

import vlprompt

REPO = Path(__file__).resolve().parents[1]
#: the source trees whose modules must not share private names: the package and the plugins shipped beside it
SOURCES = [REPO / "vlprompt", REPO / "plugins"]


def _python_files() -> list[Path]:
    return sorted(p for root in SOURCES for p in root.rglob("*.py") if ".egg-info" not in p.as_posix())


def _module_name(path: Path) -> str:
    """Dotted module name of a source file (``plugins/<dist>/<pkg>/x.py`` -> ``<pkg>.x``)."""
    rel = path.relative_to(REPO / "plugins").parts[1:] if path.is_relative_to(REPO / "plugins") else path.relative_to(REPO).parts
    parts = list(rel[:-1]) + ([] if rel[-1] == "__init__.py" else [rel[-1][:-3]])
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_import_contracts_are_kept() -> None:
    """``lint-imports`` (the ``[tool.importlinter]`` contracts in pyproject.toml): layers only point down. Run in a
    subprocess: import-linter configures logging (and would silence the loggers other tests capture)."""
    script = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_import_cycles() -> None:
    """No two vlprompt modules import each other, directly or through others (at import time or in a function)."""
    graph = grimp.build_graph("vlprompt")
    cycles = [[a, b, *chain[1:-1]] for a in sorted(graph.modules) for b in sorted(graph.find_modules_directly_imported_by(a))
              if (chain := graph.find_shortest_chain(importer=b, imported=a)) and not b.startswith(a + ".") and not a.startswith(b + ".")]
    assert not cycles, f"import cycles (module -> module -> ... -> back): {cycles[:5]}"


def private_imports(path: Path) -> list[str]:
    """``from X import _name`` and ``X._name`` (X an imported vlprompt module, or a sibling plugin module) in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: list[str] = []
    module_aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if base == "__future__" or not (base.startswith("vlprompt") or node.level):
                continue
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: from {base} import {alias.name}")
                else:
                    module_aliases.add(alias.asname or alias.name)  # may be a module (from vlprompt import cli)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vlprompt"):
                    module_aliases.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in module_aliases and root.id[:1].islower() and root.id not in {"self", "cls"}:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_names_cross_modules() -> None:
    """A name another module needs is public (and documented): no module imports or reaches an underscore name."""
    found = [hit for path in _python_files() for hit in private_imports(path)]
    assert not found, "underscore names used across modules:\n" + "\n".join(found)


def test_the_private_name_check_catches_both_forms(tmp_path: Path) -> None:
    """The grep itself: ``from X import _y`` and ``module._y`` are caught, dunders and public names are not."""
    probe = REPO / "vlprompt" / "_architecture_probe.py"
    probe.write_text("from vlprompt.leaderboards.html import _num, averages, __doc__\nimport vlprompt.runs.results as r\nr._UNSAFE\nr.safe_name\n")
    try:
        hits = private_imports(probe)
    finally:
        probe.unlink()
    assert [h.split(": ", 1)[1] for h in hits] == ["from vlprompt.leaderboards.html import _num", "r._UNSAFE"]


def function_level_imports(path: Path) -> list[str]:
    """Imports inside functions of ``path`` whose line does not say why they are deferred (``# deferred: ...``)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)) and not any(
                        "# deferred:" in line for line in lines[inner.lineno - 1:inner.end_lineno]):
                    found.append(f"{path.relative_to(REPO)}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    return found


def test_imports_inside_functions_only_defer_heavy_optional_dependencies() -> None:
    found = [hit for path in sorted((REPO / "vlprompt").rglob("*.py")) for hit in function_level_imports(path)]
    assert not found, "imports inside functions (move them to the top, or say `# deferred: why`):\n" + "\n".join(found)


def test_top_level_of_the_package_has_at_most_12_entries() -> None:
    entries = sorted(p.name for p in (REPO / "vlprompt").iterdir() if p.name != "__pycache__")
    assert len(entries) <= 12, entries


def test_every_deprecated_path_imports_with_a_warning_naming_the_new_place() -> None:
    """Each old module path (0.1 layout) still imports, in a fresh interpreter, with one DeprecationWarning that
    names the new module, and its names are the new module's objects."""
    script = textwrap.dedent("""
        import importlib, json, sys, warnings
        import vlprompt
        out = {}
        for old, new in vlprompt.DEPRECATED_MODULES.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                module = importlib.import_module(old)
            targets = [importlib.import_module(n) for n in new]
            public = [n for t in targets for n in vars(t) if not n.startswith("_")]
            same = all(getattr(module, n) is getattr(next(t for t in targets if hasattr(t, n)), n) for n in public)
            out[old] = {"warnings": [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)],
                        "same": same, "names": len(public)}
        print(json.dumps(out))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    import json

    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) == set(vlprompt.DEPRECATED_MODULES)
    for old, row in report.items():
        new = vlprompt.DEPRECATED_MODULES[old][0]
        assert any(old in w and new in w for w in row["warnings"]), (old, row["warnings"])
        assert row["same"] and row["names"] > 0, old


def test_old_paths_the_kgcoop_plugin_used_still_work() -> None:
    """What plugins/vlprompt-kgcoop imported before the layout change (vlprompt.layers, vlprompt.learners.base,
    vlprompt.learners.coop) still imports, and ``vlprompt.runs.<name>`` (a module until 0.1) still resolves."""
    script = textwrap.dedent("""
        import warnings
        warnings.simplefilter("error", DeprecationWarning)
        from vlprompt.learners.base import LearnerError
        from vlprompt.learners.coop import CoOp
        try:
            from vlprompt.layers import ClassTokenPosition, template_features
        except DeprecationWarning as w:
            assert "vlprompt.learners.prompts.layers" in str(w)
        warnings.simplefilter("ignore", DeprecationWarning)
        from vlprompt.layers import ClassTokenPosition, template_features
        import vlprompt.learners.prompts.layers as new
        assert template_features is new.template_features
        import vlprompt.runs
        from vlprompt.runs.folders import RunFolder
        assert vlprompt.runs.RunFolder is RunFolder
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_old_class_paths_in_configs_resolve(recwarn: pytest.WarningsRecorder) -> None:
    """A config or result written before the layout change names e.g. ``vlprompt.wandb_logging.WandbLogger``;
    jsonargparse resolves such a class path through the alias."""
    from jsonargparse import ArgumentParser

    from vlprompt.runs.wandb_logging import WandbLogger

    parser = ArgumentParser()
    parser.add_argument("--logger", type=type)
    assert parser.parse_args(["--logger", "vlprompt.wandb_logging.WandbLogger"]).logger is WandbLogger


def test_names_that_left_medseg_resolve_with_a_warning() -> None:
    import vlprompt.data.medseg as medseg
    from vlprompt.data.medseg_convert import convert_to_medvlsm
    from vlprompt.data.medseg_prompts import PromptSpec

    with pytest.warns(DeprecationWarning, match="vlprompt.data.medseg_convert.convert_to_medvlsm"):
        assert medseg.convert_to_medvlsm is convert_to_medvlsm
    with pytest.warns(DeprecationWarning, match="vlprompt.data.medseg_prompts.PromptSpec"):
        assert medseg.PromptSpec is PromptSpec
    with pytest.raises(AttributeError):
        medseg.no_such_name  # noqa: B018
