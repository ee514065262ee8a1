"""``vlprompt fit|validate|test``: LightningCLI runs over several seeds, ending in one result JSON.

Configs are layered (``--config`` several times: dataset, learner, protocol, trainer), and ``class_path``
may name a registered plugin (``class_path: coop``) instead of an import path. The data module's ``task``
(label spaces and evaluation sets) is linked into the model. Each seed re-instantiates model, data and
trainer after seeding, so seeds are independent runs; the frozen backbone is loaded once and shared.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import set_loader
from lightning.pytorch import seed_everything
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vlprompt.learners import registry
from vlprompt.metrics import harmonic_mean
from vlprompt.modules.classification import PromptClassifier
from vlprompt.protocols.base2new import ClassificationProtocol
from vlprompt.runs.results import make_result, print_summary, write_result
from vlprompt.runs.tracking import end_seed_logging, start_seed_logging

log = logging.getLogger(__name__)

#: which registry group a class_path under a config key belongs to
_KEY_GROUPS = {"learner": "learners", "backbone": "backbones", "dataset": "datasets", "data": "protocols"}
_KEY_GROUPS["inner"] = "learners"  # a wrapping learner's inner learner (e.g. gram)


class ConfigError(ValueError):
    """A config names something that does not exist; the message lists what does."""


def _resolve_names(node: Any, key: str | None = None) -> Any:
    """Rewrite ``class_path: <registered name>`` to the plugin's import path, recursively."""
    if isinstance(node, list):
        return [_resolve_names(v, key) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _resolve_names(v, k) for k, v in node.items()}
    cp = out.get("class_path")
    if isinstance(cp, str) and "." not in cp:
        group = _KEY_GROUPS.get(key or "")
        path = registry.resolve_class_path(cp, group=group) if group else registry.resolve_class_path(cp)
        if path is None and key in _OVERRIDDEN:
            # the command line replaces this class: an unusable name in a config file must not stop the run
            out["class_path"] = _OVERRIDDEN[key]
            return out
        if path is None:
            failures = [f for k in ([group] if group else list(registry.GROUPS))
                        if (f := registry.get_registry(k).failure(cp)) is not None]
            if failures:  # installed but unusable: say why, not "unknown"
                raise ConfigError(f"{(group or 'plugin').rstrip('s')} {cp!r} under {key!r} failed to load: {failures[0]}")
            kinds = [group] if group else list(registry.GROUPS)
            known = {k: registry.get_registry(k).names() for k in kinds}
            listing = "; ".join(f"{k}: {', '.join(v) or '(none)'}" for k, v in known.items())
            raise ConfigError(
                f"unknown {(group or 'plugin').rstrip('s')} {cp!r} under {key!r}. Known {listing}. "
                "Run `vlprompt list learners|backbones|datasets|protocols`, or give a full import path."
            )
        out["class_path"] = path
    return out


#: config keys whose class_path the command line sets (filled by build_cli while it parses)
_OVERRIDDEN: dict[str, str] = {}


def _overridden_keys(argv: list[str]) -> dict[str, str]:
    """Keys such as ``learner`` whose class is chosen on the command line (``--model.learner[.class_path] X``),
    with that class path (``argv`` already has registered names resolved)."""
    keys = {}
    for i, arg in enumerate(argv[:-1]):
        if arg.startswith("--") and "=" not in arg:
            parts = arg[2:].split(".")
            parts = parts[:-1] if parts[-1] == "class_path" else parts
            if parts and parts[-1] in _KEY_GROUPS and not argv[i + 1].startswith(("-", "{")) and "." in argv[i + 1]:
                keys[parts[-1]] = argv[i + 1]
    return keys


def _yaml_loader(text: str) -> Any:
    value = yaml.safe_load(text)
    return _resolve_names(value)


set_loader("yaml_vlprompt", _yaml_loader)
# the frozen backbone is in eval mode on purpose
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended", category=UserWarning)
warnings.filterwarnings("ignore", message=r".*skip_none parameter was deprecated")


