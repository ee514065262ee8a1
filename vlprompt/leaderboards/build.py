"""Leaderboards built only from result JSON files: ``vlprompt leaderboard build RESULTS_DIR [--out DIR]``.

For every (protocol, benchmark) found under ``RESULTS_DIR`` this writes ``<out>/<protocol>/<benchmark>/README.md``
(a markdown table per dataset, an average over datasets, and the provenance of every row) and
``results.csv`` (one flat row per result). Which results become rows is decided by :data:`SELECTION_RULES`
(written into every leaderboard's header); files that are skipped or superseded are listed, with the reason,
in the build's console table and at the end of the README. Building never imports code named in a result
file. Output is sorted, so rebuilding gives identical files.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprompt.data.atomic import atomic_write_text
from vlprompt.leaderboards.reported import (
    COMPARISON_NOTE,
    REPORTED_TOLERANCE,
    compare_with_reported,
    comparison_rows,
    load_reported,
    reported_for_page,
    unmatched_note,
)
from vlprompt.leaderboards.select import (
    COST_HEADERS,
    COST_NOTE,
    HM_NOTE,
    INTERVAL_NOTE,
    SELECTION_RULES,
    backbone_label,
    cost,
    cost_cells,
    interval,
    interval_cell,
    not_separated,
    primary_metric,
    learner_key,
    learner_label,
    load_results_tolerant,
    ordered_metrics,
    rank_key,
    records_track,
    result_backbone,
    select_results,
    shots_cell,
    track_cell,
)
from vlprompt.metrics import harmonic_mean
from vlprompt.runs.results import ResultError, format_mean_std, parse_created, safe_name

log = logging.getLogger(__name__)

__all__ = ["build_leaderboards", "CSV_COLUMNS", "CSV_RIGOR_COLUMNS", "DEFAULT_OUT", "leaderboard_table"]

#: where ``vlprompt leaderboard build`` writes without ``--out`` (never the committed ``leaderboards/``)
DEFAULT_OUT = "leaderboards-local"


CSV_COLUMNS: tuple[str, ...] = (
    "protocol", "benchmark", "dataset", "learner", "backbone_model", "backbone_sha256", "shots", "n_seeds",
    "base", "base_std", "new", "new_std", "hm", "command", "created", "path",
)

#: per-seed interval, HM-convention and cost columns of ``results.csv``, after the metric columns
CSV_RIGOR_COLUMNS: tuple[str, ...] = (
    "hm_seed_mean", "not_separated", "train_s_per_image", "test_s_per_image", "peak_rss_mib", "trainable_params",
    "device", "track",
)

_HEADERS = {"base": "base", "new": "new", "hm": "HM of means"}
_HEADERS.update({"dice": "Dice", "iou": "IoU", "nsd": "NSD", "hd95": "HD95 (px)"})  # segmentation results

#: the note under a leaderboard whose rows record their resource track
TRACK_NOTE = (
    "`track`: what a row used beyond the protocol's labelled images and the frozen backbone (`standard`: nothing; "
    "e.g. `LLM text` for CuPL descriptions, `image-text corpus` for GRAM's meta-training, `earlier test images` "
    "for TDA's cache; `—`: written before results recorded it). Compare rows of one track."
)

#: the caption of a segmentation leaderboard (results whose metrics are Dice and IoU)
SEGMENTATION_EXPLAIN = (
    "Numbers are in percent, mean ± std (sample std) over seeds, on each dataset's test split: Dice of the masks "
    "thresholded at 0.5, averaged over test images (an empty prediction of an empty mask scores 100), and IoU "
    "over all test pixels (TuneVLSeg's metrics); where recorded, NSD (normalised surface Dice, %, tolerance in the "
    "result's config, default 2 px) and HD95 (95th-percentile Hausdorff distance, pixels, lower is better), per "
    "test image and averaged (MONAI), and the text-ignored controls `*_text_empty` / `*_text_shuffled` (the same "
    "prompts replaced by empty or another image's prompt). Trained learners keep the prompts of their "
    "best-validation-Dice epoch. `shots`: training images used (None: the whole train split)."
)


# --------------------------------------------------------------------------- helpers


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def _md(text: Any) -> str:
    """``text`` safe inside a markdown line or table cell: no line breaks (which would start headings or
    tables), no raw HTML (``<``, ``>``, ``&`` as entities, as the HTML page escapes them), ``|`` escaped."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return _LINE_BREAKS.sub(" ", text)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" if h in {"learner", "backbone", "file", "reason"} else "---:" for h in headers) + "|")
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines


