"""Per-image agreement of test-time entrants with zero-shot on the toy shifts (a diagnostic, not a benchmark of speed).

Builds the entrants of ``leaderboards/run_test_time_toy.sh`` exactly as ``vlprompt tta`` does (same configs, the
same fixed image subset) and, for every test image, compares their logits with zero-shot's: how many argmax
predictions change, the mean over images of the largest class-centred logit change, the accuracy, and zero-shot's
top-1/top-2 logit margin. TPT's views are drawn with ``torch.manual_seed(image index)``. Also prints how far the
loaded CoOp context moved from its "a photo of a" start.

Run (after the CoOp prompts of ``run_test_time_toy.sh`` exist)::

    OMP_NUM_THREADS=1 python benchmarks/tta_agreement.py --images 48 \\
        --prompts 'runs/test_time_toy/coop_clean_source/seed{seed}/prompts.safetensors' --seed 1

No asserts: the script prints figures only.
"""

from __future__ import annotations

import argparse
import os

import torch

from vlprompt.runs.test_time import build_tta_cli

BASE = ["--config", "configs/protocols/test_time/toy_shifts.yaml", "--config", "configs/backbones/toyclip.yaml"]
COOP = ["--model.learner", "coop", "--model.learner.init_args.n_ctx", "4", "--model.learner.init_args.ctx_init", "a photo of a"]
TPT = ["--config", "configs/learners/tpt/default.yaml"]


def build(images: int, extra: list[str], prompts: str | None):
    cli = build_tta_cli([*BASE, "--data.init_args.images_per_set", str(images), *extra])
    cli.instantiate_classes()
    model, data = cli.model, cli.datamodule
    if prompts:
        model.learner.load_prompts(prompts, check_classnames=False)
    data.setup("test")
    model.on_test_epoch_start()
    return model, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="test images per shift (as IMAGES in the script)")
    parser.add_argument("--prompts", type=str, required=True, help="CoOp prompts; '{seed}' is replaced by --seed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    prompts = args.prompts.replace("{seed}", str(args.seed))
    zs, data = build(args.images, ["--config", "configs/learners/zero_shot/default.yaml"], None)
    entrants = {
        "coop": build(args.images, COOP, prompts)[0],
        "tpt": build(args.images, TPT, None)[0],
        "tpt+coop": build(args.images, TPT, prompts)[0],
    }
    start = build(args.images, COOP, None)[0].learner.ctx.detach()
    ctx = entrants["coop"].learner.ctx.detach()
    print(f"# load average {os.getloadavg()[0]:.2f}; CoOp context moved {float((ctx - start).norm()):.4f} in norm "
          f"from its start (norm {float(start.norm()):.4f}), seed {args.seed}", flush=True)
    totals = {k: [0, 0] for k in entrants}
    n_all = 0
    for (name, space), loader in zip(zs.task["test_sets"], data.test_dataloader()):
        for m in (zs, *entrants.values()):
            m._use_space(space)
        flips = dict.fromkeys(entrants, 0)
        change = dict.fromkeys(entrants, 0.0)
        correct = dict.fromkeys(["zero_shot", *entrants], 0)
        margins, n = [], 0
        for images, targets in loader:
            for image, target in zip(images, targets):
                ref = zs.predict_image(image).detach()[0]
                top = ref.topk(2).values
                margins.append(float(top[0] - top[1]))
                correct["zero_shot"] += int(ref.argmax()) == int(target)
                for k, m in entrants.items():
                    torch.manual_seed(n_all)
                    out = m.predict_image(image).detach()[0]
                    correct[k] += int(out.argmax()) == int(target)
                    flips[k] += int(out.argmax() != ref.argmax())
                    delta = out - ref
                    change[k] += float((delta - delta.mean()).abs().max())
                n += 1
                n_all += 1
        for k in entrants:
            totals[k][0] += flips[k]
            totals[k][1] += n
        acc = " ".join(f"{k} {100 * v / n:.2f}" for k, v in correct.items())
        print(f"{name} ({n} images): accuracy {acc}", flush=True)
        print(f"  predictions changed vs zero-shot: {flips}; mean max centred logit change: "
              f"{ {k: round(v / n, 3) for k, v in change.items()} }; zero-shot top-1/top-2 margin median "
              f"{torch.tensor(margins).median():.2f}", flush=True)
    print("all shifts: predictions changed vs zero-shot " + ", ".join(f"{k} {f}/{t}" for k, (f, t) in totals.items()), flush=True)


if __name__ == "__main__":
    main()
