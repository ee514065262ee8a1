"""Leaderboards built only from result JSON files: ``vlprompt leaderboard build RESULTS_DIR [--out DIR]``.

For every (protocol, benchmark) found under ``RESULTS_DIR`` this writes ``<out>/<protocol>/<benchmark>/README.md``
(a markdown table per dataset, an average over datasets, and the provenance of every row) and
``results.csv`` (one flat row per result). Which results become rows is decided by :data:`SELECTION_RULES`
(written into every leaderboard's header); files that are skipped or superseded are listed, with the reason,
in the build's console table and at the end of the README. Building never imports code named in a result
file. Output is sorted, so rebuilding gives identical files.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import inspect
import io
import json
import logging
import os
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlprompt.metrics import harmonic_mean
from vlprompt.runs.results import ResultError, _safe, format_mean_std, load_result, metric_keys, parse_created

log = logging.getLogger(__name__)

__all__ = ["build_leaderboards", "leaderboard_main", "CSV_COLUMNS", "SELECTION_RULES", "select_results", "DEFAULT_OUT"]

#: where ``vlprompt leaderboard build`` writes without ``--out`` (never the committed ``leaderboards/``)
DEFAULT_OUT = "leaderboards-local"

SELECTION_RULES: tuple[str, ...] = (
    "Only complete results count: a `vlprompt fit`, a `vlprompt tta` (test-time evaluation), or a `vlprompt test` that evaluated a saved checkpoint "
    "(`--prompts`) or a learner with nothing to train; a `vlprompt test` of an untrained learner is skipped.",
    "One row per dataset, learner configuration, backbone checkpoint (sha256), shots and data split (split-file "
    "sha256 or data identity): results on another split or another checkpoint get their own row, marked "
    "`[split ...]` / `[ckpt ...]` when they would otherwise look alike.",
    "Among results for the same row, the one with the most seeds wins, then the most training epochs, then the "
    "newest (`created`), then the later file path; a run with fewer seeds or epochs never replaces another.",
    "Unreadable, truncated or foreign JSON files are skipped. Every skipped or superseded file is listed with "
    "its reason at the end of this page.",
)

CSV_COLUMNS: tuple[str, ...] = (
    "protocol", "benchmark", "dataset", "learner", "backbone_model", "backbone_sha256", "shots", "n_seeds",
    "base", "base_std", "new", "new_std", "hm", "command", "created", "path",
)

_HEADERS = {"base": "base", "new": "new", "hm": "HM"}
_HEADERS.update({"dice": "Dice", "iou": "IoU"})  # segmentation results

#: the caption of a segmentation leaderboard (results whose metrics are Dice and IoU)
SEGMENTATION_EXPLAIN = (
    "Numbers are in percent, mean ± std (sample std) over seeds, on each dataset's test split: Dice of the masks "
    "thresholded at 0.5, averaged over test images (an empty prediction of an empty mask scores 100), and IoU "
    "over all test pixels (TuneVLSeg's metrics). Trained learners keep the prompts of their best-validation-Dice "
    "epoch. `shots`: training images used (None: the whole train split)."
)


# --------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def _init_defaults(class_path: str) -> dict[str, Any]:
    """Default init arguments of the registered learner whose class is ``class_path`` (empty when no installed
    learner plugin has that class). Never imports a module named in a result file: only classes the
    registry already loaded from installed entry points are inspected."""
    try:
        from vlprompt.learners.registry import get_registry

        cls = next((info.obj for info in get_registry("learners").entries() if info.class_path == class_path), None)
        if cls is None:
            return {}
        params = inspect.signature(cls).parameters.items()
    except (LookupError, ValueError, TypeError):
        return {}
    return {k: p.default for k, p in params if p.default is not inspect.Parameter.empty}


def learner_label(result: Mapping[str, Any]) -> str:
    """``learner`` plus the init arguments that differ from the learner's defaults, e.g.
    ``coop (ctx_init='a photo of a', n_ctx=4)``: two configurations of one learner are two entrants."""
    cfg = result.get("learner_config") or {}
    args = dict(cfg.get("init_args") or {}) if isinstance(cfg, Mapping) else {}
    path = cfg.get("class_path") if isinstance(cfg, Mapping) else None
    defaults = _init_defaults(path) if isinstance(path, str) and "." in path else {}
    changed = {k: v for k, v in sorted(args.items()) if k not in defaults or defaults[k] != v}
    if not changed:
        return str(result["learner"])
    return f"{result['learner']} (" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"


def _backbone(result: Mapping[str, Any]) -> Mapping[str, Any]:
    bb = result.get("backbone")
    return bb if isinstance(bb, Mapping) else {}


def _backbone_label(result: Mapping[str, Any]) -> str:
    """``model (pretrained tag or checkpoint file name)``."""
    bb = _backbone(result)
    model = str(bb.get("model") or bb.get("name") or "?")
    if Path(model).is_absolute():  # a local folder recorded as the model name: its name is what identifies it
        model = Path(model).name
    pretrained = bb.get("pretrained")
    if pretrained:
        return f"{model} ({Path(str(pretrained)).name})"
    return model


def _weights_id(result: Mapping[str, Any]) -> str:
    """What identifies the weights: checkpoint sha256 when known, else the pretrained tag."""
    bb = _backbone(result)
    return str(bb.get("checkpoint_sha256") or bb.get("pretrained") or "")


def _shots_cell(result: Mapping[str, Any]) -> str:
    """The shots column: the count, or ``all`` when the whole train split was used (``shots: null``)."""
    shots = result.get("shots")
    return "all" if shots is None else str(shots)


def _shots_key(result: Mapping[str, Any]) -> tuple[int, str]:
    shots = result.get("shots")
    return (0, f"{shots:09d}") if isinstance(shots, int) else (1, str(shots))


def _split_id(result: Mapping[str, Any]) -> str:
    """What identifies the data split: the split file's sha256 when known, else a hash of the data identity
    without local paths (so the same data at another root is the same split)."""
    data = result.get("data")
    if not isinstance(data, Mapping):
        return ""
    if data.get("split_sha256"):
        return str(data["split_sha256"])
    ident = {k: v for k, v in data.items() if k not in {"root", "split_file", "classnames_file"}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _entry_key(result: Mapping[str, Any]) -> tuple:
    """Dedupe key: (dataset, learner, backbone model, weights, shots, split)."""
    return (
        str(result["dataset"]), learner_label(result), str(_backbone(result).get("model")),
        _weights_id(result), _shots_key(result), _split_id(result),
    )


def _learner_key(result: Mapping[str, Any]) -> tuple:
    """A leaderboard entrant across datasets: (learner, backbone label, weights, shots)."""
    return (learner_label(result), _backbone_label(result), _weights_id(result), _shots_key(result))


def _row_sort_key(result: Mapping[str, Any]) -> tuple:
    return (str(result["dataset"]), *_learner_key(result), str(result.get("_rel", "")))


def _stage(result: Mapping[str, Any]) -> str:
    """``fit`` / ``test`` / ``validate``: the recorded stage, else the word after ``vlprompt`` in the command."""
    stage = result.get("stage")
    if isinstance(stage, str) and stage:
        return stage
    try:
        words = shlex.split(str(result.get("command", "")))
    except ValueError:
        words = str(result.get("command", "")).split()
    return words[1] if len(words) > 1 and words[0].endswith("vlprompt") else "?"


def _nothing_to_train(result: Mapping[str, Any]) -> bool:
    if isinstance(result.get("trainable"), bool):
        return not result["trainable"]
    cfg = result.get("learner_config") or {}
    path = cfg.get("class_path") if isinstance(cfg, Mapping) else None
    try:
        from vlprompt.learners.registry import get_registry

        cls = next((i.obj for i in get_registry("learners").entries() if i.class_path == path), None)
    except LookupError:
        cls = None
    return cls is not None and getattr(cls, "trainable", True) is False


def eligibility(result: Mapping[str, Any]) -> str | None:
    """Why ``result`` may not be a leaderboard row (rule 1 of :data:`SELECTION_RULES`), or None if it may."""
    if result.get("complete") is False:
        return "incomplete run (not every seed finished)"
    stage = _stage(result)
    if stage in {"fit", "tta"}:  # tta: episodic test-time evaluation, complete in itself
        return None
    if stage in {"test", "validate"}:
        if result.get("evaluated_checkpoint") or _nothing_to_train(result):
            return None
        return (f"`vlprompt {stage}` of a trainable learner without --prompts: it scores untrained prompts; "
                "evaluate a checkpoint with --prompts, or use the `vlprompt fit` result")
    return f"unknown stage {stage!r} (command {str(result.get('command'))[:60]!r})"


def _epochs(result: Mapping[str, Any]) -> int:
    values = [p.get("epochs") for p in result.get("per_seed", []) if isinstance(p, Mapping)]
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return min(ints) if ints else 0


def _n_seeds(result: Mapping[str, Any]) -> int:
    return len(result.get("per_seed") or [])


def _rank(result: Mapping[str, Any]) -> tuple:
    """Rule 3: most seeds, then most epochs, then newest, then later path."""
    return (_n_seeds(result), _epochs(result), parse_created(result["created"]), str(result.get("_rel", "")))


def _why_superseded(winner: Mapping[str, Any], loser: Mapping[str, Any]) -> str:
    if _n_seeds(loser) != _n_seeds(winner):
        return f"fewer seeds ({_n_seeds(loser)} < {_n_seeds(winner)}) than {winner.get('_rel')}"
    if _epochs(loser) != _epochs(winner):
        return f"fewer epochs ({_epochs(loser)} < {_epochs(winner)}) than {winner.get('_rel')}"
    return f"older than {winner.get('_rel')} (same seeds and epochs)"


def select_results(results: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Apply :data:`SELECTION_RULES`: the rows (sorted) and ``(file, reason)`` for every result left out."""
    left_out: list[tuple[str, str]] = []
    best: dict[tuple, dict[str, Any]] = {}
    for r in results:
        why = eligibility(r)
        if why is not None:
            left_out.append((str(r.get("_rel")), why))
            continue
        key = _entry_key(r)
        cur = best.get(key)
        if cur is None or _rank(r) > _rank(cur):
            if cur is not None:
                left_out.append((str(cur.get("_rel")), "superseded: " + _why_superseded(r, cur)))
            best[key] = r
        else:
            left_out.append((str(r.get("_rel")), "superseded: " + _why_superseded(cur, r)))
    rows = sorted(best.values(), key=_row_sort_key)
    _mark_lookalikes(rows)
    return rows, sorted(left_out)


