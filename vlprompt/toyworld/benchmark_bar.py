"""The embedded benchmarks' bar (issue 26), checked on a built leaderboard's ``results.csv``.

``python -m vlprompt.toyworld.benchmark_bar [LEADERBOARDS]`` (default ``leaderboards``) reads
``base2new/toy/results.csv`` and ``segmentation/toy/results.csv`` and prints, per dataset, what the bar asks:

- **classification** (rows of one toy CLIP, ``--backbone``; default ``vlprompt-toyclip2``): CoOp with 16 random
  context vectors (``coop``) and CoOp with 4 from "a photo of a" must beat zero-shot on base and lose to it on new,
  each 95 % interval of the seed mean excluding zero-shot's value (zero-shot has no seed variance, so the interval
  of the difference is the learner's interval shifted), CoOp-16 on at least 3 datasets and CoOp-4 on at least 2;
  no dataset is saturated (zero-shot base below 90, the best row's HM below 98);
- **segmentation** (``toy_seg_scan``): zero-shot Dice between 15 and 60, CoOp (all training images) at least 10
  Dice above it with its 95 % interval above zero-shot, and the range of the learners' mean Dice larger than the
  largest seed std among them.

The functions are pure (rows in, verdicts out); ``tests/test_benchmark_bar.py`` checks them and the committed
leaderboards.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vlprompt.runs.results import read_leaderboard_csv

#: leaderboard labels of the learner configurations the bar names
ZERO_SHOT = "zero_shot"
COOP16 = "coop"
COOP4 = "coop (ctx_init='a photo of a', n_ctx=4)"
TOY_CLIP = "vlprompt-toyclip2"
ZS_BASE_MAX, HM_MAX = 90.0, 98.0
SEG_ZS_BAND, SEG_MIN_GAIN = (15.0, 60.0), 10.0


def _num(row: Mapping, key: str) -> float | None:
    value = row.get(key)
    return float(value) if value not in (None, "") else None


def tradeoff(learner: Mapping, zero_shot: Mapping) -> dict:
    """One learner row against zero-shot's row of the same dataset (leaderboard CSV rows: ``base``, ``new`` and their
    ``*_ci95_low`` / ``*_ci95_high``). Returns ``{base_gain, new_gain, base_ci, new_ci, holds}``: gains are the
    learner's seed mean minus zero-shot, ``*_ci`` the 95 % interval of that difference, ``holds`` whether base's
    interval lies above 0 and new's below 0."""
    zb, zn = float(zero_shot["base"]), float(zero_shot["new"])
    out = {"base_gain": float(learner["base"]) - zb, "new_gain": float(learner["new"]) - zn}
    for half, ref in (("base", zb), ("new", zn)):
        low, high = _num(learner, f"{half}_ci95_low"), _num(learner, f"{half}_ci95_high")
        out[f"{half}_ci"] = None if low is None or high is None else (low - ref, high - ref)
    base_ci, new_ci = out["base_ci"], out["new_ci"]
    out["holds"] = bool(base_ci and new_ci and base_ci[0] > 0 and new_ci[1] < 0)
    return out


def classification_bar(rows: Iterable[Mapping], backbone: str = TOY_CLIP) -> dict:
    """The classification bar over base-to-new leaderboard rows of one backbone model.

    Returns ``{datasets: {name: {zero_shot_base, best_hm, best, saturated, coop16, coop4}}, coop16_holds,
    coop4_holds, saturated, passes}``; ``coop16`` / ``coop4`` are :func:`tradeoff` dicts (``None`` without a row),
    ``*_holds`` the datasets where the trade-off holds, ``passes`` the issue's whole bar (CoOp-16 on 3 datasets,
    CoOp-4 on 2, none saturated, at least 5 datasets)."""
    by_dataset: dict[str, dict[str, Mapping]] = {}
    for row in rows:
        if row.get("backbone_model") == backbone and row.get("protocol") == "base2new":
            by_dataset.setdefault(row["dataset"], {})[row["learner"]] = row
    datasets = {}
    for name, learners in sorted(by_dataset.items()):
        zs = learners.get(ZERO_SHOT)
        if zs is None:
            continue
        best = max(learners.values(), key=lambda r: float(r["hm"]))
        entry = {"zero_shot_base": float(zs["base"]), "zero_shot_new": float(zs["new"]), "best_hm": float(best["hm"]),
                 "best": best["learner"],
                 "coop16": tradeoff(learners[COOP16], zs) if COOP16 in learners else None,
                 "coop4": tradeoff(learners[COOP4], zs) if COOP4 in learners else None}
        entry["saturated"] = entry["zero_shot_base"] >= ZS_BASE_MAX or entry["best_hm"] >= HM_MAX
        datasets[name] = entry
    holds = {key: [n for n, e in datasets.items() if e[key] and e[key]["holds"]] for key in ("coop16", "coop4")}
    saturated = [n for n, e in datasets.items() if e["saturated"]]
    return {"datasets": datasets, "coop16_holds": holds["coop16"], "coop4_holds": holds["coop4"],
            "saturated": saturated, "passes": len(datasets) >= 5 and len(holds["coop16"]) >= 3
            and len(holds["coop4"]) >= 2 and not saturated}


