"""Try bad inputs and faults on the command line and print a markdown table: input, exit code, message.

    python benchmarks/bad_inputs.py --work /tmp/bad-inputs > table.md

Each case runs ``vlprompt.cli.main`` in this process (SIGTERM / SIGKILL cases in a subprocess) on the toy world
and the tiny configs, and records the one-line message the user sees (the ``vlprompt: error:`` line, or the
first warning/error logged). The table in docs/reliability.md was produced by this script.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quickstart.yaml")


def _run(argv: list[str]) -> tuple[int, str]:
    from vlprompt import cli
    from vlprompt.runs.data_check import WarningCollector

    collect = WarningCollector()
    root = logging.getLogger()
    root.addHandler(collect)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = int(exc.code or 0)
            except Exception as exc:  # noqa: BLE001 - a traceback is a finding
                code, err = 99, io.StringIO(f"TRACEBACK {type(exc).__name__}: {exc}")
    finally:
        root.removeHandler(collect)
    lines = [ln.strip() for ln in err.getvalue().splitlines() if ln.strip()]
    msg = next((ln for ln in lines if ln.startswith(("vlprompt: error:", "vlprompt: interrupted", "TRACEBACK"))), None)
    if msg is None and collect.messages:
        msg = " / ".join(dict.fromkeys(collect.messages))
    if msg is None:
        text = out.getvalue() + err.getvalue()
        msg = next((ln.strip("│ ").strip() for ln in text.splitlines() if "error" in ln.lower() or "problem" in ln.lower()
                    or "generated in memory" in ln or "twice" in ln or "unknown" in ln.lower()),
                   (text.strip().splitlines() or ["(no message)"])[-1])
    return code, msg


def _fast(work: Path, *extra: str) -> list[str]:
    return ["--config", QUICK, "--seeds", "[1]", "--trainer.max_epochs", "2", "--results_dir", str(work / "results"),
            "--trainer.default_root_dir", str(work / "runs"), "--data.init_args.dataset.init_args.per_class", "[4, 2, 4]",
            "--data.init_args.shots", "2", *extra]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    work = Path(ap.parse_args().work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CI", "1")
    rows: list[tuple[str, int, str]] = []

    def case(label: str, argv: list[str]) -> None:
        code, msg = _run(argv)
        rows.append((label, code, msg))
        print(f"[{len(rows)}] {label}: {code} {msg[:100]}", file=sys.stderr)

    def write(name: str, data: bytes | str) -> Path:
        p = work / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    # ---------------------------------------------------------------- configs
    case("invalid YAML in a --config file", ["fit", "--config", QUICK, "--config", str(write("invalid.yaml", "model:\n  learner: [x\n"))])
    case("empty --config file", ["fit", "--config", QUICK, "--config", str(write("empty.yaml", ""))])
    case("list-valued --config file", ["fit", "--config", QUICK, "--config", str(write("list.yaml", "- a\n- b\n"))])
    case("--config file that does not exist", ["fit", "--config", str(work / "nope.yaml")])
    case("unknown learner name `cooop`", ["fit", *_fast(work), "--model.learner.class_path", "cooop"])
    case("config key typo `--trainer.max_epochz`", ["fit", *_fast(work), "--trainer.max_epochz", "3"])
    case("`--seeds [1,1]`", ["fit", *_fast(work), "--seeds", "[1,1]"])
    case("`--seeds []`", ["fit", *_fast(work), "--seeds", "[]"])
    case("`max_epochs 1` with `warmup_epochs 1`", ["fit", *_fast(work), "--trainer.max_epochs", "1"])
    case("`--prompts` with 3 seeds", ["test", *_fast(work), "--seeds", "[1,2,3]", "--prompts", "p.safetensors"])
    case("`batch_size 0`", ["fit", *_fast(work), "--data.init_args.batch_size", "0"])
    case("`n_ctx 8` with `ctx_init 'a photo of a'`", ["fit", *_fast(work), "--model.learner.init_args.n_ctx", "8"])
    case("results_dir is a file", ["fit", *_fast(work), "--results_dir", str(write("afile", "x"))])
    case("runs folder (default_root_dir) is a file", ["fit", *_fast(work), "--trainer.default_root_dir", str(work / "afile")])
    case("16 shots on a dataset with 8 training images per class",
         ["fit", *_fast(work), "--data.init_args.shots", "16", "--data.init_args.dataset.init_args.per_class", "[8, 4, 8]"])
    case("class-specific CoOp on base-to-new", ["fit", *_fast(work), "--config", str(REPO / "configs/learners/coop/csc.yaml")])

    # ---------------------------------------------------------------- prompts
    from vlprompt.runs.driver import run_experiment

    fit = run_experiment("fit", _fast(work / "fit"), show_summary=False)
    prompts = Path(fit["per_seed"][0]["prompts"])
    case("`--prompts` file that does not exist", ["test", *_fast(work), "--prompts", str(work / "none.safetensors")])
    case("truncated `--prompts` file", ["test", *_fast(work), "--prompts", str(write("trunc.safetensors", prompts.read_bytes()[:40]))])
    case("a result JSON renamed to .safetensors as `--prompts`", ["test", *_fast(work), "--prompts",
                                                                  str(write("renamed.safetensors", json.dumps(fit, default=str)))])
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(prompts), framework="pt") as f:
        meta = f.metadata()
    other_bb = work / "otherbb" / "prompts.safetensors"
    other_bb.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(prompts)), str(other_bb),
              metadata={**meta, "backbone": meta["backbone"].replace(fit["backbone"]["checkpoint_sha256"], "0" * 64)})
    case("prompts trained on another backbone checkpoint", ["test", *_fast(work), "--prompts", str(other_bb)])
    case("prompts trained on other classes (toy_colors prompts on toy_patterns)",
         ["test", *_fast(work), "--config", str(REPO / "configs/datasets/toy_colors.yaml"), "--prompts", str(prompts)])
    data = bytearray(prompts.read_bytes())
    data[-1] ^= 1
    prompts.write_bytes(bytes(data))
    case("prompts file changed after its run recorded its sha256", ["test", *_fast(work), "--prompts", str(prompts)])

    # ---------------------------------------------------------------- resume and signals
    case("`--resume` of a folder that holds no run", ["fit", "--resume", str(work)])
    case("`vlprompt test --resume` of a fit run", ["test", "--resume", fit["run_dir"]])
    case("`--resume` of a run that already completed", ["fit", "--resume", fit["run_dir"]])
    killer = write("killer.yaml", "trainer:\n  callbacks:\n    - class_path: vlprompt.runs.folders.SignalAt\n")
    for signum, label in ((signal.SIGTERM, "SIGTERM during seed 2 of `vlprompt fit`"), (signal.SIGINT, "SIGINT (Ctrl-C) during seed 2")):
        env = dict(os.environ, CI="1", VLPROMPT_TEST_SIGNAL=f"{int(signum)}:2:0")
        proc = subprocess.run([sys.executable, "-m", "vlprompt.cli", "fit", *_fast(work / f"sig{int(signum)}", "--seeds", "[1,2]",
                                                                               "--trainer.max_epochs", "3"), "--config", str(killer)],
                              env=env, capture_output=True, text=True)
        msg = next((ln for ln in proc.stderr.splitlines() if ln.startswith("vlprompt:")), proc.stderr.strip()[-200:])
        rows.append((label, proc.returncode, msg))

    # ---------------------------------------------------------------- data
    from PIL import Image

    imgs = work / "imgs"
    for c in ("cat", "dog"):
        (imgs / c).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(imgs / c / f"{i}.jpg")
    folder = ["--config", str(REPO / "configs/datasets/image_folder.yaml"), "--data.init_args.dataset.init_args.root"]
    good = (imgs / "dog" / "1.jpg").read_bytes()
    (imgs / "dog" / "3.jpg").write_bytes(good[: len(good) // 2])
    case("truncated JPEG in the dataset", ["fit", *_fast(work), *folder, str(imgs), "--data.init_args.shots", "1"])
    (imgs / "dog" / "3.jpg").write_bytes(b"")
    case("empty image file in the dataset", ["fit", *_fast(work), *folder, str(imgs), "--data.init_args.shots", "1"])
    (imgs / "dog" / "3.jpg").write_bytes(good)
    case("image folder that does not exist", ["fit", *_fast(work), *folder, str(work / "no-images")])
    split_args = ["--data.init_args.dataset.init_args.split_file"]
    case("split file that is not JSON", ["fit", *_fast(work), *folder, str(imgs), *split_args, str(write("split.json", "{train: ["))])
    case("split file entry leaving the image folder (`../`)", ["fit", *_fast(work), *folder, str(imgs), *split_args, str(write(
        "split2.json", json.dumps({"train": [["../../etc/passwd", 0, "cat"]], "val": [], "test": []})))])
    case("class-names file that is not UTF-8", ["fit", *_fast(work), *folder, str(imgs),
                                                "--data.init_args.dataset.init_args.classnames_file", str(write("names.txt", b"\xff\xfe cat"))])
    case("`vlprompt data check toy_patterns` (an in-memory dataset)", ["data", "check", "toy_patterns", "--root", str(work)])
    case("`vlprompt data check` of an unknown dataset", ["data", "check", "eurosatt", "--root", str(work)])

    # ---------------------------------------------------------------- leaderboards
    res = work / "lb-results"
    src = next(Path(fit["_path"]).parent.glob("*.json"))
    r = json.loads(src.read_text())
    write("lb-results/base2new/toy/toy_patterns/good.json", json.dumps(r))
    write("lb-results/base2new/toy/toy_patterns/truncated.json", json.dumps(r)[:200])
    write("lb-results/base2new/toy/toy_patterns/package.json", json.dumps({"name": "x", "version": "1"}))
    untrained = dict(r, command="vlprompt test --config x.yaml", stage="test", created="2030-01-01T00:00:00+00:00")
    untrained.pop("evaluated_checkpoint", None)
    write("lb-results/base2new/toy/toy_patterns/untrained.json", json.dumps(untrained))
    smoke = dict(r, created="2030-01-01T00:00:00+00:00", per_seed=[dict(p, epochs=1) for p in r["per_seed"]])
    r3 = dict(r, per_seed=[dict(p, epochs=2) for p in r["per_seed"]])
    write("lb-results/base2new/toy/toy_patterns/good.json", json.dumps(r3))
    write("lb-results/base2new/toy/toy_patterns/smoke.json", json.dumps(smoke))
    write("evil/vlp_evil_module.py", f"open({str(work / 'IMPORTED')!r}, 'w').write('imported')\n")
    sys.path.insert(0, str(work / "evil"))
    evil = dict(r3, learner_config={"class_path": "vlp_evil_module.Learner", "init_args": {"x": 1}},
                created="2029-01-01T00:00:00+00:00")
    write("lb-results/base2new/toy/toy_patterns/evil.json", json.dumps(evil))
    out = work / "lb-out"
    code, _ = _run(["leaderboard", "build", str(res), "--out", str(out)])
    readme = (out / "base2new/toy/README.md").read_text()
    not_shown = readme.split("## Results not shown", 1)[-1]
    for name, label in (("truncated.json", "truncated result JSON in the results folder"),
                        ("package.json", "foreign JSON (package.json) in the results folder"),
                        ("untrained.json", "newer `vlprompt test` result of an untrained CoOp"),
                        ("smoke.json", "newer 1-epoch smoke run of the same experiment")):
        line = next((ln for ln in not_shown.splitlines() if name in ln), "")
        if not line:  # unreadable files are not rows of any board: they are in the console table
            from vlprompt.leaderboards.select import load_results_tolerant

            line = next(why for f, why in load_results_tolerant(res)[1] if f.endswith(name))
        rows.append((label, code, "skipped: " + line.split("|")[-2].strip() if "|" in line else "skipped: " + line))
    rows.append(("result JSON naming an importable module `vlp_evil_module.Learner` as its learner class", code,
                 f"module imported: {(work / 'IMPORTED').exists() or 'vlp_evil_module' in sys.modules}; "
                 f"row shown as `coop (x=1)`: {'coop (x=1)' in readme}"))
    sys.path.remove(str(work / "evil"))
    case("`vlprompt leaderboard build` of a missing folder", ["leaderboard", "build", str(work / "missing")])
    before = sorted(p.name for p in (REPO / "leaderboards").iterdir())
    code, msg = _run(["leaderboard", "build", str(res)])
    rows.append(("`vlprompt leaderboard build results` without --out", code,
                 f"written under leaderboards-local/ (committed leaderboards/ untouched: "
                 f"{sorted(p.name for p in (REPO / 'leaderboards').iterdir()) == before})"))

    # ---------------------------------------------------------------- backbones and plugins
    plain = work / "open_clip_pytorch_model.safetensors"
    import torch

    save_file({"visual.proj": torch.zeros(2, 2)}, str(plain))
    case("local checkpoint with `model: ViT-B-16` and no `quick_gelu`",
         ["test", *_fast(work), "--config", str(REPO / "configs/backbones/vit_b16_openai.yaml"),
          "--model.backbone.init_args.pretrained", str(plain)])
    case("`pretrained: openai` offline, not cached (with `quick_gelu: false`)",
         ["test", *_fast(work), "--config", str(REPO / "configs/backbones/vit_b16_openai.yaml"),
          "--model.backbone.init_args.quick_gelu", "false"])
    site = work / "site"
    info = site / "vlp_dup-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vlp-dup\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vlprompt.learners]\ncoop = vlp_dup_mod:Other\nbroken_one = vlp_dup_broken:X\n")
    (site / "vlp_dup_mod.py").write_text("class Other:\n    pass\n")
    (site / "vlp_dup_broken.py").write_text("raise ImportError('needs the missing package frobnicate')\n")
    sys.path.insert(0, str(site))
    from vlprompt.learners import registry

    registry.clear_cache()
    case("a second distribution also registers `coop`", ["fit", *_fast(work)])
    case("same, with the full class path of vlprompt's CoOp", ["fit", *_fast(work / "fullpath"), "--model.learner.class_path",
                                                                "vlprompt.learners.coop.CoOp"])
    case("using a plugin that failed to import", ["fit", *_fast(work), "--model.learner.class_path", "broken_one"])
    sys.path.remove(str(site))
    registry.clear_cache()

    print("| # | bad input or fault | exit | message |")
    print("|---:|---|---:|---|")
    for i, (label, code, msg) in enumerate(rows, 1):
        text = msg.replace("|", "\\|").replace("\n", " ")
        print(f"| {i} | {label} | {code} | {text} |")


if __name__ == "__main__":
    main()