class VlpromptCLI(LightningCLI):
    """LightningCLI with seeds, results folder and the data -> model task link."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--seeds", type=list[int], default=[1, 2, 3], help="seeds, one run each (seed 0 is valid)")
        parser.add_argument("--results_dir", type=str, default="results", help="where the result JSON is written")
        parser.add_argument("--benchmark", type=str | None, default=None, help="leaderboard group (default: from the dataset)")
        parser.add_argument("--prompts", type=str | None, default=None, help="learned prompts (safetensors) to load before evaluating")
        parser.add_argument("--save_prompts", type=bool, default=True, help="save learned prompts of each seed")
        parser.add_argument("--run_id", type=str | None, default=None,
                            help="run id (default: <learner>-<time>-<hex>); an existing interrupted run's id resumes it")
        parser.add_argument("--force_prompts", type=bool, default=False,
                            help="load --prompts although its backbone, checksum or class names differ (deliberate)")
        parser.add_argument("--check_images", type=str, default="cheap",
                            help="before training, check every image the run reads: cheap (headers), full (decode), none")
        parser.add_argument("--progress", type=bool | None, default=None,
                            help="progress bars (default: on, off when the CI environment variable is set)")
        parser.link_arguments("data", "model.init_args.task" if self.subclass_mode_model else "model.task",
                              compute_fn=lambda data: data.task, apply_on="instantiate")


def _metrics(results: dict[str, float]) -> dict[str, float]:
    out = {k: round(v, 4) for k, v in results.items()}
    if "base" in out and "new" in out:
        out["hm"] = round(harmonic_mean(out["base"], out["new"]), 4)
    targets = [v for k, v in results.items() if k != "source"]
    if "source" in out and targets:
        out["target_mean"] = round(sum(targets) / len(targets), 4)
    return out


def _plugin_name(kind: str, obj: object) -> str:
    cls = type(obj)
    try:
        for info in registry.get_registry(kind).entries():
            if info.obj is cls:
                return info.name
    except registry.RegistryError:
        pass
    return cls.__name__.lower()


def _benchmark(identity: dict) -> str:
    kind = identity.get("kind")
    return "toy" if kind == "toyworld" else str(identity.get("benchmark") or "custom")


def _resolve_argv(argv: list[str]) -> list[str]:
    """Resolve registered names given on the command line (``--model.learner coop``,
    ``--model.learner.class_path coop``) the way the YAML loader does for config files."""
    out = list(argv)
    for i, arg in enumerate(argv[:-1]):
        flag = arg[2:] if arg.startswith("--") else None
        if flag is None or "=" in flag:
            continue
        parts = flag.split(".")
        parts = parts[:-1] if parts[-1] == "class_path" else parts
        key = parts[-1] if parts else ""
        value = argv[i + 1]
        if key in _KEY_GROUPS and value and not value.startswith(("-", "{", "[")) and "." not in value:
            out[i + 1] = _resolve_names({"class_path": value}, key)["class_path"]
    return out


def check_config_files(argv: list[str]) -> None:
    """Every ``--config FILE`` must exist and hold a YAML mapping: a missing, invalid, empty or list-valued file is
    a :class:`ConfigError` naming the file (and the line), instead of a parser traceback."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise ConfigError(f"--config {f}: no such file; check the path (configs live in configs/<kind>/<name>.yaml)")
        try:
            value = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--config {f}: not a text file ({exc.reason}); pass a YAML config") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"--config {f}: invalid YAML{where} ({problem}); fix the syntax (indentation, colons, "
                              "brackets)") from exc
        if value is None:
            raise ConfigError(f"--config {f}: the file is empty; give keys such as `model:`, `data:`, `trainer:` or drop it")
        if not isinstance(value, dict):
            raise ConfigError(f"--config {f}: expected a mapping of keys (model:, data:, trainer:, ...), got a "
                              f"{type(value).__name__}; see configs/quickstart.yaml for the layout")


def build_cli(stage: str, argv: list[str]) -> VlpromptCLI:
    """Parse ``argv`` (LightningCLI syntax) without running anything."""
    check_config_files(argv)
    argv = _resolve_argv(argv)
    _OVERRIDDEN.clear()
    _OVERRIDDEN.update(_overridden_keys(argv))
    try:
        return _build_cli(stage, argv)
    except ValueError as exc:
        from vlprompt.cli import _user_error

        if _user_error(exc) is not None:  # ours (possibly wrapped by jsonargparse): its message is the right one
            raise
        raise ConfigError(f"invalid config value: {exc}") from exc
    finally:
        _OVERRIDDEN.clear()


