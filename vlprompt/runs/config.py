"""Configs of ``vlprompt fit|validate|test``: the LightningCLI, layered YAML with registered names, validation.

``class_path`` may name a registered plugin (``class_path: coop``) instead of an import path: the YAML loader
and :func:`resolve_argv` rewrite it (:func:`vlprompt.learners.registry.resolve_config_names`). Shared with the
test-time command (:mod:`vlprompt.runs.test_time`) and sweeps (:mod:`vlprompt.runs.sweep`).
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import set_loader
from lightning.pytorch.cli import LightningCLI

from vlprompt.learners import registry
from vlprompt.learners.registry import KEY_GROUPS, ConfigError, resolve_config_names
from vlprompt.metrics import harmonic_mean
from vlprompt.modules.classification import PromptClassifier
from vlprompt.protocols.base2new import ClassificationProtocol
from vlprompt.runs.folders import RunError, check_run_id

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
            if parts and parts[-1] in KEY_GROUPS and not argv[i + 1].startswith(("-", "{")) and "." in argv[i + 1]:
                keys[parts[-1]] = argv[i + 1]
    return keys


#: values that are prompt text, never YAML: ``--model.learner.template "{}"`` (the class name alone) would otherwise
#: load as an empty mapping and fail the str check after a full usage dump
FORMAT_PLACEHOLDERS = frozenset({"{}", "{} ", " {}"})

#: most nodes a config may expand to once its aliases are followed (a real config has a few hundred)
MAX_YAML_NODES = 100_000


def safe_yaml_load(text: str, source: str = "config") -> Any:
    """``yaml.safe_load`` that first counts the nodes the document expands to (aliases followed, each shared
    node counted once per use): an alias bomb ("billion laughs") is a :class:`ConfigError` instead of
    gigabytes of memory."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, int] = {}

    def expanded(node) -> int:  # memoised per node: linear in the document, whatever the expansion
        key = id(node)
        if key not in sizes:
            sizes[key] = 0  # a recursive alias counts as nothing on its back edge
            children = node.value if isinstance(node.value, list) else []
            total = 1
            for child in children:
                for part in (child if isinstance(child, tuple) else (child,)):
                    total += expanded(part)
                    if total > MAX_YAML_NODES:
                        break
            sizes[key] = total
        return sizes[key]

    if root is not None and expanded(root) > MAX_YAML_NODES:
        raise ConfigError(f"{source}: the YAML expands to more than {MAX_YAML_NODES} values through its aliases "
                          "(&anchor / *alias); a config never needs that many. Remove the nested aliases.")
    return yaml.safe_load(text)


def _yaml_loader(text: str) -> Any:
    if text in FORMAT_PLACEHOLDERS:
        return text
    try:
        value = safe_yaml_load(text)
    except yaml.YAMLError:
        if "\n" in text:  # a config file: check_config_files names its line before parsing starts
            raise
        return text  # one command-line value that is not YAML ("{} photo."): text, checked against its type
    return resolve_config_names(value, overridden=_OVERRIDDEN)


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


def rounded_metrics(results: dict[str, float]) -> dict[str, float]:
    """Metrics of one seed for the result JSON: rounded to 4 digits, plus ``hm`` (base/new) or ``target_mean`` (transfer:
    the mean accuracy over the target sets; the ``<set>_ece`` calibration errors are not averaged in)."""
    out = {k: round(v, 4) for k, v in results.items()}
    if "base" in out and "new" in out:
        out["hm"] = round(harmonic_mean(out["base"], out["new"]), 4)
    targets = [v for k, v in results.items() if k != "source" and not k.endswith("_ece")]  # accuracies only
    if "source" in out and targets:
        out["target_mean"] = round(sum(targets) / len(targets), 4)
    return out


def plugin_name(kind: str, obj: object) -> str:
    """The registered name of ``obj``'s class in registry group ``kind``, else its lower-cased class name."""
    cls = type(obj)
    try:
        for info in registry.get_registry(kind).entries():
            if info.obj is cls:
                return info.name
    except registry.RegistryError:
        pass
    return cls.__name__.lower()


def benchmark_name(identity: dict, dataset: str | None = None) -> str:
    """The benchmark a dataset identity belongs to: ``toy`` for the toy world, else its ``benchmark``, else the
    dataset's own name (``dataset``, or the identity's ``name``); ``data`` only when nothing names it."""
    kind = identity.get("kind")
    if kind == "toyworld":
        return "toy"
    return str(identity.get("benchmark") or dataset or identity.get("name") or "data")


def resolve_argv(argv: list[str]) -> list[str]:
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
        if key in KEY_GROUPS and value and not value.startswith(("-", "{", "[")) and "." not in value:
            out[i + 1] = resolve_config_names({"class_path": value}, key, _OVERRIDDEN)["class_path"]
    return out


