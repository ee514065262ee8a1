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
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import seed_everything
from lightning.pytorch.utilities.exceptions import SIGTERMException
from safetensors import SafetensorError, safe_open

from vlprompt.data.atomic import check_writable, sha256_file
from vlprompt.data.distributed import is_secondary_process
from vlprompt.data.progress import progress_enabled
from vlprompt.learners import registry
from vlprompt.learners.base import LearnerError
from vlprompt.learners.registry import ConfigError
from vlprompt.modules.classification import PromptClassifier
from vlprompt.runs.config import (
    VlpromptCLI,
    benchmark_name,
    build_cli,
    plugin_name,
    rounded_metrics,
    strip_flag,
    validate_config,
)
from vlprompt.runs.console import configure_progress, output_is_terminal
from vlprompt.runs.data_check import preflight_images
from vlprompt.runs.folders import (
    ResumeCheckpoint,
    RunError,
    RunFolder,
    RunInterrupted,
    config_hash,
    interrupt_signals,
    new_run_id,
)
from vlprompt.runs.results import image_count, make_result, peak_rss_mib, print_summary, write_result
from vlprompt.runs.tracking import end_seed_logging, start_seed_logging

log = logging.getLogger(__name__)




def _take_resume(stage: str, argv: list[str]) -> tuple[list[str], str | None]:
    """Replace ``--resume RUN_DIR`` by the argv recorded in that run folder (plus any other arguments given)."""
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


def _progress_enabled(cfg: Any) -> bool:
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
    return sha256_file(path)


