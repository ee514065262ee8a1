"""The ``vlprompt`` console script.

``vlprompt fit|validate|test --config ...`` run experiments (LightningCLI, layered configs, several seeds);
``vlprompt pretrain --config ...`` pretrains a CLIP on the toy world; ``vlprompt list learners|backbones|datasets``
shows the registry; ``vlprompt leaderboard build`` turns result JSONs into leaderboards.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable

# idle OpenMP threads sleep instead of spinning (much faster on shared CPUs); must precede importing torch
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# one progress style (rich): no tqdm bars of the Hugging Face libraries (transformers' "Loading weights" bar on
# every segmentation run); read when huggingface_hub is imported, so it is set before any command runs
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# W&B runs: no ~25 lines of history sparklines and summary per seed (the result JSON and the summary table have them)
os.environ.setdefault("WANDB_QUIET", "true")

# Start-up: this module imports no torch, Lightning, open_clip or transformers. `vlprompt --help`, `vlprompt list`
# and every usage error answer from here and from vlprompt.cli.listing; a subcommand's module (and what it pulls
# in) is imported only when that subcommand runs (benchmarks/cli_startup.py measures it).

log = logging.getLogger("vlprompt")

USAGE = """usage: vlprompt {fit,validate,test,pretrain,list,data,leaderboard,import,tta,generate,meta-train,sweep} ...

  fit        train a prompt learner and evaluate it (all seeds), writing a result JSON
  validate   evaluate on the validation split(s)
  test       evaluate on the test split(s) (zero-shot learners need no fit)
  pretrain   pretrain the toy CLIP, the toy VLSM or the toy diffusion generator on the toy world (LightningCLI)
  list       vlprompt list [learners|backbones|datasets|protocols|generators] [--check] | list configs [KIND]
  data       vlprompt data check NAME --root DIR [--strict] [--decode] | data convert NAME --root DIR --out DIR
  leaderboard  vlprompt leaderboard build RESULTS_DIR [--out leaderboards] [--html] | push RESULTS_DIR --wandb | migrate RESULTS_DIR
               | correlate RESULTS_CSV --backbone MODEL
  import     vlprompt import dassl CHECKPOINT --learner NAME --classnames FILE --out prompts.safetensors
  tta        episodic test-time evaluation (TPT, DiffTPT or a baseline learner), writing a result JSON
  generate   fill the generated-view cache of a test set ahead of time (DiffTPT)
  meta-train meta-learn a GRAM prompt initialisation + gradient regulator (vlprompt meta-train --config FILE)
  sweep      vlprompt sweep --config sweeps/NAME.yaml [--workers N] [--executor local|slurm]: a grid of runs

Each of fit/validate/test/pretrain takes --help and --print_config (fit/validate/test: --help-all lists every option). A killed fit/validate/test resumes with
`vlprompt fit --resume RUN_FOLDER`. `vlprompt --no-progress ...` (or CI=1) turns progress bars off.
"""


def _quiet_record(record: logging.LogRecord, debug: bool) -> bool:
    """Whether a log record is shown: warnings always; below that not open_clip's loading chatter (INFO on the
    root logger) nor Lightning's tips, unless ``VLPROMPT_LOG_LEVEL=DEBUG``."""
    if record.levelno >= logging.WARNING or debug:
        return True
    return f"{os.sep}open_clip{os.sep}" not in record.pathname and not record.name.startswith("lightning")


def _quiet_warnings() -> None:
    """Third-party deprecation warnings that a normal run cannot act on, filtered narrowly (message + module)."""
    # Lightning's own utilities/_pytree.py calls torch's deprecated `isinstance(treespec, LeafSpec)`: Lightning's
    # code, not ours or the user's; fixed upstream in newer Lightning releases
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")


def _setup_logging() -> None:
    from rich.logging import RichHandler  # deferred: rich's logging handler is needed only once a command runs

    level = os.environ.get("VLPROMPT_LOG_LEVEL", "INFO").upper()
    handler: logging.Handler
    if sys.stdout.isatty():
        handler = RichHandler(show_path=False, rich_tracebacks=False)
    else:  # a file or a pipe: plain lines, never hard-wrapped (a printed path stays one piece)
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)-7s %(message)s"))
    handler.addFilter(lambda r: _quiet_record(r, level == "DEBUG"))
    logging.basicConfig(level=level, handlers=[handler])
    # Lightning, imported later by the subcommand that needs it, sees the root handler and propagates to it
    # (lightning/pytorch/__init__.py adds its own stream handler only when the root logger has none)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlprompt`` console script; bad input ends with a one-line error and exit code 2."""
    try:
        return _main(argv)
    except BaseException as exc:  # noqa: BLE001 - turn bad input into a clear message, re-raise bugs
        # the run machinery is imported only by the commands that run something: an exception of its types can
        # only come from a module that is already loaded
        folders = sys.modules.get("vlprompt.runs.folders")
        if folders is not None and isinstance(exc, folders.RunInterrupted):
            print(f"vlprompt: {exc.message or exc}", file=sys.stderr)  # noqa: T201 - what was saved, how to resume
            return exc.exit_code
        if not isinstance(exc, Exception) or os.environ.get("VLPROMPT_TRACEBACK"):
            raise
        from vlprompt.runs.config import user_error  # deferred: imports Lightning; only on the error path

        message = user_error(exc)
        if message is None:
            raise
        print(f"vlprompt: error: {message}", file=sys.stderr)  # noqa: T201 - console error
        return 2


