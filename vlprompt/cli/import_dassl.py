"""``vlprompt import dassl CHECKPOINT ...``: turn a reference (Dassl) checkpoint into a prompts file."""

from __future__ import annotations

import argparse

from vlprompt.learners.reference_import import import_dassl, read_classnames


def import_main(argv: list[str]) -> int:
    """``vlprompt import dassl PATH --learner NAME --classnames FILE --out prompts.safetensors [...]``."""
    parser = argparse.ArgumentParser(prog="vlprompt import", description="import prompts trained by reference code")
    sub = parser.add_subparsers(dest="source", required=True)
    p = sub.add_parser("dassl", help="a Dassl checkpoint (prompt_learner/model.pth.tar-N) of CoOp, CoCoOp, ...")
    p.add_argument("path", help="the checkpoint file")
    p.add_argument("--learner", required=True, help="registered learner that trained it (coop, cocoop, ...)")
    p.add_argument("--config", default=None, help="learner YAML (model.learner.init_args: n_ctx, ...)")
    p.add_argument("--backbone-config", default=None, help="backbone YAML (model.backbone); default the toy CLIP")
    p.add_argument("--classnames", required=True, help="training class names in label order: a file, one per line, or a comma list")
    p.add_argument("--out", required=True, help="output prompts (.safetensors)")
    args = parser.parse_args(argv)
    out = import_dassl(
        args.path, learner=args.learner, classnames=read_classnames(args.classnames), out=args.out,
        learner_config=args.config, backbone_config=args.backbone_config,
    )
    print(f"wrote {out}")  # noqa: T201 - console output
    return 0
