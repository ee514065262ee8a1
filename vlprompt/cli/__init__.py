"""The ``vlprompt`` console script.

``vlprompt fit|validate|test --config ...`` run experiments (LightningCLI, layered configs, several seeds);
``vlprompt pretrain --config ...`` pretrains a CLIP on the toy world; ``vlprompt list learners|backbones|datasets``
shows the registry; ``vlprompt leaderboard build`` turns result JSONs into leaderboards.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable

# idle OpenMP threads sleep instead of spinning (much faster on shared CPUs); must precede importing torch
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# lightning is imported before the logging set-up (_setup_logging) so that its handlers can be redirected
import lightning.pytorch  # noqa: E402, F401
from rich.logging import RichHandler  # noqa: E402

from vlprompt.cli.data import data_main  # noqa: E402
from vlprompt.cli.import_dassl import import_main  # noqa: E402
from vlprompt.cli.leaderboard import leaderboard_main  # noqa: E402
from vlprompt.cli.listing import list_main  # noqa: E402
from vlprompt.cli.meta import meta_main  # noqa: E402
from vlprompt.cli.pretrain import pretrain_main  # noqa: E402
from vlprompt.cli.sweep import sweep_main  # noqa: E402
from vlprompt.cli.tta import tta_main  # noqa: E402
from vlprompt.data.progress import progress_enabled  # noqa: E402
from vlprompt.runs.config import user_error  # noqa: E402
from vlprompt.runs.driver import run_experiment  # noqa: E402
from vlprompt.runs.folders import RunInterrupted  # noqa: E402

log = logging.getLogger("vlprompt")

USAGE = """usage: vlprompt {fit,validate,test,pretrain,list,data,leaderboard,import,tta,generate,meta-train,sweep} ...

  fit        train a prompt learner and evaluate it (all seeds), writing a result JSON
  validate   evaluate on the validation split(s)
  test       evaluate on the test split(s) (zero-shot learners need no fit)
  pretrain   pretrain the toy CLIP, the toy VLSM or the toy diffusion generator on the toy world (LightningCLI)
  list       vlprompt list learners|backbones|datasets|protocols [--errors]
  data       vlprompt data check NAME --root DIR [--strict] [--decode] | data convert NAME --root DIR --out DIR
  leaderboard  vlprompt leaderboard build RESULTS_DIR [--out leaderboards] [--html] | push RESULTS_DIR --wandb
  import     vlprompt import dassl CHECKPOINT --learner NAME --classnames FILE --out prompts.safetensors
  tta        episodic test-time evaluation (TPT, DiffTPT or a baseline learner), writing a result JSON
  generate   fill the generated-view cache of a test set ahead of time (DiffTPT)
  meta-train meta-learn a GRAM prompt initialisation + gradient regulator (vlprompt meta-train --config FILE)
  sweep      vlprompt sweep --config sweeps/NAME.yaml [--workers N] [--executor local|slurm]: a grid of runs

Each of fit/validate/test/pretrain takes --help and --print_config. A killed fit/validate/test resumes with
`vlprompt fit --resume RUN_FOLDER`. `vlprompt --no-progress ...` (or CI=1) turns progress bars off.
"""


def _setup_logging() -> None:
    level = os.environ.get("VLPROMPT_LOG_LEVEL", "INFO").upper()
    handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
    fmt = "%(message)s"
    # open_clip logs its loading chatter at INFO on the root logger: keep only its warnings
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or f"{os.sep}open_clip{os.sep}" not in r.pathname)
    logging.basicConfig(level=level, format=fmt, handlers=[handler])
    # Lightning installs its own stream handler; route its records through ours, and keep its tips quiet
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
        lg.setLevel(level if level == "DEBUG" else "WARNING")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlprompt`` console script; bad input ends with a one-line error and exit code 2."""
    try:
        return _main(argv)
    except RunInterrupted as exc:
        print(f"vlprompt: {exc.message or exc}", file=sys.stderr)  # noqa: T201 - what was saved, how to resume
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - turn bad input into a clear message, re-raise bugs
        message = user_error(exc)
        if message is None or os.environ.get("VLPROMPT_TRACEBACK"):
            raise
        print(f"vlprompt: error: {message}", file=sys.stderr)  # noqa: T201 - console error
        return 2


def _fit_main(cmd: str, argv: list[str]) -> int:
    run_experiment(cmd, argv)
    return 0


def _pretrain_main(argv: list[str]) -> int:
    pretrain_main(argv if progress_enabled() else [*argv, "--trainer.enable_progress_bar", "false"])
    return 0


#: subcommand -> its handler (``argv`` after the subcommand); the fit/test/tta ones also get the subcommand
_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "pretrain": _pretrain_main,
    "fit": functools.partial(_fit_main, "fit"),
    "validate": functools.partial(_fit_main, "validate"),
    "test": functools.partial(_fit_main, "test"),
    "tta": functools.partial(tta_main, "tta"),
    "generate": functools.partial(tta_main, "generate"),
    "meta-train": meta_main,
    "list": list_main,
    "data": data_main,
    "import": import_main,
    "sweep": sweep_main,
    "leaderboard": leaderboard_main,
}


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    if "--no-progress" in argv:  # global flag: no progress bars in any command
        argv.remove("--no-progress")
        os.environ["VLPROMPT_PROGRESS"] = "0"
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)  # noqa: T201 - console help
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in _COMMANDS:
        return _COMMANDS[cmd](rest)
    print(f"vlprompt: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)  # noqa: T201
    return 2