def load_checked_prompts(learner: Any, path: str, backbone: Any, *, force: bool) -> dict[str, str]:
    """Load ``--prompts`` into ``learner`` after checking the file: readable safetensors, sha256 equal to the one
    its run recorded (when the file sits in a run folder), saved for this backbone (model and checkpoint
    sha256) and for these class names. ``force`` loads despite a mismatch (the deliberate case); returns
    ``{"path", "sha256"}`` for the result JSON."""
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
    if "backbone" not in meta:
        log.warning("--prompts %s has no 'backbone' metadata: could not check that it was trained on this backbone "
                    "(model and checkpoint sha256)", path)
    try:
        saved_bb = json.loads(meta.get("backbone", "{}"))
    except (ValueError, RecursionError) as exc:
        raise LearnerError(f"--prompts {path!r}: metadata 'backbone' is not JSON ({exc}); the file is damaged or not "
                           "written by vlprompt. Re-run `vlprompt fit` or pass the right file.") from exc
    if not isinstance(saved_bb, dict):
        raise LearnerError(f"--prompts {path!r}: metadata 'backbone' is not a JSON object; the file is damaged or not "
                           "written by vlprompt. Re-run `vlprompt fit` or pass the right file.")
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
            "benchmark": cfg.benchmark or benchmark_name(data.dataset.identity(), data.dataset.name),
            "dataset": data.dataset.name,
            "learner": plugin_name("learners", learner), "family": str(getattr(learner, "family", "?"))}


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
    argv, resume_dir = _take_resume(stage, list(argv))
    cli = build_cli(stage, argv)
    cfg = cli.config
    validate_config(stage, cfg)
    show_summary = _ddp_secondary_redirect(cfg, show_summary)
    seeds: list[int] = list(cfg.seeds)
    if cfg.progress is not None:
        cfg.trainer.enable_progress_bar = bool(cfg.progress)
    elif not progress_enabled() or not output_is_terminal():  # not a terminal: one line per epoch, no bar
        cfg.trainer.enable_progress_bar = False
    config = yaml.safe_load(cli.parser.dump(cfg, skip_none=False, skip_check=True))
    run_id = cfg.run_id or (Path(resume_dir).name if resume_dir else new_run_id(_learner_label(cfg)))
    runs_root = Path(resume_dir).parent if resume_dir else Path(cfg.trainer.default_root_dir or "runs")
    full_argv = strip_flag(argv, "--run_id")
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
    once: dict[str, Any] | None = None  # the row of a seed-independent evaluation (a learner with nothing to train)
    try:
        with interrupt_signals(), _warnings_once(handler):
            for seed in seeds:
                current = seed
                done = run.finished_seed(seed) if resumed else None
                if done is not None:
                    log.info("seed %d: finished earlier, read from %s", seed, run.seed_dir(seed) / "seed.json")
                    per_seed.append(done)
                    continue
                if once is not None:  # nothing to train and a fixed test set: the evaluation is the same for every seed
                    row = {**once, "seed": seed, "wall_seconds": 0.0}
                    run.save_seed(seed, row)
                    per_seed.append(row)
                    continue
                t0 = time.time()
                seed_everything(seed, workers=True, verbose=False)
                _instantiate(cli)
                model, data, trainer = cli.model, cli.datamodule, cli.trainer
                data.seed = seed
                learner = model.learner
                configure_progress(trainer, bool(cfg.trainer.enable_progress_bar))
                start_seed_logging(trainer, _seed_run_info(cfg, config, stage, data, learner, seed, run_id))
                if len(per_seed) == 0 and not getattr(run, "_preflight_done", False):
                    _preflight(cfg, data, cfg.results_dir)
                    run._preflight_done = True
                if cfg.prompts:
                    evaluated = load_checked_prompts(learner, cfg.prompts, model.backbone, force=cfg.force_prompts)
                    extra = getattr(model, "load_extra_learned", None)  # e.g. the segmentation decoder branch
                    if callable(extra):
                        extra(Path(cfg.prompts).parent)
                row: dict[str, Any] = {"seed": seed}
                if stage == "fit" and learner.trainable:
                    ckpt = run.checkpoint(seed)
                    trainer.callbacks.append(ResumeCheckpoint(ckpt))
                    resume_from = run.usable_checkpoint(seed)  # a damaged one is reported and the seed redone
                    if resume_from is not None:
                        log.info("seed %d: resuming from %s (epoch %s)", seed, ckpt, run.checkpoint_epoch(seed))
                    t_fit, c_fit = time.time(), time.process_time()
                    trainer.fit(model, datamodule=data, ckpt_path=str(resume_from) if resume_from else None,
                                weights_only=True)
                    row["train_seconds"] = round(time.time() - t_fit, 2)
                    row["train_cpu_seconds"] = round(time.process_time() - c_fit, 2)  # all threads; steady under load
                    row["epochs"] = int(trainer.current_epoch)
                    row.update(image_count(trainer.train_dataloader, "train_images"))
                    row["optimizer_steps"] = int(trainer.global_step)  # read by `vlprompt sweep --plan --calibrate`
                    if cfg.save_prompts:
                        out = run.seed_dir(seed) / "prompts.safetensors"
                        learner.save_prompts(out, metadata={"backbone": model.backbone.info.to_dict(), "seed": seed,
                                                            "run_id": run_id})
                        row["prompts"] = str(out)
                        row["prompts_sha256"] = _sha256(out)
                elif stage == "fit":
                    log.info("%s has nothing to train: evaluating it once, for all %d seed(s)", type(learner).__name__,
                             len(seeds))
                t_eval, c_eval = time.time(), time.process_time()
                if stage == "validate":
                    trainer.validate(model, datamodule=data, verbose=False)
                    results = _eval_results(model, trainer, "val")
                    row.update(image_count(trainer.val_dataloaders, "test_images"))
                else:
                    trainer.test(model, datamodule=data, verbose=False)
                    results = _eval_results(model, trainer, "test")
                    row.update(image_count(trainer.test_dataloaders, "test_images"))
                row["test_seconds"] = round(time.time() - t_eval, 2)
                row["test_cpu_seconds"] = round(time.process_time() - c_eval, 2)
                row["peak_rss_mib"] = peak_rss_mib()
                row["metrics"] = rounded_metrics(results)
                report = getattr(model, "seed_report", None)
                if callable(report):  # module-specific extras (e.g. kept epoch, overlay PNGs) in the seed folder
                    row.update(report(run.seed_dir(seed)))
                end_seed_logging(trainer, row["metrics"])
                row["wall_seconds"] = round(time.time() - t0, 2)
                if not learner.trainable and not cfg.prompts:
                    # a frozen learner on evaluation sets that do not depend on the seed (the protocols draw their
                    # evaluation subsets with a fixed seed): the other seeds reuse this row instead of re-running it
                    row["seed_independent"] = True
                    once = {k: v for k, v in row.items() if k not in {"seed", "wall_seconds", "artifacts"}}
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
            benchmark=cfg.benchmark or benchmark_name(identity, data.dataset.name),
            dataset=data.dataset.name,
            learner=plugin_name("learners", model.learner),
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
        # what the prompts were (hand-written text, context initialisation) and the learner's resource track
        result["prompt"] = model.learner.prompt_record()
        result["resources"] = list(model.learner.resource_track())
        # the learner's and the module's own trainable tensors (e.g. a segmentation decoder branch); backbones are frozen
        result["trainable_params"] = sum(int(p.numel()) for p in model.parameters() if p.requires_grad)
        if per_seed and all(r.get("seed_independent") for r in per_seed):
            result["seed_independent"] = True  # evaluated once; the per-seed rows repeat that one evaluation
        if resumed:
            result["resumed"] = True
        artifacts = {f"seed{r['seed']}/prompts": {"path": r["prompts"], "sha256": r.get("prompts_sha256")}
                     for r in per_seed if r.get("prompts")}
        for r in per_seed:
            for name, p in (r.get("artifacts") or {}).items():
                if isinstance(p, list):  # several files under one name (e.g. a seed's overlay PNGs)
                    artifacts[f"seed{r['seed']}/{name}"] = {
                        "paths": p, "sha256": [_sha256(q) if Path(q).is_file() else None for q in p]}
                else:
                    artifacts[f"seed{r['seed']}/{name}"] = {"path": p, "sha256": _sha256(p) if Path(p).is_file() else None}
        result["artifacts"] = artifacts
        fields = getattr(model, "result_fields", None)
        if callable(fields):
            result.update(fields())
        if evaluated is not None:
            result["evaluated_checkpoint"] = evaluated
        try:
            path = write_result(result, cfg.results_dir)
        except OSError as exc:  # disk full, permissions: every seed is saved in the run folder
            raise RunError(
                f"could not write the result JSON under {cfg.results_dir} ({exc.strerror or exc}); every finished seed "
                f"is kept in the run folder {run.path}. Free space or fix permissions, then run `vlprompt {stage} "
                f"--resume {run.path}` to write the result without retraining.") from exc
        run.update(status="complete", result=str(path))
    finally:
        logging.getLogger("vlprompt").removeHandler(handler)
        handler.close()
        run.close()
    if show_summary:
        print_summary(result)
    result["_path"] = str(path)
    return result
