"""``vlprompt list [KIND] [--check] [--errors]`` and ``vlprompt list configs [KIND]``.

Without ``--check`` nothing is imported: plugins are listed from their entry-point metadata (name,
``module:attr``, distribution), learners with the static facts of :mod:`vlprompt.cli.learner_facts` (a
third-party learner's ``family`` / ``tasks`` read from its source with :mod:`ast`), so the command answers
without importing torch. ``--check`` (and ``--errors``) import every plugin through the registry, show the
class each one loads and list the plugins that fail to load; that takes as long as importing torch.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata as md
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vlprompt.cli.learner_facts import LEARNER_FACTS

__all__ = ["KINDS", "list_main", "config_files", "entry_point_rows", "learner_rows"]

#: listable kind -> (entry-point group or None, what it lists); the plugin groups equal
#: ``vlprompt.learners.registry.GROUPS`` (a test keeps them in sync; that module imports torch)
KINDS: dict[str, tuple[str | None, str]] = {
    "learners": ("vlprompt.learners", "prompt learners: family, tasks, paper, faithfulness test"),
    "backbones": ("vlprompt.backbones", "frozen vision-language models (CLIP, CLIPSeg, the toy models)"),
    "datasets": ("vlprompt.datasets", "dataset sources (classification and segmentation)"),
    "protocols": ("vlprompt.protocols", "how a dataset is split and evaluated (base2new, fewshot, segmentation, ...)"),
    "generators": ("vlprompt.generators", "view generators of test-time learners (DiffTPT)"),
    "configs": (None, "the shipped YAML configs; vlprompt list configs KIND for one folder (learners, protocols, ...)"),
}

#: the registry's switches (vlprompt.learners.registry): only vlprompt's own plugins, plus the named distributions
DISABLE_AUTOLOAD_ENV = "VLPROMPT_DISABLE_PLUGIN_AUTOLOAD"
ALLOWED_PLUGINS_ENV = "VLPROMPT_PLUGINS"
BUILTIN_DISTRIBUTION = "vlprompt"


def _console() -> Console:
    """A stdout console; when piped, wide enough that class paths are not truncated."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _visible(dist: str) -> bool:
    """Whether the registry loads plugins of ``dist`` (the same rule as vlprompt.learners.registry)."""
    if os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in {"1", "true", "yes"}:
        return True
    allowed = {_norm(d.strip()) for d in os.environ.get(ALLOWED_PLUGINS_ENV, "").split(",") if d.strip()}
    return _norm(dist) in {_norm(BUILTIN_DISTRIBUTION), *allowed}


def entry_point_rows(group: str) -> list[dict[str, Any]]:
    """The entry points of ``group`` from installed metadata, sorted by name: ``name``, ``value``
    (``module:attr``), ``distribution``, ``version`` and ``dist`` (the distribution object). Nothing is imported."""
    rows, seen = [], set()
    for dist in md.distributions():
        dist_name = dist.metadata["Name"] or "<unknown>"
        if not _visible(dist_name):
            continue
        for ep in dist.entry_points:
            if ep.group != group or (ep.name, ep.value, _norm(dist_name)) in seen:
                continue
            seen.add((ep.name, ep.value, _norm(dist_name)))
            rows.append({"name": ep.name, "value": ep.value, "distribution": dist_name,
                         "version": dist.version, "dist": dist})
    return sorted(rows, key=lambda r: (r["name"], r["distribution"]))


def _source_file(dist: Any, module: str) -> Path | None:
    """The source file of ``module`` inside ``dist`` (installed or editable), found without importing it."""
    rel = [module.replace(".", "/") + ".py", module.replace(".", "/") + "/__init__.py"]
    for f in dist.files or []:
        if str(f).replace(os.sep, "/") in rel:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    roots = [Path(entry or ".") for entry in sys.path]
    try:  # an editable install records its source folder (PEP 610)
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    except (ValueError, AttributeError):
        url = ""
    if url.startswith("file://"):
        src = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        roots = [src, src / "src", *roots]
    for root in roots:
        for r in rel:
            path = root / r
            if path.is_file():
                return path
    return None


#: what a learner that derives directly from ``PromptLearner`` inherits (vlprompt.learners.base; a test keeps it)
PROMPT_LEARNER_DEFAULTS: dict[str, Any] = {"family": "text", "tasks": ("classification", "segmentation")}


