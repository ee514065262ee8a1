"""Leaderboards built only from result JSON files: ``vlprompt leaderboard build RESULTS_DIR [--out DIR]``.

For every (protocol, benchmark) found under ``RESULTS_DIR`` this writes ``<out>/<protocol>/<benchmark>/README.md``
(a markdown table per dataset, an average over datasets, and the provenance of every row) and
``results.csv`` (one flat row per result). Where several results share dataset, learner, backbone weights
and shots, only the newest (by ``created``) is used. Output is sorted, so rebuilding gives identical files.
"""

from __future__ import annotations

import functools
import importlib
import inspect

import argparse
import csv
import io
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlprompt.metrics import harmonic_mean
from vlprompt.results import ResultError, _safe, format_mean_std, load_results, metric_keys, parse_created

log = logging.getLogger(__name__)

__all__ = ["build_leaderboards", "leaderboard_main", "CSV_COLUMNS"]

CSV_COLUMNS: tuple[str, ...] = (
    "protocol", "benchmark", "dataset", "learner", "backbone_model", "backbone_sha256", "shots", "n_seeds",
    "base", "base_std", "new", "new_std", "hm", "command", "created", "path",
)

_HEADERS = {"base": "base", "new": "new", "hm": "HM"}


# --------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def _init_defaults(class_path: str) -> dict[str, Any]:
    """Default init arguments of the class at ``class_path`` (empty if it cannot be imported here)."""
    try:
        module, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls).parameters.items()
    except (ImportError, AttributeError, ValueError, TypeError):
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
    pretrained = bb.get("pretrained")
    if pretrained:
        return f"{model} ({Path(str(pretrained)).name})"
    return model


def _weights_id(result: Mapping[str, Any]) -> str:
    """What identifies the weights: checkpoint sha256 when known, else the pretrained tag."""
    bb = _backbone(result)
    return str(bb.get("checkpoint_sha256") or bb.get("pretrained") or "")


def _shots_key(result: Mapping[str, Any]) -> tuple[int, str]:
    shots = result.get("shots")
    return (0, f"{shots:09d}") if isinstance(shots, int) else (1, str(shots))


def _entry_key(result: Mapping[str, Any]) -> tuple:
    """Dedupe key: (dataset, learner, backbone model, weights, shots)."""
    return (
        str(result["dataset"]), learner_label(result), str(_backbone(result).get("model")),
        _weights_id(result), _shots_key(result),
    )


def _learner_key(result: Mapping[str, Any]) -> tuple:
    """A leaderboard entrant across datasets: (learner, backbone label, weights, shots)."""
    return (learner_label(result), _backbone_label(result), _weights_id(result), _shots_key(result))


def _row_sort_key(result: Mapping[str, Any]) -> tuple:
    return (str(result["dataset"]), *_learner_key(result), str(result.get("_rel", "")))