def segmentation_bar(rows: Iterable[Mapping], dataset: str = "toy_seg_scan") -> dict:
    """The segmentation bar over segmentation leaderboard rows (``dice``, ``dice_std``, ``dice_ci95_low``).

    Rows with a ``shots`` value are left out: they are the label-efficiency curve (CoOp on a fraction of the
    training images), not learners on the benchmark.
    Returns ``{zero_shot, coop, coop_gain, coop_ci, spread, largest_std, checks: {band, gain, spread}, passes}``."""
    learners = {r["learner"]: r for r in rows if r.get("dataset") == dataset and not r.get("shots")
                and r.get("protocol") == "segmentation"}
    zs = next(r for label, r in learners.items() if label.split(" (")[0] == ZERO_SHOT)
    coop = next(r for label, r in learners.items() if label.split(" (")[0] == "coop")
    z = float(zs["dice"])
    trained = [r for label, r in learners.items() if label.split(" (")[0] != ZERO_SHOT]
    means = [float(r["dice"]) for r in trained]
    out = {"zero_shot": z, "coop": float(coop["dice"]), "coop_gain": float(coop["dice"]) - z,
           "coop_ci": (float(coop["dice_ci95_low"]) - z, float(coop["dice_ci95_high"]) - z),
           "spread": max(means) - min(means), "largest_std": max(float(r["dice_std"] or 0) for r in trained)}
    out["checks"] = {"band": SEG_ZS_BAND[0] <= z <= SEG_ZS_BAND[1],
                     "gain": out["coop_gain"] >= SEG_MIN_GAIN and out["coop_ci"][0] > 0,
                     "spread": out["spread"] > out["largest_std"]}
    out["passes"] = all(out["checks"].values())
    return out


def _interval(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("leaderboards", nargs="?", default="leaderboards", help="a built leaderboard folder")
    parser.add_argument("--backbone", default=TOY_CLIP, help="backbone model of the classification rows")
    args = parser.parse_args(argv)
    root, console = Path(args.leaderboards), Console(width=180)
    cls = classification_bar(read_leaderboard_csv(root / "base2new" / "toy" / "results.csv"), args.backbone)
    table = Table(title=f"classification bar ({args.backbone}): passes={cls['passes']}")
    for head in ("dataset", "ZS base", "ZS new", "best HM", "CoOp-16 base", "CoOp-16 new", "CoOp-4 base",
                 "CoOp-4 new"):
        table.add_column(head)
    for name, e in cls["datasets"].items():
        cells = [name, f"{e['zero_shot_base']:.2f}", f"{e['zero_shot_new']:.2f}", f"{e['best_hm']:.2f}"]
        for key in ("coop16", "coop4"):
            t = e[key]
            cells += ["—", "—"] if t is None else [f"{t['base_gain']:+.2f} {_interval(t['base_ci'])}",
                                                  f"{t['new_gain']:+.2f} {_interval(t['new_ci'])}"
                                                  + (" ✓" if t["holds"] else "")]
        table.add_row(*cells)
    console.print(table)
    console.print(f"CoOp-16 trade-off on {cls['coop16_holds']}, CoOp-4 on {cls['coop4_holds']}, "
                  f"saturated: {cls['saturated']}")
    seg = segmentation_bar(read_leaderboard_csv(root / "segmentation" / "toy" / "results.csv"))
    console.print(f"segmentation bar: passes={seg['passes']}: zero-shot {seg['zero_shot']:.2f} Dice, CoOp "
                  f"{seg['coop_gain']:+.2f} {_interval(seg['coop_ci'])}, spread {seg['spread']:.2f} against the "
                  f"largest seed std {seg['largest_std']:.2f}; {seg['checks']}")
    return 0 if cls["passes"] and seg["passes"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
