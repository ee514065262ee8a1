"""Prompt learners: the plugin interface and the built-in learners (each in its own folder)."""

from vlprompt.learners.base import FAMILIES, LearnerError, PromptLearner

__all__ = ["FAMILIES", "LearnerError", "PromptLearner"]
