"""Static HTML leaderboards: ``vlprompt leaderboard build RESULTS --out DIR --html``.

Beside each ``<out>/<protocol>/<benchmark>/README.md`` this writes ``index.html``: sortable tables (per dataset
and the average over datasets), a base-vs-new scatter, HM (or primary metric) bars per dataset and few-shot
curves (primary metric against shots), drawn with plotly; for segmentation results (``dice`` / ``iou`` metrics)
Dice bars and an overlay gallery (PNGs listed under ``artifacts`` keys ending in ``/overlays``, embedded as data
URIs). plotly.js is inlined once per page (``plotly="inline"``), or written once to ``<out>/assets/`` and loaded by
a relative classic ``<script src>`` (``plotly="shared"``, the committed ``leaderboards/``); either way the page needs
no network when it is viewed, also from ``file://``. Rows are the ones :func:`vlprompt.leaderboards.build.select_results`
picks, so the HTML and the Markdown always agree. :func:`build_figures` is shared with
``vlprompt leaderboard push --wandb``.

Numbers that papers report come from ``leaderboards/reported/*.yaml`` (see :mod:`vlprompt.leaderboards.reported`); each entry
must name its source. They are shown in their own table and as hollow diamonds in the scatter, labelled
"reported", never mixed into our rows.

The output is byte-for-byte reproducible: no timestamps, fixed plot div ids, sorted inputs, and plotly's
JSON of the same figure is the same for the same plotly version.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlprompt.data.atomic import atomic_write_text
from vlprompt.leaderboards.reported import (
    REPORTED_DIR,
    REPORTED_METRICS,
    REPORTED_TOLERANCE,
    COMPARISON_NOTE,
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
    backbone_label,
    cost_cells,
    cost,
    interval,
    interval_cell,
    not_separated,
    primary_metric,
    learner_key,
    learner_label,
    load_results_tolerant,
    ordered_metrics,
    select_results,
)
from vlprompt.metrics import harmonic_mean
from vlprompt.runs.results import ResultError, format_mean_std, resolve_recorded_path, safe_name

log = logging.getLogger(__name__)

__all__ = ["PLOTLY_JSON_ENGINE", "render_html", "build_html_leaderboards", "build_figures", "overlay_paths",
           "primary_metric"]

# --------------------------------------------------------------------------- helpers
def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table_html(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[tuple[str, Any]]],
                row_classes: Sequence[str] | None = None) -> str:
    """A sortable table; each cell is ``(text, sort key)`` (numbers sort numerically)."""
    out = [f'<table class="sortable" id="{_e(table_id)}"><thead><tr>']
    out += [f'<th data-col="{i}">{_e(h)}</th>' for i, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for j, row in enumerate(rows):
        cls = f' class="{row_classes[j]}"' if row_classes and row_classes[j] else ""
        out.append(f"<tr{cls}>")
        for text, key in row:
            sort = "" if key is None else f' data-sort="{_e(key)}"'
            out.append(f"<td{sort}>{_e(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


#: plotly's JSON engine for every page: the standard library's, chosen explicitly. plotly's default ("auto")
#: takes orjson where it is installed, which writes non-ASCII characters raw ("±") where json writes "\u00b1", so a
#: page would depend on the machine that built it.
PLOTLY_JSON_ENGINE = "json"


def _figure_div(fig: Any, div_id: str) -> str:
    import plotly.io as pio  # deferred: plotly is heavy (HTML pages only)

    config = pio.json.config
    previous = config.default_engine
    config.default_engine = PLOTLY_JSON_ENGINE  # to_html has no engine argument: set it for this call only
    try:
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True})
    finally:
        config.default_engine = previous


def averages(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Per entrant (learner label, backbone, shots): mean over datasets of each metric (HM of the means)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[learner_key(r)].append(r)
    out = []
    for key in sorted(groups):
        per_dataset = {str(r["dataset"]): r for r in groups[key]}
        group = [per_dataset[d] for d in sorted(per_dataset)]
        means: dict[str, float] = {}
        for k in metrics:
            vals = [v for v in (_num(r["summary"].get(k)) for r in group) if v is not None]
            if vals:
                means[k] = sum(vals) / len(vals)
        if "base" in means and "new" in means:
            means["hm"] = harmonic_mean(means["base"], means["new"])
        first = group[0]
        out.append({"learner": learner_label(first), "backbone": backbone_label(first), "shots": first.get("shots"),
                    "datasets": len(group), **means})
    return out


# --------------------------------------------------------------------------- rendering
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child,td:not([data-sort]){text-align:left}th{background:#f0f0f0;cursor:pointer;user-select:none}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
tr.reported td{background:#fff6e0;font-style:italic}.badge{background:#e08a00;color:#fff;border-radius:3px;padding:0 .4em;font-size:.8em}
.note{color:#555;font-size:.9em}.plot{min-height:420px}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th) {
    th.addEventListener('click', function () {
      var col = Number(th.dataset.col), asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(r) { var c = r.cells[col], s = c.dataset.sort; return s === undefined ? c.textContent : s; }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y), d;
        d = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def render_html(protocol: str, benchmark: str, rows: Sequence[dict[str, Any]],
                reported: Sequence[Mapping[str, Any]] = (), *, plotly_src: str | None = None) -> str:
    """The whole page (str) for one leaderboard; ``rows`` as :func:`~vlprompt.leaderboards.build.select_results` gives.

    plotly.js is inlined, or, with ``plotly_src`` (a relative path, see :func:`build_html_leaderboards`), loaded by a
    classic ``<script src>`` from a file beside the pages (works from ``file://``, no network)."""
    import plotly.offline  # deferred: plotly is heavy (HTML pages only)

    metrics = ordered_metrics(rows)
    prim = primary_metric(metrics)
    datasets = sorted({str(r["dataset"]) for r in rows})
    title = f"Leaderboard: {protocol} / {benchmark}"
    unit = "Dice / IoU of the predicted masks, %" if "dice" in metrics else "top-1 accuracy, %"
    parts = [f"<h1>{_e(title)}</h1>",
             '<p class="note">Generated by <code>vlprompt leaderboard build --html</code> from result files; numbers are '
             f"mean ± std over seeds ({unit}). Click a column header to sort. Rows marked "
             '<span class="badge">reported</span> are numbers copied from papers (with their source), not our runs.</p>',
             f'<p class="note" id="note-interval">{_e(INTERVAL_NOTE)}</p>',
             *([f'<p class="note" id="note-hm">{_e(HM_NOTE)}</p>'] if "base" in metrics and "new" in metrics else []),
             f'<p class="note" id="note-cost">{_e(COST_NOTE)} Definitions: docs/metrics.md.</p>']

    # ---- tables; a "shots" column and few-shot curves only where some row was run with a number of shots
    has_shots = any(_num(r.get("shots")) is not None for r in rows)
    shot_cols = ["shots"] if has_shots else []
    b2n = "base" in metrics and "new" in metrics
    heads = []
    for k in metrics:
        head = ("HM of means" if b2n and k == "hm" else k)
        heads += ([head, "mean of per-seed HM", "per-seed HM 95% CI"] if b2n and k == "hm"
                  else [head, f"{head} 95% CI"])
    headers = ["learner", "backbone", *shot_cols, "seeds", *heads, "vs next-higher row", *COST_HEADERS]
    for i, dataset in enumerate(datasets):
        trs = []
        group = [r for r in rows if str(r["dataset"]) == dataset]
        for r, close in zip(group, not_separated(group, prim)):
            s = r["summary"]
            cells: list[tuple[str, Any]] = []
            for k in metrics:
                ci = interval(r, k)
                cells.append((format_mean_std(s, k, missing="–"), _num(s.get(k))))
                if b2n and k == "hm":
                    hm_seed = _num(s.get("hm_seed_mean"))
                    cells.append(("—" if hm_seed is None else f"{hm_seed:.2f}", hm_seed))
                cells.append((interval_cell(r, k), None if ci is None else ci[0]))
            costs = cost(r)
            trs.append([(learner_label(r) + r.get("_mark", ""), None), (backbone_label(r), None),
                        *([(r.get("shots"), _num(r.get("shots")))] if has_shots else []),
                        (s.get("n_seeds", len(r.get("per_seed", []))), None)]
                       + cells + [("not separated" if close else "", None)]
                       + [(text, _num(costs[h]) if h != "device" else None)
                          for text, h in zip(cost_cells(r), COST_HEADERS)])
        parts += [f"<h2>{_e(dataset)}</h2>", _table_html(f"table-dataset-{i}", headers, trs)]
    avgs = averages(rows, metrics)
    if len(datasets) > 1:
        trs = [[(a["learner"], None), (a["backbone"], None), *([(a["shots"], _num(a["shots"]))] if has_shots else []),
                (a["datasets"], None)]
               + [(f"{a[k]:.2f}" if k in a else "–", a.get(k)) for k in metrics] for a in avgs]
        parts += ["<h2>Average over datasets</h2>",
                  _table_html("table-average", ["learner", "backbone", *shot_cols, "datasets", *metrics], trs)]
    if reported:
        rmetrics = [k for k in REPORTED_METRICS if any(k in e for e in reported)]
        trs = [[(f"{e['learner']} (reported)", None), (e["backbone"], None), (e["dataset"], None)]
               + [(f"{e[k]:.2f}" if k in e else "–", e.get(k)) for k in rmetrics]
               + ([(e.get("hm_convention") or "not stated", None)] if "hm" in rmetrics else []) + [(e["source"], None)]
               for e in reported]
        parts += ['<h2>Reported in papers <span class="badge">reported</span></h2>',
                  '<p class="note">Copied from the cited papers (their backbone and datasets, not this benchmark\'s); '
                  "shown for reference, never ranked with our rows. Source files: <code>leaderboards/reported/</code>.</p>",
                  _table_html("table-reported", ["learner", "backbone", "dataset", *rmetrics,
                                                 *(["HM convention"] if "hm" in rmetrics else []), "source"], trs,
                              ["reported"] * len(trs))]

    pairs = compare_with_reported(protocol, rows, reported)
    if pairs:
        heads, cells = comparison_rows(pairs)
        keys = {"ours (seed range)": "ours", "reported": "reported", "diff": "diff"}
        trs = [[(c, pair[keys[h]] if h in keys else None) for h, c in zip(heads, row)]
               for pair, row in zip(pairs, cells)]
        parts += ['<h2>Ours beside reported <span class="badge">reported</span></h2>',
                  f'<p class="note" id="note-comparison">{_e(COMPARISON_NOTE.format(tol=REPORTED_TOLERANCE))}</p>',
                  _table_html("table-comparison", heads, trs)]
    elif (line := unmatched_note(rows, reported)) is not None:
        parts += ["<h2>Ours beside reported</h2>", f'<p class="note" id="note-comparison">{_e(line)}</p>']

    # ---- plots
    figs = build_figures(rows, reported)
    if "scatter" in figs:
        parts += ["<h2>Base vs new</h2>", _figure_div(figs["scatter"], "plot-scatter")]
    if "bars" in figs:
        parts += [f"<h2>{_e(prim)} per dataset</h2>", _figure_div(figs["bars"], "plot-bars")]
    if "dice" in figs:
        parts += ["<h2>Dice per dataset</h2>", _figure_div(figs["dice"], "plot-dice")]
    if prim is not None and has_shots:
        if "fewshot" in figs:
            parts += ["<h2>Few-shot curves</h2>", _figure_div(figs["fewshot"], "plot-fewshot")]
        else:
            parts += ["<h2>Few-shot curves</h2>",
                      '<p class="note" id="no-fewshot">Every learner here was run with one number of shots only; '
                      "run other <code>--data.init_args.shots</code> values to get curves.</p>"]
    parts += _segmentation_parts(rows, figs)

    if plotly_src is None:
        script = f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
    else:
        script = f'<script type="text/javascript" src="{_e(plotly_src)}" charset="utf-8"></script>'
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>", script, "</head>", "<body>",
        *parts, f"<script>{_SORT_JS}</script>", "</body>", "</html>", "",
    ])


