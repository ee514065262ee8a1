"""vlprompt: a benchmark and plugin system for vision-language prompt learning.

The package is layered (see ``docs/architecture.md``; the order is the ``[tool.importlinter]`` contract in
``pyproject.toml``). Modules that moved in the 0.1 layout change stay importable under their old dotted
paths for one release: :data:`DEPRECATED_MODULES` maps each old path to the module(s) that now hold its names,
and importing an old path emits a :class:`DeprecationWarning` naming the new place.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

__version__ = "0.1.0"

#: old dotted module path -> the new module(s) holding its public names (the first one is named in the warning)
DEPRECATED_MODULES: dict[str, tuple[str, ...]] = {
    "vlprompt.atomic": ("vlprompt.data.atomic",),
    "vlprompt.conditional": ("vlprompt.learners.prompts.conditional",),
    "vlprompt.data.check": ("vlprompt.runs.data_check", "vlprompt.cli.data"),
    "vlprompt.distributed": ("vlprompt.data.distributed",),
    "vlprompt.experiment": ("vlprompt.runs.driver", "vlprompt.runs.config", "vlprompt.learners.registry"),
    "vlprompt.generators.cli": ("vlprompt.cli.generate",),
    "vlprompt.layers": ("vlprompt.learners.prompts.layers", "vlprompt.learners.base"),
    "vlprompt.leaderboard": ("vlprompt.leaderboards.build", "vlprompt.leaderboards.select", "vlprompt.cli.leaderboard"),
    "vlprompt.leaderboard_html": ("vlprompt.leaderboards.html",),
    "vlprompt.losses": ("vlprompt.metrics.losses",),
    "vlprompt.lowrank": ("vlprompt.learners.prompts.lowrank",),
    "vlprompt.meta": ("vlprompt.learners.gram.meta", "vlprompt.learners.gram.corpus", "vlprompt.learners.gram.tasks",
                      "vlprompt.cli.meta"),
    "vlprompt.overlays": ("vlprompt.modules.overlays",),
    "vlprompt.pretrain": ("vlprompt.toyworld.pretrain", "vlprompt.cli.pretrain"),
    "vlprompt.pretrain_diffusion": ("vlprompt.toyworld.pretrain_diffusion",),
    "vlprompt.pretrain_vlsm": ("vlprompt.toyworld.pretrain_vlsm",),
    "vlprompt.progress": ("vlprompt.data.progress",),
    "vlprompt.reference_import": ("vlprompt.learners.reference_import", "vlprompt.cli.import_dassl"),
    "vlprompt.registry": ("vlprompt.learners.registry", "vlprompt.cli.listing"),
    "vlprompt.results": ("vlprompt.runs.results",),
    "vlprompt.seg_metrics": ("vlprompt.metrics.segmentation",),
    "vlprompt.sweep": ("vlprompt.runs.sweep", "vlprompt.cli.sweep"),
    "vlprompt.test_time_cli": ("vlprompt.runs.test_time", "vlprompt.cli.tta"),
    "vlprompt.testing": ("vlprompt.learners.testing",),
    "vlprompt.toyclip_report": ("vlprompt.toyworld.toyclip_report",),
    "vlprompt.toydiffusion_report": ("vlprompt.toyworld.toydiffusion_report",),
    "vlprompt.toyvlsm_report": ("vlprompt.toyworld.toyvlsm_report",),
    "vlprompt.tracking": ("vlprompt.runs.tracking",),
    "vlprompt.tta": ("vlprompt.learners.prompts.tta",),
    "vlprompt.vl_layers": ("vlprompt.learners.prompts.vl_layers",),
    "vlprompt.vlsm_convert": ("vlprompt.backbones.vlsm_convert",),
    "vlprompt.wandb_logging": ("vlprompt.runs.wandb_logging", "vlprompt.leaderboards.wandb", "vlprompt.modules.overlays"),
}


def deprecation_message(old: str) -> str:
    """The warning text for importing the deprecated module path ``old``."""
    return f"{old} is deprecated and will be removed in the next release; import {DEPRECATED_MODULES[old][0]} instead"


def _caller_stacklevel() -> int:
    """Stack level of the first frame outside the import machinery (so the warning points at the importer)."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen importlib") or frame.f_globals.get("__name__") == __name__):
        frame, level = frame.f_back, level + 1
    return level


class _AliasLoader(importlib.abc.Loader):
    """Builds an old-path module whose attributes are looked up in the new modules."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        old = module.__name__
        warnings.warn(deprecation_message(old), DeprecationWarning, stacklevel=_caller_stacklevel())
        targets = [importlib.import_module(name) for name in DEPRECATED_MODULES[old]]

        def __getattr__(name: str):  # noqa: N807 - module-level attribute hook (PEP 562)
            for target in targets:
                if hasattr(target, name):
                    return getattr(target, name)
            raise AttributeError(f"module {old!r} has no attribute {name!r}")

        def __dir__() -> list[str]:  # noqa: N807
            return sorted({n for t in targets for n in dir(t)})

        module.__getattr__ = __getattr__  # type: ignore[attr-defined]
        module.__dir__ = __dir__  # type: ignore[attr-defined]
        module.__doc__ = deprecation_message(old)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the deprecated module paths of :data:`DEPRECATED_MODULES` (and nothing else)."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in DEPRECATED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader())


if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())
