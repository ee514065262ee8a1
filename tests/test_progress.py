"""One progress style (rich) for vlprompt's own loops: a bar only in a terminal, the plain iterable otherwise."""

from __future__ import annotations

import io
import sys

from vlprompt.data import progress as progress_module
from vlprompt.data.progress import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gives_the_iterable_itself(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("VLPROMPT_PROGRESS", "1")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    items = [1, 2, 3]
    assert progress(items, desc="x") is items


def test_terminal_gets_a_transient_rich_bar(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("VLPROMPT_PROGRESS", "1")
    fake = _Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    out = list(progress(range(5), desc="extracting", total=5, unit="batch"))
    assert out == [0, 1, 2, 3, 4]
    assert "tqdm" not in progress_module.__dict__


def test_off_in_ci_even_in_a_terminal(monkeypatch):
    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr(sys, "stderr", _Tty())
    items = (1, 2)
    assert progress(items, desc="x") is items
