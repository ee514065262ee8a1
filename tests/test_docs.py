"""The documentation is checked like code: README.md, docs/**/*.md and benchmarks/README.md.

(a) every relative Markdown link and every backticked repository path (``configs/...``, ``docs/...``,
    ``vlprompt/...``, ``sweeps/...``, ``leaderboards/...``, ``benchmarks/...``, ``tests/...``, ``plugins/...``,
    ``datasets/...``) exists; ``<placeholders>``, ``{a,b}`` alternatives and ``...`` are skipped, globs must match;
(b) every command in a fenced ``bash`` block parses: ``vlprompt fit|validate|test`` lines run in process with
    ``--print_config`` (parse only, nothing is trained), every other ``vlprompt <subcommand>`` line resolves to a
    subcommand whose ``--help`` exits 0, ``python <script>`` / ``python -m <module>`` / ``<script>.sh`` lines name
    files and modules that exist. Lines continued with ``\\`` are joined; lines with placeholders are only checked
    for their subcommand.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted({ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").rglob("*.md")})
PREFIXES = ("configs/", "docs/", "vlprompt/", "sweeps/", "leaderboards/", "benchmarks/", "tests/", "plugins/",
            "datasets/")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|\$")



def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _prose(text: str) -> str:
    """The page without its fenced blocks."""
    return FENCE.sub("", text)


def _references() -> list[tuple[str, str]]:
    """(page, repository-relative path) for every relative link and backticked path of every page."""
    refs: list[tuple[str, str]] = []
    for page in PAGES:
        prose = _prose(page.read_text(encoding="utf-8"))
        for target in LINK.findall(prose):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            target = target.split("#", 1)[0]
            resolved = os.path.normpath(page.parent / target)
            refs.append((_rel(page), Path(resolved).relative_to(ROOT).as_posix() if resolved.startswith(str(ROOT))
                         else resolved))
        for _, span in CODE_SPAN.findall(prose):
            span = span.strip()
            if any(ch.isspace() for ch in span) or not span.startswith(PREFIXES):
                continue
            if PLACEHOLDER.search(span) or "{" in span:
                continue
            refs.append((_rel(page), span.split("::", 1)[0]))
    return refs


def _exists(path: str) -> bool:
    if any(ch in path for ch in "*?["):
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def _missing() -> list[str]:
    out = []
    for page, path in _references():
        if not _exists(path):
            out.append(f"{page}: {path}")
    return sorted(set(out))


def test_pages_are_found() -> None:
    names = {_rel(p) for p in PAGES}
    assert {"README.md", "docs/segmentation.md", "docs/performance.md", "docs/reliability.md"} <= names
    assert len(_references()) > 100


def test_every_linked_and_referenced_path_exists() -> None:
    assert _missing() == []


# ---------------------------------------------------------------------------------------------- commands


def _commands() -> list[tuple[str, str]]:
    """(page, command line) for every line of every fenced bash block, continuations joined."""
    out = []
    for page in PAGES:
        for info, body in FENCE.findall(page.read_text(encoding="utf-8")):
            if info.strip() not in {"bash", "sh", "shell", "console"}:
                continue
            joined = re.sub(r"\\\n\s*", " ", body)
            for line in joined.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    out.append((_rel(page), line))
    return out


def _words(line: str) -> list[str]:
    """The command's words without comments and leading VAR=value assignments."""
    words = shlex.split(line, comments=True)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words.pop(0)
    return words


def _vlprompt_lines() -> list[tuple[str, str, list[str]]]:
    rows = []
    for page, line in _commands():
        words = _words(line)
        if words and words[0] == "vlprompt":
            rows.append((page, line, [w for w in words[1:] if w != "--no-progress"]))
    return rows


def _run_cli(argv: list[str]) -> tuple[int, str]:
    from vlprompt.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, (out.getvalue() + err.getvalue())[-2000:]


@pytest.fixture()
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("VLPROMPT_PROGRESS", "0")


def test_commands_are_found() -> None:
    rows = _vlprompt_lines()
    assert len(rows) > 20
    assert any(words[:1] == ["fit"] and "configs/datasets/kvasir_seg_release.yaml" in words for _, _, words in rows)


def test_every_vlprompt_subcommand_exists(at_root: None) -> None:
    failures = []
    for sub in sorted({words[0] for _, _, words in _vlprompt_lines() if words}):
        code, out = _run_cli([sub, "--help"])
        if code != 0:
            pages = sorted({p for p, _, w in _vlprompt_lines() if w[:1] == [sub]})
            failures.append(f"vlprompt {sub} --help exited {code} (used in {pages}): {out}")
    assert failures == []


def test_every_fit_line_parses(at_root: None) -> None:
    """``vlprompt fit|validate|test`` lines without placeholders parse (``--print_config``: nothing runs)."""
    seen: dict[tuple[str, ...], str] = {}
    for page, line, words in _vlprompt_lines():
        if words[:1] not in (["fit"], ["validate"], ["test"]) or PLACEHOLDER.search(line) or "--resume" in words:
            continue
        seen.setdefault(tuple(words), page)
    assert len(seen) >= 6
    failures = []
    for words, page in seen.items():
        code, out = _run_cli([*words, "--print_config"])
        if code != 0:
            failures.append(f"{page}: vlprompt {' '.join(words)} --print_config exited {code}: {out}")
    assert failures == []


def test_every_script_and_module_exists() -> None:
    failures = []
    for page, line in _commands():
        if "$" in line:
            continue
        words = _words(line)
        if not words:
            continue
        if words[0] == "bash" and len(words) > 1:
            words = words[1:]
        if words[0].endswith(".sh") and not (ROOT / words[0]).is_file():
            failures.append(f"{page}: {line}")
        if words[0] in {"python", "python3"} and len(words) > 1:
            if words[1] == "-m" and words[2].startswith("vlprompt"):
                if importlib.util.find_spec(words[2]) is None:
                    failures.append(f"{page}: no module {words[2]}: {line}")
            elif words[1] == "-m" and words[2] == "pytest":
                failures += [f"{page}: {w}" for w in words[3:]
                             if w.startswith("tests/") and not (ROOT / w.split("::")[0]).exists()]
            elif words[1].endswith(".py") and not (ROOT / words[1]).is_file():
                failures.append(f"{page}: no script {words[1]}: {line}")
    assert failures == []
