"""``vlprompt leaderboard build|push|migrate``: parse the arguments, build or push, print what was left out."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vlprompt.leaderboards.build import DEFAULT_OUT, build_leaderboards
from vlprompt.leaderboards.html import build_html_leaderboards
from vlprompt.leaderboards.reported import load_reported, rank_agreement
from vlprompt.leaderboards.wandb import push_leaderboards
from vlprompt.runs.results import ResultError, migrate_results, read_leaderboard_csv
from vlprompt.runs.wandb_logging import wandb_mode

log = logging.getLogger(__name__)


def _print_report(report: Sequence[tuple[str, str]]) -> None:
    console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=200)
    table = Table(title=f"{len(report)} result file(s) not used", title_style="bold yellow")
    table.add_column("file", overflow="fold")
    table.add_column("reason", overflow="fold")
    for f, why in report:
        table.add_row(f, why)
    console.print(table)


def _push_main(args: argparse.Namespace) -> int:
    """``vlprompt leaderboard push RESULTS_DIR --wandb``: one W&B run per leaderboard (tables and plots)."""
    results_dir = Path(args.results_dir)
    if not args.wandb:
        log.error("vlprompt leaderboard push: name the service, e.g. `vlprompt leaderboard push %s --wandb`", results_dir)
        return 2
    if not results_dir.is_dir():
        log.error("results folder %r does not exist or is not a directory; pass the folder that `vlprompt fit` wrote "
                  "results to", str(results_dir))
        return 2
    if wandb_mode(args.offline) == "disabled":
        log.error("W&B is disabled (WANDB_MODE=disabled): nothing pushed. Unset WANDB_MODE to push, or set "
                  "WANDB_MODE=offline to write offline runs that `wandb sync` uploads later")
        return 1
    try:
        pushed = push_leaderboards(results_dir, project=args.project, entity=args.entity, offline=args.offline,
                                   save_dir=args.save_dir, reported_dir=args.reported)
    except (ResultError, OSError) as exc:
        log.error("%s", exc)
        return 1
    if not pushed:
        log.error("no usable result files (*.json) under %r; nothing pushed", str(results_dir))
        return 2
    for p in pushed:
        log.info("pushed %s/%s to W&B run %s (%s, %s)", p["protocol"], p["benchmark"], p["run_id"], p.get("action", "?"),
                 p["dir"])
    counts = {a: sum(p.get("action") == a for p in pushed) for a in ("created", "updated", "offline")}
    if counts["offline"]:
        log.info("%d leaderboard run(s) written offline with fixed ids: `wandb sync` creates or updates them "
                 "(a second push updates the same runs, it never duplicates them)", counts["offline"])
    else:
        log.info("%d leaderboard run(s) created, %d updated", counts["created"], counts["updated"])
    return 0


def _migrate_main(args: argparse.Namespace) -> int:
    """``vlprompt leaderboard migrate RESULTS_DIR [--check]``: only path strings change (see
    :func:`vlprompt.runs.results.portable_path`); metrics, checksums and keys stay as they are."""
    root = Path(args.results_dir)
    if not root.is_dir():
        log.error("results folder %r does not exist or is not a directory", str(root))
        return 2
    try:
        changed = migrate_results(root, check=args.check)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    verb = "would rewrite" if args.check else "rewrote"
    for path in changed:
        log.info("%s %s", verb, path)
    log.info("%s %d of the result files under %s to portable paths", verb, len(changed), root)
    return 1 if (args.check and changed) else 0


def _correlate_main(args: argparse.Namespace) -> int:
    try:
        rows = read_leaderboard_csv(args.results_csv)
        result = rank_agreement(rows, load_reported(args.reported), backbone_model=args.backbone,
                                protocol=args.protocol)
    except (FileNotFoundError, ResultError) as exc:
        log.error("%s", exc)
        return 2
    table = Table(title=f"{args.protocol} averages over {len(result['datasets'])} datasets ({args.backbone}) "
                        f"against the reported ones")
    for head in ("learner", "our HM of the averages", "reported HM", "reported source"):
        table.add_column(head)
    for learner_id, pair in sorted(result["pairs"].items(), key=lambda kv: -kv[1]["reported"]):
        table.add_row(pair["label"], f"{pair['ours']:.2f}", f"{pair['reported']:.2f}", str(pair["source"]))
    console = Console(width=200)
    console.print(table)
    if result["spearman"] is None:
        console.print(f"{result['n']} learner(s) on both sides: a rank correlation needs at least 3")
        return 1
    console.print(f"Spearman rank correlation {result['spearman']:+.3f} over {result['n']} learners "
                  f"(p = {result['p_value']:.3f}); datasets: {', '.join(result['datasets'])}")
    return 0


def leaderboard_main(argv: Sequence[str]) -> int:
    """``vlprompt leaderboard build RESULTS_DIR [--out DIR]`` / ``push RESULTS_DIR --wandb`` / ``migrate RESULTS_DIR``
    / ``correlate RESULTS_CSV --backbone MODEL``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="vlprompt leaderboard", description="Build leaderboards from result JSONs.")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="write <out>/<protocol>/<benchmark>/README.md and results.csv")
    build.add_argument("results_dir", help="folder of result JSON files (searched recursively)")
    build.add_argument("--out", default=DEFAULT_OUT,
                       help=f"output folder (default: {DEFAULT_OUT}; the committed leaderboards/ only when named)")
    build.add_argument("--html", action="store_true", help="also write index.html (tables and plots) per leaderboard")
    build.add_argument("--plotly", choices=("inline", "shared"), default="inline",
                       help="with --html: plotly.js inlined in every page (default), or one shared file in "
                            "<out>/assets/ that the pages load from beside them (the committed leaderboards/)")
    build.add_argument("--reported", default="leaderboards/reported",
                       help="folder of reported paper numbers (*.yaml), shown and compared with our rows in the Markdown and "
                            "HTML pages (default: leaderboards/reported)")
    push = sub.add_parser("push", help="upload leaderboards (W&B Tables and plots) to a tracking service")
    push.add_argument("results_dir", help="folder of result JSON files (searched recursively)")
    push.add_argument("--wandb", action="store_true", help="upload to Weights & Biases (the only service so far)")
    push.add_argument("--project", default="vlprompt-leaderboards", help="W&B project (default: vlprompt-leaderboards)")
    push.add_argument("--entity", default=None, help="W&B entity (team or user; default: the logged-in user's)")
    push.add_argument("--offline", action="store_true",
                      help="write offline runs (upload later with `wandb sync`); also chosen when not logged in")
    push.add_argument("--save_dir", default=None, help="where W&B writes its run folders (default: $WANDB_DIR, else runs)")
    push.add_argument("--reported", default="leaderboards/reported",
                      help="folder of reported paper numbers (*.yaml), pushed as the 'reported' table")
    migrate = sub.add_parser("migrate", help="rewrite result files to the published path form (no machine paths)")
    migrate.add_argument("results_dir", help="folder of result JSON files (searched recursively), rewritten in place")
    migrate.add_argument("--check", action="store_true",
                         help="only list the files that would change; exit 1 if any would")
    correlate = sub.add_parser("correlate", help="rank correlation of a leaderboard's learner averages with the "
                                                 "reported averages (a measurement)")
    correlate.add_argument("results_csv", help="a built leaderboard's results.csv")
    correlate.add_argument("--backbone", required=True, help="backbone model of the rows to use, e.g. vlprompt-toyclip2")
    correlate.add_argument("--protocol", default="base2new", help="protocol of the rows and reported entries")
    correlate.add_argument("--reported", default="leaderboards/reported", help="folder of reported numbers (*.yaml)")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse already printed usage / help
        return int(exc.code or 0)
    if args.action == "push":
        return _push_main(args)
    if args.action == "migrate":
        return _migrate_main(args)
    if args.action == "correlate":
        return _correlate_main(args)
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        log.error(
            "results folder %r does not exist or is not a directory; pass the folder that `vlprompt fit` wrote "
            "results to, e.g. `vlprompt leaderboard build results`", str(results_dir),
        )
        return 2
    report: list[tuple[str, str]] = []
    try:
        load_reported(args.reported)  # reported numbers are checked before anything is written
        paths = build_leaderboards(results_dir, args.out, report=report, reported_dir=args.reported)
        if args.html and paths:
            paths = sorted(paths + build_html_leaderboards(results_dir, args.out, reported_dir=args.reported,
                                                                   plotly=args.plotly))
    except (ResultError, OSError) as exc:
        log.error("%s", exc)
        return 1
    if report:
        _print_report(report)
    if not paths:
        log.error(
            "no usable result files (*.json) under %r; run `vlprompt fit --config ...` first or pass the right folder",
            str(results_dir),
        )
        return 2
    for p in paths:
        log.info("wrote %s", p)
    return 0
