"""Numbers that papers report, and ours beside them: ``leaderboards/reported/*.yaml``.

:func:`load_reported` reads and checks the files (every entry names its source). :func:`compare_with_reported`
pairs each of our leaderboard rows with the reported entry of the same protocol, dataset, learner, backbone
architecture, weights and shots, and flags a pair whose difference exceeds the spread of our seeds plus a stated
tolerance (:func:`disagrees`). A reported entry is never ranked with our rows; the comparison is shown in its own
table on the Markdown and HTML pages (``vlprompt leaderboard build``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from vlprompt.leaderboards.select import result_backbone, seed_values
from vlprompt.metrics import harmonic_mean
from vlprompt.runs.results import ResultError

__all__ = ["REPORTED_DIR", "REPORTED_METRICS", "HM_CONVENTIONS", "SOURCE_KINDS", "REPORTED_TOLERANCE",
           "AVERAGE_DATASET", "COOP_DATASETS", "COMPARISON_NOTE", "comparison_rows", "unmatched_note", "ReportedError", "load_reported", "backbone_key", "result_backbone_key",
           "result_weights", "published_checksums", "disagrees", "compare_with_reported", "reported_for_page"]

#: default folder of reported (paper) numbers, relative to the working directory
REPORTED_DIR = "leaderboards/reported"

#: the metrics a reported entry may carry (percent)
REPORTED_METRICS = ("base", "new", "hm", "accuracy")

#: the values of a reported entry's ``hm_convention``: how its source computed HM over seeds
HM_CONVENTIONS = ("HM of means", "mean of per-seed HM")

#: the values of a reported entry's ``source_kind``: where the number was read
SOURCE_KINDS = ("paper table", "README", "derived")

#: percentage points added to the spread of our seeds before a difference to a reported number is flagged
REPORTED_TOLERANCE = 1.0

#: the dataset name of the reported 11-dataset averages of base-to-new tables
AVERAGE_DATASET = "average (11 datasets)"


#: the 11 datasets of the CoOp benchmark (vlprompt's names), over which the reported averages are taken
COOP_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                 "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")


#: the note above an "ours beside reported" table (Markdown and HTML)
COMPARISON_NOTE = (
    "Our rows beside the numbers a paper reports for the same protocol, dataset, learner, architecture, weights "
    "and shots (`leaderboards/reported/`). `ours`: mean over our seeds, with their range; `diff`: ours - reported. "
    "A pair is flagged when |diff| exceeds the range of our seeds plus {tol:g} percentage points. The 11-dataset "
    "average is compared only where our rows cover all 11 datasets."
)


class ReportedError(ResultError):
    """A reported-numbers YAML file is malformed (e.g. an entry without a source)."""


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def backbone_key(model: str) -> str:
    """An architecture name reduced so that a paper's spelling and open_clip's meet: lower case, alphanumerics only,
    QuickGELU suffix dropped (``ViT-B/16`` and ``ViT-B-16-quickgelu`` both give ``vitb16``)."""
    return _norm(re.sub(r"[-_]?quickgelu$", "", str(model).strip(), flags=re.IGNORECASE))


def load_reported(folder: str | Path) -> list[dict[str, Any]]:
    """Every entry of ``folder/*.yaml`` (sorted by file, then order in the file).

    File format::

        protocol: base2new            # pages of this protocol show these entries
        backbone: ViT-B/16
        weights: openai               # optional (default openai): the pretrained tag the numbers were made with
        shots: 16
        entries:
          - learner: CoOp
            learner_id: coop          # optional: vlprompt's learner name when it is not the learner's name in
                                      # lower-case alphanumerics (e.g. zero_shot for "CLIP (zero-shot)")
            dataset: eurosat          # vlprompt's dataset name, or "average (11 datasets)"
            base: 92.19
            new: 54.74
            hm: 68.69
            hm_convention: HM of means  # optional: "HM of means" or "mean of per-seed HM", as the source computed it
            source_kind: paper table    # optional: "paper table", "README" or "derived"
            source: "Zhou et al., Conditional Prompt Learning for Vision-Language Models, CVPR 2022, Table 1"

    An entry without a non-empty ``source`` (or without ``learner``, or with a non-numeric metric, or an unknown
    ``hm_convention`` / ``source_kind``) raises :class:`ReportedError` naming the file, the entry and the fix. A
    missing folder gives ``[]``.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    out: list[dict[str, Any]] = []
    for path in sorted(root.glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ReportedError(f"{path}: not valid YAML ({exc}); fix the file") from exc
        except UnicodeDecodeError as exc:
            raise ReportedError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
        if not isinstance(doc, Mapping) or not isinstance(doc.get("entries"), list):
            raise ReportedError(f"{path}: expected a mapping with a list under 'entries' (see vlprompt.leaderboards.reported)")
        protocol = doc.get("protocol")
        if not isinstance(protocol, str) or not protocol:
            raise ReportedError(f"{path}: 'protocol' must name the protocol these numbers belong to, e.g. base2new")
        for i, entry in enumerate(doc["entries"]):
            out.append(_check_entry(path, i, entry, doc, protocol))
    return out


def _check_entry(path: Path, i: int, entry: Any, doc: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    where = f"{path}: entry {i}"
    if not isinstance(entry, Mapping):
        raise ReportedError(f"{where}: must be a mapping, got {entry!r:.60}")
    where += f" ({entry.get('learner')!r})"
    source = entry.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ReportedError(
            f"{where} has no 'source'; every reported number needs one (paper, venue, table), "
            "e.g. source: \"Zhou et al., CVPR 2022, Table 1\""
        )
    if not isinstance(entry.get("learner"), str) or not entry["learner"]:
        raise ReportedError(f"{where}: 'learner' must be a non-empty string")
    learner_id = entry.get("learner_id", _norm(entry["learner"]))
    if not isinstance(learner_id, str) or not learner_id:
        raise ReportedError(f"{where}: 'learner_id' must be vlprompt's learner name, e.g. coop, got {learner_id!r:.60}")
    metrics = {}
    for k in REPORTED_METRICS:
        if k in entry:
            v = entry[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ReportedError(f"{where}: {k!r} must be a number, got {v!r}")
            metrics[k] = float(v)
    if not metrics:
        raise ReportedError(f"{where}: no metric ({', '.join(REPORTED_METRICS)}) given")
    convention = entry.get("hm_convention", doc.get("hm_convention"))
    if convention is not None and convention not in HM_CONVENTIONS:
        raise ReportedError(f"{where}: 'hm_convention' must be one of {', '.join(map(repr, HM_CONVENTIONS))} "
                            f"(or left out when the source does not say), got {convention!r:.60}")
    kind = entry.get("source_kind", doc.get("source_kind"))
    if kind is not None and kind not in SOURCE_KINDS:
        raise ReportedError(f"{where}: 'source_kind' must be one of {', '.join(map(repr, SOURCE_KINDS))}, "
                            f"got {kind!r:.60}")
    return {
        "protocol": protocol, "backbone": str(entry.get("backbone") or doc.get("backbone") or "?"),
        "weights": str(entry.get("weights") or doc.get("weights") or "openai"),
        "learner": entry["learner"], "learner_id": learner_id, "dataset": str(entry.get("dataset") or "average"),
        "shots": entry.get("shots", doc.get("shots")), "source": source.strip(), "file": path.name,
        **({"hm_convention": convention} if convention is not None else {}),
        **({"source_kind": kind} if kind is not None else {}),
        **metrics,
    }


# --------------------------------------------------------------------------- our rows beside reported ones
def result_backbone_key(result: Mapping[str, Any]) -> str:
    """:func:`backbone_key` of the architecture a result ran (its backbone's ``model``)."""
    bb = result_backbone(result)
    return backbone_key(Path(str(bb.get("model") or bb.get("name") or "")).name)


def result_weights(result: Mapping[str, Any], known_sha256: Mapping[str, str] | None = None) -> str | None:
    """The pretrained tag of a result's weights: its recorded ``pretrained`` tag when that is a tag (``openai``),
    else the tag whose published checksum equals the recorded ``checkpoint_sha256`` (``known_sha256``: sha256 ->
    tag), else None (weights we cannot identify are never compared with a paper's)."""
    bb = result_backbone(result)
    tag = bb.get("pretrained")
    if isinstance(tag, str) and tag and "/" not in tag and "\\" not in tag and "." not in tag and ":" not in tag:
        return tag
    sha = bb.get("checkpoint_sha256")
    if isinstance(sha, str) and known_sha256:
        return known_sha256.get(sha.lower())
    return None


def published_checksums() -> dict[str, str]:
    """sha256 -> pretrained tag for every open_clip weight file whose download address carries its sha256 (the
    OpenAI checkpoints: ``.../clip/models/<sha256>/ViT-B-16.pt``), so a result run from a local copy of those
    weights is recognised as ``openai``."""
    import open_clip  # deferred: heavy, and only needed when a result names its weights by file

    out: dict[str, str] = {}
    for model, tag in open_clip.list_pretrained():
        url = str(open_clip.get_pretrained_cfg(model, tag).get("url") or "")
        m = re.search(r"/([0-9a-f]{64})/", url)
        if m:
            out[m.group(1)] = tag
    return out


def disagrees(ours: float, reported: float, seed_spread: float, tolerance: float = REPORTED_TOLERANCE) -> bool:
    """True when ``|ours - reported| > seed_spread + tolerance`` (all in percentage points).

    Args:
        ours: our mean over seeds.
        reported: the paper's number.
        seed_spread: max - min of our per-seed values (0 for one seed).
        tolerance: the margin stated on the page (:data:`REPORTED_TOLERANCE`).
    """
    return abs(float(ours) - float(reported)) > float(seed_spread) + float(tolerance)


def _metric_values(result: Mapping[str, Any], key: str) -> tuple[float, list[float]] | None:
    summary = result.get("summary") if isinstance(result.get("summary"), Mapping) else {}
    mean = summary.get(key)
    if isinstance(mean, bool) or not isinstance(mean, (int, float)):
        return None
    return float(mean), seed_values(result, key) or [float(mean)]


def _matches(entry: Mapping[str, Any], result: Mapping[str, Any], protocol: str, weights: str | None) -> bool:
    return (entry["protocol"] == protocol and entry["learner_id"] == str(result.get("learner"))
            and backbone_key(entry["backbone"]) == result_backbone_key(result) and entry["weights"] == weights
            and (entry.get("shots") is None or entry.get("shots") == result.get("shots")))


def compare_with_reported(protocol: str, rows: Sequence[Mapping[str, Any]], reported: Sequence[Mapping[str, Any]], *,
                          tolerance: float = REPORTED_TOLERANCE,
                          known_sha256: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Our rows beside the reported entries they reproduce, one dict per (row, metric).

    A row meets an entry of the same ``protocol``, dataset, learner (``learner_id``), architecture
    (:func:`backbone_key`), weights (:func:`result_weights`) and shots. Where one learner's rows cover every dataset
    of a reported average (``dataset: average (11 datasets)``, the 11 CoOp datasets) with the same seeds, the
    average is compared too: per seed the mean over datasets (HM: of the averaged base and new), our value their
    mean. Each dict: ``learner`` (reported name), ``learner_id``, ``dataset``, ``metric``, ``ours`` (mean over
    seeds), ``low`` / ``high`` (our per-seed range), ``reported``, ``diff`` (ours - reported), ``flag``
    (:func:`disagrees`), ``source``, ``source_kind``, ``n_seeds``. ``known_sha256`` (sha256 -> tag) identifies
    weights recorded by file; None: :func:`published_checksums`, read only when a row of a reported architecture
    needs it.
    """
    out: list[dict[str, Any]] = []
    archs = {backbone_key(e["backbone"]) for e in reported if e["protocol"] == protocol}
    rows = [r for r in rows if result_backbone_key(r) in archs]  # e.g. toy rows never meet a paper's
    if known_sha256 is None and any(result_weights(r) is None for r in rows):
        known_sha256 = published_checksums()
    per_learner: dict[tuple[str, str, str], dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for r in rows:
        weights = result_weights(r, known_sha256)
        for e in reported:
            if e["dataset"] != str(r.get("dataset")) or not _matches(e, r, protocol, weights):
                continue
            for k in REPORTED_METRICS:
                vals = _metric_values(r, k) if k in e else None
                if vals is not None:
                    out.append(_pair(e, k, vals[0], vals[1], tolerance))
        if weights is not None:
            per_learner[(str(r.get("learner")), result_backbone_key(r), weights)][str(r.get("dataset"))] = r
    for e in reported:
        if e["dataset"] != AVERAGE_DATASET or e["protocol"] != protocol:
            continue
        for (learner, arch, weights), by_dataset in sorted(per_learner.items()):
            group = list(by_dataset.values())
            if not group or not _matches(e, group[0], protocol, weights) or len(by_dataset) != len(COOP_DATASETS) \
                    or set(by_dataset) != set(COOP_DATASETS):
                continue
            for k, (mean, per_seed) in _averaged(group).items():
                if k in e:
                    out.append(_pair(e, k, mean, per_seed, tolerance))
    return sorted(out, key=lambda p: (p["dataset"] == AVERAGE_DATASET, p["dataset"], p["learner"],
                                      REPORTED_METRICS.index(p["metric"])))


def _averaged(group: Sequence[Mapping[str, Any]]) -> dict[str, tuple[float, list[float]]]:
    """Mean over datasets per metric, and per seed (only when every row has the same number of seeds)."""
    out: dict[str, tuple[float, list[float]]] = {}
    for k in ("base", "new", "accuracy"):
        vals = [_metric_values(r, k) for r in group]
        if any(v is None for v in vals):
            continue
        mean = math.fsum(v[0] for v in vals) / len(vals)  # type: ignore[index]
        seeds = [v[1] for v in vals]  # type: ignore[index]
        per_seed = ([math.fsum(col) / len(col) for col in zip(*seeds)] if len({len(s) for s in seeds}) == 1
                    else [mean])
        out[k] = (mean, per_seed)
    if "base" in out and "new" in out:
        (b, bs), (n, ns) = out["base"], out["new"]
        out["hm"] = (harmonic_mean(b, n), [harmonic_mean(x, y) for x, y in zip(bs, ns)])
    return out


def _pair(e: Mapping[str, Any], k: str, mean: float, per_seed: Sequence[float], tolerance: float) -> dict[str, Any]:
    low, high = min(per_seed), max(per_seed)
    return {"learner": e["learner"], "learner_id": e["learner_id"], "dataset": e["dataset"], "metric": k,
            "ours": mean, "low": low, "high": high, "reported": e[k], "diff": mean - e[k],
            "flag": disagrees(mean, e[k], high - low, tolerance), "source": e["source"],
            "source_kind": e.get("source_kind", "not stated"), "n_seeds": len(per_seed)}


def reported_for_page(protocol: str, rows: Sequence[Mapping[str, Any]],
                      reported: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The reported entries a page of ``protocol`` lists: its protocol's averages and the entries on the page's
    datasets (a toy page shows no per-dataset paper rows)."""
    datasets = {str(r.get("dataset")) for r in rows}
    return [dict(e) for e in reported if e["protocol"] == protocol
            and (e["dataset"] in datasets or e["dataset"].startswith("average"))]


def comparison_rows(pairs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells of the "ours beside reported" table (:func:`compare_with_reported`'s pairs)."""
    heads = ["learner", "dataset", "metric", "ours (seed range)", "seeds", "reported", "diff", "flag", "source kind",
             "source"]
    cells = [[p["learner"], p["dataset"], p["metric"], f"{p['ours']:.2f} [{p['low']:.2f}, {p['high']:.2f}]",
              str(p["n_seeds"]), f"{p['reported']:.2f}", f"{p['diff']:+.2f}", "disagrees" if p["flag"] else "",
              str(p["source_kind"]), p["source"]] for p in pairs]
    return heads, cells


def unmatched_note(rows: Sequence[Mapping[str, Any]], page_reported: Sequence[Mapping[str, Any]]) -> str | None:
    """The line a page shows when papers report numbers on its datasets but no row of ours ran their backbone."""
    per_dataset = [e for e in page_reported if not e["dataset"].startswith("average")]
    if not per_dataset:
        return None
    wanted = sorted({f"{e['backbone']} ({e['weights']})" for e in per_dataset})
    ours = sorted({str(result_backbone(r).get("model") or "?") for r in rows})
    return (f"Papers report numbers on this page's datasets for {', '.join(wanted)}; no row here ran that backbone "
            f"(ours: {', '.join(ours)}), so none is compared.")


def rank_agreement(rows: Iterable[Mapping[str, Any]], reported: Iterable[Mapping[str, Any]], *, backbone_model: str,
                   protocol: str = "base2new", labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Spearman rank correlation between our learners' averages and the reported ones, as a measurement.

    ``rows``: leaderboard CSV rows (``protocol``, ``dataset``, ``learner`` label, ``backbone_model``, ``base``,
    ``new``); only ``backbone_model``'s rows of ``protocol`` count. Our average of a learner is the HM of its base
    and new accuracies averaged over the datasets, the reported averages' convention; a learner counts only with a
    row on every dataset that has a ``zero_shot`` row. ``reported``: :func:`load_reported` entries; those of
    ``protocol`` whose dataset starts with ``average`` (the first per ``learner_id``). ``labels``: learner_id -> the
    leaderboard label that stands for it; by default the label equal to the learner_id, else the only label whose
    learner name (before `` (``) is the learner_id (a learner with several labels and none given is left out).

    Returns ``{pairs: {learner_id: {label, ours, reported, source}}, datasets: [names], n, spearman, p_value}``
    (``spearman`` and ``p_value`` ``None`` below 3 pairs).
    """
    from scipy.stats import spearmanr  # deferred: scipy is heavy and only this measurement needs it

    by_dataset: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for row in rows:
        if row.get("backbone_model") == backbone_model and row.get("protocol") == protocol:
            by_dataset[str(row["dataset"])][str(row["learner"])] = row
    datasets = sorted(d for d, learners in by_dataset.items() if "zero_shot" in learners)
    published: dict[str, Mapping[str, Any]] = {}
    for entry in reported:
        if (entry.get("protocol") == protocol and str(entry.get("dataset", "")).startswith("average")
                and entry.get("hm") is not None):
            published.setdefault(str(entry["learner_id"]), entry)
    all_labels = {label for d in datasets for label in by_dataset[d]}
    pairs: dict[str, dict[str, Any]] = {}
    for learner_id, entry in published.items():
        label = (labels or {}).get(learner_id)
        if label is None:
            named = sorted(lab for lab in all_labels if lab.split(" (")[0] == learner_id)
            label = learner_id if learner_id in named else (named[0] if len(named) == 1 else None)
        if label is None or not datasets or any(label not in by_dataset[d] for d in datasets):
            continue
        base = sum(float(by_dataset[d][label]["base"]) for d in datasets) / len(datasets)
        new = sum(float(by_dataset[d][label]["new"]) for d in datasets) / len(datasets)
        pairs[learner_id] = {"label": label, "ours": harmonic_mean(base, new), "reported": float(entry["hm"]),
                             "source": entry.get("source")}
    rho = p_value = None
    if len(pairs) >= 3:
        result = spearmanr([p["ours"] for p in pairs.values()], [p["reported"] for p in pairs.values()])
        rho, p_value = float(result.statistic), float(result.pvalue)
    return {"pairs": pairs, "datasets": datasets, "n": len(pairs), "spearman": rho, "p_value": p_value}
