"""Import prompts trained by a method's reference code (Dassl-based repositories) into vlprompt.

``vlprompt import dassl PATH --learner NAME [--config learner.yaml] --backbone-config backbone.yaml
--classnames FILE --out prompts.safetensors`` reads a checkpoint written by Dassl's ``save_checkpoint``
(``prompt_learner/model.pth.tar-N``: a dict with a plain ``state_dict``), lets the learner map the
reference's tensor names to its own (:meth:`~vlprompt.learners.base.PromptLearner.import_reference_state`)
and writes vlprompt's safetensors prompts (class names, learner and backbone in the metadata), ready for
``vlprompt test --prompts``. Checkpoints are loaded with ``torch.load(weights_only=True)``: nothing is
unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
from pathlib import Path

import torch
import yaml

from vlprompt.learners import registry
from vlprompt.learners.base import LearnerError, PromptLearner

log = logging.getLogger(__name__)


def load_dassl_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Dassl checkpoint, loaded with ``weights_only=True``; LearnerError otherwise.

    A bare state dict (name -> tensor) is accepted too. Keys starting with ``module.`` (DataParallel) lose it.
    """
    path = Path(path)
    if not path.is_file():
        raise LearnerError(f"checkpoint {str(path)!r} does not exist (Dassl writes <output>/prompt_learner/model.pth.tar-N)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError, ValueError) as exc:
        unsafe = []
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - not a readable torch file at all
            pass
        what = f"it pickles Python objects {unsafe[:5]}" if unsafe else f"it cannot be read as a weights-only torch file ({type(exc).__name__})"
        raise LearnerError(
            f"checkpoint {str(path)!r} is not a plain state dict: {what}. vlprompt never unpickles arbitrary "
            "objects. If you trust the file, keep only its tensors with `python -c \"import torch; "
            "c = torch.load('IN', weights_only=False); torch.save({'state_dict': c['state_dict']}, 'OUT')\"` "
            "and import OUT."
        ) from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {sorted(map(str, obj))[:6]}"
        raise LearnerError(
            f"checkpoint {str(path)!r} is {kind}, not a Dassl checkpoint: expected a dict whose 'state_dict' maps "
            "parameter names to tensors (prompt_learner/model.pth.tar-N)"
        )
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def import_context_state(
    learner: PromptLearner, state: dict[str, torch.Tensor], *, frozen: tuple[str, ...], extra: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Check and rename a reference state dict holding ``ctx`` (and ``extra`` tensors) for a set-up learner.

    Shared by learners whose reference saves a context ``ctx`` (CoOp, CoCoOp...): ``frozen`` names (the
    reference's token buffers) are dropped; other names, missing names and shape differences raise
    :class:`LearnerError` saying whether the checkpoint is from another learner, another n_ctx or another
    backbone width, and the fix.
    """
    name = type(learner).__name__
    own = learner.learned_state()
    expected = {"ctx", *extra}
    given = {k for k in state if k not in frozen}
    unknown, missing = sorted(given - expected), sorted(expected - given)
    if unknown or missing:
        raise LearnerError(
            f"this checkpoint is not a {name} checkpoint: it has unexpected tensors {unknown[:6]} and lacks "
            f"{missing}. Was it saved by another learner (e.g. CoCoOp has meta_net.*, CoOp only ctx)? Import it "
            "with --learner set to the method that trained it."
        )
    ctx, want = state["ctx"], own["ctx"]
    if ctx.dim() != want.dim():
        def kind(t: torch.Tensor) -> str:
            return "class-specific [C, n_ctx, width]" if t.dim() == 3 else "unified [n_ctx, width]"

        raise LearnerError(
            f"checkpoint ctx is {kind(ctx)} {tuple(ctx.shape)} but this {name} is {kind(want)} {tuple(want.shape)}: "
            "set class_specific to match the checkpoint"
        )
    if ctx.shape[-1] != want.shape[-1]:
        raise LearnerError(
            f"checkpoint context width {ctx.shape[-1]} differs from this backbone's text width {want.shape[-1]}: the "
            "checkpoint was trained on another CLIP; use the backbone it was trained with (--backbone-config)"
        )
    if ctx.shape[-2] != want.shape[-2]:
        raise LearnerError(
            f"checkpoint has n_ctx={ctx.shape[-2]} context vectors but this {name} has n_ctx={want.shape[-2]}: set "
            f"n_ctx: {ctx.shape[-2]} (with ctx_init: null, or init words of that many tokens) in the learner config"
        )
    if ctx.shape != want.shape:
        raise LearnerError(
            f"checkpoint ctx has shape {tuple(ctx.shape)}, this {name} expects {tuple(want.shape)}: class-specific "
            "context needs the same classes (--classnames)"
        )
    out = {"ctx": ctx}
    for k in extra:
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise LearnerError(
                f"checkpoint tensor {k} has shape {tuple(state[k].shape)}, this {name} expects {tuple(own[k].shape)}: "
                "the checkpoint was trained on another CLIP (other feature width); use the backbone it was trained with"
            )
        out[k] = state[k]
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ command
def _read_yaml(path: str | None, what: str) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise LearnerError(f"{what} {str(p)!r} does not exist")
    return yaml.safe_load(p.read_text()) or {}


def _component(config: dict, key: str, group: str, default_name: str | None = None) -> tuple[type, dict]:
    node = (config.get("model") or {}).get(key) or {}
    name = node.get("class_path", default_name)
    if name is None:
        raise LearnerError(f"no model.{key}.class_path in the config: give a {key} YAML (e.g. configs/{group}/...)")
    reg = registry.get_registry(group)
    if name in reg:
        cls = reg.get(name)
    else:
        module, _, attr = str(name).rpartition(".")
        if not module:
            raise LearnerError(f"unknown {key} {name!r}; known: {', '.join(reg.names())}")
        cls = getattr(importlib.import_module(module), attr)
    return cls, dict(node.get("init_args") or {})


def read_classnames(value: str) -> list[str]:
    """Class names from a file (one per line) or a comma-separated list."""
    p = Path(value)
    if p.is_file():
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise LearnerError(f"--classnames {value!r} gives no class names: pass a file with one name per line")
    return names


def import_dassl(
    path: str | os.PathLike,
    *,
    learner: str,
    classnames: list[str],
    out: str | os.PathLike,
    learner_config: str | None = None,
    backbone_config: str | None = None,
) -> Path:
    """Convert a Dassl checkpoint for ``learner`` into vlprompt prompts at ``out``; returns ``out``.

    ``classnames`` are the training classes in label order (what the reference trained on, e.g. the base
    classes); the learner is built from ``learner_config`` (its ``model.learner.init_args``) on the backbone
    of ``backbone_config`` (default: the embedded toy CLIP).
    """
    state = load_dassl_checkpoint(path)
    lcfg = _read_yaml(learner_config, "learner config")
    bcfg = _read_yaml(backbone_config, "backbone config")
    learner_cls = registry.get_registry("learners").get(learner)
    node = (lcfg.get("model") or {}).get("learner") or {}
    if node.get("class_path") not in (None, learner):
        raise LearnerError(f"learner config {learner_config!r} is for {node['class_path']!r}, not --learner {learner!r}")
    kwargs = dict(node.get("init_args") or {})
    backbone_cls, bkwargs = _component(bcfg, "backbone", "backbones", default_name="toyclip")
    backbone = backbone_cls(**bkwargs)
    model: PromptLearner = learner_cls(**kwargs)
    model.setup(backbone, classnames)
    mapped = model.import_reference_state(state)
    model.set_learned_state(mapped)
    target = Path(out)
    tmp = target.with_name(target.name + ".tmp")
    model.save_prompts(tmp, metadata={
        "backbone": backbone.info.to_dict(), "imported_from": str(Path(path).resolve()), "reference": "dassl",
    })
    os.replace(tmp, target)
    log.info("imported %s (%s) into %s", path, learner, target)
    return target