def _mark_lookalikes(rows: Sequence[dict[str, Any]]) -> None:
    """Set ``_mark`` (`` [split ab12cd34]`` / `` [ckpt ab12cd34]``) on rows that would look identical."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(str(r["dataset"]), learner_label(r), _backbone_label(r), str(r.get("shots")))].append(r)
    for group in groups.values():
        if len(group) < 2:
            continue
        for r in group:
            marks = []
            if len({_weights_id(g) for g in group}) > 1:
                marks.append(f"ckpt {_weights_id(r)[:8]}")
            if len({_split_id(g) for g in group}) > 1:
                marks.append(f"split {_split_id(r)[:8]}")
            r["_mark"] = " [" + ", ".join(marks) + "]" if marks else ""


def _dedupe(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of :func:`select_results` (kept for callers of the old name)."""
    return select_results(results)[0]


def _ordered_metrics(results: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: set[str] = set()
    for r in results:
        keys.update(metric_keys(r))
    front = [k for k in ("base", "new", "hm") if k in keys]
    return front + sorted(keys - set(front))


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


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


# --------------------------------------------------------------------------- rendering
def _render_readme(protocol: str, benchmark: str, rows: Sequence[dict[str, Any]],
                   left_out: Sequence[tuple[str, str]] = ()) -> str:
    metrics = _ordered_metrics(rows)
    mheads = [_HEADERS.get(k, k) for k in metrics]
    b2n = "base" in metrics and "new" in metrics
    out = [f"# Leaderboard: {protocol} / {benchmark}", ""]
    explain = "Numbers are top-1 accuracy in percent, mean ± std (sample std) over seeds"
    explain += (
        "; HM is the harmonic mean of the seed-averaged base and new accuracies (its ± is the std of per-seed HMs)."
        if b2n else "."
    )
    if "dice" in metrics:
        explain = SEGMENTATION_EXPLAIN
    out += [explain, "", "_Generated by `vlprompt leaderboard build` from result files; do not edit by hand._", ""]
    out += ["Which results are rows:", ""] + [f"{i}. {rule}" for i, rule in enumerate(SELECTION_RULES, 1)] + [""]

    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_dataset[str(r["dataset"])].append(r)
    for dataset in sorted(by_dataset):
        table_rows = []
        for r in by_dataset[dataset]:
            s = r["summary"]
            n = s.get("n_seeds", len(r.get("per_seed", [])))
            table_rows.append(
                [learner_label(r) + r.get("_mark", ""), _backbone_label(r), _shots_cell(r), str(n)]
                + [format_mean_std(s, k, missing="–") for k in metrics]
            )
        out += [f"## {dataset}", ""] + _table(["learner", "backbone", "shots", "seeds", *mheads], table_rows) + [""]

    by_learner: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_learner[_learner_key(r)].append(r)
    avg_rows = []
    for key in sorted(by_learner):
        per_dataset: dict[str, dict[str, Any]] = {}
        for r in by_learner[key]:  # one row per dataset (look-alike rows on other splits: the best-ranked)
            cur = per_dataset.get(str(r["dataset"]))
            if cur is None or _rank(r) > _rank(cur):
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
        avg_rows.append([learner_label(first), _backbone_label(first), _shots_cell(first), str(len(group)), *cells])
    if avg_rows:
        note = "Mean of the per-dataset means, over the datasets where the learner has results"
        note += "; HM is the harmonic mean of the averaged base and new accuracies." if b2n else "."
        out += ["## Average over datasets", "", note, ""]
        out += _table(["learner", "backbone", "shots", "datasets", *mheads], avg_rows) + [""]

    out += ["## How these numbers were produced", ""]
    for r in rows:
        bb = _backbone(r)
        sha = bb.get("checkpoint_sha256")
        version = (r.get("versions") or {}).get("vlprompt", "unknown")
        command = str(r.get("command", ""))
        fence = _fence(command)
        out.append(
            f"- **{_md(r['dataset'])} / {_md(learner_label(r))} / {_md(_backbone_label(r))} / {_shots_cell(r)} shots**: "
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


def _render_csv(rows: Sequence[dict[str, Any]]) -> str:
    extra_metrics = [k for k in _ordered_metrics(rows) if k not in {"base", "new", "hm"}]
    extra = ["hm_std"] + [c for k in extra_metrics for c in (k, f"{k}_std")]
    columns = list(CSV_COLUMNS) + extra
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        s = r["summary"]
        bb = _backbone(r)
        fixed = {
            "protocol": r["protocol"], "benchmark": r["benchmark"], "dataset": r["dataset"],
            "learner": learner_label(r) + r.get("_mark", ""), "backbone_model": bb.get("model"), "backbone_sha256": bb.get("checkpoint_sha256"),
            "shots": r.get("shots"), "n_seeds": s.get("n_seeds", len(r.get("per_seed", []))),
            "command": r.get("command"), "created": r.get("created"), "path": r["_rel"],
        }
        writer.writerow([_csv_value(fixed[c] if c in fixed else s.get(c)) for c in columns])
    return buf.getvalue()


def _write_if_changed(path: Path, text: str) -> None:
    from vlprompt.data.atomic import atomic_write_text

    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


# --------------------------------------------------------------------------- public API
def load_results_tolerant(root: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every valid result under ``root`` (with ``_path`` and ``_rel``) and ``(file, reason)`` for each ``*.json``
    that is unreadable, truncated or not a vlprompt result: one bad file never aborts a build."""
    results, skipped = [], []
    for path in sorted(root.rglob("*.json")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        try:
            result = load_result(path)
            parse_created(result["created"])
            for key in ("protocol", "benchmark", "dataset", "learner"):
                if not isinstance(result.get(key), str) or not result[key]:
                    raise ResultError(f"{path}: {key!r} must be a non-empty string, got {result.get(key)!r:.80}")
        except (ResultError, TypeError, ValueError) as exc:
            reason = str(exc).replace(str(path) + ": ", "")
            skipped.append((rel, reason))
            log.warning("skipping %s: %s", rel, reason)
            continue
        result["_path"], result["_rel"] = str(path), rel
        results.append(result)
    return results, skipped


def build_leaderboards(results_dir: str | os.PathLike, out_dir: str | os.PathLike = DEFAULT_OUT, *,
                       report: list[tuple[str, str]] | None = None) -> list[Path]:
    """Build ``<out_dir>/<protocol>/<benchmark>/{README.md,results.csv}`` from every result under ``results_dir``.

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
    results, skipped = load_results_tolerant(root)
    if report is not None:
        report.extend(skipped)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(str(r["protocol"]), str(r["benchmark"]))].append(r)
    written: list[Path] = []
    for protocol, benchmark in sorted(groups):
        rows, left_out = select_results(groups[(protocol, benchmark)])
        if report is not None:
            report.extend(left_out)
        if not rows:
            continue
        folder = Path(out_dir) / _safe(protocol) / _safe(benchmark)
        readme, table = folder / "README.md", folder / "results.csv"
        _write_if_changed(readme, _render_readme(protocol, benchmark, rows, left_out))
        _write_if_changed(table, _render_csv(rows))
        written += [readme, table]
    return written


def _print_report(report: Sequence[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    import sys

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
    from vlprompt.runs.wandb_logging import push_leaderboards

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
        log.info("pushed %s/%s to W&B run %s (%s)", p["protocol"], p["benchmark"], p["run_id"], p["dir"])
    return 0


def leaderboard_main(argv: Sequence[str]) -> int:
    """``vlprompt leaderboard build RESULTS_DIR [--out DIR]`` / ``push RESULTS_DIR --wandb``; returns the exit status."""
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
                       help="folder of reported paper numbers (*.yaml) shown in the HTML (default: leaderboards/reported)")
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
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse already printed usage / help
        return int(exc.code or 0)
    if args.action == "push":
        return _push_main(args)
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        log.error(
            "results folder %r does not exist or is not a directory; pass the folder that `vlprompt fit` wrote "
            "results to, e.g. `vlprompt leaderboard build results`", str(results_dir),
        )
        return 2
    report: list[tuple[str, str]] = []
    try:
        if args.html:  # reported numbers are checked before anything is written
            from vlprompt.leaderboards.html import load_reported

            load_reported(args.reported)
        paths = build_leaderboards(results_dir, args.out, report=report)
        if args.html and paths:
            from vlprompt.leaderboards.html import build_html_leaderboards

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
