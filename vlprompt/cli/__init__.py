"""The ``vlprompt`` console script.

``vlprompt fit|validate|test --config ...`` run experiments (LightningCLI, layered configs, several seeds);
``vlprompt pretrain --config ...`` pretrains a CLIP on the toy world; ``vlprompt list learners|backbones|datasets``
shows the registry; ``vlprompt leaderboard build`` turns result JSONs into leaderboards.
"""

from __future__ import annotations

import logging
import os
import sys

# idle OpenMP threads sleep instead of spinning (much faster on shared CPUs); must precede importing torch
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    except ImportError:  # pragma: no cover
        handler = logging.StreamHandler()
        fmt = "%(levelname)s %(name)s: %(message)s"
    # open_clip logs its loading chatter at INFO on the root logger: keep only its warnings
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or f"{os.sep}open_clip{os.sep}" not in r.pathname)
    logging.basicConfig(level=level, format=fmt, handlers=[handler])
    # Lightning installs its own stream handler; route its records through ours, and keep its tips quiet
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
        lg.setLevel(level if level == "DEBUG" else "WARNING")


def _pretrain_selects_classes(args: list[str]) -> bool:
    """Whether a ``--config`` file of ``vlprompt pretrain`` names its model class (``model: {class_path: ...}``)."""
    import yaml

    for i, a in enumerate(args):
        path = args[i + 1] if a == "--config" and i + 1 < len(args) else a.split("=", 1)[1] if a.startswith("--config=") else None
        if path and os.path.isfile(path):
            with open(path) as fh:
                cfg = yaml.safe_load(fh) or {}
            if isinstance(cfg.get("model"), dict) and "class_path" in cfg["model"]:
                return True
    return any(a.startswith("--model.class_path") or a.startswith("--model=") for a in args)


def pretrain_main(args: list[str]) -> None:
    """``vlprompt pretrain``: LightningCLI (fit) over the model and data the config names.

    A config whose ``model``/``data`` give a ``class_path`` (e.g. ``configs/pretrain/toyvlsm.yaml``: the toy VLSM)
    selects any LightningModule/LightningDataModule; otherwise the toy CLIP's :class:`CLIPPretraining` and
    :class:`CaptionData` (``configs/pretrain/toyclip.yaml``).
    """
    import warnings

    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended", category=UserWarning)
    if _pretrain_selects_classes(args):
        LightningCLI(
            pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            args=["fit", *args], save_config_callback=None, parser_kwargs={"fit": {"prog": "vlprompt pretrain"}},
        )
        return
    from vlprompt.toyworld.pretrain import CaptionData, CLIPPretraining

    LightningCLI(
        CLIPPretraining, CaptionData, args=["fit", *args], save_config_callback=None,
        parser_kwargs={"fit": {"prog": "vlprompt pretrain"}},
    )


_USER_ERRORS = ("DataError", "BackboneError", "LearnerError", "ConfigError", "RegistryError", "ResultError", "RunError")


def _user_error(exc: BaseException) -> str | None:
    """The message of a bad-input error (ours, possibly wrapped by jsonargparse), or None for a bug."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in _USER_ERRORS:
            return str(exc)
        text = str(exc)
        if "Does not validate against any of the Union subtypes" in text:
            lines = [ln.strip()[2:] for ln in text.splitlines() if ln.strip().startswith("- ") and "NoneType" not in ln]
            if lines:
                return "; ".join(lines)
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlprompt`` console script; bad input ends with a one-line error and exit code 2."""
    from vlprompt.runs.folders import RunInterrupted

    try:
        return _main(argv)
    except RunInterrupted as exc:
        print(f"vlprompt: {exc.message or exc}", file=sys.stderr)  # noqa: T201 - what was saved, how to resume
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - turn bad input into a clear message, re-raise bugs
        message = _user_error(exc)
        if message is None or os.environ.get("VLPROMPT_TRACEBACK"):
            raise
        print(f"vlprompt: error: {message}", file=sys.stderr)  # noqa: T201 - console error
        return 2


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import lightning.pytorch  # noqa: F401 - imported first so that its logging set-up can be redirected

    _setup_logging()
    if "--no-progress" in argv:  # global flag: no progress bars in any command
        argv.remove("--no-progress")
        os.environ["VLPROMPT_PROGRESS"] = "0"
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)  # noqa: T201 - console help
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "pretrain":
        from vlprompt.data.progress import progress_enabled

        pretrain_main(rest if progress_enabled() else [*rest, "--trainer.enable_progress_bar", "false"])
        return 0
    if cmd in {"fit", "validate", "test"}:
        from vlprompt.runs.driver import run_experiment

        run_experiment(cmd, rest)
        return 0
    if cmd in {"tta", "generate"}:
        from vlprompt.runs.test_time import main as test_time_main

        return test_time_main(cmd, rest)
    if cmd == "meta-train":
        from vlprompt.learners.gram.meta import main as meta_main

        return meta_main(rest)
    if cmd == "list":
        from vlprompt.learners.registry import list_main

        return list_main(rest)
    if cmd == "data":
        from vlprompt.runs.data_check import data_main

        return data_main(rest)
    if cmd == "import":
        from vlprompt.learners.reference_import import import_main

        return import_main(rest)
    if cmd == "sweep":
        from vlprompt.runs.sweep import sweep_main

        return sweep_main(rest)
    if cmd == "leaderboard":
        from vlprompt.leaderboards.build import leaderboard_main

        return leaderboard_main(rest)
    print(f"vlprompt: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)  # noqa: T201
    return 2