def _data_class_path(argv: list[str]) -> str | None:
    """The ``data`` class path the arguments select (last ``--config`` file or ``--data`` flag wins), or None."""
    found: str | None = None

    def from_value(value: Any) -> str | None:
        if isinstance(value, dict):
            cp = value.get("class_path")
            return cp if isinstance(cp, str) else None
        return value if isinstance(value, str) and value and not value.startswith(("{", "[")) else None

    for i, arg in enumerate(argv):
        value: Any = None
        if arg == "--config" and i + 1 < len(argv) or arg.startswith("--config="):
            path = argv[i + 1] if arg == "--config" else arg.split("=", 1)[1]
            try:
                loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError, UnicodeDecodeError):
                continue
            value = from_value(loaded.get("data")) if isinstance(loaded, dict) else None
        elif arg in ("--data", "--data.class_path") and i + 1 < len(argv):
            raw = argv[i + 1]
            value = from_value(yaml.safe_load(raw) if raw.startswith("{") else raw)
        elif arg.startswith(("--data=", "--data.class_path=")):
            value = from_value(arg.split("=", 1)[1])
        if value:
            found = value
    return found


def host_classes(argv: list[str]) -> tuple[type, type]:
    """(Lightning module class, data module base class) for the protocol the arguments select.

    A protocol names its host module with a ``host_module`` import path (e.g. the segmentation protocol's
    :class:`~vlprompt.modules.segmentation.PromptSegmenter`); protocols without one (classification) are hosted
    by :class:`PromptClassifier`. Generic: no protocol or module is named here but the classification default.
    """
    import importlib

    path = _data_class_path(argv)
    if path and "." not in path:
        path = registry.resolve_class_path(path, group="protocols") or path
    if not path or "." not in path:
        return PromptClassifier, ClassificationProtocol
    try:
        module, name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return PromptClassifier, ClassificationProtocol  # the parser reports the bad class path
    host = getattr(cls, "host_module", None)
    if not isinstance(host, str) or not isinstance(cls, type):
        return PromptClassifier, ClassificationProtocol
    module, name = host.rsplit(".", 1)
    return getattr(importlib.import_module(module), name), cls


def _build_cli(stage: str, argv: list[str]) -> VlpromptCLI:
    model_class, data_class = host_classes(argv)
    return VlpromptCLI(
        model_class,
        data_class,
        subclass_mode_data=True,
        run=False,
        args=argv,
        save_config_callback=None,
        seed_everything_default=False,
        parser_kwargs={"prog": f"vlprompt {stage}", "parser_mode": "yaml_vlprompt"},
        trainer_defaults={
            "logger": False, "enable_checkpointing": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0, "default_root_dir": "runs", "accelerator": "cpu", "devices": 1,
        },
    )


def _strip_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(f"{flag}="):
            out.append(a)
    return out


def _take_resume(stage: str, argv: list[str]) -> tuple[list[str], str | None]:
    """Replace ``--resume RUN_DIR`` by the argv recorded in that run folder (plus any other arguments given)."""
    from vlprompt.runs.folders import RunError, RunFolder

    if "--resume" not in argv and not any(a.startswith("--resume=") for a in argv):
        return argv, None
    rest, folder = [], None
    it = iter(argv)
    for a in it:
        if a == "--resume":
            folder = next(it, None)
            if folder is None:
                raise RunError("--resume needs the run folder, e.g. --resume runs/coop-20260101-120000-ab12cd")
        elif a.startswith("--resume="):
            folder = a.split("=", 1)[1]
        else:
            rest.append(a)
    recorded_stage, recorded = RunFolder.argv_of(folder)
    if recorded_stage != stage:
        raise RunError(f"--resume {folder}: that run is a `vlprompt {recorded_stage}`, not `vlprompt {stage}`; "
                       f"run `vlprompt {recorded_stage} --resume {folder}`.")
    return [*recorded, *rest], str(folder)


