"""Every third-party package that vlprompt (or a plugin under plugins/) imports is declared.

The allowed set is derived, not kept by hand: the requirements of ``pyproject.toml`` (core and each extra; a
plugin's own ``pyproject.toml`` plus vlprompt's core for a plugin), mapped to import names through the
installed distributions' metadata (``importlib.metadata.packages_distributions``).

- An import at module level must come from a core dependency: a plain install has only those.
- An import from an extra (``difftpt``, ``meta``, ...) must be deferred into the function that uses it and
  guarded: inside ``try: ... except ImportError`` whose handler names the ``pip install "vlprompt[<extra>]"``
  command, so a missing extra is a clear error, never a traceback.
- Files under a plugin's ``tests/`` may also use the ``test`` extra.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"vlprompt", "vlprompt_kgcoop"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[\s\[<>=!~;(]", req.strip(), maxsplit=1)[0])


def _load_toml(path: Path) -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI's 3.11 has it)
    return tomllib.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Declared:
    core: frozenset[str]
    extras: dict[str, frozenset[str]]


def declared(pyproject: Path, *, base: Declared | None = None) -> Declared:
    """The distributions a ``pyproject.toml`` declares (normalised names), core and per extra."""
    project = _load_toml(pyproject)["project"]
    core = {_requirement_name(r) for r in project.get("dependencies", [])}
    extras = {k: frozenset(_requirement_name(r) for r in v)
              for k, v in project.get("optional-dependencies", {}).items()}
    if base is not None:
        core |= base.core
        for k, v in base.extras.items():
            extras[k] = extras.get(k, frozenset()) | v
    return Declared(frozenset(core), extras)


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def providers(top: str) -> set[str]:
    """Normalised names of the installed distributions that provide the top-level import ``top``."""
    return {_norm(d) for d in _packages_distributions().get(top, [])}


@dataclass(frozen=True)
class Import:
    file: Path
    line: int
    top: str
    deferred: bool  # inside a function, or under `if TYPE_CHECKING:`
    guarded_hint: str | None  # the text of an enclosing `except ImportError` handler, if any


def _handler_text(handler: ast.ExceptHandler) -> str:
    return " ".join(n.value for n in ast.walk(handler) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception"})


def iter_imports(path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, deferred: bool, hint: str | None) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            d, h = deferred, hint
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                d = True
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                d = True
            elif isinstance(child, ast.Try):
                texts = [_handler_text(hd) for hd in child.handlers if _catches_import_error(hd)]
                if texts:
                    for stmt in child.body:
                        yield from visit_stmt(stmt, d, " ".join(texts))
                    for part in (*child.handlers, *child.orelse, *child.finalbody):
                        yield from visit_stmt(part, d, h)
                    continue
            yield from visit_stmt(child, d, h)

    def visit_stmt(node: ast.AST, deferred: bool, hint: str | None) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name.split(".")[0], deferred, hint)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield Import(path, node.lineno, node.module.split(".")[0], deferred, hint)
        yield from visit(node, deferred, hint)

    yield from visit(tree, False, None)


def check_tree(files: list[Path], decl: Declared, *, test_files: bool = False) -> list[str]:
    """Problems (one line each, naming file, line, import and fix) for the imports of ``files``."""
    problems = []
    stdlib = set(sys.stdlib_module_names)
    extra_owners: dict[str, set[str]] = {}
    for extra, dists in decl.extras.items():
        for d in dists:
            extra_owners.setdefault(d, set()).add(extra)
    for path in files:
        is_test = test_files or "tests" in path.relative_to(ROOT).parts
        for imp in iter_imports(path):
            if imp.top in stdlib or imp.top in FIRST_PARTY or imp.top == "__future__":
                continue
            where = f"{path.relative_to(ROOT)}:{imp.line}: import {imp.top}"
            dists = providers(imp.top)
            if not dists:
                problems.append(f"{where}: no installed distribution provides it; declare the package that does "
                                "in pyproject.toml")
                continue
            if dists & decl.core:
                continue
            if is_test and dists & decl.extras.get("test", frozenset()):
                continue
            owners = sorted(set().union(*(extra_owners.get(d, set()) for d in dists)) - {"test"})
            if not owners:
                problems.append(f"{where}: provided by {sorted(dists)}, which pyproject.toml does not declare; add it "
                                "to [project] dependencies (or to the extra that guards it)")
            elif not imp.deferred:
                problems.append(f"{where}: from the extra(s) {owners} but imported at module level; import it inside "
                                "the function that uses it")
            elif not (imp.guarded_hint and "pip install" in imp.guarded_hint
                      and any(f"vlprompt[{o}]" in imp.guarded_hint for o in owners)):
                problems.append(f"{where}: from the extra(s) {owners} without `try/except ImportError` naming "
                                f"`pip install \"vlprompt[{owners[0]}]\"`")
    return problems


def _py_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_vlprompt_imports_are_declared():
    decl = declared(ROOT / "pyproject.toml")
    problems = check_tree(_py_files(ROOT / "vlprompt"), decl)
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


@pytest.mark.parametrize("plugin", sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file()))
def test_plugin_imports_are_declared(plugin):
    base = declared(ROOT / "pyproject.toml")
    folder = ROOT / "plugins" / plugin
    decl = declared(folder / "pyproject.toml", base=Declared(base.core, {"test": base.extras.get("test", frozenset())}))
    problems = check_tree(_py_files(folder), decl)
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


def test_check_catches_an_undeclared_import(tmp_path):
    """The check itself: an installed but undeclared package, an unknown one, and an unguarded extra all fail."""
    decl = declared(ROOT / "pyproject.toml")
    bad = ROOT / "vlprompt" / "_probe_undeclared_imports.py"
    assert not bad.exists()
    bad.write_text("import pluggy\nimport surely_not_a_package_xyz\n\n\ndef f():\n    import diffusers\n"
                   "    return diffusers\n", encoding="utf-8")
    try:
        problems = check_tree([bad], decl)
    finally:
        bad.unlink()
    text = "\n".join(problems)
    assert "import pluggy: provided by ['pluggy'], which pyproject.toml does not declare" in text
    assert "import surely_not_a_package_xyz: no installed distribution provides it" in text
    assert "import diffusers: from the extra(s) ['difftpt'] without `try/except ImportError`" in text
    assert len(problems) == 3


def test_guarded_extra_import_passes():
    decl = declared(ROOT / "pyproject.toml")
    ok = ROOT / "vlprompt" / "_probe_guarded_import.py"
    assert not ok.exists()
    ok.write_text("def f():\n    try:\n        import diffusers\n    except ImportError as exc:\n"
                  "        raise RuntimeError('needs diffusers: pip install \"vlprompt[difftpt]\"') from exc\n"
                  "    return diffusers\n", encoding="utf-8")
    try:
        assert check_tree([ok], decl) == []
    finally:
        ok.unlink()