def _created_label(value: str) -> str:
    return parse_created(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fence(text: str) -> str:
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def _fmt2(value: Any) -> str:
    num = _num(value)
    return "—" if num is None else f"{num:.2f}"


def _metric_heads(metrics: Sequence[str]) -> list[str]:
    """Per metric: its mean ± std column and its 95% CI column; base-to-new HM also "mean of per-seed HM"."""
    b2n = "base" in metrics and "new" in metrics
    heads = []
    for k in metrics:
        head = _HEADERS.get(k, k) if b2n or k != "hm" else "HM"
        if b2n and k == "hm":
            heads += [head, "mean of per-seed HM", "per-seed HM 95% CI"]
        else:
            heads += [head, f"{head} 95% CI"]
    return heads


# --------------------------------------------------------------------------- rendering
def _render_readme(protocol: str, benchmark: str, rows: Sequence[dict[str, Any]],
                   left_out: Sequence[tuple[str, str]] = (), reported: Sequence[dict[str, Any]] = ()) -> str:
    metrics = ordered_metrics(rows)
    mheads = [_HEADERS.get(k, k) for k in metrics]
    b2n = "base" in metrics and "new" in metrics
    out = [f"# Leaderboard: {_md(protocol)} / {_md(benchmark)}", ""]
    explain = "Numbers are top-1 accuracy in percent, mean ± std (sample std) over seeds"
    explain += (
        "; HM is the harmonic mean of the seed-averaged base and new accuracies (its ± is the std of per-seed HMs)."
        if b2n else "."
    )
    if "dice" in metrics:
        explain = SEGMENTATION_EXPLAIN
    explain += " `*_ece`: expected calibration error (15 bins), %." if any(k.endswith("_ece") for k in metrics) else ""
    notes = [INTERVAL_NOTE] + ([HM_NOTE] if b2n else []) + [COST_NOTE]
    if any(records_track(r) for r in rows):
        notes.append(TRACK_NOTE)
    notes.append("Definitions: docs/metrics.md.")
    out += [explain, "", *[line for n in notes for line in (n, "")], "_Generated by `vlprompt leaderboard build` from result files; do not edit by hand._", ""]
    out += ["Which results are rows:", ""] + [f"{i}. {rule}" for i, rule in enumerate(SELECTION_RULES, 1)] + [""]

    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_dataset[str(r["dataset"])].append(r)
    # the resource-track column appears once some row records its track (results written since it is recorded)
    tracks = any(records_track(r) for r in rows)
    for dataset in sorted(by_dataset):
        table_rows = []
        group = by_dataset[dataset]
        for r, close in zip(group, not_separated(group, primary_metric(metrics))):
            s = r["summary"]
            n = s.get("n_seeds", len(r.get("per_seed", [])))
            cells = []
            for k in metrics:
                cells.append(format_mean_std(s, k, missing="–"))
                if b2n and k == "hm":
                    cells.append(_fmt2(s.get("hm_seed_mean")))
                cells.append(interval_cell(r, k))
            table_rows.append(
                [learner_label(r) + r.get("_mark", ""), backbone_label(r), shots_cell(r), str(n)]
                + ([track_cell(r)] if tracks else [])
                + cells + ["not separated" if close else ""] + cost_cells(r)
            )
        heads = ["learner", "backbone", "shots", "seeds", *(["track"] if tracks else []), *_metric_heads(metrics),
                 "vs next-higher row", *COST_HEADERS]
        out += [f"## {_md(dataset)}", ""] + _table(heads, table_rows) + [""]

    by_learner: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_learner[learner_key(r)].append(r)
    avg_rows = []
    for key in sorted(by_learner):
        per_dataset: dict[str, dict[str, Any]] = {}
        for r in by_learner[key]:  # one row per dataset (look-alike rows on other splits: the best-ranked)
            cur = per_dataset.get(str(r["dataset"]))
            if cur is None or rank_key(r) > rank_key(cur):
                per_dataset[str(r["dataset"])] = r
        group = [per_dataset[d] for d in sorted(per_dataset)]
        if len(group) < 2:
            continue
        cells = []
        means: dict[str, float] = {}
        for k in metrics:
            if b2n and k == "hm":
                continue
            vals = [v for v in (_num(r["summary"].get(k)) for r in group) if v is not None]
            if vals:
                means[k] = sum(vals) / len(vals)
        if b2n and "base" in means and "new" in means:
            means["hm"] = harmonic_mean(means["base"], means["new"])
        cells = [f"{means[k]:.2f}" if k in means else "–" for k in metrics]
        first = group[0]
        avg_rows.append([learner_label(first), backbone_label(first), shots_cell(first), str(len(group)), *cells])
    if avg_rows:
        note = "Mean of the per-dataset means, over the datasets where the learner has results"
        note += "; HM is the harmonic mean of the averaged base and new accuracies." if b2n else "."
        out += ["## Average over datasets", "", note, ""]
        out += _table(["learner", "backbone", "shots", "datasets", *mheads], avg_rows) + [""]

    pairs = compare_with_reported(protocol, rows, reported)
    if pairs:
        out += ["## Ours beside reported", "", COMPARISON_NOTE.format(tol=REPORTED_TOLERANCE), ""]
        heads, cells = comparison_rows(pairs)
        out += _table(heads, [[_md(c) for c in row] for row in cells]) + [""]
    elif (line := unmatched_note(rows, reported)) is not None:
        out += ["## Ours beside reported", "", _md(line), ""]

    out += ["## How these numbers were produced", ""]
    for r in rows:
        bb = result_backbone(r)
        sha = bb.get("checkpoint_sha256")
        version = (r.get("versions") or {}).get("vlprompt", "unknown")
        command = str(r.get("command", ""))
        fence = _fence(command)
        out.append(
            f"- **{_md(r['dataset'])} / {_md(learner_label(r))} / {_md(backbone_label(r))} / {shots_cell(r)} shots**: "
            f"created {_created_label(r['created'])}, checkpoint sha256 `{str(sha)[:12] if sha else 'unknown'}`, "
            f"vlprompt {version}, file `{r['_rel']}`"
        )
        out += ["", f"  {fence}", *(f"  {line}" for line in command.splitlines() or [""]), f"  {fence}", ""]
    if left_out:
        out += ["## Results not shown", "", "Result files of this leaderboard that are not rows, and why (see the rules above).", ""]
        out += _table(["file", "reason"], [[f"`{f}`", why] for f, why in left_out]) + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def _csv_value(value: Any) -> str:
    num = _num(value)
    if num is not None and not isinstance(value, int):
        return repr(round(num, 4))
    return "" if value is None else str(value)


def leaderboard_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The rows of one leaderboard as a table: ``(columns, values)``, one list per row in ``rows``' order.

    Columns: :data:`CSV_COLUMNS`, the other metrics with their std, every metric's 95% interval bounds
    (``<metric>_ci95_low`` / ``_high``) and :data:`CSV_RIGOR_COLUMNS` (mean of per-seed HM, the not-separated
    mark, cost). ``results.csv`` and the W&B ``leaderboard`` table are this table (values not yet formatted).
    """
    metrics = ordered_metrics(rows)
    extra_metrics = [k for k in metrics if k not in {"base", "new", "hm"}]
    extra = ["hm_std"] + [c for k in extra_metrics for c in (k, f"{k}_std")]
    ci = [c for k in metrics for c in (f"{k}_ci95_low", f"{k}_ci95_high")]
    columns = list(CSV_COLUMNS) + extra + ci + list(CSV_RIGOR_COLUMNS)
    prim = primary_metric(metrics)
    close: dict[int, bool] = {}
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_dataset[str(r["dataset"])].append(r)
    for group in by_dataset.values():
        close.update({id(r): c for r, c in zip(group, not_separated(group, prim))})
    values = []
    for r in rows:
        s = r["summary"]
        bb = result_backbone(r)
        fixed = {
            "protocol": r["protocol"], "benchmark": r["benchmark"], "dataset": r["dataset"],
            "learner": learner_label(r) + r.get("_mark", ""), "backbone_model": bb.get("model"), "backbone_sha256": bb.get("checkpoint_sha256"),
            "shots": r.get("shots"), "n_seeds": s.get("n_seeds", len(r.get("per_seed", []))),
            "command": r.get("command"), "created": r.get("created"), "path": r["_rel"],
            "not_separated": close.get(id(r), False),
        }
        for k in metrics:
            bounds = interval(r, k)
            fixed[f"{k}_ci95_low"], fixed[f"{k}_ci95_high"] = bounds if bounds is not None else (None, None)
        c = cost(r)
        fixed.update({"train_s_per_image": c["train s/image"], "test_s_per_image": c["test s/image"],
                      "peak_rss_mib": c["peak RSS (MiB)"], "trainable_params": c["trainable params"],
                      "device": c["device"], "track": track_cell(r) if records_track(r) else None})
        values.append([fixed[c] if c in fixed else s.get(c) for c in columns])
    return columns, values


def _render_csv(rows: Sequence[dict[str, Any]]) -> str:
    columns, values = leaderboard_table(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in values:
        writer.writerow([_csv_value(v) for v in row])
    return buf.getvalue()


def folder_clashes(groups) -> list[list[tuple[str, str]]]:
    """The (protocol, benchmark) groups whose names map to one output folder (e.g. ``toy`` and ``toy.``)."""
    by_folder: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for protocol, benchmark in groups:
        by_folder[(safe_name(protocol), safe_name(benchmark))].append((protocol, benchmark))
    return [sorted(v) for _, v in sorted(by_folder.items()) if len(v) > 1]


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


# --------------------------------------------------------------------------- public API


def build_leaderboards(results_dir: str | os.PathLike, out_dir: str | os.PathLike = DEFAULT_OUT, *,
                       report: list[tuple[str, str]] | None = None,
                       reported_dir: str | os.PathLike | None = None) -> list[Path]:
    """Build ``<out_dir>/<protocol>/<benchmark>/{README.md,results.csv}`` from every result under ``results_dir``.

    With ``reported_dir`` (``leaderboards/reported``), a README also shows our rows beside the numbers papers report
    for them (:func:`~vlprompt.leaderboards.reported.compare_with_reported`); the folder is read before anything
    is written, so a malformed file fails first.

    Rows follow :data:`SELECTION_RULES`. Returns the written paths (sorted). Files left out (unreadable, foreign,
    not eligible, superseded) are appended to ``report`` as ``(file, reason)``. Raises
    :class:`~vlprompt.runs.results.ResultError` only for a missing folder.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ResultError(
            f"results folder {str(root)!r} does not exist or is not a directory; pass the folder that "
            "`vlprompt fit` wrote results to (its --results_dir)."
        )
    reported = load_reported(reported_dir) if reported_dir is not None else []
    results, skipped = load_results_tolerant(root)
    if report is not None:
        report.extend(skipped)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(str(r["protocol"]), str(r["benchmark"]))].append(r)
    for clash in folder_clashes(groups):  # never merge or overwrite: refuse every group of a shared folder
        for group in clash:
            refused = groups.pop(group)
            why = (f"refused: protocol/benchmark names {' and '.join(repr('/'.join(g)) for g in clash)} map to one "
                   f"output folder {'/'.join(safe_name(p) for p in group)}/; rename the benchmark of one of them")
            for r in refused:
                log.warning("skipping %s: %s", r["_rel"], why)
                if report is not None:
                    report.append((str(r["_rel"]), why))
    unreadable: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for rel, why in skipped:  # shown on the page of the folder the file lies in (<protocol>/<benchmark>/...)
        parts = rel.split("/")
        if len(parts) > 2:
            unreadable[(parts[0], parts[1])].append((rel, f"skipped: {why}"))
    written: list[Path] = []
    for protocol, benchmark in sorted(groups):
        rows, left_out = select_results(groups[(protocol, benchmark)])
        if report is not None:
            report.extend(left_out)
        left_out = sorted(left_out + unreadable.get((safe_name(protocol), safe_name(benchmark)), []))
        if not rows:
            continue
        folder = Path(out_dir) / safe_name(protocol) / safe_name(benchmark)
        readme, table = folder / "README.md", folder / "results.csv"
        _write_if_changed(readme, _render_readme(protocol, benchmark, rows, left_out,
                                                 reported_for_page(protocol, rows, reported)))
        _write_if_changed(table, _render_csv(rows))
        written += [readme, table]
    return written


