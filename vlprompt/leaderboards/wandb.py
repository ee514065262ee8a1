"""``vlprompt leaderboard push --wandb``: upload every leaderboard (tables, averages, reported numbers, plots) to W&B.

The ``leaderboard`` table is the one ``results.csv`` holds (:func:`vlprompt.leaderboards.build.leaderboard_table`):
every metric with its std and 95% interval, the mean of per-seed HM, the not-separated mark and the cost columns."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlprompt.leaderboards.build import leaderboard_table
from vlprompt.leaderboards.html import averages, build_figures
from vlprompt.leaderboards.reported import compare_with_reported, comparison_rows, load_reported, reported_for_page
from vlprompt.leaderboards.select import (
    load_results_tolerant,
    ordered_metrics,
    select_results,
)
from vlprompt.runs.results import safe_name
from vlprompt.runs.wandb_logging import choose_offline, wandb_mode


def leaderboard_run_id(protocol: str, benchmark: str) -> str:
    """The W&B run id of one leaderboard: the same for every push of (protocol, benchmark), so a second push
    updates that run (``resume="allow"``) instead of adding a duplicate. Readable prefix, plus a short hash of
    the exact pair so that two names that sanitise alike stay apart."""
    digest = hashlib.sha256(f"{protocol}\0{benchmark}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{protocol}-{benchmark}")[:80]
    return f"leaderboard-{readable}-{digest}"


def push_leaderboards(results_dir: str | Path, *, project: str = "vlprompt-leaderboards", entity: str | None = None,
                      offline: bool = False, save_dir: str | Path | None = None,
                      reported_dir: str | Path | None = None) -> list[dict[str, str]]:
    """Upload every leaderboard of ``results_dir`` to W&B: one run per (protocol, benchmark), job type
    ``leaderboard``, holding the rows (``leaderboard`` table), the average over datasets (``average`` table), the
    reported paper numbers (``reported`` table, when any) and the HTML page's plots (``plots/<name>``).

    Rows are the ones :func:`vlprompt.leaderboards.build.select_results` picks, as in the Markdown/HTML leaderboards.
    Returns ``[{"protocol", "benchmark", "run_id", "dir"}]``; offline runs are uploaded later with ``wandb sync``.
    """
    import wandb  # deferred: importing wandb is slow and only a push needs it

    reported = load_reported(reported_dir) if reported_dir is not None else []
    results, _ = load_results_tolerant(Path(results_dir))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((str(r["protocol"]), str(r["benchmark"])), []).append(r)
    save_dir = str(save_dir or os.environ.get("WANDB_DIR") or "runs")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    offline = choose_offline(offline, save_dir)
    pushed = []
    for protocol, benchmark in sorted(groups):
        rows, _ = select_results(groups[(protocol, benchmark)])
        if not rows:
            continue
        metrics = ordered_metrics(rows)
        rep = reported_for_page(protocol, rows, reported)
        run = wandb.init(project=project, entity=entity, dir=save_dir, mode=wandb_mode(offline),
                         id=leaderboard_run_id(protocol, benchmark), resume="allow",
                         job_type="leaderboard", name=f"leaderboard-{protocol}-{benchmark}",
                         group=f"leaderboard/{protocol}", tags=[f"protocol:{protocol}", f"benchmark:{benchmark}"],
                         config={"protocol": protocol, "benchmark": benchmark, "results_dir": str(results_dir),
                                 "rows": len(rows)}, reinit="finish_previous")
        try:
            columns, data = leaderboard_table(rows)
            payload: dict[str, Any] = {"leaderboard": wandb.Table(columns=columns, data=data)}
            avgs = averages(rows, metrics)
            if avgs:
                acols = ["learner", "backbone", "shots", "datasets", *metrics]
                payload["average"] = wandb.Table(columns=acols, data=[[a.get(c) for c in acols] for a in avgs])
            if rep:
                rcols = ["learner", "backbone", "dataset", "base", "new", "hm", "accuracy", "hm_convention", "source_kind", "source"]
                payload["reported"] = wandb.Table(columns=rcols, data=[[e.get(c) for c in rcols] for e in rep])
            pairs = compare_with_reported(protocol, rows, rep)
            if pairs:
                ccols, cdata = comparison_rows(pairs)
                payload["ours_vs_reported"] = wandb.Table(columns=ccols, data=cdata)
            for name, fig in build_figures(rows, rep).items():
                payload[f"plots/{name}"] = wandb.Plotly(fig)
            run.log(payload)
            run.summary.update({"rows": len(rows), "datasets": len({str(r["dataset"]) for r in rows})})
            pushed.append({"protocol": protocol, "benchmark": benchmark, "run_id": run.id, "dir": str(run.dir),
                           "name": safe_name(f"{protocol}-{benchmark}"),
                           # an online push knows whether the id existed; offline, `wandb sync` decides later
                           "action": "offline" if offline else ("updated" if getattr(run, "resumed", False) else "created")})
        finally:
            run.finish()
    return pushed