def _dedupe(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep, for each :func:`_entry_key`, the newest result by ``created`` (ties: the later path)."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in results:
        key = _entry_key(r)
        order = (parse_created(r["created"]), str(r.get("_rel", "")))
        cur = best.get(key)
        if cur is None or order > (parse_created(cur["created"]), str(cur.get("_rel", ""))):
            if cur is not None:
                log.info("%s supersedes older result %s", r.get("_rel"), cur.get("_rel"))
            best[key] = r
        else:
            log.info("%s supersedes older result %s", cur.get("_rel"), r.get("_rel"))
    return sorted(best.values(), key=_row_sort_key)


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
    lines.append("|" + "|".join("---" if h in {"learner", "backbone"} else "---:" for h in headers) + "|")
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
def _render_readme(protocol: str, benchmark: str, rows: Sequence[dict[str, Any]]) -> str:
    metrics = _ordered_metrics(rows)
    mheads = [_HEADERS.get(k, k) for k in metrics]
    b2n = "base" in metrics and "new" in metrics
    out = [f"# Leaderboard: {protocol} / {benchmark}", ""]
    explain = "Numbers are top-1 accuracy in percent, mean ± std (sample std) over seeds"
    explain += (
        "; HM is the harmonic mean of the seed-averaged base and new accuracies (its ± is the std of per-seed HMs)."
        if b2n else "."
    )
    out += [explain, "", "_Generated by `vlprompt leaderboard build` from result files; do not edit by hand._", ""]

    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_dataset[str(r["dataset"])].append(r)
    for dataset in sorted(by_dataset):
        table_rows = []
        for r in by_dataset[dataset]:
            s = r["summary"]
            n = s.get("n_seeds", len(r.get("per_seed", [])))
            table_rows.append(
                [learner_label(r), _backbone_label(r), str(r.get("shots")), str(n)]
                + [format_mean_std(s, k, missing="–") for k in metrics]
            )
        out += [f"## {dataset}", ""] + _table(["learner", "backbone", "shots", "seeds", *mheads], table_rows) + [""]

    by_learner: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_learner[_learner_key(r)].append(r)
    avg_rows = []
    for key in sorted(by_learner):
        group = by_learner[key]
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
        avg_rows.append([learner_label(first), _backbone_label(first), str(first.get("shots")), str(len(group)), *cells])
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
            f"- **{_md(r['dataset'])} / {_md(learner_label(r))} / {_md(_backbone_label(r))} / {r.get('shots')} shots**: "
            f"created {_created_label(r['created'])}, checkpoint sha256 `{str(sha)[:12] if sha else 'unknown'}`, "
            f"vlprompt {version}, file `{r['_rel']}`"
        )
        out += ["", f"  {fence}", *(f"  {line}" for line in command.splitlines() or [""]), f"  {fence}", ""]
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
            "learner": learner_label(r), "backbone_model": bb.get("model"), "backbone_sha256": bb.get("checkpoint_sha256"),
            "shots": r.get("shots"), "n_seeds": s.get("n_seeds", len(r.get("per_seed", []))),
            "command": r.get("command"), "created": r.get("created"), "path": r["_rel"],
        }
        writer.writerow([_csv_value(fixed[c] if c in fixed else s.get(c)) for c in columns])
    return buf.getvalue()


def _write_if_changed(path: Path, text: str) -> None:
    from vlprompt.atomic import atomic_write_text

    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


# --------------------------------------------------------------------------- public API
def build_leaderboards(results_dir: str | os.PathLike, out_dir: str | os.PathLike = "leaderboards") -> list[Path]:
    """Build ``<out_dir>/<protocol>/<benchmark>/{README.md,results.csv}`` from every result under ``results_dir``.

    Returns the written paths (sorted). Raises :class:`~vlprompt.results.ResultError` for a missing folder or
    an invalid result file (the message names the file).
    """
    root = Path(results_dir)
    results = load_results(root)
    for r in results:
        r["_rel"] = Path(r["_path"]).relative_to(root).as_posix()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(str(r["protocol"]), str(r["benchmark"]))].append(r)
    written: list[Path] = []
    for protocol, benchmark in sorted(groups):
        rows = _dedupe(groups[(protocol, benchmark)])
        folder = Path(out_dir) / _safe(protocol) / _safe(benchmark)
        readme, table = folder / "README.md", folder / "results.csv"
        _write_if_changed(readme, _render_readme(protocol, benchmark, rows))
        _write_if_changed(table, _render_csv(rows))
        written += [readme, table]
    return written


def leaderboard_main(argv: Sequence[str]) -> int:
    """``vlprompt leaderboard build RESULTS_DIR [--out DIR]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="vlprompt leaderboard", description="Build leaderboards from result JSONs.")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="write <out>/<protocol>/<benchmark>/README.md and results.csv")
    build.add_argument("results_dir", help="folder of result JSON files (searched recursively)")
    build.add_argument("--out", default="leaderboards", help="output folder (default: leaderboards)")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse already printed usage / help
        return int(exc.code or 0)
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        log.error(
            "results folder %r does not exist or is not a directory; pass the folder that `vlprompt fit` wrote "
            "results to, e.g. `vlprompt leaderboard build results`", str(results_dir),
        )
        return 2
    try:
        paths = build_leaderboards(results_dir, args.out)
    except ResultError as exc:
        log.error("%s", exc)
        return 1
    if not paths:
        log.error(
            "no result files (*.json) under %r; run `vlprompt fit --config ...` first or pass the right folder",
            str(results_dir),
        )
        return 2
    for p in paths:
        log.info("wrote %s", p)
    return 0
