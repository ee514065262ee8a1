"""``vlprompt data check NAME --root DIR`` / ``vlprompt data convert NAME --root DIR --out DIR``."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys

from rich.console import Console
from rich.table import Table

from vlprompt.data.base import DataError
from vlprompt.data.medseg_convert import convert_to_medvlsm
from vlprompt.data.medseg_prompts import PROMPT_SPECS, PromptSpec
from vlprompt.learners.registry import get_registry
from vlprompt.runs.data_check import CheckReport, check_dataset


def print_report(report: CheckReport, console: Console | None = None) -> None:
    """Print a report as rich tables."""
    console = console or (Console() if sys.stdout.isatty() else Console(width=200))
    status = "[bold green]OK[/]" if report.ok else "[bold red]PROBLEMS[/]"
    console.print(f"data check [bold]{report.name}[/] (root {report.root}): {status}", highlight=False)
    facts = Table(title="facts", show_header=False)
    facts.add_column("key", no_wrap=True)
    facts.add_column("value", overflow="fold")
    for key, value in report.facts.items():
        facts.add_row(key, str(value))
    console.print(facts)
    for title, items, style in (("warnings", report.warnings, "yellow"), ("problems", report.problems, "red")):
        if items:
            table = Table(title=title, title_style=f"bold {style}", show_header=False)
            table.add_column(title, overflow="fold")
            for item in items:
                table.add_row(item)
            console.print(table)


def data_main(argv: list[str]) -> int:
    """``vlprompt data check NAME --root DIR [--strict] [--decode]``: print a report; 0 when ok, else 1."""
    parser = argparse.ArgumentParser(prog="vlprompt data", description="Check datasets on disk.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check a dataset's layout, split file, files and (optionally) images")
    check.add_argument("name", help="registered dataset name (vlprompt list datasets)")
    check.add_argument("--root", required=True, help="the data root (the folder that contains e.g. eurosat/)")
    check.add_argument("--strict", action="store_true", help="a non-official split file is a problem")
    check.add_argument("--decode", action="store_true", help="decode every image once (slow on large datasets)")
    add_convert_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "convert":
        return convert_main(args)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    try:
        report = check_dataset(args.name, args.root, strict=args.strict, decode=args.decode)
    except LookupError as exc:  # unknown or broken registry name
        console.print(f"vlprompt data check: {exc}", markup=False, highlight=False)
        return 1
    print_report(report, console)
    return 0 if report.ok else 1


def add_convert_parser(sub) -> None:
    """``vlprompt data convert NAME --root DIR --out DIR``: the arguments."""
    conv = sub.add_parser("convert", help="write a segmentation dataset into the medvlsm layout with generated prompts")
    conv.add_argument("name", help="registered segmentation dataset (kvasir_seg_release, busi_release, toy_seg, ...)")
    conv.add_argument("--root", default=None, help="the data root (the folder that contains the dataset folder)")
    conv.add_argument("--folder", default=None, help="the dataset folder under --root, when not the default")
    conv.add_argument("--out", required=True, help="the new medvlsm dataset folder (images/, masks/, anns/)")
    conv.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    conv.add_argument("--noun", default=None, help="generate prompts for this target class (default: the dataset's "
                      "prompt spec; a source without one keeps its own prompts)")
    conv.add_argument("--context", default=None, help="text appended to every prompt, e.g. 'in the chest X-ray'")
    conv.add_argument("--no-colour", dest="colour", action="store_false", help="do not name the target's colour")


def convert_main(args) -> int:
    """Run ``vlprompt data convert``; 0 on success, 1 with the error printed."""
    console = Console() if sys.stdout.isatty() else Console(width=200)
    try:
        source_cls = get_registry("datasets").get(args.name)
        params = inspect.signature(source_cls.__init__).parameters
        kwargs = {"folder": args.folder} if args.folder is not None and "folder" in params else {}
        source = source_cls(args.root, **kwargs) if "root" in params else source_cls(**kwargs)
        spec = PROMPT_SPECS.get(args.name)
        if args.noun is not None:
            spec = PromptSpec(noun=args.noun, context=spec.context if spec else "")
        if spec is not None and args.context is not None:
            spec = dataclasses.replace(spec, context=args.context)
        if spec is not None and not args.colour:
            spec = dataclasses.replace(spec, colour=False)
        summary = convert_to_medvlsm(source, args.out, spec=spec, overwrite=args.overwrite)
    except (DataError, LookupError) as exc:
        console.print(f"vlprompt data convert: {exc}", markup=False, highlight=False)
        return 1
    console.print(f"wrote {summary['out']}: sizes {summary['sizes']}, empty masks {summary['empty_masks']}; check it "
                  f"with `vlprompt data check medvlsm --root {summary['out']}`", markup=False, highlight=False)
    return 0