FIT_HELP = """usage: vlprompt {cmd} --config FILE [--config FILE ...] [options]

{what} A config is layered from several YAML files (later ones win): a protocol, a dataset, a
learner, a backbone, a trainer (`vlprompt list configs` lists the shipped ones). Each seed is an independent run;
the run ends in one result JSON with the per-seed metrics and their mean and std.

vlprompt options:
  --config FILE               a YAML config; repeat it to layer configs (configs/protocols/..., configs/learners/...)
  --model.learner NAME        the prompt learner, a registered name (`vlprompt list learners`) or a class path;
                              its options: --model.learner.init_args.NAME VALUE
  --model.backbone NAME       the frozen backbone (`vlprompt list backbones`): openclip, toyclip, toyclip2, clipseg, toyvlsm
  --data NAME                 the protocol (`vlprompt list protocols`): base2new, fewshot, transfer, segmentation;
                              its dataset: --data.init_args.dataset NAME (`vlprompt list datasets`)
  --seeds [1,2,3]             the seeds, one run each (the only seed option: Lightning's --seed_everything is refused)
  --run_id ID                 the run folder's name under runs/ (default: <learner>-<time>-<hex>)
  --resume RUN_FOLDER         continue an interrupted run where it stopped (its seeds, checkpoints and argv)
  --results_dir DIR           where the result JSON goes (default: results); --benchmark NAME its leaderboard group
  --prompts FILE              evaluate saved prompts (prompts.safetensors of a fit) instead of training
  --save_prompts BOOL         save each seed's learned prompts (default: true)
  --check_images cheap|full|none   check the images the run reads before training (default: cheap)
  --progress BOOL             the progress bar (default: on a terminal; one line per epoch otherwise)
  --print_config              print the fully resolved config and stop

The host module's options (--model.lr, ...) follow the protocol: classification by default; the segmentation
options (--model.overlays, --model.keep_best, ...) appear with a segmentation protocol, e.g.
  vlprompt {cmd} --config configs/seg_quickstart.yaml --help-all
Every option, Lightning's --trainer.* included: vlprompt {cmd} [--config FILE ...] --help-all
"""

_FIT_WHAT = {
    "fit": "Train a prompt learner on a frozen vision-language backbone and evaluate it, for every seed.",
    "validate": "Evaluate a prompt learner on the validation split(s), for every seed.",
    "test": "Evaluate a prompt learner on the test split(s), for every seed (zero-shot learners need no fit).",
}


def _fit_main(cmd: str, argv: list[str]) -> int:
    if "--help-all" in argv:  # LightningCLI's full help, for the host module the configs choose
        argv = ["--help" if a == "--help-all" else a for a in argv]
    elif "-h" in argv or "--help" in argv:
        print(FIT_HELP.format(cmd=cmd, what=_FIT_WHAT[cmd]))  # noqa: T201 - console help, no torch import
        return 0
    if any(a == "--seed_everything" or a.startswith("--seed_everything=") for a in argv):
        print(f"vlprompt: error: --seed_everything is Lightning's single seed; vlprompt runs one run per seed: "
              f"use --seeds [N] (one seed) or --seeds [1,2,3]", file=sys.stderr)  # noqa: T201 - usage error
        return 2
    from vlprompt.runs.driver import run_experiment  # deferred: torch, Lightning, the backbones (fit/validate/test)

    run_experiment(cmd, argv)
    return 0


def _pretrain_main(argv: list[str]) -> int:
    from vlprompt.cli.pretrain import pretrain_main  # deferred: torch and Lightning (pretrain only)
    from vlprompt.data.progress import progress_enabled  # deferred: beside pretrain_main, which needs it

    pretrain_main(argv if progress_enabled() else [*argv, "--trainer.enable_progress_bar", "false"])
    return 0


def _tta_main(cmd: str, argv: list[str]) -> int:
    from vlprompt.cli.tta import tta_main  # deferred: torch and the generators (tta/generate only)

    return tta_main(cmd, argv)


def _meta_main(argv: list[str]) -> int:
    from vlprompt.cli.meta import meta_main  # deferred: torch (meta-train only)

    return meta_main(argv)


def _list_main(argv: list[str]) -> int:
    from vlprompt.cli.listing import list_main  # deferred: kept beside the others; listing itself imports no torch

    return list_main(argv)


def _data_main(argv: list[str]) -> int:
    from vlprompt.cli.data import data_main  # deferred: torch and the dataset sources (data only)

    return data_main(argv)


def _import_main(argv: list[str]) -> int:
    from vlprompt.cli.import_dassl import import_main  # deferred: torch (import only)

    return import_main(argv)


def _sweep_main(argv: list[str]) -> int:
    from vlprompt.cli.sweep import sweep_main  # deferred: the run machinery (sweep only)

    return sweep_main(argv)


def _leaderboard_main(argv: list[str]) -> int:
    from vlprompt.cli.leaderboard import leaderboard_main  # deferred: the leaderboard builders (leaderboard only)

    return leaderboard_main(argv)


#: subcommand -> its handler (``argv`` after the subcommand); the fit/test/tta ones also get the subcommand
_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "pretrain": _pretrain_main,
    "fit": lambda argv: _fit_main("fit", argv),
    "validate": lambda argv: _fit_main("validate", argv),
    "test": lambda argv: _fit_main("test", argv),
    "tta": lambda argv: _tta_main("tta", argv),
    "generate": lambda argv: _tta_main("generate", argv),
    "meta-train": _meta_main,
    "list": _list_main,
    "data": _data_main,
    "import": _import_main,
    "sweep": _sweep_main,
    "leaderboard": _leaderboard_main,
}


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--no-progress" in argv:  # global flag: no progress bars in any command
        argv.remove("--no-progress")
        os.environ["VLPROMPT_PROGRESS"] = "0"
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)  # noqa: T201 - console help
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in _COMMANDS:
        _setup_logging()
        _quiet_warnings()
        return _COMMANDS[cmd](rest)
    print(f"vlprompt: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)  # noqa: T201
    return 2
