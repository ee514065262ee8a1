"""``vlprompt list learners|backbones|datasets|protocols|generators [--errors]``: print the plugin registry."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from vlprompt.learners.registry import GROUPS, Registry, RegistryError, get_registry


def _console() -> Console:
    """A stdout console; when piped, wide enough that class paths are not truncated."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _plugins_table(registry: Registry) -> Table:
    table = Table(title=f"{registry.kind} ({registry.group})")
    for header in ("name", "family", "class", "provided by"):
        table.add_column(header, no_wrap=True)
    for plugin in registry.entries():
        table.add_row(plugin.name, plugin.family, plugin.class_path, f"{plugin.distribution} {plugin.version}")
    return table


def _broken_table(registry: Registry) -> Table:
    table = Table(title=f"broken plugins ({registry.group})", title_style="bold red")
    table.add_column("name", no_wrap=True)
    table.add_column("distribution", no_wrap=True)
    table.add_column("error", overflow="fold")
    for bad in registry.broken:
        table.add_row(bad.name, bad.distribution, bad.error)
    return table


def list_main(argv: list[str]) -> int:
    """``vlprompt list learners|backbones|datasets [--errors]``: print the plugins of one group."""
    parser = argparse.ArgumentParser(prog="vlprompt list", description="List installed vlprompt plugins.")
    parser.add_argument("kind", help=f"one of: {', '.join(GROUPS)}")
    parser.add_argument("--errors", action="store_true", help="show only the plugins that failed to load")
    args = parser.parse_args(argv)
    console = _console()
    if args.kind not in GROUPS:
        console.print(f"vlprompt list: unknown kind {args.kind!r}; choose one of: {', '.join(GROUPS)}",
                      markup=False, highlight=False)
        return 2
    try:
        registry = get_registry(args.kind)
    except RegistryError as exc:
        console.print(f"vlprompt list: {exc}", markup=False, highlight=False)
        return 1
    if not args.errors:
        console.print(_plugins_table(registry))
    if registry.broken:
        console.print(_broken_table(registry))
    elif args.errors:
        console.print(f"no broken {args.kind}", markup=False)
    return 0
