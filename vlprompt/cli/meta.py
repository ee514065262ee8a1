"""``vlprompt meta-train --config FILE``: meta-learn a GRAM prompt initialisation and gradient regulator."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vlprompt.learners.base import LearnerError
from vlprompt.learners.gram.corpus import MetaError
from vlprompt.learners.gram.meta import load_config, meta_train

log = logging.getLogger(__name__)


def meta_main(argv: list[str]) -> int:
    """``vlprompt meta-train --config FILE [--out PATH] [--steps N] [--first_order]``."""
    parser = argparse.ArgumentParser(prog="vlprompt meta-train", description="meta-train a GRAM artifact (init + gradient regulator)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", default=None, help="artifact path (overrides the config's out)")
    parser.add_argument("--steps", type=int, default=None, help="meta-steps (overrides meta.steps)")
    parser.add_argument("--first_order", action="store_true", help="first-order approximation (overrides meta.first_order)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.out:
            cfg["out"] = args.out
        if args.steps is not None:
            cfg.setdefault("meta", {})["steps"] = args.steps
        if args.first_order:
            cfg.setdefault("meta", {})["first_order"] = True
        meta_train(cfg, command=["vlprompt", "meta-train", *argv], config_text=Path(args.config).read_text())
    except (MetaError, LearnerError) as exc:
        log.error("%s", exc)
        return 2
    return 0
