"""``vlprompt tta`` / ``vlprompt generate``: episodic test-time evaluation, or filling the generated-view cache."""

from __future__ import annotations

from vlprompt.cli.generate import generate_main
from vlprompt.generators.base import GeneratorError
from vlprompt.learners.prompts.tta import TTAError
from vlprompt.learners.registry import ConfigError
from vlprompt.runs.test_time import run_tta


def tta_main(cmd: str, argv: list[str]) -> int:
    """Dispatch ``vlprompt tta`` / ``vlprompt generate``; our bad-input errors become :class:`ConfigError`."""
    errors: tuple[type[BaseException], ...] = (TTAError, GeneratorError)
    try:
        if cmd == "generate":
            return generate_main(argv)
        run_tta(argv)
        return 0
    except errors as exc:
        raise ConfigError(str(exc)) from exc
