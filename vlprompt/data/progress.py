"""Progress bars for long loops: on by default, off with ``vlprompt --no-progress ...``, ``--progress false``
(fit/validate/test), ``VLPROMPT_PROGRESS=0`` or whenever the ``CI`` environment variable is set."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

PROGRESS_ENV = "VLPROMPT_PROGRESS"


def progress_enabled() -> bool:
    """False in CI (``CI`` set) or when ``VLPROMPT_PROGRESS`` is 0/false/no/off."""
    if os.environ.get("CI"):
        return False
    return os.environ.get(PROGRESS_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T] | Iterable[T]:
    """``iterable`` wrapped in a tqdm bar (on stderr, removed when done) when progress is enabled."""
    if not progress_enabled():
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