def build_figures(rows: Sequence[dict[str, Any]], reported: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The page's plotly figures by name: ``scatter`` (base vs new, with reported points), ``bars`` (primary metric
    per dataset), ``fewshot`` (primary metric vs shots, when some learner has several shots), ``dice`` (Dice per
    dataset, segmentation results). Shared by the HTML page and ``vlprompt leaderboard push --wandb``."""
    import plotly.graph_objects as go  # deferred: plotly is heavy (HTML pages only)

    metrics = ordered_metrics(rows)
    b2n = "base" in metrics and "new" in metrics
    prim = primary_metric(metrics)
    datasets = sorted({str(r["dataset"]) for r in rows})
    avgs = averages(rows, metrics)
    figs: dict[str, Any] = {}
    learners = sorted({learner_label(r) for r in rows})
    layout = dict(template="plotly_white", height=420, margin=dict(l=60, r=20, t=50, b=60))
    if b2n:
        fig = go.Figure()
        for lab in learners:
            pts = [r for r in rows if learner_label(r) == lab]
            fig.add_trace(go.Scatter(
                x=[r["summary"].get("base") for r in pts], y=[r["summary"].get("new") for r in pts], mode="markers",
                name=lab, text=[str(r["dataset"]) for r in pts], hovertemplate="%{text}<br>base %{x:.2f}, new %{y:.2f}"))
        for e in reported:
            if "base" in e and "new" in e:
                fig.add_trace(go.Scatter(
                    x=[e["base"]], y=[e["new"]], mode="markers", name=f"{e['learner']} (reported)",
                    marker=dict(symbol="diamond-open", size=11, line=dict(width=2)),
                    text=[f"{e['dataset']}, {e['backbone']} - {e['source']}"],
                    hovertemplate="reported: %{text}<br>base %{x:.2f}, new %{y:.2f}"))
        fig.update_layout(title="Base vs new accuracy (each point: one learner on one dataset)",
                          xaxis_title="base accuracy (%)", yaxis_title="new accuracy (%)", **layout)
        figs["scatter"] = fig
    if prim is not None and "dice" not in metrics:  # segmentation pages show Dice bars with std instead
        fig = go.Figure()
        for lab in learners:
            by_d = {str(r["dataset"]): r for r in rows if learner_label(r) == lab}
            fig.add_trace(go.Bar(x=[d for d in datasets if d in by_d],
                                 y=[by_d[d]["summary"].get(prim) for d in datasets if d in by_d], name=lab))
        fig.update_layout(barmode="group", title=f"{prim} per dataset", yaxis_title=f"{prim} (%)", **layout)
        figs["bars"] = fig
    if prim is not None:
        shots_of: dict[str, set] = defaultdict(set)
        for r in rows:
            if _num(r.get("shots")) is not None:
                shots_of[learner_label(r)].add(r.get("shots"))
        if any(len(v) > 1 for v in shots_of.values()):
            fig = go.Figure()
            for lab in learners:
                pts = sorted((a["shots"], a[prim]) for a in avgs
                             if a["learner"] == lab and _num(a["shots"]) is not None and prim in a)
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=lab))
            fig.update_layout(title=f"Few-shot curves: {prim} (mean over datasets) vs shots per class",
                              xaxis_title="shots per class", yaxis_title=f"{prim} (%)", **layout)
            figs["fewshot"] = fig
    dice = _dice_figure(rows, layout)
    if dice is not None:
        figs["dice"] = dice
    return figs


# --------------------------------------------------------------------------- segmentation: Dice bars, overlay gallery
#: overlays shown per row (learner x dataset) in the gallery; the rest are counted, not embedded
MAX_OVERLAYS_PER_ROW = 4

_SEG_CSS = """
.gallery{display:flex;flex-wrap:wrap;gap:.6em;margin:.4em 0 1.2em}.gallery figure{margin:0;border:1px solid #ccc;padding:.3em}
.gallery img{display:block;max-width:256px;max-height:256px;image-rendering:pixelated;min-width:96px}
.gallery figcaption{font-size:.8em;color:#555;max-width:256px;overflow-wrap:anywhere}
"""


def _dice_figure(rows: Sequence[dict[str, Any]], layout: Mapping[str, Any]) -> Any:
    """Grouped bars of Dice per dataset (one bar per learner, error bar: std over seeds, IoU in the hover), or
    ``None`` when no row has a ``dice`` summary."""
    import plotly.graph_objects as go  # deferred: plotly is heavy (HTML pages only)

    seg = [r for r in rows if _num(r["summary"].get("dice")) is not None]
    if not seg:
        return None
    datasets = sorted({str(r["dataset"]) for r in seg})
    fig = go.Figure()
    for lab in sorted({learner_label(r) for r in seg}):
        by_d = {str(r["dataset"]): r for r in seg if learner_label(r) == lab}
        ds = [d for d in datasets if d in by_d]
        fig.add_trace(go.Bar(
            x=ds, y=[by_d[d]["summary"]["dice"] for d in ds], name=lab,
            error_y=dict(type="data", array=[_num(by_d[d]["summary"].get("dice_std")) or 0.0 for d in ds]),
            customdata=[_num(by_d[d]["summary"].get("iou")) for d in ds],
            hovertemplate="%{x}<br>Dice %{y:.2f}, IoU %{customdata:.2f}"))
    fig.update_layout(barmode="group", title="Dice per dataset (mean ± std over seeds)", yaxis_title="Dice (%)",
                      **layout)
    return fig


def overlay_paths(result: Mapping[str, Any]) -> list[Path]:
    """The overlay PNGs of ``result`` (see :func:`_overlay_entries`), in order."""
    return [p for _, p in _overlay_entries(result)]


def _overlay_entries(result: Mapping[str, Any]) -> list[tuple[str, Path]]:
    """``(key prefix, path)`` of the overlay PNGs a result lists under ``artifacts`` keys ending in ``/overlays`` (e.g. ``seed1/overlays``),
    sorted by key then path. A value is a path (a PNG, or a folder whose ``*.png`` are taken), a list of paths, or
    a mapping with ``path`` / ``paths``, plain or in the portable form (``vlprompt:``, ``results:``; an ``external:``
    name is skipped). Relative paths are taken from the working directory, else from the result file's folder.
    Missing files are skipped with a warning."""
    artifacts = result.get("artifacts")
    if not isinstance(artifacts, Mapping):
        return []
    base = Path(str(result.get("_path", "."))).parent
    rel = result.get("_rel")
    root = Path(str(result["_path"])).parents[len(Path(rel).parts) - 1] if rel and result.get("_path") else None
    out: list[tuple[str, Path]] = []
    for key in sorted(k for k in artifacts if isinstance(k, str) and k.endswith("/overlays")):
        prefix = key[: -len("/overlays")]
        value = artifacts[key]
        if isinstance(value, Mapping):
            value = value.get("paths", value.get("path"))
        items = [value] if isinstance(value, (str, os.PathLike)) else list(value or []) if isinstance(value, list) else []
        for item in items:
            if not isinstance(item, (str, os.PathLike)):
                continue
            p = resolve_recorded_path(os.fspath(item), results_root=root)  # vlprompt:, results:, plain paths
            if p is None:
                log.warning("%s: overlay %s (artifacts[%r]) was recorded outside the results tree and the "
                            "working directory; not embedded", result.get("_rel", "result"), item, key)
                continue
            if not p.is_absolute() and not p.exists() and (base / p).exists():
                p = base / p
            if p.is_dir():
                out += [(prefix, q) for q in sorted(p.glob("*.png"))]
            elif p.is_file() and p.suffix.lower() == ".png":
                out.append((prefix, p))
            else:
                log.warning("%s: overlay %s (artifacts[%r]) is not a PNG file or folder; skipped",
                            result.get("_rel", "result"), item, key)
    # a result file is untrusted (issue 23): only PNGs inside the results tree (the folder holding the results
    # folder, where run folders sit beside it) or the working directory are read, after resolving symlinks; an
    # absolute folder elsewhere or ../ out of both never embeds other files
    allowed = [Path.cwd().resolve()] + ([root.resolve(), root.resolve().parent] if root is not None else [])
    kept = []
    for prefix, p in out:
        real = p.resolve()
        if any(real.is_relative_to(a) for a in allowed):
            kept.append((prefix, p))
        else:
            log.warning("%s: overlay %s resolves to %s, outside the results tree (%s) and the working directory; "
                        "not embedded", result.get("_rel", "result"), p, real, root.resolve().parent if root else "-")
    return kept


def _png_data_uri(path: Path) -> str | None:
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        log.warning("overlay %s is not a PNG (bad signature); skipped", path)
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _segmentation_parts(rows: Sequence[dict[str, Any]], figs: Mapping[str, Any]) -> list[str]:
    """The overlay gallery of a segmentation page (rows with ``dice``): per dataset, up to
    :data:`MAX_OVERLAYS_PER_ROW` overlays per learner, embedded as data URIs (the page stays one file, no network)."""
    seg = [r for r in rows if _num(r["summary"].get("dice")) is not None]
    if not seg:
        return []
    parts = [f"<style>{_SEG_CSS}</style>", "<h2>Overlays</h2>",
             '<p class="note">Predicted masks over test images, as the runs saved them (result <code>artifacts</code> '
             f"ending in <code>/overlays</code>); at most {MAX_OVERLAYS_PER_ROW} per learner and dataset.</p>"]
    shown = 0
    for i, dataset in enumerate(sorted({str(r["dataset"]) for r in seg})):
        figures = []
        for r in sorted((r for r in seg if str(r["dataset"]) == dataset), key=learner_label):
            entries = _overlay_entries(r)
            row = []
            for prefix, p in entries[:MAX_OVERLAYS_PER_ROW]:
                uri = _png_data_uri(p)
                if uri is None:
                    continue
                caption = f"{learner_label(r)}, {prefix}: {p.name}"
                row.append(f'<figure><img src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>')
            if len(entries) > MAX_OVERLAYS_PER_ROW:
                row.append(f'<p class="note">{_e(learner_label(r))}: {len(entries) - MAX_OVERLAYS_PER_ROW} more '
                           "overlay(s) not embedded</p>")
            if row:
                figures.append(f'<div class="gallery">{"".join(row)}</div>')
        if figures:
            shown += 1
            parts += [f"<h3>{_e(dataset)}</h3>", f'<div id="gallery-{i}">{"".join(figures)}</div>']
    if not shown:
        parts.append('<p class="note" id="no-overlays">No overlays: these results list no <code>*/overlays</code> '
                     "artifacts.</p>")
    return parts


def plotly_asset_name() -> str:
    """File name of the shared plotly.js asset: ``plotly-<plotly.js version>.min.js``."""
    import plotly.offline  # deferred: plotly is heavy (HTML pages only)

    return f"plotly-{plotly.offline.get_plotlyjs_version()}.min.js"


def build_html_leaderboards(results_dir: str | Path, out_dir: str | Path, *,
                            reported_dir: str | Path | None = REPORTED_DIR, plotly: str = "inline") -> list[Path]:
    """Write ``<out_dir>/<protocol>/<benchmark>/index.html`` for every leaderboard of ``results_dir``.

    Reported numbers are read first (so a bad YAML fails before anything is written); a page shows the entries
    whose ``protocol`` matches. Returns the written paths (sorted).

    ``plotly``: ``inline`` (default) puts plotly.js (~4.7 MB) into every page, so a page is one self-contained file;
    ``shared`` writes it once to ``<out_dir>/assets/plotly-<version>.min.js`` and each page loads it with a relative
    classic ``<script src>``, which browsers load from ``file://`` as well (no network; the folder must stay
    together). The committed ``leaderboards/`` use ``shared``.
    """
    if plotly not in ("inline", "shared"):
        raise ValueError(f"plotly={plotly!r}: use 'inline' (plotly.js in every page) or 'shared' (one file in assets/)")
    reported = load_reported(reported_dir) if reported_dir is not None else []
    results, _ = load_results_tolerant(Path(results_dir))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(str(r["protocol"]), str(r["benchmark"]))].append(r)
    written = []
    asset = Path(out_dir) / "assets" / plotly_asset_name()
    if plotly == "shared" and groups:
        from plotly.offline import get_plotlyjs  # deferred: plotly is heavy

        asset.parent.mkdir(parents=True, exist_ok=True)
        js = get_plotlyjs()
        if not asset.exists() or asset.read_text(encoding="utf-8") != js:
            atomic_write_text(asset, js)
        written.append(asset)
    for protocol, benchmark in sorted(groups):
        rows, _ = select_results(groups[(protocol, benchmark)])
        if not rows:
            continue
        path = Path(out_dir) / safe_name(protocol) / safe_name(benchmark) / "index.html"
        src = os.path.relpath(asset, path.parent).replace(os.sep, "/") if plotly == "shared" else None
        page = render_html(protocol, benchmark, rows, reported_for_page(protocol, rows, reported), plotly_src=src)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != page:
            atomic_write_text(path, page)
        written.append(path)
    return sorted(written)

