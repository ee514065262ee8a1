"""Which results become leaderboard rows (:data:`SELECTION_RULES`) and how rows are labelled and grouped.

Shared by the Markdown/CSV builder (:mod:`vlprompt.leaderboards.build`), the HTML pages
(:mod:`vlprompt.leaderboards.html`) and the W&B push (:mod:`vlprompt.leaderboards.wandb`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlprompt.learners.registry import get_registry
from vlprompt.metrics import harmonic_mean, t_interval
from vlprompt.runs.results import ResultError, load_result, metric_keys, parse_created

log = logging.getLogger(__name__)


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


@functools.lru_cache(maxsize=None)
def _init_defaults(class_path: str) -> dict[str, Any]:
    """Default init arguments of the registered learner whose class is ``class_path`` (empty when no installed
    learner plugin has that class). Never imports a module named in a result file: only classes the
    registry already loaded from installed entry points are inspected."""
    try:
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


def result_backbone(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """The result's ``backbone`` mapping (empty when missing or malformed)."""
    bb = result.get("backbone")
    return bb if isinstance(bb, Mapping) else {}


def backbone_label(result: Mapping[str, Any]) -> str:
    """``model (pretrained tag or checkpoint file name)``."""
    bb = result_backbone(result)
    model = str(bb.get("model") or bb.get("name") or "?")
    if Path(model).is_absolute():  # a local folder recorded as the model name: its name is what identifies it
        model = Path(model).name
    pretrained = bb.get("pretrained")
    if pretrained:
        return f"{model} ({Path(str(pretrained)).name})"
    return model


def _weights_id(result: Mapping[str, Any]) -> str:
    """What identifies the weights: checkpoint sha256 when known, else the pretrained tag."""
    bb = result_backbone(result)
    return str(bb.get("checkpoint_sha256") or bb.get("pretrained") or "")


def records_track(result: Mapping[str, Any]) -> bool:
    """Whether a result records its resource track (``resources``, written since results record it)."""
    return isinstance(result.get("resources"), list)


def track_cell(result: Mapping[str, Any]) -> str:
    """The resource-track column: what the row used beyond the protocol's labelled images and the frozen backbone
    (``resources`` of the result, e.g. ``LLM text``), ``standard`` when nothing, ``—`` for results written before
    results recorded it."""
    if not records_track(result):
        return "—"
    words = [str(r) for r in result["resources"] if isinstance(r, str) and r]
    return ", ".join(words) if words else "standard"


def shots_cell(result: Mapping[str, Any]) -> str:
    """The shots column: the count, or ``all`` when the whole train split was used (``shots: null``); with the
    label fraction a segmentation run was given (``data.init_args.label_fraction``), e.g. ``90 (10%)``."""
    shots = result.get("shots")
    cell = "all" if shots is None else str(shots)
    data = (result.get("config") or {}).get("data") if isinstance(result.get("config"), Mapping) else None
    args = data.get("init_args") if isinstance(data, Mapping) else None
    fraction = args.get("label_fraction") if isinstance(args, Mapping) else None
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction <= 1:
        cell += f" ({100 * fraction:g}%)"
    return cell


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
        str(result["dataset"]), learner_label(result), str(result_backbone(result).get("model")),
        _weights_id(result), _shots_key(result), _split_id(result),
    )


def learner_key(result: Mapping[str, Any]) -> tuple:
    """A leaderboard entrant across datasets: (learner, backbone label, weights, shots)."""
    return (learner_label(result), backbone_label(result), _weights_id(result), _shots_key(result))


def _row_sort_key(result: Mapping[str, Any]) -> tuple:
    return (str(result["dataset"]), *learner_key(result), str(result.get("_rel", "")))


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


def rank_key(result: Mapping[str, Any]) -> tuple:
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
    conflicted = run_id_conflicts(results)
    for r in results:
        why = conflicted.get(id(r)) or eligibility(r)
        if why is not None:
            left_out.append((str(r.get("_rel")), why))
            continue
        key = _entry_key(r)
        cur = best.get(key)
        if cur is None or rank_key(r) > rank_key(cur):
            if cur is not None:
                left_out.append((str(cur.get("_rel")), "superseded: " + _why_superseded(r, cur)))
            best[key] = r
        else:
            left_out.append((str(r.get("_rel")), "superseded: " + _why_superseded(cur, r)))
    rows = sorted(best.values(), key=_row_sort_key)
    _mark_lookalikes(rows)
    return rows, sorted(left_out)


