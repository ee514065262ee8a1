"""vlprompt against the reference code it replaces, side by side on this machine: seconds per image and peak memory.

Each case runs the reference (KaiyangZhou/CoOp on Dassl.pytorch through ``benchmarks/reference_child.py``, azshue/TPT
through ``benchmarks/reference_tpt_child.py``, in the reference's own Python environment) and vlprompt (``vlprompt
fit`` / ``vlprompt tta`` with the layered configs) alternately,
reference first, each in a fresh child process, on the same data root, seeds, shots, epochs, batch size, loader
workers and weights (fp32, torch's default threads, ``OMP_WAIT_POLICY=PASSIVE`` for both). Before every run the
1-minute load average is recorded. Per run: training seconds per trained image (images that went through an
optimiser step; both drop the incomplete last batch), test seconds per test image, the same in process CPU seconds
(all threads: on a CPU shared with other processes they vary far less than wall time), and the child's peak RSS
(``os.wait4``). Printed: every run, then per case the min and median over ``--repeats`` of each side and of
the ratio reference / vlprompt (> 1: vlprompt faster; for memory: > 1 means vlprompt uses less).

Cases (``--cases``):

- ``coop5``: CoOp, 4 context vectors from "a photo of a", EuroSAT base-to-new, 5 base classes, 16 shots, batch 32
  (image-bound); ``coop5x3``: the same over seeds 1, 2, 3 (the reference: one process per seed, as its scripts run);
- ``coop100``: CoOp on all 100 Caltech-101 classes, 1 shot, batch 32 (text-bound: 100 prompts per step);
- ``cocoop1``: CoCoOp (4 context vectors from "a photo of a") on EuroSAT base, 8 shots, batch 1 on both sides;
  ``cocoop32``: vlprompt at batch 32 against the reference at batch 1 (the issue's memory target);
- ``coop5cached``: ``coop5`` with vlprompt on its on-disk frozen-feature cache (filled by an untimed run first);
- ``tpt10`` / ``tpt500`` / ``tpt1000``: TPT (CoOp context from "a photo of a", 64 views, 1 step) on EuroSAT's 10
  classes (AugMix views, as the reference's scripts for the fine-grained sets) and on the first 500 / all 1000 of
  ImageNet's class names (an ImageNet stand-in of linked EuroSAT images, crops and flips only); afterwards vlprompt's
  ``tpt_step`` runs on the reference's own views of its first image and both selections are printed.

The summary's ``bound`` column: the reference's time divided by vlprompt's image-tower time for the same images (at
the rate measured in the header; 64 views per TPT image), i.e. the ratio if all else cost vlprompt nothing. A
reference run that fails (e.g. killed for memory) is recorded with its peak RSS and the run goes on.

``--reference-dir`` is the CoOp checkout (with ``--dassl-dir`` and ``--tpt-dir``) or a folder holding ``CoOp/``,
``Dassl.pytorch/`` (or ``Dassl/``) and ``TPT/``.

``--quick``: 1 epoch, 1 pair, EuroSAT test cut to 20 images per class and Caltech-101 to 1, cases coop5 coop100.
A missed target is printed with by how much (median ratio against the issue's minimum).

The weights: an OpenAI-layout ViT-B/16 state dict as safetensors. ``--make-random-weights PATH`` writes a random
one (fp16, as OpenAI's release, about 300 MB) and exits; the reference builds its model from the same file.

    python benchmarks/vs_reference.py --make-random-weights /dev/shm/vitb16-random.safetensors
    python benchmarks/vs_reference.py --reference-dir refs --reference-python /path/to/reference-venv/bin/python \\
        --weights /dev/shm/vitb16-random.safetensors --quick
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OPENAI_EXTRA = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}

# Per case: the dataset folder/config names of both sides and the settings both get.
CASES = {
    "coop5": dict(dataset="eurosat", protocol="base2new", learner="coop", shots=16, batch=32, seeds=[1]),
    "coop5x3": dict(dataset="eurosat", protocol="base2new", learner="coop", shots=16, batch=32, seeds=[1, 2, 3]),
    "coop100": dict(dataset="caltech101", protocol="fewshot", learner="coop", shots=1, batch=32, seeds=[1]),
    "cocoop1": dict(dataset="eurosat", protocol="base2new", learner="cocoop", shots=8, batch=1, seeds=[1]),
    # vlprompt at batch 32 against the reference at its paper batch 1 (the memory target)
    "cocoop32": dict(dataset="eurosat", protocol="base2new", learner="cocoop", shots=8, batch=32, seeds=[1],
                     reference_batch=1),
    # vlprompt on its on-disk frozen-feature cache (filled by an untimed run first) against the reference's epoch
    "coop5cached": dict(dataset="eurosat", protocol="base2new", learner="coop", shots=16, batch=32, seeds=[1],
                        cached=True),
    # TPT (CoOp context from "a photo of a", 64 views, 1 step) against azshue/TPT, image by image
    "tpt10": dict(kind="tpt", dataset="eurosat", reference_set="eurosat", learner_config="configs/learners/tpt/augmix.yaml"),
    # the first 500 of ImageNet's class names: the reference's fp32 CPU step fits this machine's 24 GiB; 1000 does not
    "tpt500": dict(kind="tpt", dataset="imagenet", reference_set="I", classes=500,
                   learner_config="configs/learners/tpt/imagenet.yaml"),
    "tpt1000": dict(kind="tpt", dataset="imagenet", reference_set="I", classes=1000,
                    learner_config="configs/learners/tpt/imagenet.yaml"),
}
# The targets, as minimum ratios reference / vlprompt (train, test, peak memory) per case.
# ``None``: printed, not judged (the cached case's test reads the same cache; TPT trains nothing beforehand).
TARGETS = {"coop5": (1.5, 1.5, 1.0), "coop5x3": (1.5, 3.0, 1.0), "coop100": (3.0, 1.5, 1.0), "cocoop1": (1.0, 1.0, 1.0),
           "cocoop32": (1.0, 1.0, 1.0), "coop5cached": (20.0, None, 1.0), "tpt10": (None, 1.0, 1.0),
           "tpt500": (None, 3.0, 1.0), "tpt1000": (None, 3.0, 1.0)}
DATASETS = {  # vlprompt name: (folder, image folder, split file, reference dataset config)
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json", "configs/datasets/eurosat.yaml"),
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "configs/datasets/caltech101.yaml"),
}


def make_random_weights(path: Path, seed: int = 0) -> None:
    """Write a random ViT-B/16 (QuickGELU) state dict in OpenAI's layout: open_clip's tensor names, fp16, plus the
    ``input_resolution`` / ``context_length`` / ``vocab_size`` integers of OpenAI's release."""
    import open_clip  # deferred: only this mode needs open_clip
    from safetensors.torch import save_file  # deferred: only this mode writes weights

    torch.manual_seed(seed)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    state.update({k: torch.tensor(v) for k, v in OPENAI_EXTRA.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB, {len(state)} tensors, seed {seed})")


def prepare_root(src: Path, dst: Path, cuts: dict[str, int | None]) -> None:
    """A data root both sides read (the reference writes its few-shot pickles into it, never into ``src``): each
    dataset's image folder linked, its split file copied with the test split cut to ``cuts[name]`` per class."""
    for name, (folder, images, split, _) in DATASETS.items():
        test_per_class = cuts.get(name)
        if not (src / folder / split).is_file():
            continue
        (dst / folder).mkdir(parents=True, exist_ok=True)
        link = dst / folder / images
        if not link.exists():
            link.symlink_to(src / folder / images)
        data = json.loads((src / folder / split).read_text(encoding="utf-8"))
        if test_per_class:
            kept, seen = [], {}
            for item in data["test"]:
                seen[item[1]] = seen.get(item[1], 0) + 1
                if seen[item[1]] <= test_per_class:
                    kept.append(item)
            data["test"] = kept
        (dst / folder / split).write_text(json.dumps(data), encoding="utf-8")


def run_child(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """Run ``cmd``; returns (exit code, wall seconds, peak RSS MiB of that child, from ``os.wait4``)."""
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024


def run_checked(cmd: list[str], env: dict, log: Path, what: str) -> tuple[float, float]:
    """:func:`run_child` for a run the benchmark cannot go on without: (wall seconds, peak RSS MiB), or exit naming
    ``what`` failed, its exit code and its log."""
    rc, wall, peak = run_child(cmd, env, log)
    if rc != 0:
        raise SystemExit(f"{what} failed (exit {rc}); log: {log}")
    return wall, peak


def warmup_epochs(epochs: int) -> int:
    """The configs' 1 warm-up epoch, or none for a 1-epoch run (vlprompt refuses a run that is all warm-up)."""
    return 1 if epochs > 1 else 0


def reference_cmds(a, case: dict, root: Path, work: Path) -> list[tuple[list[str], Path]]:
    """One reference child per seed (its scripts run one process per seed)."""
    trainer = "CoOp" if case["learner"] == "coop" else "CoCoOp"
    config = ("configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml" if trainer == "CoOp"
              else "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml")
    key = trainer.upper()
    cmds = []
    for seed in case["seeds"]:
        out = work / f"ref-seed{seed}.json"
        opts = [f"TRAINER.{key}.N_CTX", "4", f"TRAINER.{key}.CTX_INIT", "a photo of a", f"TRAINER.{key}.PREC", "fp32",
                "DATASET.NUM_SHOTS", str(case["shots"]),
                "DATASET.SUBSAMPLE_CLASSES", "base" if case["protocol"] == "base2new" else "all",
                "OPTIM.MAX_EPOCH", str(a.epochs), "DATALOADER.TRAIN_X.BATCH_SIZE", str(case.get("reference_batch", case["batch"])),
                "DATALOADER.NUM_WORKERS", str(a.workers), "TEST.FINAL_MODEL", "last_step",
                "OPTIM.WARMUP_EPOCH", str(warmup_epochs(a.epochs))]
        cmds.append(([a.reference_python, str(REPO / "benchmarks" / "reference_child.py"),
                      "--reference-dir", str(a.reference_dir), "--dassl-dir", str(a.dassl_dir), "--weights", str(a.weights),
                      "--root", str(root), "--trainer", trainer, "--config-file", config,
                      "--dataset-config-file", DATASETS[case["dataset"]][3], "--seed", str(seed),
                      "--output-dir", str(work / f"ref-out-seed{seed}"), "--out", str(out), *opts], out))
    return cmds


def vlprompt_cmd(a, case: dict, root: Path, work: Path) -> list[str]:
    learner_cfg = ("configs/learners/coop/ctx4_init.yaml" if case["learner"] == "coop"
                   else "configs/learners/cocoop/vit_b16_c4_ep10_batch1_ctxv1.yaml")
    exe = str(Path(sys.executable).parent / "vlprompt")
    return [exe, "fit", "--config", f"configs/protocols/{case['protocol'] if case['protocol'] == 'base2new' else 'fewshot_k1'}.yaml",
            "--config", "configs/trainer/cpu.yaml", "--config", "configs/backbones/vit_b16_openai.yaml",
            "--config", f"configs/datasets/{case['dataset']}.yaml", "--config", learner_cfg,
            "--model.backbone.init_args.model", "ViT-B-16-quickgelu",
            "--model.backbone.init_args.pretrained", str(a.weights), "--model.backbone.init_args.precision", "fp32",
            "--model.cosine_horizon", "max_epochs", "--model.warmup_epochs", str(warmup_epochs(a.epochs)),
            "--data.init_args.dataset.init_args.root", str(root), "--data.init_args.shots", str(case["shots"]),
            "--data.init_args.batch_size", str(case["batch"]), "--data.init_args.num_workers", str(a.workers),
            "--data.init_args.cache_dir", str(work / "cache"), "--trainer.max_epochs", str(a.epochs),
            "--trainer.default_root_dir", str(work / "runs"), "--results_dir", str(work / "results"),
            "--seeds", json.dumps(case["seeds"]), "--progress", "false",
            *(["--data.init_args.feature_cache", "true"] if case.get("cached") else [])]


def run_reference(a, case: dict, root: Path, work: Path, env: dict) -> dict:
    row = {"train_s": 0.0, "test_s": 0.0, "train_cpu_s": 0.0, "test_cpu_s": 0.0, "train_images": 0, "test_images": 0,
           "peak_mib": 0.0, "wall_s": 0.0}
    for i, (cmd, out) in enumerate(reference_cmds(a, case, root, work)):
        wall, peak = run_checked(cmd, env, work / f"ref-{i}.log", "reference run")
        m = json.loads(out.read_text(encoding="utf-8"))
        for k in ("train_s", "test_s", "train_cpu_s", "test_cpu_s"):
            row[k] += m[k]
        row["train_images"] += m["train_images"]
        row["test_images"] += m["test_images"]
        row["peak_mib"] = max(row["peak_mib"], peak)
        row["wall_s"] += wall
    return row


def run_vlprompt(a, case: dict, root: Path, work: Path, env: dict) -> dict:
    if case.get("cached"):  # an untimed run first fills the on-disk feature cache the timed run reads
        warm = [*vlprompt_cmd(a, case, root, work), "--results_dir", str(work / "results-fill"),
                "--trainer.default_root_dir", str(work / "runs-fill")]
        run_checked(warm, env, work / "vl-fill.log", "vlprompt cache-filling run")
    wall, peak = run_checked(vlprompt_cmd(a, case, root, work), env, work / "vl.log", "vlprompt run")
    result = json.loads(next((work / "results").rglob("*.json")).read_text(encoding="utf-8"))
    rows = result["per_seed"]
    return {"train_s": sum(r.get("train_seconds", 0.0) for r in rows),
            "test_s": sum(r.get("test_seconds", 0.0) for r in rows),
            "train_cpu_s": sum(r.get("train_cpu_seconds", 0.0) for r in rows),
            "test_cpu_s": sum(r.get("test_cpu_seconds", 0.0) for r in rows),
            "train_images": sum(int(r.get("optimizer_steps", 0)) * case["batch"] for r in rows),
            "test_images": sum(int(r.get("test_images", 0)) for r in rows), "peak_mib": peak, "wall_s": wall}


#: where azshue/TPT keeps the class names of each TPT case's dataset: (file in the checkout, list variable)
REFERENCE_CLASS_LISTS = {"imagenet": ("data/imagnet_prompts.py", "imagenet_classes"),
                         "eurosat": ("data/cls_to_names.py", "eurosat_classes")}


def reference_classes(tpt_dir: Path, dataset: str) -> list[str]:
    """The class names azshue/TPT uses for ``dataset`` (:data:`REFERENCE_CLASS_LISTS`), read without importing it.
    For EuroSAT they equal CoOp's renamed ones, which vlprompt uses."""
    file, name = REFERENCE_CLASS_LISTS[dataset]
    tree = ast.parse((tpt_dir / file).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"{name} not found in {tpt_dir / file}")


def tpt_root(root: Path, case: dict) -> Path:
    """The data root of a TPT case: ``root`` (EuroSAT) or its ``imagenet<N>`` folder (N classes)."""
    return root / f"imagenet{case['classes']}" if case["dataset"] == "imagenet" else root


def prepare_tpt_root(src: Path, root: Path, case: dict, classnames: list[str]) -> Path:
    """A TPT case's data for both sides, under ``root`` (which already holds EuroSAT from :func:`prepare_root`):
    EuroSAT in the reference's layout (``tpt_ref/eurosat``), or an ImageNet stand-in with the first ``classes`` of
    the reference's ImageNet class names in ``root/imagenet<N>``: ``imagenet/images/val/<wnid>/`` with one EuroSAT
    test image linked per class, ``train`` = ``val``, ``classnames.txt`` (so that both sides score the same label
    space), and the reference's layout of the same files (``tpt_ref/ImageNet/val``). Returns the case's data root.
    Speed does not depend on which image stands in for which class."""
    dst = tpt_root(root, case)
    ref_root = dst / "tpt_ref"
    ref_root.mkdir(parents=True, exist_ok=True)
    eurosat = json.loads((root / "eurosat" / "split_zhou_EuroSAT.json").read_text(encoding="utf-8"))["test"]
    classnames = classnames[: case.get("classes", len(classnames))]
    images = dst / "imagenet" / "images"
    if case["dataset"] == "imagenet" and not (images / "val").is_dir():
        for k in range(len(classnames)):
            folder = images / "val" / f"n{k:08d}"
            folder.mkdir(parents=True)
            (folder / f"img{k}.jpg").symlink_to(src / "eurosat" / "2750" / eurosat[k % len(eurosat)][0])
        (images / "train").symlink_to("val")
        lines = "".join(f"n{k:08d} {name}\n" for k, name in enumerate(classnames))
        (dst / "imagenet" / "classnames.txt").write_text(lines, encoding="utf-8")
    name, target = ("ImageNet", images) if case["dataset"] == "imagenet" else ("eurosat", src / "eurosat" / "2750")
    if not (ref_root / name).exists():
        (ref_root / name).symlink_to(target)
    return dst


def test_only_row(test_s: float, test_cpu_s: float, images: int, peak_mib: float, wall_s: float, **extra) -> dict:
    """A run's measurements when nothing is trained beforehand (TPT): the training fields are zero."""
    return {"train_s": 0.0, "train_cpu_s": 0.0, "train_images": 0, "test_s": test_s, "test_cpu_s": test_cpu_s,
            "test_images": images, "peak_mib": peak_mib, "wall_s": wall_s, **extra}


def run_reference_tpt(a, case: dict, root: Path, work: Path, env: dict) -> dict:
    out, views = work / "ref.json", work / "views.safetensors"
    cmd = [a.reference_python, str(REPO / "benchmarks" / "reference_tpt_child.py"), "--tpt-dir", str(a.tpt_dir),
           "--weights", str(a.weights), "--data", str(tpt_root(root, case) / "tpt_ref"), "--test-set", case["reference_set"],
           "--split-file", str(root / "eurosat" / "split_zhou_EuroSAT.json"), "--images", str(a.tpt_images),
           "--out", str(out), "--views-out", str(views), *(["--classes", str(case["classes"])] if "classes" in case else [])]
    rc, wall, peak = run_child(cmd, env, work / "ref.log")
    if rc != 0:  # e.g. killed by the kernel's out-of-memory killer (-9): recorded with its peak, the run goes on
        print(f"# reference TPT run of {case['reference_set']} failed (exit {rc}) at peak RSS {peak / 1024:.1f} GiB after "
              f"{wall:.0f} s; log: {work / 'ref.log'}", flush=True)
        return test_only_row(float("nan"), float("nan"), a.tpt_images, peak, wall, failed=rc)
    m = json.loads(out.read_text(encoding="utf-8"))
    return test_only_row(sum(m["image_seconds"]), sum(m["image_cpu_seconds"]), m["images"], peak, wall,
                         selected=m["selected"], views=views)


def vlprompt_tpt_cmd(a, case: dict, work: Path) -> list[str]:
    proto = work / "protocol.yaml"
    proto.write_text(json.dumps({"seeds": [1], "data": {"class_path": "test_time", "init_args": {
        "images_per_set": a.tpt_images, "eval_batch_size": 1, "dataset": {"class_path": case["dataset"]},
        "targets": [{"class_path": case["dataset"]}]}}}), encoding="utf-8")
    exe = str(Path(sys.executable).parent / "vlprompt")
    return [exe, "tta", "--config", str(proto), "--config", "configs/backbones/vit_b16_openai.yaml",
            "--config", case["learner_config"], "--model.backbone.init_args.model", "ViT-B-16-quickgelu",
            "--model.backbone.init_args.pretrained", str(a.weights), "--model.backbone.init_args.precision", "fp32",
            "--trainer.default_root_dir", str(work / "runs"), "--trainer.enable_progress_bar", "false",
            "--results_dir", str(work / "results")]


def run_vlprompt_tpt(a, case: dict, root: Path, work: Path, env: dict) -> dict:
    wall, peak = run_checked(vlprompt_tpt_cmd(a, case, work), {**env, "VLPROMPT_DATA": str(tpt_root(root, case))},
                             work / "vl.log", "vlprompt TPT run")
    row = json.loads(next((work / "results").rglob("*.json")).read_text(encoding="utf-8"))["per_seed"][0]
    return test_only_row(row["test_seconds"], row.get("test_cpu_seconds", float("nan")), int(row["test_images"]), peak,
                         wall)


def tpt_selection_check(weights: Path, views_file: Path, classnames: list[str], reference: list[int]) -> str:
    """vlprompt's TPT step on the reference's own views of its first image (saved normalised; brought back to
    ``[0, 1]`` here, vlprompt normalises them again): the selected view indices, compared with the reference's."""
    import open_clip  # deferred: keeps vlprompt out of the parent otherwise
    from safetensors.torch import load_file  # deferred: idem

    from vlprompt.backbones.open_clip import OpenCLIPBackbone  # deferred: idem
    from vlprompt.learners.coop import CoOp  # deferred: idem
    from vlprompt.learners.prompts.tta import tpt_step  # deferred: idem

    views = load_file(str(views_file))["views"]
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    backbone = OpenCLIPBackbone("ViT-B-16-quickgelu", pretrained=str(weights), precision="fp32")
    learner = CoOp(n_ctx=None, ctx_init="a photo of a")
    learner.setup(backbone, classnames)
    optimizer = torch.optim.AdamW(list(learner.tunable_parameters().values()), lr=5e-3)
    ours = sorted(int(i) for i in tpt_step(learner, views * std + mean, optimizer, selection=0.1, steps=1).selected)
    same = "identical" if ours == sorted(reference) else "DIFFERENT"
    return f"views selected from the reference's {views.shape[0]} views of image 1: reference {sorted(reference)}, vlprompt {ours}: {same}"


def gflops_pair(weights: Path, batch: int = 16, rounds: int = 3) -> tuple[float, float]:
    """Best fp32 GFLOP/s of a 2048^3 matmul (this CPU's practical peak) and of vlprompt's ViT-B/16 image tower (no
    autograd, a batch of ``batch``), measured in alternating rounds so that both see the same load."""
    from vlprompt.backbones.open_clip import OpenCLIPBackbone  # deferred: keeps vlprompt out of the parent otherwise

    b = OpenCLIPBackbone("ViT-B-16-quickgelu", pretrained=str(weights), precision="fp32")
    x, m = torch.rand(batch, 3, 224, 224), torch.randn(2048, 2048)
    best_mm = best_img = math.inf
    with torch.inference_mode():
        b.encode_image(x[:2])
        torch.mm(m, m)
        for _ in range(rounds):
            for _ in range(5):
                t0 = time.perf_counter()
                torch.mm(m, m)
                best_mm = min(best_mm, time.perf_counter() - t0)
            t0 = time.perf_counter()
            b.encode_image(x)
            best_img = min(best_img, time.perf_counter() - t0)
    return 2 * 2048**3 / best_mm / 1e9, vitb16_image_gflop() * batch / best_img


def vitb16_image_gflop() -> float:
    """Floating-point operations (multiply + add) of one ViT-B/16 image forward at 224 px, in GFLOP."""
    tokens, width, layers = 197, 768, 12
    per_block = 12 * tokens * width**2 + 2 * tokens**2 * width  # qkv + out proj + MLP (4x), attention scores + mix
    return 2 * (layers * per_block + 196 * width * 3 * 16 * 16) / 1e9


def verdict(ratio: float, target: float | None) -> str:
    """``met``, or by how much the median ratio misses ``target`` (as a fraction of the target); ``-`` unjudged."""
    if target is None or not math.isfinite(ratio):
        return "-"
    return "met" if ratio >= target else f"missed by {100 * (1 - ratio / target):.0f}%"


def summarize(name: str, runs: list[tuple[dict, dict]], tower_s: float) -> list[str]:
    """Per figure: min and median of both sides and of the ratio, the target and the verdict, and the ``bound``:
    the ratio vlprompt would reach if everything but its frozen image tower's forwards cost nothing (reference time
    / the tower's seconds for the same images, at the best GFLOP/s measured in the header), so that a missed target
    shows whether the image tower alone forbids it."""
    lines = []
    t_train, t_test, t_mem = TARGETS[name]
    case = CASES[name]
    views = 64 if case.get("kind") == "tpt" else 1
    tower_used = not case.get("cached")  # cached epochs and evaluations run no image tower
    for target, (label, key, per) in ((t_train, ("train s / trained image", "train_s", "train_images")),
                                      (t_train, ("train CPU-s / trained img", "train_cpu_s", "train_images")),
                                      (t_test, ("test s / test image", "test_s", "test_images")),
                                      (t_test, ("test CPU-s / test image", "test_cpu_s", "test_images")),
                                      (t_mem, ("peak RSS GiB", "peak_mib", None))):
        if per and not all(r[per] for pair in runs for r in pair):
            continue  # e.g. TPT trains nothing beforehand
        ref = [r[key] / r[per] if per else r[key] / 1024 for r, _ in runs]
        vl = [v[key] / v[per] if per else v[key] / 1024 for _, v in runs]
        ratio = [x / y for x, y in zip(ref, vl)]
        failed = [r["failed"] for r, _ in runs if r.get("failed")]
        if failed:  # the reference did not finish: its peak is a lower bound, its time unknown
            what = (f">= {statistics.median(ratio):.2f}x (reference killed at its peak)" if not per
                    else "no ratio: the reference did not finish")
            lines.append(f"{name:>11} {label:>25} reference exit {failed[0]} in {len(failed)} of {len(runs)} run(s); "
                         f"vlprompt median {statistics.median(vl):.3f}; {what}")
            continue
        wall = per and "CPU" not in label and tower_used
        bound = f"{statistics.median(ref) / (views * tower_s):>6.2f}x" if wall else f"{'-':>7}"
        lines.append(f"{name:>11} {label:>25} {min(ref):>9.3f} {statistics.median(ref):>9.3f} {min(vl):>9.3f} "
                     f"{statistics.median(vl):>9.3f} {min(ratio):>8.2f}x {statistics.median(ratio):>8.2f}x "
                     f"{bound} {'-' if target is None else f'{target:.1f}x':>7} {verdict(statistics.median(ratio), target)}")
    return lines


def find_checkouts(reference: Path, dassl: Path | None, tpt: Path | None) -> tuple[Path | None, Path | None, Path | None]:
    """(CoOp, Dassl.pytorch, TPT) checkouts: ``reference`` is the CoOp checkout itself (it has ``train.py``) or a
    folder holding ``CoOp/``, ``Dassl.pytorch/`` or ``Dassl/``, and ``TPT/``; explicit ``dassl`` / ``tpt`` win."""
    reference = reference.resolve()
    parent = reference.parent if (reference / "train.py").is_file() else reference
    coop = reference if (reference / "train.py").is_file() else (reference / "CoOp" if (reference / "CoOp" / "train.py").is_file() else None)
    if dassl is None:
        dassl = next((parent / n for n in ("Dassl.pytorch", "Dassl") if (parent / n / "dassl").is_dir()), None)
    if tpt is None:
        tpt = parent / "TPT" if (parent / "TPT" / "tpt_classification.py").is_file() else None
    return coop, dassl and dassl.resolve(), tpt and tpt.resolve()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--make-random-weights", type=Path, metavar="PATH", help="write a random OpenAI-layout ViT-B/16 and exit")
    p.add_argument("--reference-dir", type=Path,
                   help="checkout of KaiyangZhou/CoOp, or a folder holding the checkouts CoOp/, Dassl.pytorch/ (or Dassl/) "
                        "and TPT/ (azshue/TPT)")
    p.add_argument("--dassl-dir", type=Path, help="checkout of KaiyangZhou/Dassl.pytorch (default: found by --reference-dir)")
    p.add_argument("--tpt-dir", type=Path, help="checkout of azshue/TPT (default: found by --reference-dir)")
    p.add_argument("--reference-python", default=sys.executable, help="Python of the reference's environment")
    p.add_argument("--weights", type=Path, help="OpenAI-layout ViT-B/16 state dict (.safetensors)")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data", help="CoOp-layout data (read only)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="alternated reference/vlprompt pairs per case")
    p.add_argument("--tpt-images", type=int, default=3, help="test images per TPT run (the first one included)")
    p.add_argument("--test-per-class", type=int, default=None, help="cut EuroSAT's test split to N images per class")
    p.add_argument("--test-per-class-caltech", type=int, default=None,
                   help="cut Caltech-101's test split (100 classes, 5 per class) to N per class")
    p.add_argument("--workers", type=int, default=0, help="data-loader workers of both sides (vlprompt's default: 0)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--quick", action="store_true", help="1 epoch, 1 repeat, 20 test images per class, cases coop5 coop100")
    a = p.parse_args()
    if a.make_random_weights:
        make_random_weights(a.make_random_weights)
        return
    if not (a.reference_dir and a.weights):
        p.error("--reference-dir and --weights are needed (or --make-random-weights PATH)")
    a.reference_dir, a.dassl_dir, a.tpt_dir = find_checkouts(a.reference_dir, a.dassl_dir, a.tpt_dir)
    if a.quick:
        a.epochs, a.repeats = 1, 1
        a.test_per_class, a.test_per_class_caltech = a.test_per_class or 20, a.test_per_class_caltech or 1
        if a.cases == p.get_default("cases"):
            a.cases = ["coop5", "coop100"]
    missing = [n for n in a.cases if (CASES[n].get("kind") == "tpt" and a.tpt_dir is None)
               or (CASES[n].get("kind") != "tpt" and (a.reference_dir is None or a.dassl_dir is None))]
    if missing:
        p.error(f"cases {missing} need their reference checkouts: CoOp + Dassl.pytorch (--reference-dir, --dassl-dir) "
                f"for CoOp/CoCoOp, azshue/TPT (--tpt-dir) for TPT; found CoOp {a.reference_dir}, Dassl {a.dassl_dir}, "
                f"TPT {a.tpt_dir}")
    a.weights = a.weights.resolve()
    work = a.work or Path(tempfile.mkdtemp(prefix="vs_reference-"))
    root = work / "data"
    prepare_root(a.data_root, root, {"eurosat": a.test_per_class, "caltech101": a.test_per_class_caltech})
    imagenet_names = reference_classes(a.tpt_dir, "imagenet") if a.tpt_dir else []
    for n in a.cases:
        if CASES[n].get("kind") == "tpt":
            prepare_tpt_root(a.data_root, root, CASES[n], imagenet_names)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}

    load0 = os.getloadavg()[0]
    peak, tower = gflops_pair(a.weights)
    print(f"# vlprompt vs reference  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"{platform.processor() or platform.machine()}  {os.cpu_count()} CPUs  OMP_WAIT_POLICY=PASSIVE (children)")
    print(f"# epochs {a.epochs}  repeats {a.repeats}  test images per class: EuroSAT {a.test_per_class or 'all'}, Caltech-101 {a.test_per_class_caltech or 'all'}  workers "
          f"{a.workers}  weights {a.weights.name}  work {work}")
    print(f"# fp32 matmul peak (2048^3) {peak:.1f} GFLOP/s; vlprompt ViT-B/16 image tower (batch 16, no grad) "
          f"{tower:.1f} GFLOP/s = {100 * tower / peak:.0f}% of it ({vitb16_image_gflop():.1f} GFLOP per image), "
          f"best of 3 alternated rounds, load {load0:.2f}")
    tower_s = vitb16_image_gflop() / tower
    print(f"# the image tower's seconds per image at that rate: {tower_s:.3f} (the 'bound' column below divides the "
          f"reference's time by it: the ratio if all else cost vlprompt nothing)")
    print(f"\n{'case':>11} {'rep':>3} {'side':>9} {'load1':>6} {'train s':>8} {'img':>5} {'s/img':>7} {'CPU-s/img':>9} "
          f"{'test s':>8} {'img':>5} {'s/img':>7} {'CPU-s/img':>9} {'peak GiB':>8}", flush=True)
    summary, checks = [], []
    for name in a.cases:
        case = CASES[name]
        tpt = case.get("kind") == "tpt"
        sides = (("reference", run_reference_tpt), ("vlprompt", run_vlprompt_tpt)) if tpt else \
            (("reference", run_reference), ("vlprompt", run_vlprompt))
        runs = []
        for rep in range(a.repeats):
            pair = []
            for side, fn in sides:
                sub = work / f"{name}-{rep}-{side}"
                sub.mkdir(parents=True, exist_ok=True)
                load = os.getloadavg()[0]
                row = fn(a, case, root, sub, env)
                row["load"] = load
                pair.append(row)
                per_train = row["train_s"] / row["train_images"] if row["train_images"] else float("nan")
                per_train_cpu = row["train_cpu_s"] / row["train_images"] if row["train_images"] else float("nan")
                print(f"{name:>11} {rep:>3} {side:>9} {load:>6.2f} {row['train_s']:>8.1f} {row['train_images']:>5} "
                      f"{per_train:>7.3f} {per_train_cpu:>9.3f} "
                      f"{row['test_s']:>8.1f} {row['test_images']:>5} {row['test_s'] / row['test_images']:>7.3f} "
                      f"{row['test_cpu_s'] / row['test_images']:>9.3f} {row['peak_mib'] / 1024:>8.2f}", flush=True)
            runs.append((pair[0], pair[1]))
            if tpt and rep == 0 and not pair[0].get("failed"):
                names = reference_classes(a.tpt_dir, case["dataset"])[: case.get("classes")]
                checks.append(f"{name}: " + tpt_selection_check(a.weights, pair[0]["views"], names, pair[0]["selected"][0]))
        summary += summarize(name, runs, tower_s)
    print(f"\n## reference / vlprompt over {a.repeats} alternated pair(s) (> 1: vlprompt faster / smaller)")
    print(f"{'case':>11} {'figure':>25} {'ref min':>9} {'ref med':>9} {'vl min':>9} {'vl med':>9} {'ratio min':>9} "
          f"{'ratio med':>9} {'bound':>7} {'target':>7} verdict")
    print("\n".join(summary))
    if checks:
        print("\n## TPT view selection on identical views\n" + "\n".join(checks))
    print(f"\n# load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