def _literal_class_attrs(path: Path, cls: str) -> dict[str, Any]:
    """The class attributes of ``cls`` in ``path`` assigned plain literals (``family = "text"``), over
    :data:`PROMPT_LEARNER_DEFAULTS` when the class derives directly from ``PromptLearner``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return {}
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases}
            if "PromptLearner" in bases:
                out.update(PROMPT_LEARNER_DEFAULTS)
            for stmt in node.body:
                target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else \
                    stmt.target if isinstance(stmt, ast.AnnAssign) else None
                if isinstance(target, ast.Name) and getattr(stmt, "value", None) is not None:
                    try:
                        out[target.id] = ast.literal_eval(stmt.value)
                    except ValueError:
                        continue
    return out


def learner_rows() -> list[dict[str, str]]:
    """One row per installed learner, without importing any: ``name``, ``family``, ``tasks``, ``paper``,
    ``faithfulness``, ``track`` (its resource track; a third-party learner's literal ``resources``),
    ``entry_point``, ``provided_by``."""
    rows = []
    for ep in entry_point_rows("vlprompt.learners"):
        facts = LEARNER_FACTS.get(ep["name"]) if _norm(ep["distribution"]) == BUILTIN_DISTRIBUTION else None
        if facts is not None:
            family, tasks, paper, faithful, track = facts.family, facts.tasks, facts.paper, facts.faithfulness, facts.track
        else:
            module, _, attr = ep["value"].partition(":")
            path = _source_file(ep["dist"], module)
            attrs = _literal_class_attrs(path, attr) if path is not None else {}
            family = str(attrs.get("family", "?"))
            raw = attrs.get("tasks")
            tasks = tuple(raw) if isinstance(raw, (tuple, list)) else ("? (--check)",)
            tasks = tuple(str(t).replace("test_time", "test-time") for t in tasks)
            if family == "test-time":
                tasks = ("test-time",)
            paper, faithful = str(attrs.get("paper", "?")), ""
            res = attrs.get("resources", ())
            track = ", ".join(map(str, res)) if isinstance(res, (tuple, list)) and res else "standard"
        rows.append({"name": ep["name"], "family": family, "tasks": ", ".join(tasks), "paper": paper,
                     "faithfulness": faithful or "no", "track": track, "entry_point": ep["value"].replace(":", "."),
                     "provided_by": f"{ep['distribution']} {ep['version']}"})
    return rows


def _learners_table() -> Table:
    table = Table(title="learners (vlprompt.learners), from installed metadata; --check imports them",
                  caption="tasks: classification / segmentation (vlprompt fit), test-time (vlprompt tta); "
                          "faithfulness: the test that pins the learner to its reference code; track: what it uses "
                          "beyond the labelled images and the frozen backbone (A / B: a config option decides)")
    for header in ("name", "family", "tasks", "paper", "faithfulness", "track", "class", "provided by"):
        table.add_column(header, no_wrap=header not in {"paper", "faithfulness", "track"})
    for r in learner_rows():
        table.add_row(r["name"], r["family"], r["tasks"], r["paper"], r["faithfulness"], r["track"], r["entry_point"],
                      r["provided_by"])
    return table


def _metadata_table(kind: str, group: str) -> Table:
    table = Table(title=f"{kind} ({group}), from installed metadata; --check imports them")
    for header in ("name", "class", "provided by"):
        table.add_column(header, no_wrap=True)
    for r in entry_point_rows(group):
        table.add_row(r["name"], r["value"].replace(":", "."), f"{r['distribution']} {r['version']}")
    return table


def _kinds_table() -> Table:
    table = Table(title="vlprompt list KIND")
    table.add_column("kind", no_wrap=True)
    table.add_column("lists")
    for kind, (_, what) in KINDS.items():
        table.add_row(kind, what)
    return table


# --------------------------------------------------------------------------- configs
def configs_root() -> Path:
    """The shipped ``configs/`` folder: ``./configs`` when run from a checkout, else the one beside the package."""
    here = Path("configs")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "configs"


def _first_comment(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if text.startswith("#"):
                    return text.lstrip("#").strip()
                if text:
                    return ""
    except (OSError, UnicodeDecodeError):
        return ""
    return ""


def config_files(kind: str | None = None, root: Path | None = None) -> list[tuple[str, str]]:
    """``(path, first comment line)`` of the shipped configs under ``root`` (default :func:`configs_root`),
    all of them or one ``kind`` (a sub-folder: ``learners``, ``protocols``, ``datasets``, ...), sorted by path."""
    root = configs_root() if root is None else root
    base = root / kind if kind else root
    if not base.is_dir():
        return []
    return [(p.as_posix(), _first_comment(p)) for p in sorted(base.rglob("*.yaml"))]


def _configs_main(kind: str | None, console: Console) -> int:
    root = configs_root()
    kinds = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if kind is not None and kind not in kinds:
        console.print(f"vlprompt list configs: unknown kind {kind!r}; choose one of: {', '.join(kinds)}",
                      markup=False, highlight=False)
        return 2
    files = config_files(kind, root)
    if not files:
        console.print(f"vlprompt list configs: no configs under {root}", markup=False, highlight=False)
        return 1
    table = Table(title=f"configs{'/' + kind if kind else ''}: pass with --config (layered, later ones win)")
    table.add_column("config", no_wrap=True)
    table.add_column("what it is")
    for path, comment in files:
        table.add_row(path, comment)
    console.print(table)
    return 0


# --------------------------------------------------------------------------- --check: import the plugins
def _checked_tables(kind: str, errors_only: bool, console: Console) -> int:
    from vlprompt.learners.registry import RegistryError, get_registry  # deferred: --check imports every plugin (torch)

    try:
        registry = get_registry(kind)
    except RegistryError as exc:
        console.print(f"vlprompt list: {exc}", markup=False, highlight=False)
        return 1
    if not errors_only:
        table = Table(title=f"{registry.kind} ({registry.group}), imported")
        headers = ("name", "family", "tasks", "class", "provided by") if kind == "learners" else \
            ("name", "family", "class", "provided by")
        for header in headers:
            table.add_column(header, no_wrap=True)
        for plugin in registry.entries():
            cells = [plugin.name, plugin.family]
            if kind == "learners":
                tasks = ("test-time",) if plugin.family == "test-time" else tuple(getattr(plugin.obj, "tasks", ()))
                cells.append(", ".join(tasks))
            table.add_row(*cells, plugin.class_path, f"{plugin.distribution} {plugin.version}")
        console.print(table)
    if registry.broken:
        broken = Table(title=f"broken plugins ({registry.group})", title_style="bold red")
        broken.add_column("name", no_wrap=True)
        broken.add_column("distribution", no_wrap=True)
        broken.add_column("error", overflow="fold")
        for bad in registry.broken:
            broken.add_row(bad.name, bad.distribution, bad.error)
        console.print(broken)
    elif errors_only:
        console.print(f"no broken {kind}", markup=False)
    return 0


def list_main(argv: list[str]) -> int:
    """``vlprompt list [KIND] [--check] [--errors]``; ``vlprompt list configs [KIND]``."""
    parser = argparse.ArgumentParser(
        prog="vlprompt list", description="List installed plugins (from their metadata, nothing imported) or the "
                                          "shipped configs. Without KIND: the kinds.")
    parser.add_argument("kind", nargs="?", help=f"one of: {', '.join(KINDS)}")
    parser.add_argument("sub", nargs="?", help="with `configs`: a sub-folder (learners, protocols, datasets, ...)")
    parser.add_argument("--check", action="store_true",
                        help="import every plugin (slow: loads torch) to show the loaded classes and broken plugins")
    parser.add_argument("--errors", action="store_true", help="only the plugins that fail to load (imports them)")
    args = parser.parse_args(argv)
    console = _console()
    if args.kind is None:
        console.print(_kinds_table())
        return 0
    if args.kind not in KINDS:
        console.print(f"vlprompt list: unknown kind {args.kind!r}; choose one of: {', '.join(KINDS)}",
                      markup=False, highlight=False)
        return 2
    if args.kind == "configs":
        return _configs_main(args.sub, console)
    if args.sub is not None:
        console.print(f"vlprompt list {args.kind}: unexpected argument {args.sub!r}", markup=False, highlight=False)
        return 2
    if args.check or args.errors:
        return _checked_tables(args.kind, args.errors, console)
    group = KINDS[args.kind][0]
    assert group is not None
    console.print(_learners_table() if args.kind == "learners" else _metadata_table(args.kind, group))
    return 0
