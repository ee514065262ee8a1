"""Run management: the run driver, run folders and resume, results, sweeps, tracking and dataset checks.

Until 0.1 ``vlprompt.runs`` was one module (now :mod:`vlprompt.runs.folders`); its names still resolve here
for one release, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import importlib
import warnings

#: names of the old ``vlprompt.runs`` module, now in :mod:`vlprompt.runs.folders`
DEPRECATED_NAMES = ("RunError", "RunInterrupted", "interrupt_signals", "new_run_id", "config_hash", "RunFolder",
                    "ResumeCheckpoint", "SignalAt")


def __getattr__(name: str):
    """Old ``vlprompt.runs.<name>`` (a module until 0.1): warn and return ``vlprompt.runs.folders.<name>``."""
    if name not in DEPRECATED_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"vlprompt.runs.{name} is deprecated and will be removed in the next release; import "
                  f"vlprompt.runs.folders.{name} instead", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module("vlprompt.runs.folders"), name)