def validate_config(stage: str, cfg: Any) -> None:
    """Refuse configs that would train nothing useful or give misleading statistics, before any work starts."""
    seeds = list(cfg.seeds or [])
    if not seeds:
        raise ConfigError("--seeds is empty: give at least one seed, e.g. --seeds [1,2,3]")
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    if dupes:
        raise ConfigError(f"--seeds {seeds} repeats seed(s) {dupes}: repeated seeds are the same run and would fake a "
                          "smaller std; give distinct seeds, e.g. --seeds [1,2,3]")
    if cfg.prompts and len(seeds) > 1:
        raise ConfigError(
            f"--prompts {cfg.prompts} evaluates one checkpoint, but --seeds {seeds} would report it as a {len(seeds)}-seed "
            "result (std 0.00). Pass one seed, e.g. --seeds [1], or evaluate each seed's prompts separately.")
    if cfg.check_images not in ("cheap", "full", "none"):
        raise ConfigError(f"--check_images {cfg.check_images!r} must be cheap, full or none")
    trainer = cfg.trainer
    max_epochs = getattr(trainer, "max_epochs", None)
    model = cfg.model
    init = getattr(model, "init_args", model)
    warmup = getattr(init, "warmup_epochs", None)
    if stage == "fit" and max_epochs is not None and max_epochs >= 0 and isinstance(warmup, int) and warmup > 0 \
            and max_epochs <= warmup and _learner_trainable(cfg):
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} <= model.warmup_epochs={warmup}: every epoch would be warm-up at the "
            f"constant warm-up lr, so nothing is learned. Raise --trainer.max_epochs above {warmup} or lower "
            f"--model.warmup_epochs.")
    data_init = getattr(cfg.data, "init_args", None)
    batch_size = getattr(data_init, "batch_size", None)
    if isinstance(batch_size, int) and batch_size < 1:
        raise ConfigError(f"data batch_size={batch_size} must be >= 1, e.g. --data.init_args.batch_size 32")


def _learner_trainable(cfg: Any) -> bool:
    """The ``trainable`` attribute of the configured learner class (True when it cannot be told)."""
    import importlib

    path = str(getattr(getattr(cfg.model, "learner", None), "class_path", "") or "")
    try:
        module, name = path.rsplit(".", 1)
        return bool(getattr(getattr(importlib.import_module(module), name), "trainable", True))
    except (ValueError, ImportError, AttributeError):
        return True


def _progress_enabled(cfg: Any) -> bool:
    from vlprompt.data.progress import progress_enabled

    if cfg.progress is not None:
        return bool(cfg.progress)
    return progress_enabled() and cfg.trainer.enable_progress_bar is not False


def _learner_label(cfg: Any) -> str:
    path = str(getattr(cfg.model.learner, "class_path", "") or "run")
    try:
        for info in registry.get_registry("learners").entries():
            if info.class_path == path:
                return info.name
    except registry.RegistryError:
        pass
    return path.rsplit(".", 1)[-1].lower()


def _sha256(path: str | Path) -> str:
    from vlprompt.data.atomic import sha256_file

    return sha256_file(path)


def load_checked_prompts(learner: Any, path: str, backbone: Any, *, force: bool) -> dict[str, str]:
    """Load ``--prompts`` into ``learner`` after checking the file: readable safetensors, sha256 equal to the one
    its run recorded (when the file sits in a run folder), saved for this backbone (model and checkpoint
    sha256) and for these class names. ``force`` loads despite a mismatch (the deliberate case); returns
    ``{"path", "sha256"}`` for the result JSON."""
    from safetensors import SafetensorError, safe_open

    from vlprompt.learners.base import LearnerError

    p = Path(path)
    if not p.is_file():
        raise LearnerError(f"--prompts {path!r} does not exist; pass a prompts.safetensors written by `vlprompt fit`.")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            _ = list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise LearnerError(f"--prompts {path!r} is not a readable safetensors file ({exc}); it is truncated or not a "
                           "prompts file. Re-run `vlprompt fit` or pass the right file.") from exc
    digest = _sha256(p)
    problems = []
    seed_json = p.parent / "seed.json"
    if seed_json.is_file():
        try:
            recorded = json.loads(seed_json.read_text(encoding="utf-8")).get("prompts_sha256")
        except (OSError, ValueError):
            recorded = None
        if recorded and recorded != digest:
            problems.append(f"its sha256 {digest[:12]} differs from the {recorded[:12]} its run recorded in {seed_json} "
                            "(the file was overwritten or edited)")
    try:
        saved_bb = json.loads(meta.get("backbone", "{}"))
    except ValueError:
        saved_bb = {}
    here = backbone.info.to_dict()
    for key in ("model", "checkpoint_sha256"):
        if isinstance(saved_bb, dict) and key in saved_bb and saved_bb.get(key) != here.get(key):
            problems.append(f"it was trained on backbone {key} {saved_bb.get(key)!r}, this run uses {here.get(key)!r}")
    if problems and not force:
        raise LearnerError(f"--prompts {path!r} refused: " + "; ".join(problems) +
                           ". Evaluate it with the backbone it was trained on, or pass --force_prompts true if this is deliberate.")
    for problem in problems:
        log.warning("--prompts %s: %s (loaded anyway: --force_prompts)", path, problem)
    try:
        learner.load_prompts(p, check_classnames=not force)
    except LearnerError as exc:
        raise LearnerError(f"{exc} (--force_prompts true loads it anyway where the learner allows)") from exc
    return {"path": str(p), "sha256": digest}