def _numbers(result: Mapping[str, Any]) -> list:
    return sorted((p.get("seed"), sorted(p.get("metrics", {}).items())) for p in result.get("per_seed", []))


def run_id_conflicts(results: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """``{id(result): reason}`` for results that share a run id but not their numbers: one run cannot have
    two outcomes, and neither file is older than the other, so both are left out as a conflict."""
    by_run: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in results:
        if isinstance(r.get("run_id"), str) and r["run_id"]:
            by_run[r["run_id"]].append(r)
    out: dict[int, str] = {}
    for run_id, group in by_run.items():
        if len(group) > 1 and len({repr(_numbers(r)) for r in group}) > 1:
            files = ", ".join(sorted(str(r.get("_rel")) for r in group))
            for r in group:
                out[id(r)] = (f"conflict: run id {run_id!r} has different numbers in {files}; keep the file of the "
                              "real run and delete the other")
    return out


def _mark_lookalikes(rows: Sequence[dict[str, Any]]) -> None:
    """Set ``_mark`` (`` [split ab12cd34]`` / `` [ckpt ab12cd34]``) on rows that would look identical."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(str(r["dataset"]), learner_label(r), backbone_label(r), str(r.get("shots")))].append(r)
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


def ordered_metrics(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metric columns of ``results``: base, new, hm (classification) or dice, iou, nsd, hd95 (segmentation)
    first, when present, then the others sorted."""
    keys: set[str] = set()
    for r in results:
        keys.update(metric_keys(r))
    front = [k for k in ("base", "new", "hm", "dice", "iou", "nsd", "hd95") if k in keys]
    return front + sorted(keys - set(front))


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
        except (ResultError, TypeError, ValueError, KeyError, AttributeError, RecursionError, MemoryError,
                OSError) as exc:  # nothing in one file may abort the build
            reason = str(exc).replace(str(path) + ": ", "") or type(exc).__name__
            skipped.append((rel, reason))
            log.warning("skipping %s: %s", rel, reason)
            continue
        result["_path"], result["_rel"] = str(path), rel
        results.append(result)
    return results, skipped


# --------------------------------------------------------------------------- intervals, HM conventions, cost
#: how the interval columns are computed, stated on every page that shows them
INTERVAL_NOTE = (
    "95% CI: Student-t interval of the mean over seeds, mean ± t(0.975, n-1) · s / √n (s: sample std, n: seeds; "
    "for HM, of the per-seed HMs), not clipped to 0-100; — for a single seed or where the result file records one "
    "evaluation repeated for every seed (a learner with nothing to train). A row marked \"not separated\" has a "
    "95% CI on the primary metric (HM on base-to-new, else accuracy or the first metric) that overlaps the one of "
    "the row ranked just above it on that metric (the next-higher mean) in the same table and the same resource "
    "track (rows are never ranked across tracks)."
)

#: what the two HM columns mean, stated on the base-to-new pages
HM_NOTE = (
    "\"HM of means\": the harmonic mean of the seed-averaged base and new accuracies (how the field's tables report "
    "it); \"mean of per-seed HM\": the mean over seeds of each seed's HM."
)

#: the cost columns (header, unit in the header), in page order
COST_HEADERS: tuple[str, ...] = ("train s/image", "test s/image", "peak RSS (MiB)", "trainable params", "device")

COST_NOTE = (
    "Cost: train s/image = training seconds / (training images × epochs), test s/image = evaluation seconds / "
    "evaluated images, both averaged over seeds; peak RSS = largest peak resident memory of the process over seeds "
    "(MiB); trainable params = learner parameters that receive gradients; device as recorded. — where the result "
    "file does not record what is needed (results written before these fields existed)."
)


def primary_metric(metrics: Sequence[str]) -> str | None:
    """The metric the bars and curves show and rows are separated on: ``hm`` for base-to-new, else ``accuracy``,
    else the first one."""
    for k in ("hm", "accuracy"):
        if k in metrics:
            return k
    return metrics[0] if metrics else None


def seed_values(result: Mapping[str, Any], key: str) -> list[float] | None:
    """The per-seed values of metric ``key`` (per-seed HMs for ``hm`` of a base-to-new result, from base and new
    where a seed has no ``hm``), or None when some seed lacks it or the result records that its seeds are one
    evaluation repeated (``seed_independent``, or ``trainable: false``: a frozen learner on fixed evaluation sets)."""
    if result.get("seed_independent") or result.get("trainable") is False:
        return None
    out = []
    for p in result.get("per_seed") or []:
        m = p.get("metrics") if isinstance(p, Mapping) else None
        if not isinstance(m, Mapping):
            return None
        v = m.get(key)
        if v is None and key == "hm" and "base" in m and "new" in m:
            v = harmonic_mean(m["base"], m["new"])
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        out.append(float(v))
    return out or None


def interval(result: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    """The 95% t-interval over seeds of metric ``key`` (:func:`vlprompt.metrics.t_interval`), None for one seed."""
    values = seed_values(result, key)
    return t_interval(values) if values else None


def interval_cell(result: Mapping[str, Any], key: str) -> str:
    """``"[low, high]"`` (2 decimals) or ``"—"``."""
    ci = interval(result, key)
    return "—" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def not_separated(rows: Sequence[Mapping[str, Any]], key: str | None) -> list[bool]:
    """Per row (in the given order): True when its 95% interval on ``key`` overlaps that of the row ranked just
    above it, the row of the same resource track (:func:`track_cell`; results that predate the record form their
    own group) with the next-higher mean of ``key`` (ties: the row listed first). Rows are never ranked across
    tracks. Rows without an interval are never marked."""
    out = [False] * len(rows)
    if key is None:
        return out
    means = []
    for r in rows:
        summary = r.get("summary") if isinstance(r.get("summary"), Mapping) else {}
        v = summary.get(key)
        means.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
    for track in dict.fromkeys(track_cell(r) for r in rows):
        ranked = sorted((i for i, m in enumerate(means) if m is not None and track_cell(rows[i]) == track),
                        key=lambda i: (-means[i], i))
        for above, below in zip(ranked, ranked[1:]):
            a, b = interval(rows[above], key), interval(rows[below], key)
            out[below] = a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]
    return out


def _per_seed_numbers(result: Mapping[str, Any], key: str) -> list[float] | None:
    out = []
    for p in result.get("per_seed") or []:
        v = p.get(key) if isinstance(p, Mapping) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        out.append(float(v))
    return out or None


def cost(result: Mapping[str, Any]) -> dict[str, Any]:
    """The cost figures of a result (keys of :data:`COST_HEADERS`; None where the file lacks what is needed)."""
    out: dict[str, Any] = {h: None for h in COST_HEADERS}
    train_s, train_n = _per_seed_numbers(result, "train_seconds"), _per_seed_numbers(result, "train_images")
    epochs = _per_seed_numbers(result, "epochs")
    if train_s and train_n and epochs and all(n * e > 0 for n, e in zip(train_n, epochs)):
        out["train s/image"] = sum(s / (n * e) for s, n, e in zip(train_s, train_n, epochs)) / len(train_s)
    test_s, test_n = _per_seed_numbers(result, "test_seconds"), _per_seed_numbers(result, "test_images")
    if test_s and test_n and all(n > 0 for n in test_n):
        out["test s/image"] = sum(s / n for s, n in zip(test_s, test_n)) / len(test_s)
    rss = _per_seed_numbers(result, "peak_rss_mib")
    if rss:
        out["peak RSS (MiB)"] = max(rss)
    params = result.get("trainable_params")
    if isinstance(params, int) and not isinstance(params, bool):
        out["trainable params"] = params
    if isinstance(result.get("device"), str) and result["device"]:
        out["device"] = result["device"]
    return out


def cost_cells(result: Mapping[str, Any]) -> list[str]:
    """:func:`cost` as table cells (``—`` where unknown)."""
    c = cost(result)
    fmt = {"train s/image": "{:.4g}", "test s/image": "{:.4g}", "peak RSS (MiB)": "{:.0f}", "trainable params": "{:,}"}
    return ["—" if c[h] is None else fmt.get(h, "{}").format(c[h]) for h in COST_HEADERS]
