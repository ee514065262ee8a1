"""``vlprompt tta``: episodic test-time evaluation (TPT, DiffTPT, or any learner as a baseline), all seeds,
one result JSON; ``vlprompt generate``: fill the generated-view cache of a test set ahead of time.

Layered configs as ``vlprompt test``::

    vlprompt tta --config configs/protocols/test_time/toy_shifts.yaml --config configs/backbones/toyclip.yaml \\
        --config configs/learners/tpt/default.yaml [--prompts runs/.../prompts.safetensors]

The result JSON carries the test-time settings (views, steps, selection) under ``test_time`` and the mean
seconds per test image under each seed's ``metrics``-sibling ``test_time_stats``.

Each run has a run folder ``<trainer.default_root_dir>/<run_id>/`` (:class:`~vlprompt.runs.folders.RunFolder`, as
``vlprompt fit``): every finished seed's row is saved there, so the same command with the same ``--run_id`` after a
kill continues with the unfinished seeds, and ``run.json`` names the result when the run is complete (what
``vlprompt sweep`` reads for ``stage: tta`` cells).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import seed_everything
from lightning.pytorch.cli import LightningCLI

from vlprompt.runs.config import benchmark_name, check_seeds, plugin_name, resolve_argv, rounded_metrics, strip_flag
from vlprompt.runs.folders import RunFolder, config_hash, new_run_id
from vlprompt.learners.registry import ConfigError
from vlprompt.modules.test_time import TestTimeClassifier
from vlprompt.protocols.base2new import ClassificationProtocol
from vlprompt.runs.results import image_count, make_result, peak_rss_mib, print_summary, write_result

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


class TestTimeCLI(LightningCLI):
    """LightningCLI for :class:`TestTimeClassifier` with seeds, results folder, prompts and the task link."""

    __test__ = False

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--seeds", type=list[int], default=[1, 2, 3], help="seeds, one run each (views are random)")
        parser.add_argument("--results_dir", type=str, default="results", help="where the result JSON is written")
        parser.add_argument("--benchmark", type=str | None, default=None, help="leaderboard group (default: from the dataset)")
        parser.add_argument("--prompts", type=str | None, default=None, help="learned prompts (safetensors) to start from; '{seed}' in the path is replaced by each run's seed")
        parser.add_argument("--run_id", type=str | None, default=None,
                            help="run folder name under trainer.default_root_dir (default: a new one); an unfinished "
                                 "run of the same config continues with its unfinished seeds")
        parser.link_arguments("data", "model.task", compute_fn=lambda data: data.task, apply_on="instantiate")


def build_tta_cli(argv: list[str]) -> TestTimeCLI:
    """Parse ``argv`` without running anything."""
    return TestTimeCLI(
        TestTimeClassifier,
        ClassificationProtocol,
        subclass_mode_data=True,
        run=False,
        args=resolve_argv(argv),
        save_config_callback=None,
        seed_everything_default=False,
        parser_kwargs={"prog": "vlprompt tta", "parser_mode": "yaml_vlprompt"},
        trainer_defaults={
            "logger": False, "enable_checkpointing": False, "enable_model_summary": False, "inference_mode": False,
            "default_root_dir": "runs", "accelerator": "cpu", "devices": 1, "enable_progress_bar": True,
        },
    )


def run_tta(argv: list[str], *, show_summary: bool = True) -> dict:
    """Run the test-time evaluation for every seed and write one result JSON; returns the result."""
    cli = build_tta_cli(argv)
    cfg = cli.config
    seeds = check_seeds(cfg.seeds)
    config = yaml.safe_load(cli.parser.dump(cfg, skip_none=False, skip_check=True))
    learner_name = str((config.get("model", {}).get("learner") or {}).get("class_path", "tta")).rsplit(".", 1)[-1]
    run_id = cfg.run_id or new_run_id(f"tta-{learner_name.lower()}")
    runs_root = Path(cfg.trainer.default_root_dir or "runs")
    full_argv = [*strip_flag(argv, "--run_id"), "--run_id", run_id]
    run, resumed = RunFolder.open(runs_root, run_id, stage="tta", argv=full_argv, cfg_hash=config_hash(config))
    per_seed, t_start = [], time.time()
    model = data = None
    try:
        for seed in seeds:
            done = run.finished_seed(seed) if resumed else None
            if done is not None:
                log.info("seed %d: finished earlier, read from %s", seed, run.seed_dir(seed) / "seed.json")
                per_seed.append(done)
                continue
            t0 = time.time()
            seed_everything(seed, workers=True, verbose=False)
            cli.instantiate_classes()
            model, data, trainer = cli.model, cli.datamodule, cli.trainer
            data.seed = seed
            if cfg.prompts:
                # prompts trained on other classes are the point of transfer (class-agnostic learners only)
                model.learner.load_prompts(cfg.prompts.replace("{seed}", str(seed)), check_classnames=False)
            t_eval, c_eval = time.time(), time.process_time()
            trainer.test(model, datamodule=data, verbose=False)
            row: dict[str, Any] = {"seed": seed, "metrics": rounded_metrics(model.eval_results["test"])}
            row["test_seconds"] = round(time.time() - t_eval, 2)
            row["test_cpu_seconds"] = round(time.process_time() - c_eval, 2)  # all threads; steady under load
            row.update(image_count(trainer.test_dataloaders, "test_images"))
            row["peak_rss_mib"] = peak_rss_mib()
            row["test_time_stats"] = {k: round(v, 5) for k, v in model.eval_stats.items()}
            row["wall_seconds"] = round(time.time() - t0, 2)
            run.save_seed(seed, row)
            per_seed.append(row)
            log.info("seed %d: %s (%.3f s/image)", seed, row["metrics"], model.eval_stats.get("mean_seconds", float("nan")))
        if model is None:  # every seed finished before: build once for the task and identity
            cli.instantiate_classes()
            model, data = cli.model, cli.datamodule
        assert model is not None and data is not None
        learner_config = dict(config.get("model", {}).get("learner", {}) or {})
        if cfg.prompts:  # loaded prompts make another entrant (e.g. TPT vs TPT+CoOp) on the leaderboard
            learner_config["init_args"] = {**(learner_config.get("init_args") or {}), "prompts_from": cfg.prompts}
        identity = data.dataset.identity()
        settings_fn = getattr(model.learner, "tta_settings", None)
        result = make_result(
            protocol=data.name,
            benchmark=cfg.benchmark or benchmark_name(identity, data.dataset.name),
            dataset=data.dataset.name,
            learner=plugin_name("learners", model.learner),
            learner_config=learner_config,
            backbone=model.backbone.info.to_dict(),
            data=data.identity(),
            shots=None,
            seeds=seeds,
            per_seed=per_seed,
            config=config,
            command=" ".join(["vlprompt", "tta", *argv]),
            wall_seconds=round(time.time() - t_start, 2),
        )
        result["task"] = model.task
        result["stage"] = "tta"
        result["run_id"] = run_id
        result["run_dir"] = str(run.path)
        result["test_time"] = settings_fn() if settings_fn is not None else {"method": "none", "views": 1, "steps": 0}
        result["test_time"]["prompts"] = cfg.prompts
        result["resources"] = list(result["test_time"].get("resources") or ())  # the method's track (TDA: earlier test images)
        path = write_result(result, cfg.results_dir)
        run.update(status="complete", result=str(path))
    except BaseException:
        run.update(status="failed")
        raise
    finally:
        run.close()
    if show_summary:
        print_summary(result)
    result["_path"] = str(path)
    return result


__all__ = ["TestTimeCLI", "build_tta_cli", "run_tta", "main", "Path"]
