"""``vlprompt fit|validate|test``: LightningCLI runs over several seeds, ending in one result JSON.

Configs are layered (``--config`` several times: dataset, learner, protocol, trainer), and ``class_path``
may name a registered plugin (``class_path: coop``) instead of an import path. The data module's ``task``
(label spaces and evaluation sets) is linked into the model. Each seed re-instantiates model, data and
trainer after seeding, so seeds are independent runs; the frozen backbone is loaded once and shared.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import set_loader
from lightning.pytorch import seed_everything
from lightning.pytorch.cli import LightningCLI

from vlprompt import registry
from vlprompt.metrics import harmonic_mean
from vlprompt.modules.classification import PromptClassifier
from vlprompt.protocols.base2new import ClassificationProtocol
from vlprompt.results import make_result, print_summary, write_result

log = logging.getLogger(__name__)

#: which registry group a class_path under a config key belongs to
_KEY_GROUPS = {"learner": "learners", "backbone": "backbones", "dataset": "datasets", "data": "protocols"}


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
        if path is None:
            kinds = [group] if group else list(registry.GROUPS)
            known = {k: registry.get_registry(k).names() for k in kinds}
            listing = "; ".join(f"{k}: {', '.join(v) or '(none)'}" for k, v in known.items())
            raise ConfigError(
                f"unknown {(group or 'plugin').rstrip('s')} {cp!r} under {key!r}. Known {listing}. "
                "Run `vlprompt list learners|backbones|datasets|protocols`, or give a full import path."
            )
        out["class_path"] = path
    return out


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


def build_cli(stage: str, argv: list[str]) -> VlpromptCLI:
    """Parse ``argv`` (LightningCLI syntax) without running anything."""
    argv = _resolve_argv(argv)
    return VlpromptCLI(
        PromptClassifier,
        ClassificationProtocol,
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


def run_experiment(stage: str, argv: list[str], *, show_summary: bool = True) -> dict | None:
    """Run ``stage`` for every seed and write one result JSON; returns the result. ``show_summary`` prints
    the rich table of per-seed and mean metrics."""
    cli = build_cli(stage, argv)
    cfg = cli.config
    seeds: list[int] = list(cfg.seeds)
    if not seeds:
        raise ConfigError("--seeds is empty: give at least one seed, e.g. --seeds [1,2,3]")
    per_seed = []
    t_start = time.time()
    model = data = None
    for seed in seeds:
        t0 = time.time()
        seed_everything(seed, workers=True, verbose=False)
        cli.instantiate_classes()
        model, data, trainer = cli.model, cli.datamodule, cli.trainer
        data.seed = seed
        learner = model.learner
        if cfg.prompts:
            learner.load_prompts(cfg.prompts)
        row: dict[str, Any] = {"seed": seed}
        if stage == "fit" and learner.trainable:
            trainer.fit(model, datamodule=data)
            row["epochs"] = int(trainer.current_epoch)
            if cfg.save_prompts:
                out = Path(trainer.default_root_dir) / data.name / data.dataset.name / _plugin_name("learners", learner) / f"seed{seed}" / "prompts.safetensors"
                learner.save_prompts(out, metadata={"backbone": model.backbone.info.to_dict(), "seed": seed})
                row["prompts"] = str(out)
        elif stage == "fit":
            log.info("%s has nothing to train: evaluating it", type(learner).__name__)
        if stage == "validate":
            trainer.validate(model, datamodule=data, verbose=False)
            results = model.eval_results["val"]
        else:
            trainer.test(model, datamodule=data, verbose=False)
            results = model.eval_results["test"]
        row["metrics"] = _metrics(results)
        row["wall_seconds"] = round(time.time() - t0, 2)
        per_seed.append(row)
        log.info("seed %d: %s", seed, row["metrics"])
    assert model is not None and data is not None
    config = yaml.safe_load(cli.parser.dump(cfg, skip_none=False, skip_check=True))
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
        wall_seconds=round(time.time() - t_start, 2),
    )
    result["task"] = model.task
    path = write_result(result, cfg.results_dir)
    if show_summary:
        print_summary(result)
    result["_path"] = str(path)
    return result