def strip_flag(argv: list[str], flag: str) -> list[str]:
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
            value = safe_yaml_load(p.read_text(encoding="utf-8"), f"--config {f}")
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
    argv = resolve_argv(argv)
    _OVERRIDDEN.clear()
    _OVERRIDDEN.update(_overridden_keys(argv))
    try:
        return _build_cli(stage, argv)
    except ValueError as exc:
        if user_error(exc) is not None:  # ours (possibly wrapped by jsonargparse): its message is the right one
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


#: bounds checked before any work (issue 23): numpy's seed range, a finite epoch count, a batch any device holds
SEED_MIN, SEED_MAX = 0, 2**32 - 1
MAX_EPOCHS = 1_000_000
MAX_BATCH_SIZE = 2**20


def check_seeds(seeds: Any) -> list[int]:
    """``seeds`` as a list if it is a non-empty list of distinct integers in numpy's seed range; else ConfigError
    naming the fix (shared by ``vlprompt fit/test/validate`` and ``vlprompt tta``)."""
    seeds = list(seeds or [])
    if not seeds:
        raise ConfigError("--seeds is empty: give at least one seed, e.g. --seeds [1,2,3]")
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    if dupes:
        raise ConfigError(f"--seeds {seeds} repeats seed(s) {dupes}: repeated seeds are the same run and would fake a "
                          "smaller std; give distinct seeds, e.g. --seeds [1,2,3]")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX:
            raise ConfigError(f"--seeds {seeds}: seed {seed} is outside {SEED_MIN}..{SEED_MAX} (numpy's seed range); "
                              "give seeds in that range, e.g. --seeds [1,2,3]")
    return seeds


def validate_config(stage: str, cfg: Any) -> None:
    """Refuse configs that would train nothing useful or give misleading statistics, before any work starts."""
    if getattr(cfg, "seed_everything", None) not in (None, False):  # e.g. `seed_everything: 1` in a YAML config
        raise ConfigError(f"seed_everything: {cfg.seed_everything} is Lightning's single seed; vlprompt runs one run per "
                          "seed: use seeds: [N] (one seed) or seeds: [1, 2, 3] (--seeds on the command line)")
    seeds = check_seeds(cfg.seeds)
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
    if stage == "fit" and max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int)
                                                      or max_epochs < 1 or max_epochs > MAX_EPOCHS):
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} must be a whole number in 1..{MAX_EPOCHS}: the learning-rate schedule "
            "and the run's end need a finite number of epochs (-1 would train forever). Give e.g. "
            "--trainer.max_epochs 50.")
    if stage == "fit" and max_epochs is not None and max_epochs >= 0 and isinstance(warmup, int) and warmup > 0 \
            and max_epochs <= warmup and learner_trainable(cfg):
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} <= model.warmup_epochs={warmup}: every epoch would be warm-up at the "
            f"constant warm-up lr, so nothing is learned. Raise --trainer.max_epochs above {warmup} or lower "
            f"--model.warmup_epochs.")
    data_init = getattr(cfg.data, "init_args", None)
    if stage == "validate" and getattr(data_init, "validation", True) is False:
        raise ConfigError("`vlprompt validate` evaluates the validation split, but data.init_args.validation is false "
                          "(the validation-free protocol has none): use `vlprompt test`, or drop validation: false")
    batch_size = getattr(data_init, "batch_size", None)
    if isinstance(batch_size, int) and batch_size < 1:
        raise ConfigError(f"data batch_size={batch_size} must be >= 1, e.g. --data.init_args.batch_size 32")
    for key in ("batch_size", "eval_batch_size"):
        value = getattr(data_init, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_BATCH_SIZE:
            raise ConfigError(f"data {key}={value} is larger than {MAX_BATCH_SIZE} (no device holds such a batch); "
                              f"give e.g. --data.init_args.{key} 32")
    if cfg.run_id is not None:
        try:
            check_run_id(cfg.run_id)
        except RunError as exc:
            raise ConfigError(str(exc)) from exc


USER_ERRORS = ("DataError", "BackboneError", "LearnerError", "ConfigError", "RegistryError", "ResultError", "RunError")


def user_error(exc: BaseException) -> str | None:
    """The message of a bad-input error (ours, possibly wrapped by jsonargparse), or None for a bug."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in USER_ERRORS:
            return str(exc)
        text = str(exc)
        if "Does not validate against any of the Union subtypes" in text:
            lines = [ln.strip()[2:] for ln in text.splitlines() if ln.strip().startswith("- ") and "NoneType" not in ln]
            if lines:
                return "; ".join(lines)
        exc = exc.__cause__ or exc.__context__
    return None


def learner_trainable(cfg: Any) -> bool:
    """The ``trainable`` attribute of the configured learner class (True when it cannot be told)."""
    path = str(getattr(getattr(cfg.model, "learner", None), "class_path", "") or "")
    try:
        module, name = path.rsplit(".", 1)
        return bool(getattr(getattr(importlib.import_module(module), name), "trainable", True))
    except (ValueError, ImportError, AttributeError):
        return True