def _preflight(cfg: Any, data: Any, results_dir: str) -> None:
    from vlprompt.data.atomic import check_writable
    from vlprompt.runs.data_check import preflight_images

    check_writable(results_dir, "results_dir", ConfigError)
    own = getattr(data, "preflight", None)
    if callable(own):  # a protocol with its own checks (e.g. segmentation)
        own(full=cfg.check_images == "full", progress=_progress_enabled(cfg))
        return
    if cfg.check_images != "none":
        spaces = list((data.task or {}).get("label_spaces", {}))
        sources = {id(data.dataset): data.dataset}
        for space in spaces:
            src = data.space_source(space)
            sources.setdefault(id(src), src)
        preflight_images(list(sources.values()), full=cfg.check_images == "full", progress=_progress_enabled(cfg))


class OncePerRun(logging.Filter):
    """Pass each distinct warning (logger + text) once: seeds rebuild the data and model, and their warnings
    (e.g. the split-checksum warning) would otherwise repeat for every seed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@contextlib.contextmanager
def _warnings_once(*extra: logging.Handler):
    once = OncePerRun()
    handlers = [*logging.getLogger().handlers, *extra]
    for h in handlers:
        h.addFilter(once)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(once)


def _instantiate(cli: VlpromptCLI) -> None:
    """``cli.instantiate_classes()``; a ``ValueError`` raised by a class for a config value (e.g. ``n_ctx`` that
    contradicts ``ctx_init``) becomes a :class:`ConfigError` (``VLPROMPT_TRACEBACK=1`` shows the traceback)."""
    try:
        cli.instantiate_classes()
    except ValueError as exc:
        if type(exc).__name__ in {"DataError", "LearnerError", "ConfigError", "ResultError", "RunError"}:
            raise
        raise ConfigError(f"invalid config value: {exc}") from exc


def _seed_run_info(cfg: Any, config: dict, stage: str, data: Any, learner: Any, seed: int, run_id: str) -> dict:
    """What loggers get before a seed runs (:func:`vlprompt.runs.tracking.start_seed_logging`)."""
    return {"config": config, "stage": stage, "seed": seed, "run_id": run_id, "protocol": data.name,
            "benchmark": cfg.benchmark or _benchmark(data.dataset.identity()), "dataset": data.dataset.name,
            "learner": _plugin_name("learners", learner), "family": str(getattr(learner, "family", "?"))}


def _eval_results(model: PromptClassifier, trainer: Any, stage: str) -> dict[str, float]:
    """The evaluation accuracies of ``stage``; in a ``ddp_spawn`` parent process (whose module did not run the
    evaluation) they are rebuilt from the counts the processes logged."""
    results = model.eval_results.get(stage)
    if results is None:
        results = model.eval_results_from(dict(trainer.callback_metrics), stage)
    return results


def _ddp_secondary_redirect(cfg: Any, show_summary: bool) -> bool:
    """In a DDP rank > 0 re-launched by Lightning (``--trainer.strategy ddp``), write the run folder and result JSON
    to a throw-away folder: rank 0 writes the real ones. Returns ``show_summary`` (off on those ranks)."""
    import tempfile

    from vlprompt.data.distributed import is_secondary_process

    if not is_secondary_process():
        return show_summary
    scratch = tempfile.mkdtemp(prefix="vlprompt-rank-")
    cfg.results_dir = str(Path(scratch) / "results")
    cfg.trainer.default_root_dir = str(Path(scratch) / "runs")
    log.debug("DDP rank > 0: run folder and result JSON go to %s", scratch)
    return False


def run_experiment(stage: str, argv: list[str], *, show_summary: bool = True) -> dict | None:
    """Run ``stage`` for every seed and write one result JSON; returns the result. ``show_summary`` prints
    the rich table of per-seed and mean metrics.

    The run gets a run folder (:mod:`vlprompt.runs.folders`): each seed's row is saved as it finishes and an unfinished
    seed checkpoints every epoch, so ``--resume <run folder>`` after a kill continues where it stopped and
    gives the metrics of an uninterrupted run. SIGTERM / SIGINT raise :class:`~vlprompt.runs.folders.RunInterrupted`
    carrying what was saved and how to resume.
    """
    from vlprompt.runs.folders import ResumeCheckpoint, RunFolder, RunInterrupted, config_hash, interrupt_signals, new_run_id

    argv, resume_dir = _take_resume(stage, list(argv))
    cli = build_cli(stage, argv)
    cfg = cli.config
    validate_config(stage, cfg)
    show_summary = _ddp_secondary_redirect(cfg, show_summary)
    seeds: list[int] = list(cfg.seeds)
    from vlprompt.data.progress import progress_enabled

    if cfg.progress is not None:
        cfg.trainer.enable_progress_bar = bool(cfg.progress)
    elif not progress_enabled():
        cfg.trainer.enable_progress_bar = False
    config = yaml.safe_load(cli.parser.dump(cfg, skip_none=False, skip_check=True))
    run_id = cfg.run_id or (Path(resume_dir).name if resume_dir else new_run_id(_learner_label(cfg)))
    runs_root = Path(resume_dir).parent if resume_dir else Path(cfg.trainer.default_root_dir or "runs")
    full_argv = _strip_flag(argv, "--run_id")
    from vlprompt.data.atomic import check_writable

    check_writable(cfg.results_dir, "results_dir", ConfigError)
    run, resumed = RunFolder.open(runs_root, run_id, stage=stage, argv=[*full_argv, "--run_id", run_id],
                                  cfg_hash=config_hash(config))
    handler = logging.FileHandler(run.path / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("vlprompt").addHandler(handler)
    if resumed:
        log.info("resuming run %s from %s", run_id, run.path)
    per_seed: list[dict[str, Any]] = []
    t_start = time.time()
    model = data = None
    evaluated: dict[str, str] | None = None
    current: int | None = None
    try:
        with interrupt_signals(), _warnings_once(handler):
            for seed in seeds:
                current = seed
                done = run.finished_seed(seed) if resumed else None
                if done is not None:
                    log.info("seed %d: finished earlier, read from %s", seed, run.seed_dir(seed) / "seed.json")
                    per_seed.append(done)
                    continue
                t0 = time.time()
                seed_everything(seed, workers=True, verbose=False)
                _instantiate(cli)
                model, data, trainer = cli.model, cli.datamodule, cli.trainer
                data.seed = seed
                learner = model.learner
                start_seed_logging(trainer, _seed_run_info(cfg, config, stage, data, learner, seed, run_id))
                if len(per_seed) == 0 and not getattr(run, "_preflight_done", False):
                    _preflight(cfg, data, cfg.results_dir)
                    run._preflight_done = True
                if cfg.prompts:
                    evaluated = load_checked_prompts(learner, cfg.prompts, model.backbone, force=cfg.force_prompts)
                row: dict[str, Any] = {"seed": seed}
                if stage == "fit" and learner.trainable:
                    ckpt = run.checkpoint(seed)
                    trainer.callbacks.append(ResumeCheckpoint(ckpt))
                    resume_from = ckpt if ckpt.is_file() else None
                    if resume_from is not None:
                        log.info("seed %d: resuming from %s (epoch %s)", seed, ckpt, run.checkpoint_epoch(seed))
                    trainer.fit(model, datamodule=data, ckpt_path=str(resume_from) if resume_from else None,
                                weights_only=True)
                    row["epochs"] = int(trainer.current_epoch)
                    if cfg.save_prompts:
                        out = run.seed_dir(seed) / "prompts.safetensors"
                        learner.save_prompts(out, metadata={"backbone": model.backbone.info.to_dict(), "seed": seed,
                                                            "run_id": run_id})
                        row["prompts"] = str(out)
                        row["prompts_sha256"] = _sha256(out)
                elif stage == "fit":
                    log.info("%s has nothing to train: evaluating it", type(learner).__name__)
                if stage == "validate":
                    trainer.validate(model, datamodule=data, verbose=False)
                    results = _eval_results(model, trainer, "val")
                else:
                    trainer.test(model, datamodule=data, verbose=False)
                    results = _eval_results(model, trainer, "test")
                row["metrics"] = _metrics(results)
                report = getattr(model, "seed_report", None)
                if callable(report):  # module-specific extras (e.g. kept epoch, overlay PNGs) in the seed folder
                    row.update(report(run.seed_dir(seed)))
                end_seed_logging(trainer, row["metrics"])
                row["wall_seconds"] = round(time.time() - t0, 2)
                run.save_seed(seed, row)
                per_seed.append(row)
                log.info("seed %d: %s", seed, row["metrics"])
    except (RunInterrupted, SIGTERMException, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, RunInterrupted) else (15 if isinstance(exc, SIGTERMException) else 2)
        finished = [r["seed"] for r in per_seed]
        epoch = run.checkpoint_epoch(current) if current is not None else None
        saved = f"finished seed(s) {finished} saved" if finished else "no seed finished"
        if epoch:
            saved += f", seed {current} checkpointed after epoch {epoch}"
        run.update(status="interrupted")
        logging.getLogger("vlprompt").removeHandler(handler)
        run.close()
        raise RunInterrupted(signum, f"interrupted by {signal.Signals(signum).name}: {saved} in {run.path}; resume with "
                                     f"`vlprompt {stage} --resume {run.path}`") from None
    except BaseException:
        run.update(status="failed")
        logging.getLogger("vlprompt").removeHandler(handler)
        run.close()
        raise
    try:
        if model is None:  # every seed was finished before: build once for the task and identity
            _instantiate(cli)
            model, data = cli.model, cli.datamodule
        assert model is not None and data is not None
        identity = data.dataset.identity()
        result = make_result(
            protocol=data.name if stage != "validate" else f"{data.name}-val",
            benchmark=cfg.benchmark or _benchmark(identity),
            dataset=data.dataset.name,
            learner=_plugin_name("learners", model.learner),
            learner_config=config.get("model", {}).get("learner", {}),
            backbone=model.backbone.info.to_dict(),
            data=identity,
            shots=data.shots,
            seeds=seeds,
            per_seed=per_seed,
            config=config,
            command=" ".join(["vlprompt", stage, *argv]),
            wall_seconds=round(sum(float(r.get("wall_seconds", 0.0)) for r in per_seed)
                               if resumed else time.time() - t_start, 2),
        )
        result["task"] = model.task
        result["stage"] = stage
        result["complete"] = True
        result["run_id"] = run_id
        result["run_dir"] = str(run.path)
        result["trainable"] = bool(model.learner.trainable)
        if resumed:
            result["resumed"] = True
        artifacts = {f"seed{r['seed']}/prompts": {"path": r["prompts"], "sha256": r.get("prompts_sha256")}
                     for r in per_seed if r.get("prompts")}
        for r in per_seed:
            for name, p in (r.get("artifacts") or {}).items():
                artifacts[f"seed{r['seed']}/{name}"] = {"path": p, "sha256": _sha256(p) if Path(p).is_file() else None}
        result["artifacts"] = artifacts
        fields = getattr(model, "result_fields", None)
        if callable(fields):
            result.update(fields())
        if evaluated is not None:
            result["evaluated_checkpoint"] = evaluated
        path = write_result(result, cfg.results_dir)
        run.update(status="complete", result=str(path))
    finally:
        logging.getLogger("vlprompt").removeHandler(handler)
        handler.close()
        run.close()
    if show_summary:
        print_summary(result)
    result["_path"] = str(path)
    return result
