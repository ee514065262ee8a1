"""Progress bars for long loops, in the one style every vlprompt command uses (rich): on by default in a terminal,
off when stderr is not a terminal (logs, CI, pipes), with ``vlprompt --no-progress ...``, ``--progress false``
(fit/validate/test), ``VLPROMPT_PROGRESS=0`` or whenever the ``CI`` environment variable is set."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

PROGRESS_ENV = "VLPROMPT_PROGRESS"


def progress_enabled() -> bool:
    """False in CI (``CI`` set) or when ``VLPROMPT_PROGRESS`` is 0/false/no/off."""
    if os.environ.get("CI"):
        return False
    return os.environ.get(PROGRESS_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def _bar(iterable: Iterable[T], desc: str, total: int | None, unit: str) -> Iterator[T]:
    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:  # removed when done
        yield from bar.track(iterable, total=total, description=desc)


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T] | Iterable[T]:
    """``iterable`` wrapped in a rich bar on stderr (removed when done) when progress is enabled and stderr is a
    terminal; otherwise ``iterable`` itself (no carriage-return updates in a log file)."""
    if not progress_enabled() or not sys.stderr.isatty():
        return iterable
    return _bar(iterable, desc, total, unit)
